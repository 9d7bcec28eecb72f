// Package lease decides which of several sidecars of one system is active:
// the one holding the system's lease, a session-level advisory lock in the
// managed database, taken on a connection of its own. Postgres releases
// the lock when that session ends, however the holder went: a clean stop,
// kill -9 (the kernel closes the socket), a lost network (TCP keepalives
// on both ends), or a process that hangs (the session goes idle past
// idle_session_timeout, because a live holder checks it every second).
package lease

import (
	"context"
	"fmt"
	"hash/fnv"
	"net"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/internal/pgerr"
	"github.com/rs/zerolog"
)

// Namespace is the advisory lock's first key, the same for every system:
// "rjot". The second is a hash of the system's name (Key).
const Namespace int32 = 0x726a6f74

// Defaults of a Lease's timings.
const (
	DefaultPoll  = time.Second      // a standby's attempts
	DefaultCheck = time.Second      // the holder's checks of its session
	DefaultIdle  = 10 * time.Second // idle_session_timeout of the lease's session
)

// Key is the advisory lock's second key for a system.
func Key(system string) int32 {
	h := fnv.New32a()
	h.Write([]byte(system))
	return int32(h.Sum32())
}

// Lease takes and holds the lease of System in the database at URL.
type Lease struct {
	URL    string
	System string
	Poll   time.Duration // how often a standby tries to take the lease (default DefaultPoll)
	// Check is how often the holder checks that its session is alive
	// (default DefaultCheck); a check that fails, or takes longer than
	// Idle, loses the lease.
	Check time.Duration
	// Idle is the lease session's idle_session_timeout (default
	// DefaultIdle): a holder that stops checking for that long, hung, is
	// ended by Postgres, and its lease released.
	Idle   time.Duration
	Logger zerolog.Logger

	active atomic.Bool
}

// Active says whether this process holds the lease now.
func (l *Lease) Active() bool { return l.active.Load() }

// Run takes the lease whenever it is free and, while it holds it, runs
// active with a context that ends as soon as the lease is lost (or ctx
// ends). It returns when ctx ends, after active has returned; the lease
// is released last, so that another process takes over only once active
// has stopped.
func (l *Lease) Run(ctx context.Context, active func(context.Context)) {
	l.setActive(false)
	said := ""
	for ctx.Err() == nil {
		conn, err := l.connect(ctx)
		if err == nil {
			err = l.wait(ctx, conn, active)
			conn.Close(context.WithoutCancel(ctx))
		}
		if ctx.Err() != nil {
			return
		}
		if why := err.Error(); why != said {
			said = why
			l.Logger.Warn().Err(err).Str("system", l.System).Msg("cannot take or hold the lease; trying again")
		}
		sleep(ctx, l.poll())
	}
}

// wait tries to take the lease on conn every Poll and holds it once
// taken; it returns when conn fails, the lease is lost, or ctx ends.
func (l *Lease) wait(ctx context.Context, conn *pgx.Conn, active func(context.Context)) error {
	standby := false
	for {
		var got bool
		if err := conn.QueryRow(ctx, "SELECT pg_catalog.pg_try_advisory_lock($1, $2)", Namespace, Key(l.System)).Scan(&got); err != nil {
			return fmt.Errorf("cannot try the lease: %w", err)
		}
		if got {
			return l.hold(ctx, conn, active)
		}
		if !standby {
			standby = true
			l.Logger.Info().Str("system", l.System).Str("holder", l.holder(ctx, conn)).
				Msg("standby: another instance holds the lease (it captures and applies); this one relays and waits")
		}
		if !sleep(ctx, l.poll()) {
			return ctx.Err()
		}
	}
}

// holder names the session holding the lease, for the log.
func (l *Lease) holder(ctx context.Context, conn *pgx.Conn) string {
	var who string
	err := conn.QueryRow(ctx, `SELECT coalesce(a.client_addr::text, 'local') || ' pid ' || l.pid
		FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
		  AND l.classid::int8 = ($1::int8 & 4294967295) AND l.objid::int8 = ($2::int8 & 4294967295) AND l.objsubid = 2
		LIMIT 1`, int64(Namespace), int64(Key(l.System))).Scan(&who)
	if err != nil {
		return "unknown"
	}
	return who
}

// hold runs active while the lease's session answers.
func (l *Lease) hold(ctx context.Context, conn *pgx.Conn, active func(context.Context)) error {
	run, lose := context.WithCancel(ctx)
	defer lose()
	l.setActive(true)
	defer l.setActive(false)
	l.Logger.Info().Str("system", l.System).Msg("active: this instance holds the lease; it captures and applies")
	done := make(chan struct{})
	go func() {
		defer close(done)
		active(run)
	}()
	t := time.NewTicker(l.check())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			<-done // stopped cleanly; closing the session releases the lease
			return ctx.Err()
		case <-t.C:
		}
		if err := l.ping(ctx, conn); err != nil && ctx.Err() == nil {
			// Stop at once: another instance may take the lease now.
			l.setActive(false)
			lose()
			l.Logger.Error().Err(err).Str("system", l.System).Msg("lease lost: capture and apply stop; standby")
			<-done
			return fmt.Errorf("lease lost: %w", err)
		}
	}
}

// ping checks that the lease's session is alive, within Idle.
func (l *Lease) ping(ctx context.Context, conn *pgx.Conn) error {
	ctx, cancel := context.WithTimeout(ctx, l.idle())
	defer cancel()
	_, err := conn.Exec(ctx, "SELECT 1")
	return err
}

// connect opens the lease's session: TCP keepalives on both ends, so that
// a peer that vanished is noticed in seconds, and an idle session timeout,
// so that a holder that stopped checking loses the lease.
func (l *Lease) connect(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(l.URL)
	if err != nil {
		return nil, err
	}
	if cfg.ConnectTimeout <= 0 || cfg.ConnectTimeout > 10*time.Second {
		cfg.ConnectTimeout = 10 * time.Second
	}
	dialer := &net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 5 * time.Second, Interval: 2 * time.Second, Count: 3}}
	cfg.DialFunc = dialer.DialContext
	cfg.RuntimeParams["application_name"] = "rejot lease " + l.System
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	for _, set := range []string{
		fmt.Sprintf("SET idle_session_timeout = %d", l.idle().Milliseconds()),
		"SET tcp_keepalives_idle = 5", "SET tcp_keepalives_interval = 2", "SET tcp_keepalives_count = 3",
		"SET tcp_user_timeout = 10000",
	} {
		// An older server without a setting goes without it.
		if _, err := conn.Exec(ctx, set); err != nil && !pgerr.Is(err, pgerr.UndefinedObject) {
			conn.Close(context.WithoutCancel(ctx))
			return nil, err
		}
	}
	return conn, nil
}

func (l *Lease) poll() time.Duration  { return orDefault(l.Poll, DefaultPoll) }
func (l *Lease) check() time.Duration { return orDefault(l.Check, DefaultCheck) }
func (l *Lease) idle() time.Duration  { return orDefault(l.Idle, DefaultIdle) }

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// sleep waits d; false when ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
