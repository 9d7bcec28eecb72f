package apply

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestWatchProgress: work that keeps moving is never cut off, however
// long it takes; work that stops moving is, with errStalled as the cause;
// stop ends the watcher and the context.
func TestWatchProgress(t *testing.T) {
	// Three times as long as the stall period, moving all along.
	ctx, p, stop := watchProgress(context.Background(), time.Second)
	for start := time.Now(); time.Since(start) < 3*time.Second; time.Sleep(10 * time.Millisecond) {
		p.moved()
	}
	if err := ctx.Err(); err != nil {
		t.Fatalf("moving work was cut off: %v", context.Cause(ctx))
	}
	stop()
	if ctx.Err() == nil || errors.Is(context.Cause(ctx), errStalled) {
		t.Fatalf("after stop: %v, cause %v", ctx.Err(), context.Cause(ctx))
	}

	ctx, _, stop = watchProgress(context.Background(), 50*time.Millisecond)
	defer stop()
	select {
	case <-ctx.Done():
	case <-time.After(time.Minute):
		t.Fatal("work that stopped moving was never cut off")
	}
	if !errors.Is(context.Cause(ctx), errStalled) {
		t.Fatalf("cause: %v", context.Cause(ctx))
	}
	err := stalled(ctx, context.Canceled)
	if !errors.Is(err, errStalled) {
		t.Fatalf("stalled: %v", err)
	}
	if err := stalled(context.Background(), nil); err != nil {
		t.Fatalf("no error: %v", err)
	}
}
