package natslog

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rejot-dev/rejot/internal/natstest"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// TestStaleCompactionFenced: an instance that lost the lease (loser) is
// still compacting what it read before the active instance (winner)
// appended and compacted more. Its writes come after the winner's and
// are refused: the state keeps the winner's row and watermark, it never
// goes back to the loser's older view.
func TestStaleCompactionFenced(t *testing.T) {
	c := natstest.Run(t, 1)
	ctx := context.Background()
	// Put back after the logs closed (their compactors read it).
	t.Cleanup(func() { stateRead = func(*Log) {} })
	open := opener(t, c)
	loser, winner := open(), open()
	reached, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	stateRead = func(l *Log) {
		if l == loser {
			once.Do(func() { close(reached) })
			<-release
		}
	}

	v := eventlog.Version{Publication: "orders", Number: 1}
	val := func(s string) eventlog.Value { return &s }
	put := func(l *Log, lsn uint64, value string) {
		g := eventlog.Group{Version: v, System: "shop", CommitLSN: lsn, Layout: eventlog.Layout{Columns: 2, Key: []int{0}},
			Changes: []eventlog.Change{{Op: eventlog.OpUpsert, Key: []eventlog.Value{val("k")}, Row: []eventlog.Value{val("k"), val(value)}}}}
		if _, err := eventlog.Append(ctx, l, []eventlog.Group{g}); err != nil {
			t.Fatal(err)
		}
	}
	put(loser, 10, "old") // the loser's compaction reads this, then waits
	<-reached
	put(winner, 20, "new")
	if _, err := winner.compact(ctx, v); err != nil {
		t.Fatal(err)
	}
	close(release)
	comp := loser.compactorOf(v) // held by the loser's compaction until it ends
	comp.mu.Lock()
	comp.mu.Unlock()

	ks, err := winner.ensureStateStream(ctx, v, 1)
	if err != nil {
		t.Fatal(err)
	}
	prefix := stateSubjects(v, 1)
	mark, err := watermark(ctx, ks, prefix)
	if err != nil || mark.pos != 2 {
		t.Fatalf("watermark %d (%v), want 2: the loser's compaction moved it back", mark.pos, err)
	}
	m, err := ks.GetLastMsgForSubject(ctx, keyHash(prefix, []eventlog.Value{val("k")}))
	if err != nil {
		t.Fatal(err)
	}
	if row, err := decodeRow(m.Data); err != nil || *row[1] != "new" {
		t.Fatalf("the state's row is %v (%v), want the winner's \"new\"", *row[1], err)
	}
	var buf bytes.Buffer
	if at, err := winner.CopyState(ctx, v, []int{0, 1}, &buf); err != nil || at != 2 || buf.String() != "k\tnew\n" {
		t.Fatalf("copy at %d: %q (%v)", at, buf.String(), err)
	}
}

