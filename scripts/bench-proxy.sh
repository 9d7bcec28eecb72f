#!/usr/bin/env bash
# Proxy throughput: pgbench -S straight at Postgres, through the ReJot sidecar
# and through PgBouncer (session pooling), against one throwaway cluster.
#
#   scripts/bench-proxy.sh                      # what `make bench` runs
#   BENCH_DURATION=30 BENCH_ROUNDS=5 BENCH_MODE=extended scripts/bench-proxy.sh
#
# Environment:
#   BENCH_DURATION    seconds per pgbench run                  (default 10)
#   BENCH_ROUNDS      rounds; each round runs every target once (default 3)
#   BENCH_MODE        pgbench -M: simple, extended or prepared  (default simple)
#   BENCH_CLIENTS     client counts to measure                  (default "1 8")
#   BENCH_SCALE       pgbench -i scale factor                   (default 10)
#   BENCH_QUIET_WAIT  seconds to wait before each run for other work on the
#                     machine to calm down (default 60; 0: do not wait)
#   REJOT_PG_BIN      Postgres server binaries (default: newest /usr/lib/postgresql/*/bin)
#   REJOT_BIN         the sidecar binary (default: bin/rejot, built with `make build` if missing)
#
# Targets run in rounds (direct, sidecar, pgbouncer, direct, ...) so that
# machine noise falls on all three alike; the report gives each target's
# median TPS, and the CPU time each proxy process spent per transaction (read
# from /proc, so it needs no profiler and is less sensitive to noise).
# Everything lives in one temp dir that is removed on exit.
set -euo pipefail

DURATION=${BENCH_DURATION:-10}
ROUNDS=${BENCH_ROUNDS:-3}
MODE=${BENCH_MODE:-simple}
CLIENTS=${BENCH_CLIENTS:-1 8}
SCALE=${BENCH_SCALE:-10}
QUIET_WAIT=${BENCH_QUIET_WAIT:-60}
BUSY_WARN=10 # percent of the machine's CPU busy with other work between runs
TARGETS=(direct sidecar pgbouncer)
DB=bench

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- arguments --

