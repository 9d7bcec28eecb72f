package natslog

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rejot-dev/rejot/internal/natstest"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// TestCompactionPasses: a backlog of 2.5 passes is compacted in three
// background passes, each ending at the bound (the last at the head),
// each moving the watermark, and paced: a full pass takes at least its
// changes at paceMin. A Prune meanwhile leaves the backlog to them. The bound is a tenth of compactPass, so that the
// test takes a second, not twelve.
func TestCompactionPasses(t *testing.T) {
	c := natstest.Run(t, 1)
	ctx := context.Background()
	l := opener(t, c)()
	const bound = compactPass / 10
	l.background.limit = bound
	v := eventlog.Version{Publication: "orders", Number: 1}
	if _, err := l.ensureChangeStream(ctx, v); err != nil {
		t.Fatal(err)
	}
	prefix := stateSubjects(v, 1)
	marks, err := l.js.OrderedConsumer(ctx, stateStream(v, 1), jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{prefix + ".w"}, DeliverPolicy: jetstream.DeliverAllPolicy})
	if err != nil {
		t.Fatal(err)
	}

	const n = 2*bound + bound/2
	g := eventlog.Group{Version: v, System: "shop", CommitLSN: 10, Layout: eventlog.Layout{Columns: 2, Key: []int{0}}}
	for i := range n {
		k, val := strconv.Itoa(i), "v"
		g.Changes = append(g.Changes, eventlog.Change{Op: eventlog.OpUpsert, Key: []eventlog.Value{&k}, Row: []eventlog.Value{&k, &val}})
	}
	if _, err := eventlog.Append(ctx, l, []eventlog.Group{g}); err != nil {
		t.Fatal(err)
	}

	want := []int64{bound, 2 * bound, n}
	var at []time.Time
	for i, w := range want {
		m, err := marks.Next(jetstream.FetchMaxWait(time.Minute))
		if err != nil {
			t.Fatalf("watermark %d of %d: %v", i+1, len(want), err)
		}
		pos, err := parsePos(m.Headers())
		if err != nil || pos != w {
			t.Fatalf("pass %d ended at %d (%v), want %d", i+1, pos, err, w)
		}
		meta, err := m.Metadata()
		if err != nil {
			t.Fatal(err)
		}
		at = append(at, meta.Timestamp)
		if i == 0 {
			pruneMidway(t, l, v, n)
		}
	}
	// The second pass's batches, but its first, each waited its turn.
	if took, least := at[1].Sub(at[0]), (bound-paceBatch)*time.Second/paceMin; took < least {
		t.Fatalf("the second pass took %v, less than %v: it was not paced", took, least)
	}
	if m, err := marks.Next(jetstream.FetchMaxWait(500 * time.Millisecond)); err == nil {
		pos, _ := parsePos(m.Headers())
		t.Fatalf("a fourth pass wrote a watermark at %d: the head was reached", pos)
	}
}

// pruneMidway prunes while the passes drain the backlog: Prune takes
// the watermark they reached and does not compact the rest at full speed.
func pruneMidway(t *testing.T, l *Log, v eventlog.Version, head int64) {
	ctx := context.Background()
	if _, err := l.Prune(ctx, v); err != nil {
		t.Fatal(err)
	}
	ks, err := l.ensureStateStream(ctx, v, 1)
	if err != nil {
		t.Fatal(err)
	}
	if mark, err := watermark(ctx, ks, stateSubjects(v, 1)); err != nil || mark.pos >= head {
		t.Fatalf("after a Prune midway the watermark is at %d (%v): Prune compacted to the head %d", mark.pos, err, head)
	}
}

// TestPacerRate: a pass is paced at paceMin, faster for a backlog that
// would take more than paceDrain, and not at all at full speed; the
// pacer spreads its batches at the rate.
func TestPacerRate(t *testing.T) {
	for _, c := range []struct {
		p       pass
		backlog int64
		every   time.Duration // 0: not paced
	}{
		{backgroundPass, 1, time.Second / paceMin},
		{backgroundPass, paceMin * int64(paceDrain/time.Second), time.Second / paceMin},
		{backgroundPass, 4 * paceMin * int64(paceDrain/time.Second), time.Second / (4 * paceMin)},
		{fullPass, 1_000_000, 0},
	} {
		got := newPacer(c.p, c.backlog)
		if c.every == 0 {
			if got != nil {
				t.Errorf("%+v, backlog %d: paced, want full speed", c.p, c.backlog)
			}
			continue
		}
		if got == nil || got.every != c.every {
			t.Errorf("%+v, backlog %d: %+v, want a change every %v", c.p, c.backlog, got, c.every)
		}
	}

	p := &pacer{every: time.Millisecond}
	start := time.Now()
	for range 5 {
		if err := p.wait(context.Background(), 10); err != nil {
			t.Fatal(err)
		}
	}
	if took := time.Since(start); took < 40*time.Millisecond {
		t.Fatalf("5 batches of 10 at 1 ms each took %v, want at least 40 ms (the first goes at once)", took)
	}
}
