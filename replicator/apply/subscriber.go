package apply

import (
	"context"
	"errors"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rejot-dev/rejot/internal/retry"
	"github.com/rejot-dev/rejot/managed"
	"github.com/rejot-dev/rejot/replicator/eventlog"
	"github.com/rs/zerolog"
)

// Subscriber keeps the subscriptions of a consumer's database in sync: for
// each subscription recorded in the database (see package managed) it
// copies the publication version's compacted state into the target, then
// applies the log after it, whole source transactions in commit order,
// several per destination transaction, storing the applied position in
// the same transaction.
type Subscriber struct {
	URL    string // the consumer's database
	System string
	Log    eventlog.Reader
	// OpenLog opens the event log when Log is nil, retried until it works.
	OpenLog func(context.Context) (eventlog.Reader, error)
	// Access, when set, says why this system may not read a version (""
	// when it may), as the catalog judges it; a subscription the catalog
	// refuses stops (see access.go). Unset, every version may be read.
	Access func(context.Context, eventlog.Version) (string, error)
	// Report, when set, records the subscriptions' status in the catalog.
	Report func(context.Context, []managed.SubscriptionReport) error
	Logger zerolog.Logger
	Check  time.Duration // how often subscriptions are re-read (default 2s)
	Batch  int           // the most changes per destination transaction (default 50 000; span.go)
	// HeadPace is the least time between two reads of the log by a
	// subscription at its head (default 10 ms; a negative value: none;
	// span.go).
	HeadPace time.Duration
	// Stall is how long applying may go without progress (a chunk of
	// changes read, a statement run) before it is abandoned and retried
	// (default 1 minute). Nothing bounds its size.
	Stall time.Duration
	// StalledAfter is how long a subscription that is behind may go
	// without advancing before it shows as stalled (default 5s).
	StalledAfter time.Duration

	mu      sync.Mutex
	workers map[string]*worker
	running atomic.Bool
}

// subscription is a subscription as its worker keeps it.
type subscription struct {
	target     string // the key of its row: schema.table, quoted by rejot.subscribe
	schema     string // the target table's schema and name, as recorded
	table      string
	version    eventlog.Version
	columns    []managed.SubscribedColumn
	copy       bool
	generation int
	// a mapped subscription's (mapped.go); mapping nil for a mirror
	mapping    *managed.Mapping
	mappedRole uint32
}

// Running says whether the subscriber's loop is running.
func (s *Subscriber) Running() bool { return s.running.Load() }

// Run keeps the subscriptions in sync until ctx ends. It returns once
// every goroutine it started has ended.
func (s *Subscriber) Run(ctx context.Context) {
	s.running.Store(true)
	defer s.running.Store(false)
	s.mu.Lock()
	s.workers = map[string]*worker{}
	s.mu.Unlock()
	defer s.stopAll()
	if s.Log == nil {
		s.Log = retry.Open(ctx, s.Logger, "event log unreachable", s.OpenLog)
	}
	if ctx.Err() != nil {
		return
	}
	reporting := make(chan struct{})
	go func() {
		defer close(reporting)
		s.reportLoop(ctx)
	}()
	defer func() { <-reporting }() // a report in flight is finished first
	s.watch(ctx)
}

// watch reconciles the workers with the subscriptions as they change (it
// is notified) and at every check, until ctx ends.
func (s *Subscriber) watch(ctx context.Context) {
	var conn *pgx.Conn
	released := false
	defer func() {
		if conn != nil {
			conn.Close(context.WithoutCancel(ctx))
		}
	}()
	for ctx.Err() == nil {
		if conn == nil {
			if conn = s.listen(ctx); conn == nil {
				retry.Sleep(ctx, s.check())
				continue
			}
		}
		subs, err := loadSubscriptions(ctx, conn)
		if err != nil {
			if ctx.Err() == nil {
				s.Logger.Warn().Err(err).Msg("cannot read the subscriptions")
			}
			conn.Close(context.WithoutCancel(ctx))
			conn = nil
			retry.Sleep(ctx, s.check())
			continue
		}
		s.reconcile(ctx, subs)
		if !released {
			released = s.releaseRemoved(ctx, subs)
		}
		if !s.waitForChange(ctx, conn) {
			conn.Close(context.WithoutCancel(ctx))
			conn = nil
		}
	}
}

