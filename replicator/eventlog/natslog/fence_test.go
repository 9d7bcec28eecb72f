package natslog

import (
	"bytes"
	"context"
	"sync"
	"testing"

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
