package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// BenchmarkFanOut measures fan-out end to end: one owner, and 1, 4, then
// 16 subscriber databases on the consumer's cluster, each behind its own
// sidecar (as deployed: a sidecar per database), against Postgres's
// logical replication with one subscription (one slot, one walsender) per
// subscriber database. For each count it measures catch-up of
// BENCH_FANOUT_TXNS single-row updates queued while everything is stopped
// (time until every subscriber has applied them all), then latency at
// BENCH_FANOUT_LATENCY_RATE per second seen on the newest subscriber. It
// runs with the Postgres log, then with the NATS log (three nodes,
// in-process), each on fresh clusters; native is measured in the first:
//
//	go test ./tests/bench -run '^$' -bench '^BenchmarkFanOut$' -benchtime 1x -timeout 60m -v
//
// Environment (besides main_test.go's BENCH_PROFILE_DIR, BENCH_KEEP,
// BENCH_LOG_LEVEL, BENCH_STATEMENTS):
//
//	BENCH_FANOUT                  subscriber counts, ascending        (default 1,4,16)
//	BENCH_FANOUT_ROWS             rows of pgbench_accounts            (default 100000)
//	BENCH_FANOUT_TXNS             queued updates per catch-up         (default 100000)
//	BENCH_FANOUT_LATENCY_SECONDS  seconds of steady load per latency run (default 5)
//	BENCH_FANOUT_LATENCY_RATE     updates per second                  (default 1000)
//	BENCH_FANOUT_LOGS             the logs to run, in order; native is
//	                              measured in the first (default Postgres,NATS)
//	BENCH_FANOUT_STEPS            the steps to run at each count: catch-up,
//	                              latency, burst (default all three); a step
//	                              left out prints "—"
func BenchmarkFanOut(b *testing.B) {
	cfg, counts := readFanOutConfig(b)
	r := fanOutResults{counts: counts, cfg: cfg}
	engines := strings.Split(envString("BENCH_FANOUT_LOGS", "Postgres,NATS"), ",")
	for i, engine := range engines {
		if engine != "Postgres" && engine != "NATS" {
			b.Fatalf("BENCH_FANOUT_LOGS=%q: want Postgres, NATS or both", os.Getenv("BENCH_FANOUT_LOGS"))
		}
		b.Run(engine+"Log", func(b *testing.B) {
			ctx, cancel := context.WithTimeout(context.Background(), 55*time.Minute)
			defer cancel()
			c := cfg
			c.natsLog = engine == "NATS"
			f := &fanEnv{env: newEnv(b, ctx, c), measureNative: i == 0, nextRow: 1}
			f.quickLauncher()
			f.must(f.src.QueryRow(ctx, "SHOW server_version").Scan(&r.server))
			r.engines = append(r.engines, f.run(engine, counts))
			if f.measureNative {
				r.native = f.nativeRuns
			}
		})
	}
	if len(r.engines) == len(engines) {
		r.print()
	}
}

func readFanOutConfig(b *testing.B) (config, []int) {
	var counts []int
	for _, s := range strings.Split(envString("BENCH_FANOUT", "1,4,16"), ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > 64 || (len(counts) > 0 && n <= counts[len(counts)-1]) {
			b.Fatalf("BENCH_FANOUT=%q: want ascending counts from 1 to 64", os.Getenv("BENCH_FANOUT"))
		}
		counts = append(counts, n)
	}
	c := config{
		rows:        envInt(b, "BENCH_FANOUT_ROWS", 100_000, 1),
		txns:        envInt(b, "BENCH_FANOUT_TXNS", 100_000, 1),
		latencySecs: envInt(b, "BENCH_FANOUT_LATENCY_SECONDS", 5, 1),
		latencyRate: envInt(b, "BENCH_FANOUT_LATENCY_RATE", 1000, 1),
		profileDir:  os.Getenv("BENCH_PROFILE_DIR"),
		keep:        os.Getenv("BENCH_KEEP") != "",
		statements:  envInt(b, "BENCH_STATEMENTS", 0, 0),
		steps:       map[string]bool{},
	}
	for _, s := range strings.Split(envString("BENCH_FANOUT_STEPS", "catch-up,latency,burst"), ",") {
		s = strings.TrimSpace(s)
		if s != "catch-up" && s != "latency" && s != "burst" {
			b.Fatalf("BENCH_FANOUT_STEPS=%q: want catch-up, latency and/or burst", os.Getenv("BENCH_FANOUT_STEPS"))
		}
		c.steps[s] = true
	}
	// Each latency run updates rows of its own: native's and ReJot's, per count.
	if need := 2 * len(counts) * c.latencySecs * c.latencyRate; need > c.rows {
		b.Fatalf("BENCH_FANOUT_ROWS=%d is too small: the latency runs update %d distinct rows", c.rows, need)
	}
	return c, counts
}

