package apply

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/managed"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// readerEvery is how often a subscriber records its position in the log
// (which then may prune what came before).
const readerEvery = 5 * time.Second

// errRecopy: the worker starts over with a copy, at once.
var errRecopy = errors.New("copying the state again")

// follow applies the log after position, woken by the log's
// notifications, until ctx ends or applying fails.
func (w *worker) follow(ctx context.Context, conn *pgx.Conn, t *target, position int64) error {
	lastReader := time.Now()
	w.movedAt.Store(lastReader.UnixNano())
	// The next span is read from the log while this one is applied to the
	// target: two servers, working at once.
	fetchCtx, stopFetching := context.WithCancel(ctx)
	want := make(chan struct{}, 1)
	spans, fetching := w.prefetch(fetchCtx, t, position, min(w.limit, w.s.spanLimit(t, nil)), want)
	defer func() {
		stopFetching()
		<-fetching
	}()
	for ctx.Err() == nil {
		select {
		case want <- struct{}{}:
		default: // asked already
		}
		var f fetched
		select {
		case f = <-spans:
		case <-ctx.Done():
			return ctx.Err()
		}
		if errors.Is(f.err, eventlog.ErrPruned) {
			return w.recopy(ctx, conn, position)
		}
		if f.err != nil {
			return f.err
		}
		if err := w.recheckAccess(ctx); err != nil {
			return err
		}
		span := f.span
		if f.stmts == nil && span.Resets && w.sub.copy {
			return w.copyInstead(ctx, conn, span)
		}
		// Only the span whose position is recorded in the log next (every
		// readerEvery) is committed durably; that flushes every commit
		// before it too. Between, a crash of the target loses at most the
		// spans since, position and rows together, and they are applied
		// again from the log, which keeps them.
		durable := time.Since(lastReader) > readerEvery
		// A span being applied is finished even when the sidecar stops;
		// what bounds it is its progress, not its size (see progress.go).
		applyCtx, progress, stop := watchProgress(context.WithoutCancel(ctx), w.s.stall())
		w.applying.Store(&applyingSpan{span: span, progress: progress, pid: conn.PgConn().PID()})
		err := stalled(applyCtx, w.apply(applyCtx, conn, t, span, f.stmts, durable, progress))
		w.applying.Store(nil)
		stop()
		if errors.Is(err, eventlog.ErrPruned) {
			return w.recopy(ctx, conn, position)
		}
		if err != nil {
			return fmt.Errorf("cannot apply changes %d to %d (source commit at %s): %w",
				span.After+1, span.Upto, span.LastCommit.Format(time.RFC3339Nano), err)
		}
		position = span.Upto
		w.applied(span)
		if durable {
			lastReader = time.Now()
			if err := w.s.Log.SetReader(ctx, w.sub.version, w.reader(), position); err != nil {
				w.log().Warn().Err(err).Msg("cannot record the subscription's place in the event log")
			}
		}
	}
	return ctx.Err()
}

// applied makes an applied span known: in the metrics and to the catalog.
// After a success the batch is whole again.
func (w *worker) applied(span eventlog.Span) {
	metricApplied.WithLabelValues(w.labels()...).Add(float64(span.Upto - span.After))
	position := span.Upto
	w.limit = w.s.batch()
	now := time.Now()
	w.movedAt.Store(now.UnixNano())
	w.log().Debug().Int64("position", position).Int("transactions", span.Groups).Msg("applied")
	w.status.Store(&workerStatus{Status: "streaming", Position: &position, LastAppliedAt: &now, LastCommit: span.LastCommit})
}

// fetched is a span of the log to apply: its changes, read ahead and
// already collapsed into statements (nil for a span too large to hold:
// apply reads it as it goes), or why reading stopped.
type fetched struct {
	span  eventlog.Span
	stmts []statement // the changes, collapsed into statements; nil: read them while applying
	err   error
}

// prefetch reads spans after position, with their changes made into
// statements for t: the first of at most limit changes (one group after a
// failure), then of w.s.spanLimit's. A span that fills at least half its
// limit means the log holds more behind it: the next one is read while
// this one is applied. A smaller one was read at the log's head: the next
// is read only once the applier asks for it (want), so that it holds
// everything appended while this one was applied; read at once, it would
// hold only what came in the moment after, and under load every source
// transaction would wait for one apply more, and the target would do
// twice the applies. At the head, reads are at least headPace apart
// (span.go). It stops at the first error, which it passes on, or
// when ctx ends; done is closed when its goroutine has ended.
func (w *worker) prefetch(ctx context.Context, t *target, position int64, limit int, want <-chan struct{}) (spans <-chan fetched, done <-chan struct{}) {
	out, ended := make(chan fetched, 1), make(chan struct{})
	go func() {
		defer close(ended)
		ahead := true   // read the next span without waiting to be asked
		atHead := false // the last read found the log's head: the next waits for headPace
		var lastRead time.Time
		for ctx.Err() == nil {
			if !ahead {
				select {
				case <-want:
				case <-ctx.Done():
					return
				}
			}
			if atHead && !paceHead(ctx, lastRead, w.s.headPace()) {
				return
			}
			lastRead = time.Now()
			span, recs, err := w.s.Log.Fetch(ctx, w.sub.version, position, limit)
			if err != nil {
				// The applier may have stopped reading: never block on it.
				select {
				case out <- fetched{err: err}:
				case <-ctx.Done():
				}
				return
			}
			if span.Groups == 0 {
				// At the head: caught up, so not stalled, however long
				// ago it last applied (a version failed for a while, an
				// idle source); what comes next is timed from here.
				w.movedAt.Store(time.Now().UnixNano())
				ahead, atHead = true, true // the applier has asked, and waits
				w.s.Log.Wait(ctx, w.sub.version, time.Second)
				continue
			}
			f := fetched{span: span}
			if recs != nil {
				if f.stmts, err = spanStatements(t, recs); err != nil {
					f = fetched{err: err}
				}
			}
			select {
			case <-want: // this span answers any request made meanwhile
			default:
			}
			select {
			case out <- f:
			case <-ctx.Done():
				return
			}
			ahead = recs == nil || 2*(span.Upto-span.After) >= int64(limit)
			atHead = !ahead
			position, limit = span.Upto, w.s.spanLimit(t, recs)
		}
	}()
	return out, ended
}

