package capture

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/internal/retry"
	"github.com/rejot-dev/rejot/replicator/eventlog"
	"github.com/rs/zerolog"
)

// Runner keeps a WALReader running for the publication versions the
// owner's record (_rejot.publications) holds: it starts one when there is
// something to capture, restarts it when the versions change or it fails
// (with backoff), and stops it when ctx ends.
type Runner struct {
	URL    string // the owner's database, as a role with REPLICATION
	System string
	Log    eventlog.Writer
	// OpenLog opens the event log when Log is nil, retried until it works.
	OpenLog func(context.Context) (eventlog.Writer, error)
	Logger  zerolog.Logger
	Check   time.Duration // how often the record is re-read (default 2s)
	// PruneEvery is how often the log drops changes every subscriber has
	// read (default 30s).
	PruneEvery time.Duration
	// SlotStall is how long the slot may go without confirming while WAL
	// is pending before Degraded says so (default DefaultSlotStall).
	SlotStall time.Duration
	// RetryFailed is how long a version whose projection errored waits
	// before it is tried again (default 30s, doubling up to 10 min); a
	// re-publish of it, or a version failed by the owner's schema that
	// verifies again, is tried at once.
	RetryFailed time.Duration
	// Exclusive says that the caller holds the system's lease: no other
	// process of the system may capture now, so a session found holding
	// the slot when Run starts is a former holder's (one that lost the
	// lease but whose walsender has not noticed yet), and is ended.
	Exclusive bool

	problem  atomic.Pointer[string]
	conn     *pgx.Conn // for reading the owner's record; owned by Run
	running  atomic.Bool
	wakeOnce sync.Once
	wake     chan struct{}
	// The session last found holding the slot when there was nothing to
	// capture, and whether that was logged (release).
	busyPID    int32
	busyLogged bool
	slot       slotWatch

	mu         sync.Mutex                    // guards what follows (readers report failures)
	failures   map[eventlog.Version]*failure // see failed.go
	recalled   map[eventlog.Version]bool     // whether the log was asked if it failed
	generation int                           // counts versions failing (see fingerprint)
	screened   bool                          // FailedVersions is known
}

// Wake makes the capture read the owner's record now rather than at its
// next check: the sidecar calls it when a publish or unpublish has been
// applied, so a new version's first fill starts at once.
func (c *Runner) Wake() {
	select {
	case c.woken() <- struct{}{}:
	default:
	}
}

func (c *Runner) woken() chan struct{} {
	c.wakeOnce.Do(func() { c.wake = make(chan struct{}, 1) })
	return c.wake
}

// pause waits for d, or less when woken.
func (c *Runner) pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-c.woken():
	}
}

// Problem says why the database cannot be captured ("" when it can), as
// last checked: wal_level not logical, or a role without REPLICATION.
func (c *Runner) Problem() string {
	if p := c.problem.Load(); p != nil {
		return *p
	}
	return ""
}

// checkSetup records whether the database can be captured at all.
func (c *Runner) checkSetup(ctx context.Context, conn *pgx.Conn) error {
	var level string
	var replication bool
	err := conn.QueryRow(ctx, `SELECT current_setting('wal_level'),
		coalesce((SELECT rolreplication OR rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user), false)`).Scan(&level, &replication)
	if err != nil {
		return err
	}
	problem := ""
	switch {
	case level != "logical":
		problem = "the database cannot be captured: its server has wal_level = " + level + ", and publishing needs logical"
	case !replication:
		problem = "the database cannot be captured: the sidecar's role lacks the REPLICATION attribute"
	}
	if old := c.Problem(); problem != old && problem != "" {
		c.Logger.Error().Str("system", c.System).Str("problem", problem).Msg("capture impossible")
	}
	c.problem.Store(&problem)
	return nil
}

// CheckSetup records whether the database can be captured (Problem) on a
// connection of its own, without capturing: a standby instance answers
// rejot.publish as the active one would.
func (c *Runner) CheckSetup(ctx context.Context) error {
	conn, err := connectOwner(ctx, c.URL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return c.checkSetup(ctx, conn)
}

// Running says whether the capture's loop is running.
func (c *Runner) Running() bool { return c.running.Load() }

// Run captures until ctx ends.
func (c *Runner) Run(ctx context.Context) {
	c.running.Store(true)
	defer c.running.Store(false)
	defer func() {
		if c.conn != nil {
			c.conn.Close(context.WithoutCancel(ctx))
			c.conn = nil // Run may be called again (the lease taken again)
		}
	}()
	c.load(ctx) // learn at once whether the database can be captured at all
	if c.Exclusive {
		c.endFormerHolder(ctx)
	}
	if c.Log == nil {
		c.Log = retry.Open(ctx, c.Logger, "event log unreachable", c.OpenLog)
	}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		sources, err := c.load(ctx)
		if err == nil && len(sources) == 0 {
			if err := c.markFailed(ctx); err != nil {
				c.Logger.Warn().Err(err).Str("system", c.System).Msg("cannot record the failed versions in the event log")
			}
			c.release(ctx)
			c.pause(ctx, c.check())
			continue
		}
		started := time.Now()
		if err == nil {
			err = c.markFailed(ctx)
		}
		if err == nil {
			err = c.runUntilChanged(ctx, sources)
		}
		if ctx.Err() != nil {
			return
		}
		if time.Since(started) > 30*time.Second {
			backoff = 100 * time.Millisecond // it ran: a new outage starts the backoff over
		}
		if errors.Is(err, errSourcesChanged) {
			backoff = 100 * time.Millisecond
			continue
		}
		c.Logger.Warn().Err(err).Str("system", c.System).Dur("retry_in", backoff).Msg("capture stopped; restarting")
		retry.Sleep(ctx, backoff)
		backoff = min(2*backoff, 30*time.Second)
	}
}

