package apply

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// defaultStall is how long applying may go without progress before it
// is abandoned and retried.
const defaultStall = time.Minute

// errStalled: applying made no progress for the stall period.
var errStalled = errors.New("applying made no progress")

// progress bounds work by its progress rather than by its size: a span,
// a source transaction or a first fill is as large as the data, and no
// deadline fits every size, but each step of it (a chunk read, a
// statement run) is small.
type progress struct {
	last atomic.Int64 // when it last moved, in Unix nanoseconds
}

// moved records a step.
func (p *progress) moved() { p.last.Store(time.Now().UnixNano()) }

func (p *progress) since() time.Duration { return time.Since(time.Unix(0, p.last.Load())) }

// watchProgress returns a context that ends with ctx, or with errStalled
// as its cause once the progress has not moved for stall; stop releases
// it and waits for its watcher to end.
func watchProgress(ctx context.Context, stall time.Duration) (watched context.Context, p *progress, stop func()) {
	watched, cancel := context.WithCancelCause(ctx)
	p = &progress{}
	p.moved()
	quit, ended := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(ended)
		t := time.NewTicker(max(stall/8, 10*time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-watched.Done():
				return
			case <-t.C:
			}
			if p.since() > stall {
				cancel(fmt.Errorf("%w for %s", errStalled, stall))
				return
			}
		}
	}()
	return watched, p, func() {
		close(quit)
		<-ended
		cancel(nil)
	}
}

// stalled is err, or why the work was abandoned when its progress
// stalled.
func stalled(watched context.Context, err error) error {
	if cause := context.Cause(watched); err != nil && errors.Is(cause, errStalled) {
		return fmt.Errorf("%w (%v)", cause, err)
	}
	return err
}