is_uint() { [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -gt 0 ]; }
is_uint "$DURATION" || die "BENCH_DURATION must be a positive integer, not '$DURATION'"
is_uint "$ROUNDS" || die "BENCH_ROUNDS must be a positive integer, not '$ROUNDS'"
is_uint "$SCALE" || die "BENCH_SCALE must be a positive integer, not '$SCALE'"
[[ $QUIET_WAIT =~ ^[0-9]+$ ]] || die "BENCH_QUIET_WAIT must be a number of seconds, not '$QUIET_WAIT'"
case $MODE in simple | extended | prepared) ;; *) die "BENCH_MODE must be simple, extended or prepared, not '$MODE'" ;; esac
read -r -a CLIENT_COUNTS <<<"$CLIENTS"
[ ${#CLIENT_COUNTS[@]} -gt 0 ] || die "BENCH_CLIENTS is empty"
for c in "${CLIENT_COUNTS[@]}"; do is_uint "$c" || die "BENCH_CLIENTS must hold positive integers, not '$c'"; done

# ------------------------------------------------------------------- tools --

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The newest Postgres on the machine, as internal/pgcluster picks it.
if [ -n "${REJOT_PG_BIN:-}" ]; then
  PGBIN=$REJOT_PG_BIN
else
  PGBIN=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/postgres' 2>/dev/null |
    sort -t/ -k5,5n | tail -n 1 | xargs -r dirname)
fi
[[ -n $PGBIN && -x $PGBIN/postgres ]] || die "no Postgres server binaries (run 'make deps' or set REJOT_PG_BIN)"

# Client tools: Postgres's own copies first, then PATH.
tool() {
  if [ -x "$PGBIN/$1" ]; then echo "$PGBIN/$1"; return; fi
  command -v "$1" || die "$1 not found (run 'make deps')"
}
PGBENCH=$(tool pgbench)
PSQL=$(tool psql)
# Debian puts pgbouncer in /usr/sbin, which a non-root PATH may lack.
PGBOUNCER=$(PATH=$PATH:/usr/sbin command -v pgbouncer) || die "pgbouncer not found (run 'make deps')"

REJOT=${REJOT_BIN:-$ROOT/bin/rejot}
if [ ! -x "$REJOT" ]; then
  log "building $REJOT"
  make -C "$ROOT" build >&2
fi

# Postgres and PgBouncer refuse to run as root: as root, run them as the
# postgres OS user. as_pg runs a command as that user, from the work dir (a
# root-only working directory would make the Postgres tools complain).
RUN_AS=()
if [ "$(id -u)" -eq 0 ]; then
  id postgres >/dev/null 2>&1 || die "running as root needs a postgres OS user"
  RUN_AS=(runuser -u postgres --)
fi
as_pg() { (cd "$WORK" && "${RUN_AS[@]}" env LC_ALL=C "$@"); }

# free_ports N prints N distinct TCP ports that are free on 127.0.0.1 now.
free_ports() {
  if command -v python3 >/dev/null 2>&1; then
    python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
    return
  fi
  # No python3: random high ports that nothing answers on.
  local ports=() p
  while [ ${#ports[@]} -lt "$1" ]; do
    p=$((20000 + RANDOM % 40000))
    [[ " ${ports[*]} " == *" $p "* ]] && continue
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
    ports+=("$p")
  done
  echo "${ports[*]}"
}

# ---------------------------------------------------------- setup/teardown --

WORK=$(mktemp -d "${TMPDIR:-/tmp}/rejot-bench.XXXXXX")
chmod 700 "$WORK"
[ ${#RUN_AS[@]} -eq 0 ] || chown postgres: "$WORK"
PGDATA=$WORK/data
SIDECAR_PID=""
PG_STARTED=""
LAST_PGBENCH=""

# dump_logs prints the tail of every log there is, to explain a failure.
dump_logs() {
  local f
  for f in "$WORK/postgres.log" "$WORK/sidecar.log" "$WORK/pgbouncer-start.log" "$WORK/pgbouncer.log" "$LAST_PGBENCH"; do
    [[ -n $f && -s $f ]] || continue
    printf '\n----- %s (last 40 lines) -----\n' "${f#"$WORK"/}" >&2
    tail -n 40 "$f" >&2
  done
}

cleanup() {
  local status=$?
  trap - EXIT
  set +e
  # A failure explains itself with the logs; an interrupt does not need to.
  if [ "$status" -ne 0 ] && [ "$status" -lt 128 ]; then dump_logs; fi
  if [ -n "$SIDECAR_PID" ]; then
    kill "$SIDECAR_PID" 2>/dev/null
    wait "$SIDECAR_PID" 2>/dev/null
  fi
  if [ -s "$WORK/pgbouncer.pid" ]; then
    local pid i
    pid=$(cat "$WORK/pgbouncer.pid")
    kill "$pid" 2>/dev/null
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  if [ -n "$PG_STARTED" ]; then
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate -w stop >/dev/null 2>&1
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

PORTS=$(free_ports 3) || die "could not find free ports"
read -r PGPORT SIDECAR_PORT BOUNCER_PORT <<<"$PORTS"
is_uint "${BOUNCER_PORT:-}" || die "could not find free ports (got '$PORTS')"

# wait_sql PORT WHAT PID: wait up to 20 s until SELECT 1 works on PORT, and
# fail early when the process PID (if given) has died.
wait_sql() {
  local port=$1 what=$2 pid=${3:-} i
  for ((i = 0; i < 200; i++)); do
    if "$PSQL" -X -q -At -h 127.0.0.1 -p "$port" -U postgres -d "$DB" -c 'SELECT 1' >/dev/null 2>&1; then
      return 0
    fi
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      die "$what exited during start-up"
    fi
    sleep 0.1
  done
  die "$what did not accept connections on port $port within 20 s"
}

# 1. A throwaway cluster: trust auth, TCP on 127.0.0.1 only, no durability.
log "initdb in $WORK ($PGBIN)"
as_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C --no-sync \
  >"$WORK/initdb.log" 2>&1 || { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
cat >>"$PGDATA/postgresql.conf" <<EOF

# rejot bench-proxy.sh
port = $PGPORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
wal_level = logical
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 256MB
logging_collector = off
log_min_messages = warning
EOF
log "starting Postgres on 127.0.0.1:$PGPORT"
PG_STARTED=1
as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$WORK/postgres.log" -w -t 60 start >/dev/null ||
  die "Postgres did not start"

# 2. The pgbench tables.
"$PSQL" -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -c "CREATE DATABASE $DB" >/dev/null
log "pgbench -i -s $SCALE $DB"
"$PGBENCH" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PGPORT" -U postgres "$DB" >"$WORK/pgbench-init.log" 2>&1 ||
  { LAST_PGBENCH=$WORK/pgbench-init.log; die "pgbench -i failed"; }

# 3. The sidecar. --http off: the bench needs no metrics listener.
UPSTREAM="postgres://postgres@127.0.0.1:$PGPORT/$DB?sslmode=disable"
log "starting the sidecar on 127.0.0.1:$SIDECAR_PORT"
"$REJOT" serve --upstream "$UPSTREAM" --listen "127.0.0.1:$SIDECAR_PORT" --http off --log-level warn \
  >"$WORK/sidecar.log" 2>&1 &
SIDECAR_PID=$!
wait_sql "$SIDECAR_PORT" "the sidecar" "$SIDECAR_PID"
REJOT_VERSION=$("$PSQL" -X -At -h 127.0.0.1 -p "$SIDECAR_PORT" -U postgres -d "$DB" -c 'SELECT rejot.version()') ||
  die "the sidecar did not answer SELECT rejot.version()"

# 4. PgBouncer in session mode, run as the postgres user (it refuses root),
# with its config, log and pid files in the work dir.
printf '"postgres" ""\n' >"$WORK/userlist.txt"
cat >"$WORK/pgbouncer.ini" <<EOF
[databases]
$DB = host=127.0.0.1 port=$PGPORT dbname=$DB user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = trust
auth_file = $WORK/userlist.txt
pool_mode = session
max_client_conn = 100
default_pool_size = 20
logfile = $WORK/pgbouncer.log
pidfile = $WORK/pgbouncer.pid
EOF
log "starting PgBouncer on 127.0.0.1:$BOUNCER_PORT"
as_pg "$PGBOUNCER" -d "$WORK/pgbouncer.ini" >"$WORK/pgbouncer-start.log" 2>&1 || die "PgBouncer did not start"
wait_sql "$BOUNCER_PORT" "PgBouncer"

# ------------------------------------------------------------------ runs --

port_of() {
  case $1 in
    direct) echo "$PGPORT" ;;
    sidecar) echo "$SIDECAR_PORT" ;;
    pgbouncer) echo "$BOUNCER_PORT" ;;
    *) die "unknown target $1" ;;
  esac
}

# Threads: one per client, at most one per core.
CORES=$(nproc)
threads_for() { if [ "$1" -lt "$CORES" ]; then echo "$1"; else echo "$CORES"; fi; }

# busy_percent: how busy the whole machine is over half a second, in percent
# of all cores. Sampled between runs, when everything of ours is idle, it
# shows other work on the machine that would make the numbers noisy.
cpu_jiffies() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6; exit }' /proc/stat; }
busy_percent() {
  local b0 i0 b1 i1
  read -r b0 i0 <<<"$(cpu_jiffies)"
  sleep 0.5
  read -r b1 i1 <<<"$(cpu_jiffies)"
  awk -v b=$((b1 - b0)) -v i=$((i1 - i0)) 'BEGIN { printf "%.0f", (b + i) ? 100 * b / (b + i) : 0 }'
}

# wait_quiet: wait up to BENCH_QUIET_WAIT seconds for the machine to be at
# most BUSY_WARN percent busy; prints the last busy percentage seen.
wait_quiet() {
  local busy start=$SECONDS
  busy=$(busy_percent)
  while [ "$busy" -gt "$BUSY_WARN" ] && [ $((SECONDS - start)) -lt "$QUIET_WAIT" ]; do
    sleep 1
    busy=$(busy_percent)
  done
  echo "$busy"
}

# proxy_pid TARGET: the pid of the proxy process for TARGET, none for direct.
proxy_pid() {
  case $1 in
    sidecar) echo "$SIDECAR_PID" ;;
    pgbouncer) cat "$WORK/pgbouncer.pid" ;;
    *) ;;
  esac
}

