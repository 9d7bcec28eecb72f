package capture_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/replicator/capture"
	"github.com/rejot-dev/rejot/replicator/eventlog"
	"github.com/rs/zerolog"
)

// BenchmarkCapture measures capture throughput for a queue of N
// single-row transactions and for one bulk transaction of N rows, against
// a baseline run in the same process on the same WAL: Postgres decoding
// the same changes with pgoutput into a second slot
// (pg_logical_slot_get_binary_changes), which is the floor any capture
// built on logical decoding pays. Run with -benchtime 1x.
//
//	go test ./replicator/capture -run '^$' -bench Capture -benchtime 1x
func BenchmarkCapture(b *testing.B) {
	for _, mode := range []struct {
		name string
		load func(ctx context.Context, c *pgx.Conn, n int) error
	}{
		{"queued_single_row_txns", func(ctx context.Context, c *pgx.Conn, n int) error {
			for i := range n {
				if _, err := c.Exec(ctx, "INSERT INTO bench VALUES ($1, 'row', $1)", i); err != nil {
					return err
				}
			}
			return nil
		}},
		{"one_bulk_txn", func(ctx context.Context, c *pgx.Conn, n int) error {
			_, err := c.Exec(ctx, "INSERT INTO bench SELECT g, 'row', g FROM generate_series(0, $1 - 1) g", n)
			return err
		}},
	} {
		b.Run(mode.name, func(b *testing.B) {
			for range b.N {
				benchCapture(b, mode.load, 20000)
			}
		})
	}
}

func benchCapture(b *testing.B, load func(context.Context, *pgx.Conn, int) error, n int) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	l, _ := open(b)
	srcDB := pg.CreateDB(b)
	owner := pg.Connect(b, srcDB)
	if _, err := owner.Exec(ctx, "CREATE TABLE bench (id int PRIMARY KEY, v text, n int)"); err != nil {
		b.Fatal(err)
	}
	system := "bench_" + srcDB
	baseline := "baseline_" + srcDB
	defer owner.Exec(context.Background(), "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name IN ($1, $2)",
		capture.SlotName(system), baseline)
	stream := eventlog.Version{Publication: "bench", Number: 1}
	src := source(b, stream, "SELECT id, v, n FROM bench WHERE n >= 0", "id")
	// Create the capture's slot and publication, then stop it: the load
	// queues up while nothing reads it.
	pub := &capture.WALReader{URL: pg.URL(srcDB), System: system, Log: l, Logger: zerolog.Nop(), Sources: []capture.Source{src}}
	stopFirst := startPublisher(b, ctx, pub, owner)
	stopFirst()
	if _, err := owner.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", baseline); err != nil {
		b.Fatal(err)
	}
	// Logical decoding reads WAL only up to the flushed position, and the
	// test cluster runs with synchronous_commit = off: a commit record still
	// in the WAL buffers hides its whole transaction (for one bulk
	// transaction, every row) from the baseline, and would charge the
	// capture the WAL writer's delay. Flush each commit of the load.
	if _, err := owner.Exec(ctx, "SET synchronous_commit = on"); err != nil {
		b.Fatal(err)
	}
	if err := load(ctx, owner, n); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	var changes int
	err := owner.QueryRow(ctx, `SELECT count(*) FROM pg_logical_slot_get_binary_changes($1, NULL, NULL,
		'proto_version', '1', 'publication_names', $2)`, baseline, capture.SlotName(system)).Scan(&changes)
	if err != nil {
		b.Fatal(err)
	}
	decode := time.Since(start)
	if changes < n { // at least one Insert message per row
		b.Fatalf("baseline decoded %d messages for %d rows", changes, n)
	}
	start = time.Now()
	stop := startPublisher(b, ctx, pub, owner)
	defer stop()
	for {
		_, head := state(b, l, stream)
		if head >= int64(n+1) { // the first state's truncate, then n rows
			break
		}
		if ctx.Err() != nil {
			b.Fatalf("captured %d of %d", head, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	capture := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(n)/capture.Seconds(), "rows/s")
	b.ReportMetric(float64(n)/decode.Seconds(), "baseline_rows/s")
	b.ReportMetric(decode.Seconds()/capture.Seconds(), "ratio_vs_baseline")
	b.Logf("%d rows: capture %v (%.0f rows/s), pgoutput decode alone %v (%.0f rows/s, %d messages)",
		n, capture.Round(time.Millisecond), float64(n)/capture.Seconds(), decode.Round(time.Millisecond), float64(n)/decode.Seconds(), changes)
}
