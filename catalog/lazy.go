package catalog

import (
	"context"
	"errors"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rejot-dev/rejot/internal/pgerr"
	"github.com/rs/zerolog"
)

// ErrUnavailable: the catalog has not been reached (yet).
var ErrUnavailable = errors.New("the catalog is not reachable")

// Lazy keeps a catalog open in the background: it connects (and migrates)
// with backoff, registers the system, heartbeats, and reconnects, so that a
// sidecar serves its database whether or not the catalog is up.
type Lazy struct {
	URL string
	// CreateFrom, when set, is a connection URL on the catalog's server
	// from which the catalog database is created if it is missing.
	CreateFrom string
	System     System
	Heartbeat  time.Duration // default 10s
	// Problem, when set, says what is wrong with the system's setup ("" when
	// nothing is); each heartbeat records it in rejot.systems.
	Problem func() string
	// Failures, when set, are the system's publication versions that
	// cannot be computed; each heartbeat records them in
	// rejot.publications (status failed, problem), within a second of a
	// change; nil when they are not known yet.
	Failures func() []VersionFailure
	// Refused, when set, is told that the catalog refuses to register the
	// system (its name belongs to another catalog role); Run then stops
	// trying. Unset, Run keeps trying, logging why.
	Refused func(error)
	// Instance, when its ID is set, is this sidecar process: each
	// heartbeat records it in rejot.instances, and it is removed there
	// when Run ends.
	Instance Instance
	// Role, when set, is the instance's role now (RoleActive or
	// RoleStandby; unset: active). A standby's heartbeat marks the system
	// seen but leaves its address, problem and failed versions to the
	// active instance, the one that captures; a change of role is
	// recorded within a second.
	Role func() string
	// StaleAfter is how long an instance of the system may go without a
	// heartbeat before its row is removed (default DefaultStaleAfter).
	StaleAfter time.Duration
	Logger     zerolog.Logger

	cur atomic.Pointer[Catalog]
	// tried: the first attempt to connect has ended, either way; lastErr
	// is why the last one failed.
	tried   atomic.Bool
	lastErr atomic.Pointer[string]
	// instanceErr is why the instance's row could not be recorded last
	// ("" when it was), logged when it changes.
	instanceErr string
	hurryOnce   sync.Once
	hurry       chan struct{}
}

// Run keeps the catalog open until ctx ends.
func (l *Lazy) Run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	every := l.Heartbeat
	if every <= 0 {
		every = 10 * time.Second
	}
	for ctx.Err() == nil {
		c, err := l.open(ctx)
		refused := false
		if err == nil {
			err = c.registerSystem(ctx, l.System, l.role() == RoleActive)
			refused = pgerr.Is(err, pgerr.InsufficientPrivilege)
			if err == nil {
				err = l.heartbeat(ctx, c)
			}
			if err != nil {
				c.Close()
			}
		}
		if refused {
			l.Logger.Error().Err(err).Str("system", l.System.Name).Msg("the catalog refuses this system")
			if l.Refused != nil {
				l.Refused(err)
				return
			}
		}
		if err != nil {
			msg := err.Error()
			l.lastErr.Store(&msg)
			l.tried.Store(true)
			l.Logger.Warn().Err(err).Dur("retry_in", backoff).Msg("catalog unreachable")
			if l.pause(ctx, backoff) {
				backoff = 100 * time.Millisecond // a call waits for the catalog
			} else {
				backoff = min(2*backoff, 30*time.Second)
			}
			continue
		}
		backoff = 100 * time.Millisecond
		l.Logger.Info().Str("system", l.System.Name).Msg("catalog connected, system registered")
		l.cur.Store(c)
		l.tried.Store(true)
		l.beat(ctx, c, every)
		l.cur.Store(nil)
		if ctx.Err() != nil {
			l.removeInstance(c)
		}
		c.Close()
	}
}

// removeInstance removes the instance's row as the sidecar stops, so that
// rejot.instances does not show it until it is stale.
func (l *Lazy) removeInstance(c *Catalog) {
	if l.Instance.ID == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.RemoveInstance(ctx, l.System.Name, l.Instance.ID); err != nil {
		l.Logger.Warn().Err(err).Str("system", l.System.Name).Msg("cannot remove this instance from rejot.instances; it goes when stale")
	}
}