# cpu_ticks PID: user+system CPU time PID has used, in clock ticks (fields 14
# and 15 of /proc/PID/stat; neither rejot nor pgbouncer has a space in its name).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
CLK_TCK=$(getconf CLK_TCK)

# run_pgbench TARGET CLIENTS SECONDS OUT: one select-only run. Prints its TPS
# and the proxy's CPU time per transaction in microseconds ("-" for direct).
# It runs in $(...), a subshell, so on failure it shows pgbench's output itself.
run_pgbench() {
  local target=$1 clients=$2 seconds=$3 out=$4 pid tps txns before=0 after=0 cpu_us=-
  pid=$(proxy_pid "$target")
  [ -z "$pid" ] || before=$(cpu_ticks "$pid")
  if ! "$PGBENCH" -S -n -M "$MODE" -T "$seconds" -c "$clients" -j "$(threads_for "$clients")" \
    -h 127.0.0.1 -p "$(port_of "$target")" -U postgres "$DB" >"$out" 2>&1; then
    tail -n 40 "$out" >&2
    die "pgbench against $target with $clients client(s) failed"
  fi
  [ -z "$pid" ] || after=$(cpu_ticks "$pid")
  tps=$(awk '/^tps = / && /without initial connection time/ { print $3 }' "$out")
  txns=$(awk -F': *' '/^number of transactions actually processed/ { print $2 + 0 }' "$out")
  if [ -z "$tps" ] || [ -z "$txns" ] || [ "$txns" -eq 0 ]; then
    tail -n 40 "$out" >&2
    die "no tps or transaction count in pgbench's output against $target"
  fi
  if [ -n "$pid" ]; then
    cpu_us=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$txns" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
  fi
  echo "$tps $cpu_us"
}