// TestConcurrentFirstStatesFenced: two instances fill the same version at
// once (the lease moved while the first was filling). The first to commit
// wins; the other's marker is refused, and its rows must not be what a
// copy reads. Before first states had generations of their own, both
// wrote the same stream, and the loser's chunk replaced the winner's: the
// copy returned the loser's rows under the winner's marker.
func TestConcurrentFirstStatesFenced(t *testing.T) {
	c := natstest.Run(t, 1)
	ctx := context.Background()
	open := opener(t, c)
	winner, loser := open(), open()
	v := eventlog.Version{Publication: "orders", Number: 1}
	val := func(s string) eventlog.Value { return &s }
	layout := eventlog.Layout{Columns: 2, Key: []int{0}}
	// A first append, so both instances know the version at the same place.
	if _, err := eventlog.Append(ctx, winner, []eventlog.Group{{Version: v, System: "shop", CommitLSN: 10, Layout: layout,
		Changes: []eventlog.Change{{Op: eventlog.OpUpsert, Key: []eventlog.Value{val("k")}, Row: []eventlog.Value{val("k"), val("first")}}}}}); err != nil {
		t.Fatal(err)
	}
	fill := func(l *Log, lsn uint64, value string) eventlog.Tx {
		tx, err := l.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		g := eventlog.Group{Version: v, System: "shop", CommitLSN: lsn, Layout: layout,
			Changes: []eventlog.Change{{Op: eventlog.OpTruncate}}}
		for i := range 100 {
			k := fmt.Sprint(i)
			g.Changes = append(g.Changes, eventlog.Change{Op: eventlog.OpUpsert, Key: []eventlog.Value{val(k)}, Row: []eventlog.Value{val(k), val(value)}})
		}
		if err := tx.Fill(ctx, g); err != nil {
			t.Fatal(err)
		}
		return tx
	}
	w := fill(winner, 20, "winner")
	l := fill(loser, 30, "loser") // starts its generation after the winner's
	if _, err := w.Commit(ctx); err != nil {
		t.Fatalf("the winner's first state: %v", err)
	}
	if _, err := l.Commit(ctx); err == nil {
		t.Fatal("the loser's first state committed over the winner's")
	}
	l.Rollback(ctx)

	var buf bytes.Buffer
	if _, err := open().CopyState(ctx, v, []int{0, 1}, &buf); err != nil {
		t.Fatal(err)
	}
	rows := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(rows) != 100 {
		t.Fatalf("the copy holds %d rows, want the winner's 100", len(rows))
	}
	for _, r := range rows {
		if !strings.HasSuffix(r, "\twinner") {
			t.Fatalf("the copy holds %q: another instance's first state under the winner's marker", r)
		}
	}
	// Only the current generation's stream is left (the first, the
	// loser's: dropped).
	names := winner.js.StreamNames(ctx, jetstream.WithStreamListSubject("rejot.state."+versionToken(v)+".>"))
	var states []string
	for n := range names.Name() {
		states = append(states, n)
	}
	if len(states) != 1 {
		t.Fatalf("state streams left: %v, want the current one only", states)
	}
}

// TestLaterFirstStateKept: the winner of a first state drops the other
// state streams of its version only if they were started before its
// marker. One started after it (an instance that took the lease since and
// read the marker) may still commit, and must keep its rows even when the
// winner's cleanup comes late (a paused process).
func TestLaterFirstStateKept(t *testing.T) {
	c := natstest.Run(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	open := opener(t, c)
	first := open()
	v := eventlog.Version{Publication: "orders", Number: 1}
	val := func(s string) eventlog.Value { return &s }
	layout := eventlog.Layout{Columns: 2, Key: []int{0}}
	fill := func(l *Log, lsn uint64, value string) eventlog.Tx {
		tx, err := l.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		g := eventlog.Group{Version: v, System: "shop", CommitLSN: lsn, Layout: layout,
			Changes: []eventlog.Change{{Op: eventlog.OpTruncate}}}
		for i := range 100 {
			k := fmt.Sprint(i)
			g.Changes = append(g.Changes, eventlog.Change{Op: eventlog.OpUpsert, Key: []eventlog.Value{val(k)}, Row: []eventlog.Value{val(k), val(value)}})
		}
		if err := tx.Fill(ctx, g); err != nil {
			t.Fatal(err)
		}
		return tx
	}
	if _, err := fill(first, 10, "first").Commit(ctx); err != nil {
		t.Fatal(err)
	}
	marker, err := first.last(ctx, v)
	if err != nil {
		t.Fatal(err)
	}
	later := fill(open(), 20, "later") // reads the first's marker
	// The first's cleanup, late: after the later first state started.
	first.dropStates(ctx, v, 1, marker.gen, marker.seq)
	if _, err := later.Commit(ctx); err != nil {
		t.Fatalf("the later first state: %v", err)
	}
	var buf bytes.Buffer
	if _, err := open().CopyState(ctx, v, []int{0, 1}, &buf); err != nil {
		t.Fatalf("copy after the later first state: %v", err)
	}
	rows := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(rows) != 100 {
		t.Fatalf("the copy holds %d rows, want the later first state's 100", len(rows))
	}
	for _, r := range rows {
		if !strings.HasSuffix(r, "\tlater") {
			t.Fatalf("the copy holds %q, want the later first state's rows", r)
		}
	}
}
