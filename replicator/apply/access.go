package apply

import (
	"context"
	"errors"
	"time"

	"github.com/rejot-dev/rejot/internal/retry"
	"github.com/rejot-dev/rejot/managed"
)

// The event log serves any version to whoever holds its credentials, so
// the apply asks the catalog, the judge of grants, whether its system may
// read a version: before it copies, and while it streams, at most every
// accessEvery.
const (
	accessEvery   = time.Second
	accessTimeout = 2 * time.Second
)

// errRevoked: the system may not read the version; the worker stops, and
// stays stopped until the subscription is resynced (or the sidecar
// restarts) with access granted again.
var errRevoked = errors.New("this system may not read the version")

// checkAccess asks the catalog whether the worker's system may read its
// version, and stops the subscription when it may not. A catalog that
// does not answer leaves the last answer standing; before any answer the
// worker waits for one, so it copies nothing it may not have.
func (w *worker) checkAccess(ctx context.Context) error {
	if w.s.Access == nil {
		return nil
	}
	for {
		actx, cancel := context.WithTimeout(ctx, accessTimeout)
		reason, err := w.s.Access(actx, w.sub.version)
		cancel()
		w.accessAt = time.Now()
		switch {
		case err == nil && reason != "":
			return w.revoked(ctx, reason)
		case err == nil:
			w.accessKnown = true
			return nil
		case w.accessKnown:
			return nil
		}
		w.log().Debug().Err(err).Msg("waiting for the catalog to say whether this system may read the version")
		retry.Sleep(ctx, 500*time.Millisecond)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// recheckAccess is checkAccess, at most every accessEvery.
func (w *worker) recheckAccess(ctx context.Context) error {
	if w.s.Access == nil || time.Since(w.accessAt) < accessEvery {
		return nil
	}
	return w.checkAccess(ctx)
}

// revoked stops the subscription, with the catalog's reason: its rows
// stay as they are, and its place in the log is given up (the log need
// keep nothing for it).
func (w *worker) revoked(ctx context.Context, reason string) error {
	st := *w.status.Load()
	st.Status, st.Error = "stopped", &reason
	w.status.Store(&st)
	if conn, err := connect(ctx, w.s.URL); err == nil {
		if err := managed.RecordStopped(ctx, conn, w.sub.target, w.sub.generation, reason); err != nil {
			w.log().Warn().Err(err).Msg("cannot record that the subscription stopped")
		}
		conn.Close(context.WithoutCancel(ctx))
	}
	if err := w.s.Log.SetReader(ctx, w.sub.version, w.reader(), -1); err != nil {
		w.log().Warn().Err(err).Msg("cannot release the event log")
	}
	w.log().Warn().Str("reason", reason).Msg("subscription stopped: this system may not read the version")
	return errRevoked
}