# Warm-up: a short run per target fills the caches and proves each one works.
for target in "${TARGETS[@]}"; do
  log "warm-up: $target"
  run_pgbench "$target" "${CLIENT_COUNTS[-1]}" 2 "$WORK/warmup-$target.log" >/dev/null
done

# Results, one line per run: clients, target, round, TPS, proxy CPU us/txn,
# machine busy % just before the run.
RESULTS=$WORK/results.tsv
: >"$RESULTS"
for ((round = 1; round <= ROUNDS; round++)); do
  for clients in "${CLIENT_COUNTS[@]}"; do
    for target in "${TARGETS[@]}"; do
      busy=$(wait_quiet)
      [ "$busy" -le "$BUSY_WARN" ] || log "warning: the machine is still ${busy}% busy with other work; running anyway"
      result=$(run_pgbench "$target" "$clients" "$DURATION" "$WORK/run-$round-$clients-$target.log")
      read -r tps cpu_us <<<"$result"
      log "round $round/$ROUNDS, $clients client(s), $target: $tps tps, proxy CPU ${cpu_us} us/txn"
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$clients" "$target" "$round" "$tps" "$cpu_us" "$busy" >>"$RESULTS"
    done
  done
done

# ---------------------------------------------------------------- report --

# median CLIENTS TARGET [COLUMN]: the median over that pair's rounds of a
# results column: 4 is TPS (the default), 5 the proxy's CPU per transaction.
median() {
  awk -F'\t' -v c="$1" -v t="$2" -v k="${3:-4}" '$1 == c && $2 == t { print $k }' "$RESULTS" | sort -g |
    awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
# all_rounds CLIENTS TARGET: every round's TPS, in round order.
all_rounds() {
  awk -F'\t' -v c="$1" -v t="$2" '$1 == c && $2 == t { printf "%s%.0f", sep, $4; sep = ", " }' "$RESULTS"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }

PG_VERSION=$("$PGBIN/postgres" --version)
BOUNCER_VERSION=$("$PGBOUNCER" --version | head -n 1)
CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)

