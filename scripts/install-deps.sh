#!/usr/bin/env bash
# Installs what ReJot's build, tests and benchmarks need on a Debian machine:
# Postgres server binaries (tests start throwaway clusters from them), psql,
# pgbench and PgBouncer (benchmarks), Chromium (the catalog page's browser
# tests drive it headless), buildah, glibc's static libraries and the CA
# certificates (`make image` and its test build the image without a
# daemon). Idempotent; needs root or sudo.
set -euo pipefail

need=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
command -v pgbench >/dev/null 2>&1 || need+=(postgresql-contrib)
command -v pgbouncer >/dev/null 2>&1 || need+=(pgbouncer)
if ! command -v gcc >/dev/null 2>&1; then
  need+=(gcc libc6-dev)
elif [ "$(gcc -print-file-name=libc.a)" = libc.a ]; then
  need+=(libc6-dev) # the image's binary is linked statically
fi
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v buildah >/dev/null 2>&1 || need+=(buildah)
[ -s /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)

if [ ${#need[@]} -eq 0 ]; then
  echo "install-deps: nothing to install"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
# The Debian package starts a cluster of its own; the tests don't use it.
if command -v pg_lsclusters >/dev/null 2>&1; then
  $SUDO systemctl stop postgresql >/dev/null 2>&1 || $SUDO service postgresql stop >/dev/null 2>&1 || true
fi
id postgres >/dev/null 2>&1 || { echo "install-deps: no postgres OS user after install" >&2; exit 1; }