func (l *Lazy) hurried() chan struct{} {
	l.hurryOnce.Do(func() { l.hurry = make(chan struct{}, 1) })
	return l.hurry
}

// Hurry makes a connection attempt waiting out its backoff try now: a
// call is waiting for the catalog.
func (l *Lazy) Hurry() {
	select {
	case l.hurried() <- struct{}{}:
	default:
	}
}

// pause waits for d, or less when hurried (then it says true).
func (l *Lazy) pause(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-l.hurried():
		return true
	}
	return false
}

// Tried says whether the first attempt to connect has ended, either way:
// before, the sidecar is still starting.
func (l *Lazy) Tried() bool { return l.tried.Load() }

// LastError is why the last attempt to connect failed ("" before any did).
func (l *Lazy) LastError() string {
	if p := l.lastErr.Load(); p != nil {
		return *p
	}
	return ""
}

func (l *Lazy) open(ctx context.Context) (*Catalog, error) {
	if l.CreateFrom != "" {
		cfg, err := pgconn.ParseConfig(l.URL)
		if err != nil {
			return nil, err
		}
		if err := EnsureDatabase(ctx, l.CreateFrom, cfg.Database); err != nil {
			return nil, err
		}
	}
	c, err := Open(ctx, l.URL)
	if l.CreateFrom == "" && pgerr.Is(err, pgerr.InvalidCatalogName) {
		// A catalog named explicitly but not there yet: create it from
		// the maintenance database of its server, as the default is.
		cfg, perr := pgconn.ParseConfig(l.URL)
		admin, aerr := withDatabase(l.URL, "postgres")
		if perr == nil && aerr == nil {
			if err := EnsureDatabase(ctx, admin, cfg.Database); err != nil {
				return nil, err
			}
			return Open(ctx, l.URL)
		}
	}
	return c, err
}

// withDatabase is a connection URL with another database.
func withDatabase(connURL, db string) (string, error) {
	if strings.HasPrefix(connURL, "postgres://") || strings.HasPrefix(connURL, "postgresql://") {
		u, err := url.Parse(connURL)
		if err != nil {
			return "", err
		}
		u.Path = "/" + db
		u.RawPath = ""
		return u.String(), nil
	}
	return connURL + " dbname=" + db, nil
}

// DefaultURL is the catalog's default: the database rejot on the upstream's
// server, reached as the upstream is.
func DefaultURL(upstream string) (string, error) {
	return withDatabase(upstream, "rejot")
}

// beat heartbeats until ctx ends or the catalog stops answering; a change
// of the setup problem is recorded within a second.
func (l *Lazy) beat(ctx context.Context, c *Catalog, every time.Duration) {
	t := time.NewTicker(min(every, time.Second))
	defer t.Stop()
	last, said := time.Now(), l.said()
	for {
		hurried := false
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-l.hurried():
			hurried = true // a call found the catalog not answering
		}
		now := l.said()
		if !hurried && time.Since(last) < every && now == said {
			continue
		}
		if err := l.heartbeat(ctx, c); err != nil && ctx.Err() == nil {
			l.Logger.Warn().Err(err).Msg("catalog heartbeat failed; reconnecting")
			return
		}
		last, said = time.Now(), now
	}
}

// heartbeat marks the system seen, with its problems, and the instance.
func (l *Lazy) heartbeat(ctx context.Context, c *Catalog) error {
	role := l.role()
	if role != RoleActive {
		if err := c.Seen(ctx, l.System.Name); err != nil {
			return err
		}
		l.heartbeatInstance(ctx, c, role)
		return nil
	}
	if err := c.Heartbeat(ctx, l.System.Name, l.problem()); err != nil {
		return err
	}
	l.heartbeatInstance(ctx, c, role)
	if l.Failures == nil {
		return nil
	}
	return c.ReportFailures(ctx, l.System.Name, l.Failures())
}

// heartbeatInstance records the instance's row. A failure is logged, not
// returned: a catalog role without the privilege (granted before this
// release's migration made the table) must not keep the sidecar from the
// catalog.
func (l *Lazy) heartbeatInstance(ctx context.Context, c *Catalog, role string) {
	if l.Instance.ID == "" {
		return
	}
	in := l.Instance
	in.Role = role
	stale := l.StaleAfter
	if stale <= 0 {
		stale = DefaultStaleAfter
	}
	why := ""
	if err := c.HeartbeatInstance(ctx, l.System, in, stale); err != nil {
		why = err.Error()
	}
	if why != l.instanceErr && why != "" && ctx.Err() == nil {
		l.Logger.Warn().Str("system", l.System.Name).Str("error", why).
			Msg("cannot record this instance in rejot.instances (grant the sidecar's catalog role the privileges of guide.md again)")
	}
	l.instanceErr = why
}

