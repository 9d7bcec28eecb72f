package natslog

import (
	"context"
	"time"
)

// The background compaction goes in passes, each paced. A catch-up
// appends changes as fast as the capture decodes them; a compaction of
// all of them at once then writes one state message per change at full
// speed for seconds, taking the replicas' and the machine's time from the
// subscribers that read the change stream right then (a latency p99 of
// 117–250 ms instead of 20–40 ms in BenchmarkFanOut). Nobody waits on the
// background compaction: a copy folds in the changes the state does not
// hold yet, so spreading its writes only makes copies fold more. What
// waits on a compaction (Prune, which may drop only what the state holds)
// has it at full speed, up to the head.

const (
	// compactPass is how many changes a background pass compacts at most;
	// the next pass follows after the compactor's pause, so that a long
	// backlog leaves room to Prune and to the appends between passes.
	compactPass = 10_000
	// paceMin is the rate (state messages per second) a background pass
	// writes at when the backlog is small. In BenchmarkFanOut (three
	// JetStream nodes on the sidecars' two cores, 100 000 changes to
	// compact after the catch-up) this rate and paceDrain kept the latency
	// p99 at 22–30 ms in five runs of ten (144–396 ms before); 5 000 left
	// it at 78–111 ms.
	paceMin = 2_000
	// paceDrain: a backlog larger than paceMin × paceDrain is written at
	// the rate that clears it in paceDrain, so that under appends at any
	// sustained rate the compaction can follow, the state trails the
	// change stream by about paceDrain's worth of them, never more and
	// more.
	paceDrain = 30 * time.Second
	// paceBatch is how many changes go between two waits of the pacer.
	paceBatch = 100
)

// pass is how a compaction goes: at most limit changes (0: every one up
// to the head), paced to the backlog or at full speed.
type pass struct {
	limit int64
	paced bool
}

var (
	fullPass       = pass{}
	backgroundPass = pass{limit: compactPass, paced: true}
)

// pacer spreads a pass's writes at a rate: a token bucket of one batch.
type pacer struct {
	every time.Duration // the time one change takes at the rate
	next  time.Time     // when the next batch may go
}

// newPacer paces a pass that has backlog changes to compact (nil: not
// paced).
func newPacer(p pass, backlog int64) *pacer {
	if !p.paced {
		return nil
	}
	rate := max(paceMin, float64(backlog)/paceDrain.Seconds())
	return &pacer{every: time.Duration(float64(time.Second) / rate)}
}

// wait waits until the next n changes may be written. A pass slower than
// the rate (its reads) gains no credit: it never bursts more than n.
func (p *pacer) wait(ctx context.Context, n int) error {
	if p == nil {
		return nil
	}
	now := time.Now()
	if p.next.Before(now) {
		p.next = now
	}
	at := p.next
	p.next = at.Add(time.Duration(n) * p.every)
	if d := at.Sub(now); d > 0 {
		return sleep(ctx, d)
	}
	return nil
}
