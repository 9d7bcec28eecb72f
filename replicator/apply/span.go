package apply

import (
	"context"
	"time"

	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// How many changes a destination transaction takes. A subscriber behind
// the log applies it in spans as large as these bounds allow: each span
// is collapsed per key before it is written (collapse.go), so the larger
// the span, the fewer rows the target writes (a key changed twice in it
// is written once), and the fewer transactions, round trips and position
// updates it takes. A subscriber at the log's head applies what is there.
const (
	// defaultBatch is the most changes a span holds (Subscriber.Batch).
	defaultBatch = 50_000
	// mappedBatch bounds a mapped subscription's spans: its statements
	// run once per change, not collapsed, so a larger span saves
	// nothing and only holds more in memory.
	mappedBatch = 5_000
	// spanBytes bounds the values a span read ahead holds in memory: two
	// spans are held at once (one applied, the next read meanwhile),
	// each twice or three times its values' size once decoded and made
	// into statements.
	spanBytes = 16 << 20
	// entryOverhead is what a change costs in memory besides its values.
	entryOverhead = 128
	// firstBatch bounds the first span read from a position: nothing is
	// known yet of how large its changes are.
	firstBatch = 5_000
)

// batch is the most changes a span holds.
func (s *Subscriber) batch() int {
	if s.Batch > 0 {
		return s.Batch
	}
	return defaultBatch
}

// spanLimit is how many changes to read for t after a span of recs: the
// batch, fewer for a mapped subscription, and fewer when changes as large
// as recs' would hold more than spanBytes; firstBatch at most after none.
func (s *Subscriber) spanLimit(t *target, recs []eventlog.Entry) int {
	limit := s.batch()
	if t.mapped != nil {
		limit = min(limit, mappedBatch)
	}
	if len(recs) == 0 {
		return min(limit, firstBatch)
	}
	per := changesSize(recs)/len(recs) + entryOverhead
	return max(1, min(limit, spanBytes/per))
}

// changesSize is the bytes of recs' values.
func changesSize(recs []eventlog.Entry) int {
	n := 0
	for _, r := range recs {
		for _, v := range r.Key {
			if v != nil {
				n += len(*v)
			}
		}
		for _, v := range r.Row {
			if v != nil {
				n += len(*v)
			}
		}
	}
	return n
}

// defaultHeadPace is the least time between two reads of the log by a
// subscription at its head. Under a steady stream of source transactions
// a subscriber that read the log the moment its last span was applied
// did a destination transaction for every few of them: each a fetch, a
// round trip to the consumer and a commit, whatever its size. Sixteen
// subscribers on two cores spent most of them on those fixed costs, and
// every change waited for the others' (a p99 of 170–290 ms at 1000
// updates a second). Read at most every 10 ms, a span holds what came
// in meanwhile, in one transaction; a change waits 5 ms more on average.
// Behind the log, spans are read as fast as they are applied.
const defaultHeadPace = 10 * time.Millisecond

// headPace is the least time between two reads at the log's head.
func (s *Subscriber) headPace() time.Duration {
	switch {
	case s.HeadPace < 0:
		return 0
	case s.HeadPace == 0:
		return defaultHeadPace
	}
	return s.HeadPace
}

// paceHead waits until pace has passed since last, or ctx ends (false).
func paceHead(ctx context.Context, last time.Time, pace time.Duration) bool {
	wait := time.Until(last.Add(pace))
	if wait <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