// recopy starts the subscription over from a copy of the state: the log
// no longer has the changes after its position.
func (w *worker) recopy(ctx context.Context, conn *pgx.Conn, position int64) error {
	w.log().Warn().Int64("position", position).Msg("the event log no longer holds the changes this subscription needs; copying the state again")
	if err := managed.Recopy(ctx, conn, w.sub.target, w.sub.generation, position); err != nil {
		return err
	}
	return errRecopy
}

// copyInstead copies the state again rather than apply a span too large
// to hold that starts with a truncate (a first fill the subscriber
// arrived during, or a TRUNCATE and a reload): the state the log holds
// now is what applying it would give, copied in one COPY instead of a
// statement per chunk of changes.
func (w *worker) copyInstead(ctx context.Context, conn *pgx.Conn, span eventlog.Span) error {
	w.log().Info().Int64("position", span.After).Int64("changes", span.Upto-span.After).
		Msg("the next source transaction replaces every row; copying the state instead of applying it")
	if err := managed.Recopy(ctx, conn, w.sub.target, w.sub.generation, span.After); err != nil {
		return err
	}
	return errRecopy
}

// apply applies a span of whole source transactions in one destination
// transaction, collapsed per key, with the new position. A durable apply
// waits for its commit to be flushed: the log may drop what a subscriber
// says it has applied. The others do not wait (a flush per span took the
// apply's time while the server did nothing else for it).
func (w *worker) apply(ctx context.Context, conn *pgx.Conn, t *target, span eventlog.Span, stmts []statement, durable bool, p *progress) error {
	commit := "SET LOCAL synchronous_commit = off"
	if durable {
		commit = "SET LOCAL synchronous_commit = on"
	}
	if stmts == nil {
		return w.applyReading(ctx, conn, t, span, commit, p)
	}
	return w.applyPipelined(ctx, conn, t, span, stmts, commit)
}

// applyReading applies a span too large to have been read ahead, reading
// its changes from the log as it goes, a chunk at a time: one destination
// transaction however many changes the span has, holding one chunk in
// memory; each chunk read and statement run is progress.
func (w *worker) applyReading(ctx context.Context, conn *pgx.Conn, t *target, span eventlog.Span, commit string, p *progress) error {
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, commit); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, managed.LockAt, w.sub.target, w.sub.generation, span.After); err != nil {
			return err
		}
		if err := t.check(ctx, tx); err != nil {
			return err
		}
		err := w.s.Log.Read(ctx, w.sub.version, span, func(recs []eventlog.Entry) error {
			p.moved()
			stmts, err := spanStatements(t, recs)
			if err != nil {
				return err
			}
			for _, st := range stmts {
				if err := execOne(ctx, tx.Conn(), st.sql, st.args...); err != nil {
					return err
				}
				p.moved()
			}
			return nil
		})
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, commit); err != nil { // a mapped subscription's reset undid it
			return err
		}
		_, err = tx.Exec(ctx, managed.Advance, w.sub.target, w.sub.generation, span.Upto, span.LastCommit)
		return err
	})
	return managed.MovedError(err)
}

// sortMemory lets the upsert of a span sort its rows by key in memory: a
// span of 50 000 rows needs about 9 MB, where the default 4 MB made the
// sort spill to disk.
const sortMemory = "SET LOCAL work_mem = '32MB'"

// applyPipelined sends a span read ahead to the server as one pipeline:
// begin, lock the subscription's row at the span's start (the server
// refuses a span the subscription is no longer at: LockAt), the changes,
// the new position, commit. One round trip, where a statement at a time
// took six or more, each a wait for two busy processes to be scheduled in
// turn; a statement that fails aborts the transaction on the server, and
// the COMMIT after it is never run.
func (w *worker) applyPipelined(ctx context.Context, conn *pgx.Conn, t *target, span eventlog.Span, stmts []statement, commit string) error {
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue(commit)
	b.Queue(managed.LockAt, w.sub.target, w.sub.generation, span.After)
	// Refused, it fails on the server, and nothing after it runs. A
	// mapped subscription's statements run as its role: they are checked
	// as they run (mapped.go).
	if t.mapped == nil {
		b.Queue(managed.CheckTarget, t.oid, t.written())
		b.Queue(sortMemory)
	}
	for _, st := range stmts {
		b.Queue(st.sql, st.args...)
	}
	b.Queue(commit) // a mapped subscription's reset undid it
	b.Queue(managed.Advance, w.sub.target, w.sub.generation, span.Upto, span.LastCommit)
	b.Queue("COMMIT")
	err := conn.SendBatch(ctx, b).Close()
	if err != nil && conn.PgConn().TxStatus() != 'I' && !conn.IsClosed() {
		// Failed in the transaction: the server left it aborted.
		if _, rbErr := conn.Exec(context.WithoutCancel(ctx), "ROLLBACK"); rbErr != nil {
			w.log().Debug().Err(rbErr).Msg("cannot roll back the failed apply")
		}
	}
	return managed.MovedError(err)
}
