package apply

import "github.com/rejot-dev/rejot/replicator/eventlog"

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
