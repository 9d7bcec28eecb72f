package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/internal/natstest"
	"github.com/rejot-dev/rejot/internal/pgtest"
	"github.com/rejot-dev/rejot/replicator/eventlog"
	"github.com/rejot-dev/rejot/replicator/eventlog/natslog"
)

// env is one run's world: the owner's cluster (source table, ReJot's
// catalog and event log), the consumer's cluster (ReJot's target database
// and the native subscription's), and a sidecar in front of each side.
type env struct {
	b                   *testing.B
	ctx                 context.Context
	cfg                 config
	dir                 string
	owner, consumer     *pgtest.Cluster
	ownerSC, consumerSC *sidecar
	subscriberSCs       []*sidecar // more subscribers' sidecars (BenchmarkFanOut)
	src                 *pgx.Conn  // the owner's database, direct
	log                 *pgx.Conn  // the event log (or, with BENCH_EVENT_LOG=nats, the catalog), direct
	natsLog             *natslog.Log
	rejot               *pgx.Conn // ReJot's target database, direct
	native              *pgx.Conn // the native subscription's database, direct
	nativeTouched       time.Time // when the native subscription was last created, enabled or disabled
	cpuLog              []cpuRecord
	stats               map[string]*pgx.Conn // pg_stat_statements per side, when asked for
}

func newEnv(b *testing.B, ctx context.Context, cfg config) *env {
	e := &env{b: b, ctx: ctx, cfg: cfg}
	dir, err := os.MkdirTemp("", "rejot-bench-")
	if err != nil {
		b.Fatal(err)
	}
	e.dir = dir
	b.Cleanup(func() {
		if b.Failed() || cfg.keep {
			progress("kept the work dir (sidecar logs): %s", dir)
			return
		}
		os.RemoveAll(dir)
	})
	bin, err := buildRejot(dir)
	if err != nil {
		b.Fatal(err)
	}
	e.owner, e.consumer = startClusters(b, cfg.statements)
	e.openStatements()
	e.must(e.owner.Exec(ctx, "postgres", "CREATE DATABASE "+sourceDB))
	// The catalog and event log live on the owner's cluster (as by
	// default, the catalog on the upstream's server), or on the
	// consumer's with BENCH_LOG_CLUSTER=consumer.
	logCluster := e.owner
	if cfg.logOnConsumer {
		logCluster = e.consumer
	}
	e.must(logCluster.Exec(ctx, "postgres", "CREATE DATABASE "+logDB))
	e.must(e.consumer.Exec(ctx, "postgres", "CREATE DATABASE "+consumerDB))
	e.must(e.consumer.Exec(ctx, "postgres", "CREATE DATABASE "+nativeDB))
	e.src = connect(b, e.owner.URL(sourceDB))
	e.log = connect(b, logCluster.URL(logDB))
	e.rejot = connect(b, e.consumer.URL(consumerDB))
	e.native = connect(b, e.consumer.URL(nativeDB))
	e.loadSource()
	catalogURL, logURL := logCluster.URL(logDB), ""
	if cfg.natsLog {
		js, err := natstest.Start(3, filepath.Join(dir, "nats"))
		e.must(err)
		b.Cleanup(js.Shutdown)
		logURL = js.URL()
		e.natsLog, err = natslog.Open(ctx, logURL)
		e.must(err)
		b.Cleanup(e.natsLog.Close)
		progress("event log: a three-node JetStream cluster, in-process")
	}
	e.ownerSC, err = newSidecar(bin, dir, cfg.profileDir, "owner", e.owner.URL(sourceDB), catalogURL)
	e.must(err)
	e.consumerSC, err = newSidecar(bin, dir, cfg.profileDir, "consumer", e.consumer.URL(consumerDB), catalogURL)
	e.must(err)
	e.ownerSC.log, e.consumerSC.log = logURL, logURL
	b.Cleanup(e.ownerSC.stop)
	b.Cleanup(e.consumerSC.stop)
	// One after the other: the first one migrates the catalog and the log.
	for _, s := range []*sidecar{e.ownerSC, e.consumerSC} {
		e.must(s.start())
		e.must(s.ready(ctx))
	}
	return e
}

