package capture_test

import (
	"context"
	"testing"
	"time"

	"github.com/rejot-dev/rejot/replicator/capture"
	"github.com/rejot-dev/rejot/replicator/eventlog"
	"github.com/rs/zerolog"
)

// TestJoinReplaySkipsAppliedTransactions: a capture that dies after its
// appends committed but before the slot heard of them gets the same
// transactions again, and the version stays exact. The case is one where
// applying them again to the base state is not harmless: a customer
// inserted (no order meets it yet: no group), an order moved to it, the
// customer deleted — the insert replayed over the later base state
// recomputes the order with the deleted customer's name. The capture
// skips what the base state has (Writer.BaseAt); the Postgres log also
// refuses a group older than the system's last, so this holds on it
// either way — an engine that de-duplicates by identity alone relies on
// the skip.
func TestJoinReplaySkipsAppliedTransactions(t *testing.T) {
	l, _, srcDB, owner, ctx := ownerAndLog(t)
	exec := func(q string) {
		t.Helper()
		if _, err := owner.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	exec("CREATE TABLE customers (id int PRIMARY KEY, name text); CREATE TABLE orders (id int PRIMARY KEY, cid int)")
	exec("INSERT INTO orders VALUES (1, NULL)")
	exec("SET synchronous_commit = on")
	stream := eventlog.Version{Publication: "lines", Number: 1}
	src, err := capture.NewSource(stream, "SELECT o.id, c.name FROM public.orders o LEFT JOIN public.customers c ON c.id = o.cid",
		[]string{"id"}, "public", "orders")
	if err != nil {
		t.Fatal(err)
	}
	system := "replay_" + srcDB
	slot := capture.SlotName(system)
	t.Cleanup(func() {
		owner.Exec(context.Background(), "SELECT pg_drop_replication_slot($1) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active", slot)
	})
	run := func(interval time.Duration) (stop func()) {
		pub := &capture.WALReader{URL: pg.URL(srcDB), System: system, Log: l, Logger: zerolog.Nop(), StatusInterval: interval,
			Sources: []capture.Source{src}}
		runCtx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- pub.Run(runCtx) }() // its error, if any, is the walsender's end below
		return func() { cancel(); <-done }
	}
	stop := run(time.Hour) // tells the slot nothing until it stops
	waitUntil(t, func() bool { _, head := state(t, l, stream); return head == 2 })
	exec("INSERT INTO customers VALUES (3, 'c3')") // no order meets it: no group
	exec("UPDATE orders SET cid = 3 WHERE id = 1") // the order meets c3
	exec("DELETE FROM customers WHERE id = 3")     // and no customer again
	waitUntil(t, func() bool { _, head := state(t, l, stream); return head == 4 })
	var behind bool
	err = owner.QueryRow(ctx, `SELECT pg_terminate_backend(active_pid) AND confirmed_flush_lsn < pg_current_wal_lsn()
		FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&behind)
	if err != nil || !behind {
		t.Fatalf("the slot was confirmed past the transactions before the capture ended (%v): nothing to replay", err)
	}
	stop()
	stop = run(100 * time.Millisecond)
	defer stop()
	var upto string
	if err := owner.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&upto); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, func() bool {
		var done bool
		owner.QueryRow(ctx, "SELECT confirmed_flush_lsn >= $2::pg_lsn FROM pg_replication_slots WHERE slot_name = $1", slot, upto).Scan(&done)
		return done
	})
	if rows, head := state(t, l, stream); rows != `"1",NULL` || head != 4 {
		t.Fatalf("after the replay: %s at %d, want \"1\",NULL at 4", rows, head)
	}
}
