package apply

import (
	"context"
	"errors"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/internal/retry"
	"github.com/rejot-dev/rejot/managed"
	"github.com/rejot-dev/rejot/replicator/eventlog"
	"github.com/rs/zerolog"
)

// worker keeps one subscription in sync: it copies the state when the
// subscription has no position yet, then follows the log; after a failure
// it retries with backoff, one group at a time.
type worker struct {
	s      *Subscriber
	sub    subscription
	cancel context.CancelFunc
	done   chan struct{}
	limit  int // changes per destination transaction; 1 group after a failure
	// what the catalog hears
	status atomic.Pointer[workerStatus]
	copied atomic.Int64
	// when the catalog was last asked whether the system may read the
	// version, and whether it has said yes (see access.go)
	accessAt    time.Time
	accessKnown bool
	// what tells a stalled subscription (behind and not advancing) from
	// a busy one: the span being applied, and when the position last
	// moved or the log's head was last read (Unix nanoseconds; or when
	// following began)
	applying atomic.Pointer[applyingSpan]
	movedAt  atomic.Int64
}

// applyingSpan is a span being applied: its progress, and the target
// connection's backend, which the report asks what it waits for.
type applyingSpan struct {
	span     eventlog.Span
	progress *progress
	pid      uint32
}

type workerStatus struct {
	Status        string
	Position      *int64
	LastAppliedAt *time.Time
	LastCommit    time.Time
	Error         *string
}

// reader is the worker's name as a reader of the log.
func (w *worker) reader() string { return w.s.System + "/" + w.sub.target }

func (w *worker) start(ctx context.Context) {
	ctx, w.cancel = context.WithCancel(ctx)
	w.done = make(chan struct{})
	go func() {
		defer close(w.done)
		w.run(ctx)
	}()
}

// stop stops the worker and waits for it to end.
func (w *worker) stop() {
	w.cancel()
	<-w.done
}

func (w *worker) log() *zerolog.Logger {
	l := w.s.Logger.With().Str("target", w.sub.target).Str("publication", w.sub.version.Publication).
		Int("version", w.sub.version.Number).Logger()
	return &l
}

// errSubscriptionMoved: the subscription was resynced or removed; its
// worker ends and the subscriber reconciles.
var errSubscriptionMoved = managed.ErrMoved

func (w *worker) run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := w.work(ctx)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errSubscriptionMoved) || errors.Is(err, errRevoked) {
			return // the subscriber reconciles; a revoked one waits for a resync
		}
		if errors.Is(err, errRecopy) || errors.Is(err, errColumnsReady) {
			continue
		}
		w.failed(ctx, err, backoff)
		retry.Sleep(ctx, backoff)
		backoff = min(2*backoff, 30*time.Second)
	}
}

// failed makes a failure known: in the metrics, to the catalog, in the
// database and in the log; the next attempt applies one group at a time
// to narrow the failure down to one source transaction.
func (w *worker) failed(ctx context.Context, err error, backoff time.Duration) {
	metricApplyErrors.WithLabelValues(w.labels()...).Inc()
	msg := boundError(err.Error())
	st := *w.status.Load()
	st.Status, st.Error = "failed", &msg
	w.status.Store(&st)
	w.limit = 1
	w.recordError(ctx, msg)
	w.log().Error().Str("error", msg).Dur("retry_in", backoff).Msg("subscription failed; retrying")
}

// maxError bounds the error a subscription keeps and reports: a mapped
// subscription's statements choose theirs (RAISE), up to a connection's
// message limit.
const maxError = 4 << 10

// boundError is msg cut to at most maxError bytes, on a character's
// boundary.
func boundError(msg string) string {
	if len(msg) <= maxError {
		return msg
	}
	cut := maxError - len(" …")
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return msg[:cut] + " …"
}

// recordError keeps the error with the subscription (best effort).
func (w *worker) recordError(ctx context.Context, msg string) {
	conn, err := connect(ctx, w.s.URL)
	if err != nil {
		return
	}
	defer conn.Close(context.WithoutCancel(ctx))
	managed.RecordError(ctx, conn, w.sub.target, w.sub.generation, msg)
}

// work keeps the subscription in sync on one connection until it fails:
// a copy first when it has no position, then following the log.
func (w *worker) work(ctx context.Context) (err error) {
	if err := w.checkAccess(ctx); err != nil {
		return err
	}
	open := connect
	if w.sub.mapping != nil {
		open = connectMapped // a session of its own (mapped.go)
	}
	conn, err := open(ctx, w.s.URL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if w.sub.mapping != nil {
		defer w.endAbandoned(ctx, conn)
	}
	// Columns a later subscribe added (extend.go).
	ctx, stop, err := w.addColumns(ctx, conn)
	if err != nil {
		return err
	}
	defer stop()
	defer func() {
		if err != nil && errors.Is(context.Cause(ctx), errColumnsReady) {
			err = errColumnsReady // the log has them now: start over to add them
		}
	}()
	t, err := w.prepare(ctx, conn)
	if err != nil {
		return err
	}
	position, err := managed.Position(ctx, conn, w.sub.target, w.sub.generation)
	if err != nil {
		return err
	}
	if position == nil {
		p, err := w.copyState(ctx, conn, t)
		if err != nil {
			return err
		}
		position = &p
	}
	st := *w.status.Load()
	st.Status, st.Position, st.Error = "streaming", position, nil
	w.status.Store(&st)
	return w.follow(ctx, conn, t, *position)
}

// prepare finds the target in the catalog, reads its column types and
// builds its statements from the catalog's names.
func (w *worker) prepare(ctx context.Context, conn *pgx.Conn) (*target, error) {
	if w.sub.mapping != nil {
		t, err := w.prepareMapped(ctx, conn)
		if err != nil {
			return nil, err
		}
		for i, c := range t.cols {
			if c.Key {
				t.keys = append(t.keys, i)
			}
		}
		return t, nil
	}
	tbl, err := resolveTarget(ctx, conn, w.sub)
	if err != nil {
		return nil, err
	}
	present, _ := w.sub.split()
	t, err := newTarget(tbl.schema, tbl.table, present, tbl.types)
	if err != nil {
		return nil, err
	}
	t.oid = tbl.oid
	return t, nil
}

// connect opens a connection to the consumer's database that runs every
// statement with the extended protocol, one statement per message: a URL
// asking for the simple protocol gets QueryExecModeExec instead.
func connect(ctx context.Context, url string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	if cfg.DefaultQueryExecMode == pgx.QueryExecModeSimpleProtocol {
		cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
	}
	return pgx.ConnectConfig(ctx, cfg)
}

// execOne runs one statement with the extended protocol, which runs
// exactly one statement: pgx runs an Exec without arguments with the
// simple protocol, which would run several.
func execOne(ctx context.Context, conn *pgx.Conn, sql string, args ...any) error {
	if len(args) == 0 {
		_, err := conn.PgConn().ExecParams(ctx, sql, nil, nil, nil, nil).Close()
		return err
	}
	_, err := conn.Exec(ctx, sql, args...)
	return err
}

// lock locks the subscription's row in tx and returns its position; a
// subscription resynced or removed meanwhile ends the worker.
func (w *worker) lock(ctx context.Context, tx pgx.Tx) (*int64, error) {
	return managed.ScanPosition(tx.QueryRow(ctx, managed.LockPosition, w.sub.target, w.sub.generation))
}
