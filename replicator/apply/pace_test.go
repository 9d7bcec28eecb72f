package apply

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// countingLog counts the reads of a log: each Fetch, and those that found
// changes (each is then a destination transaction).
type countingLog struct {
	eventlog.Reader
	fetches, spans atomic.Int64
}

func (l *countingLog) Fetch(ctx context.Context, v eventlog.Version, after int64, limit int) (eventlog.Span, []eventlog.Entry, error) {
	span, recs, err := l.Reader.Fetch(ctx, v, after, limit)
	l.fetches.Add(1)
	if span.Groups > 0 {
		l.spans.Add(1)
	}
	return span, recs, err
}

// TestHeadPaceBoundsReads: a subscription at the log's head, under a
// steady stream of source transactions, reads the log at most once per
// HeadPace, so applies what came in meanwhile in one transaction, and
// still converges. Without the pace it read after every apply: a bound
// of one read per pace fails then (a few milliseconds per apply here).
func TestHeadPaceBoundsReads(t *testing.T) {
	db, conn, l := subscribedTable(t)
	appendRow(t, l, 100, "0", "copied")
	counted := &countingLog{Reader: l}
	const pace = 200 * time.Millisecond
	runSubscriber(t, &Subscriber{URL: pg.URL(db), System: "billing", Log: counted, Check: 100 * time.Millisecond, HeadPace: pace})
	waitFor(t, "the state copied", rowCount(conn, 1))

	fetches, spans := counted.fetches.Load(), counted.spans.Load()
	started := time.Now()
	const n = 200
	for i := 1; i <= n; i++ { // one source transaction every 5 ms
		appendRow(t, l, uint64(100+i), fmt.Sprint(i), "streamed")
		time.Sleep(5 * time.Millisecond)
	}
	waitFor(t, "every change applied", rowCount(conn, n+1))
	took := time.Since(started)
	fetches, spans = counted.fetches.Load()-fetches, counted.spans.Load()-spans
	// One read per pace over the stream, a first one and one that found
	// the last changes; a wait that timed out reads once more per second.
	most := int64(took/pace) + 3 + int64(took/time.Second)
	if fetches > most {
		t.Fatalf("%d appends over %s: %d reads of the log (%d found changes), want at most %d (one per %s)",
			n, took.Round(time.Millisecond), fetches, spans, most, pace)
	}
	if spans < 2 {
		t.Fatalf("%d appends over %s were applied in %d span(s): the stream was not followed", n, took.Round(time.Millisecond), spans)
	}
	t.Logf("%d appends over %s: %d reads, %d spans applied", n, took.Round(time.Millisecond), fetches, spans)
}