cat <<EOF

## pgbench -S (select-only), -M $MODE, ${DURATION}s per run, $ROUNDS rounds, scale $SCALE

machine:   $CORES cores (nproc), ${CPU:-unknown CPU}, $(uname -sr)
postgres:  $PG_VERSION
pgbench:   $("$PGBENCH" --version)
pgbouncer: $BOUNCER_VERSION (pool_mode=session, default_pool_size=20)
sidecar:   rejot $REJOT_VERSION

Median TPS (without initial connection time):

| clients | direct | sidecar | pgbouncer | sidecar/direct | pgbouncer/direct | sidecar/pgbouncer |
|--------:|-------:|--------:|----------:|---------------:|-----------------:|------------------:|
EOF
for clients in "${CLIENT_COUNTS[@]}"; do
  d=$(median "$clients" direct)
  s=$(median "$clients" sidecar)
  b=$(median "$clients" pgbouncer)
  printf '| %s | %.0f | %.0f | %.0f | %s | %s | %s |\n' "$clients" "$d" "$s" "$b" \
    "$(ratio "$s" "$d")" "$(ratio "$b" "$d")" "$(ratio "$s" "$b")"
done

cat <<EOF

Proxy CPU time per transaction (user+system of the proxy process, median, microseconds;
pgbench, Postgres and the proxy share the $CORES cores, so proxy CPU is throughput lost):

| clients | sidecar | pgbouncer | sidecar/pgbouncer |
|--------:|--------:|----------:|------------------:|
EOF
for clients in "${CLIENT_COUNTS[@]}"; do
  s=$(median "$clients" sidecar 5)
  b=$(median "$clients" pgbouncer 5)
  printf '| %s | %.1f | %.1f | %s |\n' "$clients" "$s" "$b" "$(ratio "$s" "$b")"
done

printf '\nEvery round (TPS, round 1 first):\n\n'
for clients in "${CLIENT_COUNTS[@]}"; do
  for target in "${TARGETS[@]}"; do
    printf -- '- %s client(s), %-10s %s\n' "$clients" "$target:" "$(all_rounds "$clients" "$target")"
  done
done

BUSY_MAX=$(awk -F'\t' '$6 > m { m = $6 } END { print m + 0 }' "$RESULTS")
printf '\nOther work on the machine, sampled for 0.5 s before each run: at most %s%% CPU busy.\n' "$BUSY_MAX"
printf '(It is sampled only between runs: work that starts during a run goes unseen.)\n' 
if [ "$BUSY_MAX" -gt "$BUSY_WARN" ]; then
  printf 'WARNING: above %s%% the numbers are noisy; rerun on a quiet machine.\n' "$BUSY_WARN"
fi

cat <<EOF

Reproduce:

  make build && BENCH_DURATION=$DURATION BENCH_ROUNDS=$ROUNDS BENCH_MODE=$MODE BENCH_CLIENTS="$CLIENTS" BENCH_SCALE=$SCALE scripts/bench-proxy.sh

Each run is: pgbench -S -n -M $MODE -T $DURATION -c CLIENTS -j min(CLIENTS,$CORES) -h 127.0.0.1 -p PORT -U postgres $DB
EOF