func (l *Lazy) role() string {
	if l.Role == nil {
		return RoleActive
	}
	return l.Role()
}

// said is what a heartbeat records, to notice a change.
func (l *Lazy) said() string {
	said := l.role() + "\x00" + l.problem()
	if l.Failures != nil {
		for _, f := range l.Failures() {
			said += "\x00" + f.Publication + "\x00" + strconv.Itoa(f.Version) + "\x00" + f.Problem
		}
	}
	return said
}

func (l *Lazy) problem() string {
	if l.Problem == nil {
		return ""
	}
	return l.Problem()
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func (l *Lazy) current() *Catalog { return l.cur.Load() }

// Ready reports whether the catalog is connected now.
func (l *Lazy) Ready() bool { return l.cur.Load() != nil }

// Claim is Catalog.Claim on the current catalog.
func (l *Lazy) Claim(ctx context.Context, name, system string) (string, error) {
	c := l.cur.Load()
	if c == nil {
		return "", ErrUnavailable
	}
	return c.Claim(ctx, name, system)
}

// RelationColumns is Catalog.RelationColumns on the current catalog.
func (l *Lazy) RelationColumns(ctx context.Context, rel string) ([]RelationColumn, error) {
	c := l.cur.Load()
	if c == nil {
		return nil, ErrUnavailable
	}
	return c.RelationColumns(ctx, rel)
}

// RelationRows is Catalog.RelationRows on the current catalog.
func (l *Lazy) RelationRows(ctx context.Context, rels []string) ([]string, error) {
	c := l.cur.Load()
	if c == nil {
		return nil, ErrUnavailable
	}
	return c.RelationRows(ctx, rels)
}

// ActiveSubscriptions is Catalog.ActiveSubscriptions on the current catalog.
func (l *Lazy) ActiveSubscriptions(ctx context.Context, publication string, version int) (int64, error) {
	c := l.cur.Load()
	if c == nil {
		return 0, ErrUnavailable
	}
	return c.ActiveSubscriptions(ctx, publication, version)
}

// VersionColumns is Catalog.VersionColumns on the current catalog.
func (l *Lazy) VersionColumns(ctx context.Context, publication string, version int) (string, []Column, bool, error) {
	c := l.cur.Load()
	if c == nil {
		return "", nil, false, ErrUnavailable
	}
	return c.VersionColumns(ctx, publication, version)
}

// VersionAccess is Catalog.VersionAccess on the current catalog.
func (l *Lazy) VersionAccess(ctx context.Context, publication string, version int) (string, string, []string, bool, error) {
	c := l.cur.Load()
	if c == nil {
		return "", "", nil, false, ErrUnavailable
	}
	return c.VersionAccess(ctx, publication, version)
}

// MaxResult is Catalog.MaxResult of the current catalog, or the default.
func (l *Lazy) MaxResult() int {
	if c := l.cur.Load(); c != nil {
		return c.MaxResult()
	}
	return DefaultMaxResultBytes
}

// ReportSubscriptions records how the system's subscriptions are doing,
// when the catalog is reachable.
func (l *Lazy) ReportSubscriptions(ctx context.Context, reports []SubscriptionReport) error {
	c := l.cur.Load()
	if c == nil {
		return ErrUnavailable
	}
	return c.ReportSubscriptions(ctx, l.System.Name, reports)
}

// Check checks that the catalog answers; when it does not, the
// connection is tested at once (and made anew if it broke) rather than at
// the next heartbeat.
func (l *Lazy) Check(ctx context.Context) error {
	if err := l.Ping(ctx); err != nil {
		l.Hurry()
		return err
	}
	return nil
}

// Ping checks that the catalog answers.
func (l *Lazy) Ping(ctx context.Context) error {
	c := l.cur.Load()
	if c == nil {
		return ErrUnavailable
	}
	return c.pool.Ping(ctx)
}