func envString(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// fanEnv is env with more subscribers: ReJot's (a database and a sidecar
// each; the first is env's consumer) and native's (a database and a
// subscription each).
type fanEnv struct {
	*env
	measureNative bool
	subs          []subscriber
	natives       []*pgx.Conn // database i holds subscription bench_native_i
	nextRow       int         // the first account no latency run has used
	nativeRuns    []fanOutRun
}

type subscriber struct {
	sc   *sidecar
	db   string
	conn *pgx.Conn // the database, direct
}

// fanOutRun is one system's figures at one subscriber count.
type fanOutRun struct {
	subscribers int
	catchUp     time.Duration
	latency     latencyRun
	burst       time.Duration // the same updates committed while every subscriber follows (burstAll)
}

type engineResult struct {
	name string
	runs []fanOutRun
	cpu  []cpuRecord
}

// run publishes, then for each count grows the subscribers and measures.
func (f *fanEnv) run(engine string, counts []int) engineResult {
	progress("%s log: publish", engine)
	f.rejotFill()
	res := engineResult{name: engine}
	for _, n := range counts {
		f.grow(n)
		label := fmt.Sprintf("%s log, %d subscribers", engine, n)
		var native, rejot, nativeBurst, rejotBurst time.Duration
		var nativeLat, rejotLat latencyRun
		if f.cfg.steps["catch-up"] {
			native, rejot = f.catchUpAll(label)
		}
		if f.cfg.steps["latency"] {
			nativeLat, rejotLat = f.latencyAll(label)
		}
		if f.cfg.steps["burst"] {
			nativeBurst, rejotBurst = f.burstAll(label)
		}
		res.runs = append(res.runs, fanOutRun{subscribers: n, catchUp: rejot, latency: rejotLat, burst: rejotBurst})
		if f.measureNative {
			f.nativeRuns = append(f.nativeRuns, fanOutRun{subscribers: n, catchUp: native, latency: nativeLat, burst: nativeBurst})
		}
	}
	res.cpu = f.cpuLog
	return res
}

// grow adds ReJot subscribers (and native ones) until there are n of each,
// each subscribing as a user does, and waits until each has its copy.
func (f *fanEnv) grow(n int) {
	for len(f.subs) < n {
		f.addSubscriber()
	}
	for f.measureNative && len(f.natives) < n {
		f.addNative()
	}
	progress("%d subscribers streaming", n)
}

func (f *fanEnv) addSubscriber() {
	i := len(f.subs) + 1
	s := subscriber{sc: f.consumerSC, db: consumerDB, conn: f.rejot}
	if i > 1 {
		s.db = fmt.Sprintf("sub%d", i)
		f.must(f.consumer.Exec(f.ctx, "postgres", "CREATE DATABASE "+s.db))
		sc, err := newSidecar(f.consumerSC.bin, f.dir, f.cfg.profileDir, s.db, f.consumer.URL(s.db), f.consumerSC.catalog)
		f.must(err)
		sc.log = f.consumerSC.log
		f.b.Cleanup(sc.stop)
		f.must(sc.start())
		f.must(sc.ready(f.ctx))
		f.subscriberSCs = append(f.subscriberSCs, sc)
		s.sc, s.conn = sc, connect(f.b, f.consumer.URL(s.db))
	}
	conn := connect(f.b, s.sc.url())
	f.exec(conn, fmt.Sprintf("CALL rejot.subscribe('%s', 1, '%s')", publication, target))
	f.waitFor("ReJot subscribe "+s.db, 30*time.Minute, 20*time.Millisecond, func() (bool, error) {
		status, position, err := subscriptionIn(f.ctx, s.conn)
		return status == "streaming" && position != nil, err
	}, f.rejotDiag)
	f.subs = append(f.subs, s)
}

func (f *fanEnv) addNative() {
	i := len(f.natives) + 1
	db := fmt.Sprintf("native%d", i)
	f.must(f.consumer.Exec(f.ctx, "postgres", "CREATE DATABASE "+db))
	conn := connect(f.b, f.consumer.URL(db))
	f.exec(conn, "CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84))")
	conninfo := fmt.Sprintf("host=127.0.0.1 port=%d dbname=%s user=postgres", f.owner.Port, sourceDB)
	f.exec(conn, fmt.Sprintf("CREATE SUBSCRIPTION %s_%d CONNECTION '%s' PUBLICATION %s WITH (copy_data = true)",
		nativeName, i, conninfo, nativeName))
	f.waitFor("native copy "+db, 30*time.Minute, 20*time.Millisecond, func() (bool, error) {
		var synced bool
		err := conn.QueryRow(f.ctx, `SELECT count(*) > 0 AND bool_and(srsubstate IN ('s', 'r')) FROM pg_subscription_rel`).Scan(&synced)
		return synced, err
	}, f.nativeDiag)
	f.natives = append(f.natives, conn)
	f.nativeTouched = time.Now()
}

// quickLauncher lets the consumer's launcher start apply workers every
// 50 ms rather than every 5 s (wal_retrieve_retry_interval): subscriptions
// in different databases are enabled in different transactions, and with
// the default each one after the first would wait 5 s for its worker.
func (f *fanEnv) quickLauncher() {
	conn := connect(f.b, f.consumer.URL("postgres"))
	f.exec(conn, "ALTER SYSTEM SET wal_retrieve_retry_interval = '50ms'")
	f.exec(conn, "SELECT pg_reload_conf()")
}

// subscriptionIn is ReJot's record of the subscription in one database.
func subscriptionIn(ctx context.Context, conn *pgx.Conn) (status string, position *int64, err error) {
	err = conn.QueryRow(ctx, "SELECT status, position FROM _rejot.subscriptions WHERE publication = $1", publication).
		Scan(&status, &position)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil, nil
	}
	return status, position, err
}
