// Package bench measures ReJot's replication end to end against Postgres's
// own logical replication, on the same two throwaway clusters, the same
// data and the same load, in the same run (issue 5). It has no tests, only
// benchmarks (BenchmarkReplication; BenchmarkLogFanOut, the log engines
// alone; BenchmarkFanOut, 1 to 16 subscribers end to end, its own
// BENCH_FANOUT_* variables in subscribers_test.go), so `make test` merely
// compiles it:
//
//	go test ./tests/bench -run '^$' -bench Replication -benchtime 1x -timeout 60m -v
//
// Environment:
//
//	BENCH_ROWS             rows of pgbench_accounts                 (default 1000000)
//	BENCH_TXNS             queued single-row updates for catch-up   (default 100000)
//	BENCH_LATENCY_SECONDS  seconds of steady load for latency       (default 10)
//	BENCH_LATENCY_RATE     updates per second for latency           (default 1000)
//	BENCH_PROFILE_DIR      when set, every sidecar process writes a CPU profile there
//	BENCH_KEEP             when set, keep the work dir (sidecar logs) after a good run
//	BENCH_LOG_LEVEL        the sidecars' --log-level                (default info)
//	BENCH_STATEMENTS       when N > 0, print each cluster's top N statements (pg_stat_statements)
//	                       after every measured interval: a diagnostic, leave it off for figures
//	BENCH_EVENT_LOG        "nats" keeps ReJot's event log in a three-node JetStream cluster
//	                       started in-process (the catalog stays in Postgres)
//	BENCH_LOG_CLUSTER      "consumer" puts ReJot's catalog and event log on the consumer's
//	                       cluster (default: the owner's, as --catalog defaults to)
//	REJOT_BIN              the sidecar binary (default: built from ./cmd/rejot)
//	REJOT_PG_BIN           Postgres server binaries (see tests/pgtest)
package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/internal/pgtest"
)

// Databases and names used by the benchmark.
const (
	sourceDB    = "bench"    // the owner's database, on the owner cluster
	logDB       = "rejot"    // ReJot's catalog and event log, on the owner cluster
	consumerDB  = "consumer" // ReJot's target database, on the consumer cluster
	nativeDB    = "native"   // the native subscription's database, on the consumer cluster
	publication = "accounts"
	target      = "public.accounts"
	nativeName  = "bench_native" // native publication, subscription and slot
)

// clusterSettings apply to both clusters. synchronous_commit is on, as on a
// default server: logical decoding only reads flushed WAL, so with it off
// every change would wait for the WAL writer (up to 200 ms) on both sides.
// fsync stays off (pgtest's default): the disk is not what is measured.
var clusterSettings = map[string]string{
	"shared_buffers":     "256MB",
	"max_wal_size":       "8GB",
	"checkpoint_timeout": "30min",
	"synchronous_commit": "on",
	// Room for BenchmarkFanOut's 16 native subscriptions (a slot, a
	// walsender and an apply worker each) and 17 sidecars.
	"max_connections":                 "400",
	"max_replication_slots":           "40",
	"max_wal_senders":                 "40",
	"max_logical_replication_workers": "40",
	"max_worker_processes":            "64",
}

// config is what the environment asks for.
type config struct {
	rows, txns    int
	latencySecs   int
	latencyRate   int
	profileDir    string
	logOnConsumer bool
	natsLog       bool
	keep          bool
	statements    int             // top statements to print per interval; 0: none
	steps         map[string]bool // BenchmarkFanOut's steps to run (BENCH_FANOUT_STEPS)
}

func readConfig(b *testing.B) config {
	c := config{
		rows:          envInt(b, "BENCH_ROWS", 1_000_000, 1),
		txns:          envInt(b, "BENCH_TXNS", 100_000, 1),
		latencySecs:   envInt(b, "BENCH_LATENCY_SECONDS", 10, 1),
		latencyRate:   envInt(b, "BENCH_LATENCY_RATE", 1000, 1),
		profileDir:    os.Getenv("BENCH_PROFILE_DIR"),
		logOnConsumer: os.Getenv("BENCH_LOG_CLUSTER") == "consumer",
		natsLog:       os.Getenv("BENCH_EVENT_LOG") == "nats",
		keep:          os.Getenv("BENCH_KEEP") != "",
		statements:    envInt(b, "BENCH_STATEMENTS", 0, 0),
	}
	if need := 2 * c.latencySecs * c.latencyRate; need > c.rows {
		b.Fatalf("BENCH_ROWS=%d is too small: the latency runs update %d distinct rows", c.rows, need)
	}
	return c
}

func envInt(b *testing.B, name string, def, least int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < least {
		b.Fatalf("%s=%q: want an integer of at least %d", name, v, least)
	}
	return n
}

// progress prints what the benchmark is doing as it goes: a run takes
// minutes and b.Log only prints at the end.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench %s: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// buildRejot returns the sidecar binary: REJOT_BIN, or one built into dir.
func buildRejot(dir string) (string, error) {
	if bin := os.Getenv("REJOT_BIN"); bin != "" {
		return filepath.Abs(bin)
	}
	bin := filepath.Join(dir, "rejot")
	build := exec.Command("go", "build", "-o", bin, "github.com/rejot-dev/rejot/cmd/rejot")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("build rejot: %w", err)
	}
	return bin, nil
}

// startClusters starts the owner's and the consumer's clusters; both are
// destroyed when the benchmark ends.
func startClusters(b *testing.B, statements int) (owner, consumer *pgtest.Cluster) {
	for _, c := range []**pgtest.Cluster{&owner, &consumer} {
		cl, err := pgtest.Start(pgtest.Options{Settings: withStatements(clusterSettings, statements)})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(cl.Destroy)
		*c = cl
	}
	return owner, consumer
}

// connect opens a connection closed when the benchmark ends.
func connect(b *testing.B, url string) *pgx.Conn {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		b.Fatalf("connect to %s: %v", url, err)
	}
	b.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}
