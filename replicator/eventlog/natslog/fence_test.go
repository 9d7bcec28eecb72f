package natslog

import (
	"bytes"
	"context"
	"errors"
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

// pairs is the layout of the first states below: a key and a value.
var pairs = eventlog.Layout{Columns: 2, Key: []int{0}}

// pairsGroup is a group of v at lsn whose rows are keys 0 to n-1, each
// with value; a first state (a truncate before them) when first is set.
func pairsGroup(v eventlog.Version, lsn uint64, value string, n int, first bool) eventlog.Group {
	text := func(s string) eventlog.Value { return &s }
	g := eventlog.Group{Version: v, System: "shop", CommitLSN: lsn, Layout: pairs}
	if first {
		g.Changes = append(g.Changes, eventlog.Change{Op: eventlog.OpTruncate})
	}
	for i := range n {
		k := fmt.Sprint(i)
		g.Changes = append(g.Changes, eventlog.Change{Op: eventlog.OpUpsert, Key: []eventlog.Value{text(k)}, Row: []eventlog.Value{text(k), text(value)}})
	}
	return g
}

// startFirstState begins an append on l that fills v with a first state
// of n rows, and leaves it to the caller to commit.
func startFirstState(ctx context.Context, t *testing.T, l *Log, v eventlog.Version, lsn uint64, value string, n int) eventlog.Tx {
	t.Helper()
	tx, err := l.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Fill(ctx, pairsGroup(v, lsn, value, n, true)); err != nil {
		t.Fatal(err)
	}
	return tx
}

// copyLines copies v's state with a new instance and returns its COPY
// text.
func copyLines(ctx context.Context, t *testing.T, l *Log, v eventlog.Version) string {
	t.Helper()
	var buf bytes.Buffer
	if _, err := l.CopyState(ctx, v, []int{0, 1}, &buf); err != nil {
		t.Fatalf("copy of %s version %d: %v", v.Publication, v.Number, err)
	}
	return buf.String()
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
	// A first append, so both instances know the version at the same place.
	if _, err := eventlog.Append(ctx, winner, []eventlog.Group{pairsGroup(v, 10, "first", 1, false)}); err != nil {
		t.Fatal(err)
	}
	w := startFirstState(ctx, t, winner, v, 20, "winner", 100)
	l := startFirstState(ctx, t, loser, v, 30, "loser", 100) // starts its generation after the winner's
	if _, err := w.Commit(ctx); err != nil {
		t.Fatalf("the winner's first state: %v", err)
	}
	if _, err := l.Commit(ctx); err == nil {
		t.Fatal("the loser's first state committed over the winner's")
	}
	l.Rollback(ctx)

	rows := strings.Split(strings.TrimSuffix(copyLines(ctx, t, open(), v), "\n"), "\n")
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
	if _, err := startFirstState(ctx, t, first, v, 10, "first", 100).Commit(ctx); err != nil {
		t.Fatal(err)
	}
	marker, err := first.last(ctx, v)
	if err != nil {
		t.Fatal(err)
	}
	later := startFirstState(ctx, t, open(), v, 20, "later", 100) // reads the first's marker
	// The first's cleanup, late: after the later first state started.
	first.dropStates(ctx, v, 1, marker.gen, marker.seq)
	if _, err := later.Commit(ctx); err != nil {
		t.Fatalf("the later first state: %v", err)
	}
	rows := strings.Split(strings.TrimSuffix(copyLines(ctx, t, open(), v), "\n"), "\n")
	if len(rows) != 100 {
		t.Fatalf("the copy holds %d rows, want the later first state's 100", len(rows))
	}
	for _, r := range rows {
		if !strings.HasSuffix(r, "\tlater") {
			t.Fatalf("the copy holds %q, want the later first state's rows", r)
		}
	}
}

// TestCommittedFirstStateKept: one append fills two versions; the first's
// marker commits, the second's is refused (another instance appended to
// it meanwhile). The append fails, but the first version's first state is
// its state now: abandoning the append must not drop its stream.
func TestCommittedFirstStateKept(t *testing.T) {
	c := natstest.Run(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	open := opener(t, c)
	a, b := open(), open()
	v1 := eventlog.Version{Publication: "orders", Number: 1}
	v2 := eventlog.Version{Publication: "items", Number: 1}
	tx := startFirstState(ctx, t, a, v1, 20, "filled", 10)
	if err := tx.Fill(ctx, pairsGroup(v2, 20, "filled", 10, true)); err != nil {
		t.Fatal(err)
	}
	if _, err := eventlog.Append(ctx, b, []eventlog.Group{pairsGroup(v2, 30, "other", 10, false)}); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Commit(ctx); err == nil {
		t.Fatal("the append committed over another instance's")
	}
	tx.Rollback(ctx)
	if got := copyLines(ctx, t, open(), v1); strings.Count(got, "\tfilled\n") != 10 {
		t.Fatalf("the copy holds %q, want the first state's 10 rows", got)
	}
}

// TestFirstStateDrawsAgain: a first state whose generation was drawn by
// another one already (once in 2^30) draws again, and never writes or
// deletes the other's stream.
func TestFirstStateDrawsAgain(t *testing.T) {
	c := natstest.Run(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	draws := []int{5, 5, 7}
	was := nextGen
	nextGen = func(int) int { n := draws[0]; draws = draws[1:]; return n }
	defer func() { nextGen = was }()
	open := opener(t, c)
	v := eventlog.Version{Publication: "orders", Number: 1}
	first := startFirstState(ctx, t, open(), v, 10, "first", 10)   // generation 5
	second := startFirstState(ctx, t, open(), v, 20, "second", 10) // 5 is taken: 7
	if _, err := first.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := second.Commit(ctx); err == nil {
		t.Fatal("the second first state committed over the first")
	}
	second.Rollback(ctx)
	if got := copyLines(ctx, t, open(), v); strings.Count(got, "\tfirst\n") != 10 || strings.Count(got, "\n") != 10 {
		t.Fatalf("the copy holds %q, want the first's 10 rows", got)
	}
}

// TestGoneStateNotRemade: a compaction whose version's state stream is
// gone (deleted outside ReJot) fails, and does not make it again empty,
// which would hide that the state is lost.
func TestGoneStateNotRemade(t *testing.T) {
	c := natstest.Run(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	open := opener(t, c)
	l := open()
	v := eventlog.Version{Publication: "orders", Number: 1}
	if _, err := startFirstState(ctx, t, l, v, 10, "v", 1).Commit(ctx); err != nil {
		t.Fatal(err)
	}
	last, err := l.last(ctx, v)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.js.DeleteStream(ctx, stateStream(v, last.gen)); err != nil {
		t.Fatal(err)
	}
	other := open()
	if _, err := eventlog.Append(ctx, other, []eventlog.Group{pairsGroup(v, 20, "w", 1, false)}); err != nil {
		t.Fatal(err)
	}
	if _, err := other.compact(ctx, v); err == nil || !strings.Contains(err.Error(), "is gone") {
		t.Fatalf("compaction of a version whose state is gone: %v", err)
	}
	if _, err := l.js.Stream(ctx, stateStream(v, last.gen)); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatalf("the state stream was made again: %v", err)
	}
}