// loadSource makes pgbench_accounts as `pgbench -i` does (same columns,
// fillfactor, key), with N rows, and the native target's empty copy.
func (e *env) loadSource() {
	start := time.Now()
	for _, q := range []string{
		"CREATE TABLE pgbench_accounts (aid int NOT NULL, bid int, abalance int, filler char(84)) WITH (fillfactor = 100)",
		fmt.Sprintf("INSERT INTO pgbench_accounts SELECT g, (g - 1) / 100000 + 1, 0, '' FROM generate_series(1, %d) g", e.cfg.rows),
		"ALTER TABLE pgbench_accounts ADD PRIMARY KEY (aid)",
		// Hint bits and statistics now, so neither side pays for them
		// while it is measured.
		"VACUUM (ANALYZE) pgbench_accounts",
		"CREATE PUBLICATION " + nativeName + " FOR TABLE pgbench_accounts",
	} {
		e.exec(e.src, q)
	}
	e.exec(e.native, "CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84))")
	progress("source: %d rows of pgbench_accounts in %v", e.cfg.rows, time.Since(start).Round(time.Millisecond))
}

func (e *env) must(err error) {
	e.b.Helper()
	if err != nil {
		e.b.Fatal(err)
	}
}

func (e *env) exec(conn *pgx.Conn, sql string, args ...any) {
	e.b.Helper()
	if _, err := conn.Exec(e.ctx, sql, args...); err != nil {
		e.b.Fatalf("%s: %v", sql, err)
	}
}

// checkpoint writes out both clusters' dirty buffers, so that a phase does
// not pay for the one before it.
func (e *env) checkpoint() {
	e.exec(e.src, "CHECKPOINT")
	e.exec(e.rejot, "CHECKPOINT")
}

// waitFor polls cond every interval until it holds, and fails the
// benchmark with diag's output when it does not within d.
func (e *env) waitFor(what string, d, interval time.Duration, cond func() (bool, error), diag func() string) {
	e.b.Helper()
	deadline := time.Now().Add(d)
	var last error
	for {
		ok, err := cond()
		if ok {
			return
		}
		if err != nil {
			last = err
		}
		if time.Now().After(deadline) || e.ctx.Err() != nil {
			e.b.Fatalf("%s: not reached within %v (last error: %v)\n%s", what, d, last, diag())
		}
		time.Sleep(interval)
	}
}

// head is the event log's last position for the publication (0 before
// its first fill).
func (e *env) head() (int64, error) {
	if e.natsLog != nil {
		return e.natsLog.Head(e.ctx, eventlog.Version{Publication: publication, Number: 1})
	}
	var head int64
	err := e.log.QueryRow(e.ctx, "SELECT head FROM rejot_log.streams WHERE publication = $1 AND version = 1", publication).Scan(&head)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	return head, err
}

// subscription is ReJot's record of the subscription in the consumer's
// database.
func (e *env) subscription() (status string, position *int64, err error) {
	err = e.rejot.QueryRow(e.ctx, "SELECT status, position FROM _rejot.subscriptions WHERE publication = $1", publication).
		Scan(&status, &position)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil, nil
	}
	return status, position, err
}

// caughtUp says whether ReJot's target has applied the log up to its head,
// and the head is at least want.
func (e *env) caughtUp(want int64) (bool, error) {
	head, err := e.head()
	if err != nil {
		return false, err
	}
	status, position, err := e.subscription()
	if err != nil {
		return false, err
	}
	return status == "streaming" && position != nil && *position == head && head >= want, nil
}

// rejotDiag describes ReJot's state for a failure message.
func (e *env) rejotDiag() string {
	head, herr := e.head()
	status, position, serr := e.subscription()
	var errMsg *string
	e.rejot.QueryRow(e.ctx, "SELECT error FROM _rejot.subscriptions WHERE publication = $1", publication).Scan(&errMsg)
	pos := "NULL"
	if position != nil {
		pos = fmt.Sprint(*position)
	}
	msg := ""
	if errMsg != nil {
		msg = *errMsg
	}
	return fmt.Sprintf("log head %d (%v); subscription status %q position %s (%v) error %q\nowner sidecar log (%s):\n%s\nconsumer sidecar log (%s):\n%s",
		head, herr, status, pos, serr, msg, e.ownerSC.logPath, tail(e.ownerSC.logPath, 40), e.consumerSC.logPath, tail(e.consumerSC.logPath, 40))
}

// nativeDiag describes the native subscription's state for a failure
// message.
func (e *env) nativeDiag() string {
	var states, workers string
	e.native.QueryRow(e.ctx, "SELECT coalesce(string_agg(srrelid::regclass || '=' || srsubstate, ', '), '') FROM pg_subscription_rel").Scan(&states)
	e.native.QueryRow(e.ctx, "SELECT coalesce(string_agg(format('%s pid %s received %s', subname, pid, received_lsn), ', '), '') FROM pg_stat_subscription").Scan(&workers)
	return fmt.Sprintf("tables: %s; workers: %s\nconsumer cluster log:\n%s", states, workers, lastLines(e.consumer.Log(), 30))
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
