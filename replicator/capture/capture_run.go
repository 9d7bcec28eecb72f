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
	"github.com/rejot-dev/rejot/managed"
	"github.com/rejot-dev/rejot/replicator/eventlog"
	"github.com/rejot-dev/rejot/sql"
	"github.com/rs/zerolog"
)

// Runner keeps a Publisher running for the publication versions the
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

	problem  atomic.Pointer[string]
	conn     *pgx.Conn // for reading the owner's record; owned by Run
	running  atomic.Bool
	wakeOnce sync.Once
	wake     chan struct{}
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

// Running says whether the capture's loop is running.
func (c *Runner) Running() bool { return c.running.Load() }

// Run captures until ctx ends.
func (c *Runner) Run(ctx context.Context) {
	c.running.Store(true)
	defer c.running.Store(false)
	defer func() {
		if c.conn != nil {
			c.conn.Close(context.WithoutCancel(ctx))
		}
	}()
	c.load(ctx) // learn at once whether the database can be captured at all
	if c.Log == nil {
		c.Log = retry.Open(ctx, c.Logger, "event log unreachable", c.OpenLog)
	}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		sources, err := c.load(ctx)
		if err == nil && len(sources) == 0 {
			c.pause(ctx, c.check())
			continue
		}
		started := time.Now()
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
	p := &WALReader{URL: c.URL, System: c.System, Log: c.Log, Sources: sources, Logger: c.Logger}
	done := make(chan error, 1)
	go func() { done <- p.Run(run) }()
	want := fingerprint(sources)
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
		if now, err := c.load(ctx); err == nil && fingerprint(now) != want {
			stop()
			<-done
			return errSourcesChanged
		}
	}
}

func fingerprint(sources []Source) string {
	var b strings.Builder
	for _, s := range sources {
		fmt.Fprintf(&b, "%s/%d/%s;", s.Version.Publication, s.Version.Number, s.Definition())
	}
	return b.String()
}

// load reads the versions to capture from the owner's record: every
// version not retired, its query analysed again for the expressions.
// It keeps its connection between checks, and drops it on any error.
func (c *Runner) load(ctx context.Context) ([]Source, error) {
	if c.conn == nil {
		conn, err := pgx.Connect(ctx, c.URL)
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
	var retained *int64
	if err := c.conn.QueryRow(ctx, `SELECT (pg_current_wal_lsn() - restart_lsn)::int8 FROM pg_catalog.pg_replication_slots
		WHERE slot_name = $1`, slot).Scan(&retained); err == nil && retained != nil {
		metricSlotRetained.WithLabelValues(slot).Set(float64(*retained))
	}
	if c.Problem() != "" {
		return nil, nil // nothing can be captured until the setup changes
	}
	return LoadSources(ctx, c.conn)
}

// LoadSources reads the capture sources of the publications recorded in
// the owner's database.
func LoadSources(ctx context.Context, conn *pgx.Conn) ([]Source, error) {
	// An error of the query is also the rows': CollectRows returns it.
	rows, _ := conn.Query(ctx, managed.CapturedVersions)
	type rec struct {
		stream        eventlog.Version
		query         string
		key           []string
		schema, table string
		columns       []string
	}
	recs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (rec, error) {
		var x rec
		return x, r.Scan(&x.stream.Publication, &x.stream.Number, &x.query, &x.key, &x.schema, &x.table, &x.columns)
	})
	if noRecord(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	sources := make([]Source, 0, len(recs))
	for _, r := range recs {
		src, err := NewSource(r.stream, r.query, r.key, r.schema, r.table)
		if err != nil {
			return nil, err
		}
		if err := src.Order(r.columns); err != nil {
			return nil, err
		}
		sources = append(sources, src)
	}
	return sources, nil
}

// noRecord says whether err is the owner's record being missing: no
// _rejot yet. The sidecar installs it as it starts, and nothing can be
// published before, so there is nothing to capture.
func noRecord(err error) bool {
	return managed.NotInstalled(err)
}

// NewSource makes the capture source of a publication version from its
// published query, public key columns and (resolved) table.
func NewSource(stream eventlog.Version, query string, key []string, schema, table string) (Source, error) {
	a, perr := sql.AnalyzeProjection(query)
	if perr != nil {
		return Source{}, fmt.Errorf("publication %s version %d: %w", stream.Publication, stream.Number, perr)
	}
	src := Source{Schema: schema, Table: table, References: a.References}
	src.Version, src.Filter = stream, a.Filter
	for i, col := range a.Columns {
		src.Exprs = append(src.Exprs, col.Expr)
		src.Names = append(src.Names, col.Name)
		src.Sources = append(src.Sources, col.Source)
		for _, k := range key {
			if col.Name == k {
				src.KeyCols = append(src.KeyCols, i)
				src.KeySources = append(src.KeySources, col.Source)
			}
		}
	}
	return src, nil
}

// Order puts the public columns in the order the version's columns are
// recorded (the first minor's columns first, then those each minor added),
// so every row the log holds for a version reads the same way: a row
// appended before a minor added columns is a prefix of one appended after.
func (s *Source) Order(columns []string) error {
	at := map[string]int{}
	for i, c := range s.Names {
		at[c] = i
	}
	if len(columns) != len(s.Names) {
		return fmt.Errorf("publication %s version %d: recorded with %d columns, its query has %d", s.Version.Publication, s.Version.Number, len(columns), len(s.Names))
	}
	exprs, sources := make([]string, len(columns)), make([]string, len(columns))
	for i, c := range columns {
		j, ok := at[c]
		if !ok {
			return fmt.Errorf("publication %s version %d: recorded column %s is not in its query", s.Version.Publication, s.Version.Number, c)
		}
		exprs[i], sources[i] = s.Exprs[j], s.Sources[j]
	}
	// The key in the recorded order too: deletes carry it.
	keySource := map[string]string{}
	for k, j := range s.KeyCols {
		keySource[s.Names[j]] = s.KeySources[k]
	}
	var keys []int
	var keySources []string
	for i, c := range columns {
		if src, ok := keySource[c]; ok {
			keys, keySources = append(keys, i), append(keySources, src)
		}
	}
	s.KeySources = keySources
	s.Exprs, s.KeyCols, s.Names, s.Sources = exprs, keys, columns, sources
	return nil
}

// Definition identifies what a source's rows are: when it changes (a new
// minor, a new filter), the version's state is filled again.
func (s *Source) Definition() string {
	return fmt.Sprintf("%s.%s/%q/%q/%v", s.Schema, s.Table, s.Exprs, s.Filter, s.KeyCols)
}
