package pglog

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// TestOverlappingAppendsOfOneSystem: two processes append the same
// system's transactions at once (an instance that lost the lease still
// finishing a batch while the new active one streams them again). Neither
// has seen the other's append when it checks for replays; the one that
// commits second is refused, and the log holds each transaction once.
// Without the fence in recordAppended, both commit and the transaction is
// in the log twice.
func TestOverlappingAppendsOfOneSystem(t *testing.T) {
	a, db := open(t)
	ctx := context.Background()
	if _, err := a.Append(ctx, []eventlog.Group{group(100, upsert("1", v("a")))}); err != nil {
		t.Fatal(err)
	}
	b, err := Open(ctx, pg.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	// b learns where the system is, as a process taking over does.
	if n, err := b.Append(ctx, []eventlog.Group{group(100, upsert("1", v("a")))}); err != nil || n != 0 {
		t.Fatalf("b replay: %d, %v", n, err)
	}
	// a (the old holder) appends 200 and holds its transaction open.
	tx, err := a.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Append(ctx, []eventlog.Group{group(200, upsert("2", v("b")))}); err != nil {
		t.Fatal(err)
	}
	// b (the new holder) appends 200 and 300: its check sees 100 as the
	// last; it waits on a's lock.
	done := make(chan error, 1)
	go func() {
		_, err := b.Append(ctx, []eventlog.Group{group(200, upsert("2", v("b"))), group(300, upsert("3", v("c")))})
		done <- err
	}()
	time.Sleep(200 * time.Millisecond) // b is blocked (or not started: either way a commits first)
	if _, err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrConcurrentAppend) {
		t.Fatalf("the overlapping append: %v, want ErrConcurrentAppend", err)
	}
	// Tried again (from the slot), b skips what a appended.
	if n, err := b.Append(ctx, []eventlog.Group{group(200, upsert("2", v("b"))), group(300, upsert("3", v("c")))}); err != nil || n != 1 {
		t.Fatalf("b again: %d, %v", n, err)
	}
	recs, err := b.Changes(ctx, orders, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var lsns []uint64
	for _, r := range recs {
		lsns = append(lsns, r.CommitLSN)
	}
	if len(lsns) != 3 || lsns[0] != 100 || lsns[1] != 200 || lsns[2] != 300 {
		t.Fatalf("the log holds commit LSNs %v, want [100 200 300]", lsns)
	}
}