func (c *Runner) pruneEvery() time.Duration {
	if c.PruneEvery > 0 {
		return c.PruneEvery
	}
	return 30 * time.Second
}

// prune drops the log's changes of the captured versions that every
// subscriber has read: the compacted state is what new subscribers copy.
func (c *Runner) prune(ctx context.Context, sources []Source) {
	for _, s := range sources {
		n, err := c.Log.Prune(ctx, s.Version)
		if err != nil {
			c.Logger.Warn().Err(err).Str("publication", s.Version.Publication).Int("version", s.Version.Number).Msg("cannot prune the event log")
			continue
		}
		if n > 0 {
			c.Logger.Debug().Str("publication", s.Version.Publication).Int("version", s.Version.Number).Int64("changes", n).Msg("event log pruned")
		}
	}
}

var errSourcesChanged = errors.New("the published versions changed")

func (c *Runner) check() time.Duration {
	if c.Check > 0 {
		return c.Check
	}
	return 2 * time.Second
}

// runUntilChanged runs a publisher for sources until it fails or the
// published versions change.
func (c *Runner) runUntilChanged(ctx context.Context, sources []Source) error {
	run, stop := context.WithCancel(ctx)
	defer stop()
	p := &WALReader{URL: c.URL, System: c.System, Log: c.Log, Sources: sources, Logger: c.Logger,
		Failed: func(p VersionProblem, definition string) { c.failed(p, definition); c.Wake() }, Mended: c.mended}
	done := make(chan error, 1)
	go func() { done <- p.Run(run) }()
	want := c.fingerprint(sources)
	t := time.NewTicker(c.check())
	defer t.Stop()
	lastPrune := time.Now()
	for {
		select {
		case err := <-done:
			return err
		case <-c.woken():
		case <-t.C:
			if time.Since(lastPrune) > c.pruneEvery() {
				lastPrune = time.Now()
				c.prune(ctx, sources)
			}
		}
		if now, err := c.load(ctx); err == nil && c.fingerprint(now) != want {
			stop()
			<-done
			return errSourcesChanged
		}
	}
}

// fingerprint identifies what a reader captures: the sources, and how
// many times a version failed (a reader that quarantined one goes on
// without it until it is restarted).
func (c *Runner) fingerprint(sources []Source) string {
	var b strings.Builder
	c.mu.Lock()
	fmt.Fprintf(&b, "%d;", c.generation)
	c.mu.Unlock()
	for _, s := range sources {
		// Renames too: they change no version's rows, but how its table
		// is read (the session starts again, no fill).
		fmt.Fprintf(&b, "%s/%d/%s/%v;", s.Version.Publication, s.Version.Number, s.Definition(), s.Renamed)
	}
	return b.String()
}

// load reads the versions to capture from the owner's record: every
// version not retired, its query analysed again for the expressions.
// It keeps its connection between checks, and drops it on any error.
func (c *Runner) load(ctx context.Context) ([]Source, error) {
	if c.conn == nil {
		conn, err := connectOwner(ctx, c.URL)
		if err != nil {
			return nil, err
		}
		c.conn = conn
	}
	sources, err := c.read(ctx)
	if err != nil {
		c.conn.Close(context.WithoutCancel(ctx))
		c.conn = nil
	}
	return sources, err
}

func (c *Runner) read(ctx context.Context) ([]Source, error) {
	if err := c.checkSetup(ctx, c.conn); err != nil {
		return nil, err
	}
	slot := SlotName(c.System)
	defer c.setDegradedMetric()
	var retained, pending *int64
	var confirmed *string
	err := c.conn.QueryRow(ctx, `SELECT (pg_current_wal_lsn() - restart_lsn)::int8,
			(pg_current_wal_lsn() - confirmed_flush_lsn)::int8, confirmed_flush_lsn::text
		FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`, slot).Scan(&retained, &pending, &confirmed)
	c.watchSlot(slot, confirmed, pending, err)
	switch {
	case err == nil && retained != nil:
		metricSlotRetained.WithLabelValues(slot).Set(float64(*retained))
	case err == nil: // invalidated: it keeps nothing (and is made anew)
		metricSlotRetained.WithLabelValues(slot).Set(0)
	case errors.Is(err, pgx.ErrNoRows):
		metricSlotRetained.DeleteLabelValues(slot) // no slot keeps anything
	}
	if c.Problem() != "" {
		return nil, nil // nothing can be captured until the setup changes
	}
	sources, problems, err := LoadSources(ctx, c.conn)
	if err != nil {
		return nil, err
	}
	return c.screen(ctx, sources, problems)
}

// watchSlot follows the slot's confirmations (Degraded).
func (c *Runner) watchSlot(slot string, confirmed *string, pending *int64, err error) {
	switch {
	case err == nil && confirmed != nil && pending != nil:
		c.slot.saw(slot, *confirmed, *pending, time.Now())
	case err == nil || errors.Is(err, pgx.ErrNoRows):
		c.slot.saw(slot, "", 0, time.Now()) // no slot, or invalidated: it keeps nothing
	}
}

// VersionProblems says which publication versions are not captured and
// why ("" when every one is), as last checked: the system shows it in the
// catalog (rejot.systems' problem) beside Problem; FailedVersions has
// them one by one.
func (c *Runner) VersionProblems() string {
	var out []string
	for _, f := range c.FailedVersions() {
		out = append(out, f.Problem)
	}
	return strings.Join(out, "; ")
}
