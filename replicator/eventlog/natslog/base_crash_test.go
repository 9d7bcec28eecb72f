package natslog

import (
	"context"
	"errors"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rejot-dev/rejot/internal/natstest"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// opener opens logs on a cluster, each closed when the test ends.
func opener(t testing.TB, c *natstest.Cluster) func() *Log {
	return func() *Log {
		l, err := Open(context.Background(), c.URL())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(l.Close)
		return l
	}
}

// TestBaseWritesWithoutMarker: an append that wrote its base rows but
// died before its marker leaves the base as it was: reads meet its rows
// as a concurrent append, and the next append that learns the version
// (a restarted capture) voids and drops them, so the committed rows and
// base position read again and later appends go on from them.
func TestBaseWritesWithoutMarker(t *testing.T) {
	c := natstest.Run(t, 1)
	ctx := context.Background()
	open := opener(t, c)
	v := eventlog.Version{Publication: "orders", Number: 1}
	val := func(s string) eventlog.Value { return &s }
	key := func(s string) string { return eventlog.KeyString([]eventlog.Value{val(s)}) }
	row := func(k, ref, name string) eventlog.BaseRow {
		return eventlog.BaseRow{Table: 0, Key: key(k), Row: []eventlog.Value{val(k), val(name)}, Refs: map[int]string{1: key(ref)}}
	}
	put := func(l *Log, lsn uint64, rows ...eventlog.BaseRow) *Tx {
		tx, err := l.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.PutBase(ctx, v, "shop", lsn, rows); err != nil {
			t.Fatal(err)
		}
		return tx.(*Tx)
	}
	l := open()
	if _, err := put(l, 100, row("o1", "c1", "a"), row("o2", "c1", "b")).Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// The crash: base rows written, no marker.
	tx := put(l, 200, row("o1", "c2", "moved"), eventlog.BaseRow{Table: 0, Key: key("o2")})
	if err := tx.versions[v].writeBase(ctx, tx); err != nil {
		t.Fatal(err)
	}
	tx2, _ := l.Begin(ctx)
	if _, err := tx2.Base(ctx, v, 0, []string{key("o1")}); !errors.Is(err, eventlog.ErrConcurrentAppend) {
		t.Fatalf("a read meeting unfinished base writes: %v, want ErrConcurrentAppend", err)
	}
	tx2.Rollback(ctx)

	l = open() // the capture starts again
	if at, ok, err := l.BaseAt(ctx, v, "shop"); err != nil || !ok || at != 100 {
		t.Fatalf("base position %d %v %v, want 100", at, ok, err)
	}
	tx3, err := l.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := tx3.Base(ctx, v, 0, []string{key("o1"), key("o2")})
	if err != nil || len(rows) != 2 || *rows[key("o1")][1] != "a" {
		t.Fatalf("base rows after the crash: %v, %v", rows, err)
	}
	refs, _, err := tx3.Referrers(ctx, v, 0, 1, []string{key("c1")}, "", 10)
	if err != nil || len(refs) != 2 {
		t.Fatalf("rows meeting c1 after the crash: %v, %v", refs, err)
	}
	if refs, _, err := tx3.Referrers(ctx, v, 0, 1, []string{key("c2")}, "", 10); err != nil || len(refs) != 0 {
		t.Fatalf("rows meeting c2 after the crash: %v, %v", refs, err)
	}
	// The replay from the slot writes them again, and commits.
	if err := tx3.PutBase(ctx, v, "shop", 200, []eventlog.BaseRow{row("o1", "c2", "moved"), {Table: 0, Key: key("o2")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := tx3.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	tx4 := put(open(), 300)
	defer tx4.Rollback(ctx)
	if refs, _, err := tx4.Referrers(ctx, v, 0, 1, []string{key("c1"), key("c2")}, "", 10); err != nil || len(refs) != 1 || refs[0] != key("o1") {
		t.Fatalf("rows meeting c1 or c2 after the replay: %v, %v", refs, err)
	}
	if at, _, _ := tx4.log.BaseAt(ctx, v, "shop"); at != 200 {
		t.Fatalf("base position %d after the replay, want 200", at)
	}
}

// TestBaseWithoutStamp: a base stream whose committed part has no stamp
// (written before stamps were) gets one when an append learns the
// version, so that its batched reads can tell a replica behind; its rows
// and base position read as they were.
func TestBaseWithoutStamp(t *testing.T) {
	c := natstest.Run(t, 3)
	ctx := context.Background()
	open := opener(t, c)
	v := eventlog.Version{Publication: "orders", Number: 1}
	val := func(s string) eventlog.Value { return &s }
	key := eventlog.KeyString([]eventlog.Value{val("o1")})
	l := open()
	tx, _ := l.Begin(ctx)
	if err := tx.PutBase(ctx, v, "shop", 100, []eventlog.BaseRow{{Table: 0, Key: key, Row: []eventlog.Value{val("o1"), val("a")}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// As an earlier build left it: no stamp.
	bs, err := l.js.Stream(ctx, baseStream(v))
	if err != nil {
		t.Fatal(err)
	}
	if err := bs.Purge(ctx, jetstream.WithPurgeSubject(stampSubject(v))); err != nil {
		t.Fatal(err)
	}
	if ok, err := l.stamped(ctx, v); err != nil || ok {
		t.Fatalf("stamped %v %v after the purge", ok, err)
	}
	l = open()
	tx2, _ := l.Begin(ctx)
	defer tx2.Rollback(ctx)
	rows, err := tx2.Base(ctx, v, 0, []string{key})
	if err != nil || len(rows) != 1 || *rows[key][1] != "a" {
		t.Fatalf("base rows of an unstamped stream: %v, %v", rows, err)
	}
	if ok, err := l.stamped(ctx, v); err != nil || !ok {
		t.Fatalf("stamped %v %v after an append learned the version", ok, err)
	}
	if at, ok, err := l.BaseAt(ctx, v, "shop"); err != nil || !ok || at != 100 {
		t.Fatalf("base position %d %v %v, want 100", at, ok, err)
	}
}
