package capture_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/internal/natstest"
	"github.com/rejot-dev/rejot/replicator/capture"
	"github.com/rejot-dev/rejot/replicator/eventlog"
	"github.com/rejot-dev/rejot/replicator/eventlog/natslog"
	"github.com/rs/zerolog"
)

const benchJoinQuery = "SELECT o.id, o.v, c.name AS customer FROM public.bench o JOIN public.bench_customers c ON c.id = o.customer_id"

// BenchmarkJoinCapture measures what a join version costs the capture,
// each case against the same run's reference:
//
//   - per_change: a queue of single-row transactions, each inserting a
//     root row, captured for a version of the root table alone and for a
//     join version of it with a joined table; µs per source change and
//     the ratio, join over single;
//
//   - per_joined_change: a queue of single-row transactions, each
//     renaming a customer that has one order; µs per source change;
//
//   - fanout_N: one joined row (a customer) changed, N root rows (its
//     orders) recomputed and appended in one group, for N = 1, 100, 10k.
//
//     go test ./replicator/capture -run '^$' -bench JoinCapture -benchtime 1x
func BenchmarkJoinCapture(b *testing.B) {
	b.Run("per_change", func(b *testing.B) {
		for range b.N {
			const n = 5000
			single := benchJoinRun(b, "SELECT id, v, customer_id FROM public.bench", n)
			join := benchJoinRun(b, benchJoinQuery, n)
			b.ReportMetric(float64(single.Microseconds())/n, "single_µs/change")
			b.ReportMetric(float64(join.Microseconds())/n, "join_µs/change")
			b.ReportMetric(join.Seconds()/single.Seconds(), "ratio_join_vs_single")
			b.Logf("%d single-row transactions: one table %v (%.0f µs/change), join %v (%.0f µs/change), ratio %.2f",
				n, single.Round(time.Millisecond), float64(single.Microseconds())/n, join.Round(time.Millisecond),
				float64(join.Microseconds())/n, join.Seconds()/single.Seconds())
		}
	})
	b.Run("per_joined_change", func(b *testing.B) {
		for range b.N {
			const n = 2000
			took := benchJoinedRun(b, openPG, n)
			b.ReportMetric(float64(took.Microseconds())/n, "µs/change")
			b.Logf("%d single-row transactions renaming a customer (one order each): %v (%.0f µs/change)",
				n, took.Round(time.Millisecond), float64(took.Microseconds())/n)
		}
	})
	// The same on the NATS JetStream log (three nodes in-process, on the
	// same cores): its base reads and writes are requests to the cluster.
	b.Run("per_joined_change_nats", func(b *testing.B) {
		for range b.N {
			const n = 2000
			took := benchJoinedRun(b, openNATS, n)
			b.ReportMetric(float64(took.Microseconds())/n, "µs/change")
			b.Logf("%d single-row transactions renaming a customer (one order each), NATS log: %v (%.0f µs/change)",
				n, took.Round(time.Millisecond), float64(took.Microseconds())/n)
		}
	})
	for _, n := range []int{1, 100, 10000} {
		b.Run(fmt.Sprintf("fanout_%d", n), func(b *testing.B) {
			for range b.N {
				took := benchFanout(b, n)
				b.ReportMetric(float64(took.Microseconds())/1000, "ms")
				b.ReportMetric(float64(took.Microseconds())/float64(n), "µs/row")
				b.Logf("one customer changed, %d orders recomputed: %v (%.1f µs per row)", n, took.Round(time.Millisecond), float64(took.Microseconds())/float64(n))
			}
		})
	}
}

// openPG and openNATS open an event log of each engine for a benchmark.
func openPG(b *testing.B) eventlog.Log {
	l, _ := open(b)
	return l
}

func openNATS(b *testing.B) eventlog.Log {
	c := natstest.Run(b, 3)
	l, err := natslog.Open(context.Background(), c.URL())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(l.Close)
	return l
}

// benchJoinSetup makes the owner's tables and a capture of query.
func benchJoinSetup(b *testing.B, ctx context.Context, query string, customers int) (*capture.WALReader, *pgx.Conn, func() int64) {
	return benchJoinSetupOn(b, ctx, openPG, query, customers)
}

