package apply

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/rejot-dev/rejot/managed"
	"github.com/rejot-dev/rejot/replicator/eventlog"
	"github.com/rejot-dev/rejot/replicator/eventlog/pglog"
)

// TestSpanLimit: a span holds the batch at most, fewer changes for a
// mapped subscription, fewer again when its changes are large, and a
// first span from a position is small.
func TestSpanLimit(t *testing.T) {
	mirror, mapped := &target{}, &target{mapped: &mapped{}}
	wide := strings.Repeat("x", 1<<20)
	recs := func(v string) []eventlog.Entry {
		return []eventlog.Entry{{Change: eventlog.Change{Op: eventlog.OpUpsert, Key: values("1"), Row: values("1", v)}}}
	}
	for _, c := range []struct {
		name  string
		s     *Subscriber
		t     *target
		after []eventlog.Entry
		want  int
	}{
		{"small changes: the batch", &Subscriber{}, mirror, recs("v"), defaultBatch},
		{"the batch asked for", &Subscriber{Batch: 300}, mirror, recs("v"), 300},
		{"a mapped subscription", &Subscriber{}, mapped, recs("v"), mappedBatch},
		{"changes of a MiB", &Subscriber{}, mirror, recs(wide), spanBytes / (len(wide) + 2 + entryOverhead)},
		{"the first span", &Subscriber{}, mirror, nil, firstBatch},
		{"the first span of a small batch", &Subscriber{Batch: 10}, mirror, nil, 10},
		{"changes larger than the bound", &Subscriber{}, mirror, recs(strings.Repeat(wide, 20)), 1},
	} {
		if got := c.s.spanLimit(c.t, c.after); got != c.want {
			t.Errorf("%s: %d changes, want %d", c.name, got, c.want)
		}
	}
}

// TestPrefetchAtTheHeadWaitsToBeAsked: at the log's head, the next span is
// read when the applier asks for it, so it holds every source transaction
// appended while the one before was applied, not only the first of them.
func TestPrefetchAtTheHeadWaitsToBeAsked(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l, tg := logWithRow(t)
	w := &worker{s: &Subscriber{Log: l}, sub: subscription{version: orders}}
	want := make(chan struct{}, 1)
	fetchCtx, stop := context.WithCancel(ctx)
	spans, done := w.prefetch(fetchCtx, tg, 0, 100, want)
	defer func() { stop(); <-done }()
	first := <-spans
	if first.err != nil || first.span.Groups != 1 {
		t.Fatalf("first span: %+v", first)
	}
	// The applier applies the first span; meanwhile three source
	// transactions come, each its own append (and notification).
	for i, lsn := range []uint64{200, 300, 400} {
		appendRow(t, l, lsn, string(rune('2'+i)), "b")
	}
	head, err := l.Head(ctx, orders)
	if err != nil {
		t.Fatal(err)
	}
	// Give a prefetch that does not wait to be asked the time to read
	// what was there early.
	time.Sleep(300 * time.Millisecond)
	want <- struct{}{}
	var next fetched
	select {
	case next = <-spans:
	case <-time.After(20 * time.Second):
		t.Fatal("no span within 20s of asking")
	}
	if next.err != nil {
		t.Fatal(next.err)
	}
	if next.span.Upto != head || next.span.Groups != 3 {
		t.Fatalf("the span asked for holds groups up to %d (%d groups); want all 3, up to the head %d",
			next.span.Upto, next.span.Groups, head)
	}
}

// TestHeadIsNotStalled: a subscription that has read the log's head is
// caught up, so the first changes after a long idle (a version failed and
// mended, a quiet source) are not called stalled before the next apply:
// the idle time counts from the last read of the head, not from the last
// apply.
func TestHeadIsNotStalled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l, tg := logWithRow(t)
	head, err := l.Head(ctx, orders)
	if err != nil {
		t.Fatal(err)
	}
	w := &worker{s: &Subscriber{Log: l, StalledAfter: time.Second}, sub: subscription{version: orders}}
	longAgo := time.Now().Add(-time.Hour)
	w.movedAt.Store(longAgo.UnixNano())
	if why := w.stalled(ctx, 1, time.Now()); why == "" {
		t.Fatal("behind, and not moved for an hour: want stalled")
	}
	want := make(chan struct{}, 1)
	fetchCtx, stop := context.WithCancel(ctx)
	spans, done := w.prefetch(fetchCtx, tg, head, 100, want) // at the head
	defer func() { stop(); <-done }()
	waitFor(t, "the head read", func() bool { return w.movedAt.Load() > longAgo.UnixNano() })
	if why := w.stalled(ctx, 1, time.Now()); why != "" {
		t.Fatalf("a change right after the head was read: %q, want not stalled", why)
	}
	select {
	case f := <-spans:
		t.Fatalf("a span at the head: %+v", f)
	default:
	}
}

// logWithRow is a log of its own holding one change of orders, and a
// target for it.
func logWithRow(t *testing.T) (*pglog.Log, *target) {
	t.Helper()
	l, err := pglog.Open(context.Background(), pg.URL(pg.CreateDB(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	appendRow(t, l, 100, "1", "a")
	cols := []managed.SubscribedColumn{{Name: "id", Key: true, Index: 0}, {Name: "v", Index: 1}}
	tg, err := newTarget("public", "t", cols, map[string]string{"id": "bigint", "v": "text"})
	if err != nil {
		t.Fatal(err)
	}
	return l, tg
}
