// Package retry paces the sidecar's retries: a wait that ends with its
// context, and a loop that opens something until it works.
package retry

import (
	"context"
	"time"

	"github.com/rs/zerolog"
)

// Sleep waits for d, or until ctx ends.
func Sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// Open calls open, with backoff, until it works or ctx ends (then it
// returns the zero value). The first failures are logged quietly, as
// unreachable: at start the thing opened may still be being created (the
// event log's database defaults to the catalog's, created on first use).
func Open[T any](ctx context.Context, logger zerolog.Logger, unreachable string, open func(context.Context) (T, error)) T {
	backoff := 100 * time.Millisecond
	for {
		v, err := open(ctx)
		if err == nil || ctx.Err() != nil {
			return v
		}
		event := logger.Warn()
		if backoff < 2*time.Second {
			event = logger.Debug()
		}
		event.Err(err).Dur("retry_in", backoff).Msg(unreachable)
		Sleep(ctx, backoff)
		backoff = min(2*backoff, 30*time.Second)
	}
}