func benchJoinSetupOn(b *testing.B, ctx context.Context, openLog func(*testing.B) eventlog.Log, query string, customers int) (*capture.WALReader, *pgx.Conn, func() int64) {
	l := openLog(b)
	srcDB := pg.CreateDB(b)
	owner := pg.Connect(b, srcDB)
	_, err := owner.Exec(ctx, fmt.Sprintf(`CREATE TABLE bench_customers (id int PRIMARY KEY, name text NOT NULL);
		CREATE TABLE bench (id int PRIMARY KEY, v text, customer_id int);
		INSERT INTO bench_customers SELECT g, 'c' || g FROM generate_series(1, %d) g`, customers))
	if err != nil {
		b.Fatal(err)
	}
	system := "bench_" + srcDB
	b.Cleanup(func() {
		owner.Exec(context.Background(), "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", capture.SlotName(system))
	})
	stream := eventlog.Version{Publication: "bench", Number: 1}
	src, err := capture.NewSource(stream, query, []string{"id"}, "public", "bench")
	if err != nil {
		b.Fatal(err)
	}
	logger := zerolog.Nop()
	if os.Getenv("BENCH_LOG") != "" {
		logger = zerolog.New(os.Stderr)
	}
	pub := &capture.WALReader{URL: pg.URL(srcDB), System: system, Log: l, Logger: logger, Sources: []capture.Source{src}}
	head := func() int64 {
		h, err := l.Head(ctx, stream)
		if err != nil {
			b.Fatal(err)
		}
		return h
	}
	return pub, owner, head
}

// waitHead waits until the version's log reaches head.
func waitHead(b *testing.B, ctx context.Context, head func() int64, want int64) {
	for head() < want {
		if ctx.Err() != nil {
			b.Fatalf("captured %d of %d", head(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func benchJoinRun(b *testing.B, query string, n int) time.Duration {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	pub, owner, head := benchJoinSetup(b, ctx, query, 100)
	startPublisher(b, ctx, pub, owner)() // the slot and the first state; the load queues up
	if _, err := owner.Exec(ctx, "SET synchronous_commit = on"); err != nil {
		b.Fatal(err)
	}
	for i := range n {
		if _, err := owner.Exec(ctx, "INSERT INTO bench VALUES ($1, 'row', $2)", i, 1+i%100); err != nil {
			b.Fatal(err)
		}
	}
	start := time.Now()
	stop := startPublisher(b, ctx, pub, owner)
	defer stop()
	waitHead(b, ctx, head, int64(n+1)) // the first state's truncate, then a row each
	return time.Since(start)
}

// benchJoinedRun times a queue of n transactions that each change a row
// of the joined table (a customer with one order).
func benchJoinedRun(b *testing.B, openLog func(*testing.B) eventlog.Log, n int) time.Duration {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const customers = 1000
	pub, owner, head := benchJoinSetupOn(b, ctx, openLog, benchJoinQuery, customers)
	if _, err := owner.Exec(ctx, "INSERT INTO bench SELECT g, 'row', g FROM generate_series(1, $1) g", customers); err != nil {
		b.Fatal(err)
	}
	startPublisher(b, ctx, pub, owner)()
	if _, err := owner.Exec(ctx, "SET synchronous_commit = on"); err != nil {
		b.Fatal(err)
	}
	for i := range n {
		if _, err := owner.Exec(ctx, "UPDATE bench_customers SET name = $1 WHERE id = $2", fmt.Sprint("n", i), 1+i%customers); err != nil {
			b.Fatal(err)
		}
	}
	start := time.Now()
	stop := startPublisher(b, ctx, pub, owner)
	defer stop()
	waitHead(b, ctx, head, int64(customers+1+n))
	return time.Since(start)
}

func benchFanout(b *testing.B, n int) time.Duration {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	pub, owner, head := benchJoinSetup(b, ctx, benchJoinQuery, 1)
	if _, err := owner.Exec(ctx, "INSERT INTO bench SELECT g, 'row', 1 FROM generate_series(1, $1) g", n); err != nil {
		b.Fatal(err)
	}
	stop := startPublisher(b, ctx, pub, owner)
	defer stop()
	waitHead(b, ctx, head, int64(n+1)) // the first state
	if _, err := owner.Exec(ctx, "SET synchronous_commit = on"); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	if _, err := owner.Exec(ctx, "UPDATE bench_customers SET name = 'renamed'"); err != nil {
		b.Fatal(err)
	}
	waitHead(b, ctx, head, int64(2*n+1))
	return time.Since(start)
}