// listen connects to the consumer's database to hear of changed
// subscriptions; nil when it cannot now.
func (s *Subscriber) listen(ctx context.Context) *pgx.Conn {
	conn, err := connect(ctx, s.URL)
	if err != nil {
		return nil
	}
	if err := managed.ListenSubscriptions(ctx, conn); err != nil {
		conn.Close(ctx)
		return nil
	}
	return conn
}

// waitForChange waits until a subscription changes or the next check is
// due; false when conn broke meanwhile.
func (s *Subscriber) waitForChange(ctx context.Context, conn *pgx.Conn) bool {
	wait, cancel := context.WithTimeout(ctx, s.check())
	defer cancel()
	_, err := conn.WaitForNotification(wait)
	return err == nil || pgconn.Timeout(err) || errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil
}

// releaseRemoved lets go of the log for subscriptions removed while this
// sidecar was down; true once done.
func (s *Subscriber) releaseRemoved(ctx context.Context, subs []subscription) bool {
	keep := make([]string, len(subs))
	for i, sub := range subs {
		keep[i] = s.System + "/" + sub.target
	}
	return s.Log.KeepReaders(ctx, s.System+"/", keep) == nil
}

func (s *Subscriber) check() time.Duration {
	if s.Check > 0 {
		return s.Check
	}
	return 2 * time.Second
}

func (s *Subscriber) stall() time.Duration {
	if s.Stall > 0 {
		return s.Stall
	}
	return defaultStall
}

func loadSubscriptions(ctx context.Context, conn *pgx.Conn) ([]subscription, error) {
	rows, err := managed.LoadSubscriptions(ctx, conn)
	if err != nil {
		return nil, err
	}
	subs := make([]subscription, len(rows))
	for i, r := range rows {
		subs[i] = subscription{target: r.Target, schema: r.Schema, table: r.Table, version: eventlog.Version{Publication: r.Publication, Number: r.Version},
			columns: r.Columns, copy: r.Copy, generation: r.Generation, mapping: r.Mapping, mappedRole: r.MappedRole}
	}
	return subs, nil
}

// reconcile runs one worker per subscription (a new one after a resync)
// and stops those of subscriptions that are gone.
func (s *Subscriber) reconcile(ctx context.Context, subs []subscription) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[string]bool{}
	for _, sub := range subs {
		seen[sub.target] = true
		if w := s.workers[sub.target]; w != nil {
			if w.sub.generation == sub.generation && w.sub.version == sub.version && reflect.DeepEqual(w.sub.mapping, sub.mapping) {
				continue
			}
			w.stop()
		}
		w := &worker{s: s, sub: sub, limit: s.batch()}
		w.status.Store(&workerStatus{Status: "copying"})
		if old := s.workers[sub.target]; old != nil {
			w.copied.Store(old.copied.Load()) // a new generation that keeps its rows (extend.go); a copy starts at 0
		}
		s.workers[sub.target] = w
		w.start(ctx)
	}
	for target, w := range s.workers {
		if !seen[target] {
			w.stop()
			delete(s.workers, target)
			s.removed(ctx, w)
		}
	}
}

// removed forgets an unsubscribed target: its metrics, and its place in
// the log, which need not keep anything for it any more.
func (s *Subscriber) removed(ctx context.Context, w *worker) {
	for _, m := range []*prometheus.GaugeVec{metricLagSeconds, metricLagChanges, metricCopiedRows} {
		m.DeleteLabelValues(w.labels()...)
	}
	if err := s.Log.SetReader(ctx, w.sub.version, w.reader(), -1); err != nil {
		s.Logger.Warn().Err(err).Str("target", w.sub.target).Msg("cannot release the event log")
	}
	s.Logger.Info().Str("target", w.sub.target).Msg("subscription removed")
}

func (s *Subscriber) stopAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, w := range s.workers {
		w.stop()
	}
}
