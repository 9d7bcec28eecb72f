package catalog

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/managed"
	"github.com/rs/zerolog"
)

// Applier applies a system's committed calls from the outbox in its
// database (_rejot.commands) to the catalog, in order, once each. It is
// woken by a NOTIFY on managed.ChannelCommands when a call commits, and polls as well,
// so calls committed while the catalog or the sidecar was down are applied
// when both are back.
type Applier struct {
	Upstream string // the managed database, as the sidecar's own role
	System   string
	Catalog  *Lazy
	Poll     time.Duration // default 5s
	// ClaimTTL is how long a name claimed by a publish that never
	// committed stays reserved (default 1h: longer than any sane
	// transaction that publishes).
	ClaimTTL time.Duration
	Logger   zerolog.Logger
	// Prepare runs on each new connection before anything is applied: the
	// sidecar installs its schema _rejot there.
	Prepare func(context.Context, *pgx.Conn) error
	// Applied, when set, is called after each command the catalog took
	// (the sidecar wakes its capture: a publish starts a first fill).
	Applied func(kind string)
}

// Run applies commands until ctx ends.
func (a *Applier) Run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := a.session(ctx)
		if ctx.Err() != nil {
			return
		}
		a.Logger.Warn().Err(err).Dur("retry_in", backoff).Msg("outbox applier stopped; restarting")
		sleep(ctx, backoff)
		backoff = min(2*backoff, 30*time.Second)
	}
}

// session listens and applies on one connection until it fails.
func (a *Applier) session(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, a.Upstream)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if a.Prepare != nil {
		if err := a.Prepare(ctx, conn); err != nil {
			return err
		}
	}
	if err := managed.ListenCommands(ctx, conn); err != nil {
		return err
	}
	poll := a.Poll
	if poll <= 0 {
		poll = 5 * time.Second
	}
	for {
		if err := a.applyPending(ctx, conn); err != nil {
			return err
		}
		next := poll
		if a.Catalog.current() == nil {
			next = min(poll, 200*time.Millisecond) // catch up as soon as the catalog is reached
		}
		wait, cancel := context.WithTimeout(ctx, next)
		_, err := conn.WaitForNotification(wait)
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil && wait.Err() == nil {
			return err
		}
	}
}

// applyPending applies the outbox's unapplied commands, oldest first; it
// stops at the first one the catalog cannot take now.
func (a *Applier) applyPending(ctx context.Context, conn *pgx.Conn) error {
	c := a.Catalog.current()
	if c == nil {
		return nil // not connected yet: the next poll tries again
	}
	cmds, err := managed.PendingCommands(ctx, conn, 100)
	if err != nil {
		return err
	}
	if err := a.applyAll(ctx, conn, c, cmds); err != nil {
		return err
	}
	return a.releaseClaims(ctx, conn, c)
}

func (a *Applier) applyAll(ctx context.Context, conn *pgx.Conn, c *Catalog, cmds []managed.Command) error {
	for _, cmd := range cmds {
		outcome := ""
		if err := c.Apply(ctx, a.System, cmd.UID, cmd.ID, cmd.Kind, cmd.Payload); err != nil {
			if !IsRefusal(err) {
				a.Logger.Warn().Err(err).Int64("command", cmd.ID).Msg("cannot apply to the catalog yet")
				return nil
			}
			outcome = err.Error()
			a.Logger.Error().Err(err).Int64("command", cmd.ID).Str("kind", cmd.Kind).Msg("command refused by the catalog")
		} else {
			a.Logger.Info().Int64("command", cmd.ID).Str("kind", cmd.Kind).Msg("command applied to the catalog")
			if a.Applied != nil {
				a.Applied(cmd.Kind)
			}
		}
		if err := managed.MarkApplied(ctx, conn, cmd.ID, outcome); err != nil {
			return err
		}
	}
	return nil
}

// releaseClaims gives back names whose publish was rolled back.
func (a *Applier) releaseClaims(ctx context.Context, conn *pgx.Conn, c *Catalog) error {
	ttl := a.ClaimTTL
	if ttl <= 0 {
		ttl = time.Hour
	}
	keep, err := managed.RecordedPublications(ctx, conn)
	if err != nil {
		return err
	}
	n, err := c.ReleaseStaleClaims(ctx, a.System, keep, ttl)
	if err != nil {
		a.Logger.Warn().Err(err).Msg("cannot release stale name claims")
	} else if n > 0 {
		a.Logger.Info().Int64("names", n).Msg("released names claimed by publishes that never committed")
	}
	return nil
}
