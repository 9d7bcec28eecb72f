package sql

import (
	"context"
	"time"

	"github.com/rejot-dev/rejot/internal/pgerr"
)

// Need is what a call needs of the sidecar before it can run.
type Need struct {
	Managed bool // the database's _rejot, installed
	Catalog bool // the catalog, connected
}

// DefaultStartWait is how long a call waits, by default, for what it
// needs while the sidecar is starting or the catalog is unreachable.
const DefaultStartWait = 30 * time.Second

// startPoll is how often a waiting call looks again.
const startPoll = 50 * time.Millisecond

// needOf is what a function needs: every call waits for the sidecar's
// first look at the catalog (Executor.Waiting decides what that means).
func needOf(f *Function) Need { return Need{Managed: f.Records, Catalog: f.ReadsCatalog} }

// waitUntilServable waits, at most StartWait, until Waiting says nothing
// keeps the sidecar from serving a call that needs need; then it answers
// 57P03 with what it was still waiting for. A call that arrives as the
// sidecar starts (a migration job started with it) runs as soon as it
// can instead of failing.
func (x *Executor) waitUntilServable(ctx context.Context, need Need) error {
	if x.Waiting == nil {
		return nil
	}
	what := x.Waiting(ctx, need)
	if what == "" {
		return nil
	}
	if x.Hurry != nil {
		x.Hurry()
	}
	wait := x.StartWait
	if wait <= 0 {
		wait = DefaultStartWait
	}
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	tick := time.NewTicker(startPoll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return pgerr.Errorf(pgerr.CannotConnectNow, "%s (waited %s)", what, wait).
				WithHint("Retry in a moment; the sidecar's /readyz and its log say what it is waiting for.")
		case <-tick.C:
		}
		if what = x.Waiting(ctx, need); what == "" {
			return nil
		}
	}
}
