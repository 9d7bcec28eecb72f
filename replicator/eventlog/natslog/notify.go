package natslog

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// waiter wakes the readers of one version: an ordered push consumer of
// the version's markers (headers only, new ones only) that JetStream
// delivers as each append commits.
type waiter struct {
	mu    sync.Mutex
	ch    chan struct{}
	fired bool // a marker came since the last Wait returned
	cc    jetstream.ConsumeContext
}

// Wait returns when an append to v commits, or after at most d.
func (l *Log) Wait(ctx context.Context, v eventlog.Version, d time.Duration) {
	w := l.waiterOf(ctx, v)
	w.mu.Lock()
	ch, fired := w.ch, w.fired
	w.fired = false
	w.mu.Unlock()
	if fired {
		// An append committed after the reader's last wait: it may not
		// have seen it (a wake-up is never lost between two waits).
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-ch:
		w.mu.Lock()
		w.fired = false
		w.mu.Unlock()
	}
}

func (l *Log) waiterOf(ctx context.Context, v eventlog.Version) *waiter {
	l.mu.Lock()
	w := l.waiters[v]
	if w == nil {
		w = &waiter{ch: make(chan struct{})}
		l.waiters[v] = w
	}
	l.mu.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cc == nil && l.ctx.Err() == nil {
		// Without a consumer (JetStream unreachable) Wait sleeps for d,
		// and the next one tries again.
		w.cc, _ = l.consumeRuns(ctx, v, w)
	}
	return w
}

func (l *Log) consumeRuns(ctx context.Context, v eventlog.Version, w *waiter) (jetstream.ConsumeContext, error) {
	if _, err := l.ensureChangeStream(ctx, v); err != nil {
		return nil, err
	}
	rctx, cancel := request(ctx)
	defer cancel()
	cons, err := l.js.OrderedConsumer(rctx, changeStream(v), jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{runSubject(v)}, DeliverPolicy: jetstream.DeliverNewPolicy, HeadersOnly: true})
	if err != nil {
		return nil, err
	}
	return cons.Consume(func(jetstream.Msg) { w.wake() })
}

func (w *waiter) wake() {
	w.mu.Lock()
	defer w.mu.Unlock()
	close(w.ch)
	w.ch = make(chan struct{})
	w.fired = true
}
