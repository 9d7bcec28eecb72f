package pglog

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// Wait returns when the log notifies an append to v, or after at most d.
func (l *Log) Wait(ctx context.Context, v eventlog.Version, d time.Duration) {
	ch := l.waiter().channel(v)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-ch:
	}
}

// notifier listens on the log's channel with one connection and wakes the
// waiters of each version.
type notifier struct {
	mu      sync.Mutex
	waiters map[string]chan struct{}
}

func (l *Log) waiter() *notifier {
	l.notifyOnce.Do(func() {
		l.notify = &notifier{waiters: map[string]chan struct{}{}}
		l.listening.Go(func() { l.listen(l.notify) })
	})
	return l.notify
}

func (n *notifier) channel(v eventlog.Version) chan struct{} {
	key := versionKey(v)
	n.mu.Lock()
	defer n.mu.Unlock()
	ch := n.waiters[key]
	if ch == nil {
		ch = make(chan struct{})
		n.waiters[key] = ch
	}
	return ch
}

// wake wakes the waiters of one version ("" wakes all).
func (n *notifier) wake(key string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for k, ch := range n.waiters {
		if key == "" || k == key {
			close(ch)
			delete(n.waiters, k)
		}
	}
}

func versionKey(v eventlog.Version) string {
	return v.Publication + "/" + strconv.Itoa(v.Number)
}

// listen keeps a LISTEN connection until the log closes, reconnecting
// with backoff; after a reconnect every waiter wakes (a notification may
// have been missed).
func (l *Log) listen(n *notifier) {
	backoff := 100 * time.Millisecond
	for l.ctx.Err() == nil {
		conn, err := l.pool.Acquire(l.ctx)
		if err == nil {
			_, err = conn.Exec(l.ctx, "LISTEN "+Channel)
			if err == nil {
				backoff = 100 * time.Millisecond
				n.wake("")
				for err == nil {
					var note *pgconn.Notification
					note, err = conn.Conn().WaitForNotification(l.ctx)
					if err == nil {
						// payload: publication/version/head
						if i := strings.LastIndexByte(note.Payload, '/'); i > 0 {
							n.wake(note.Payload[:i])
						}
					}
				}
			}
			conn.Hijack().Close(context.Background())
		}
		if l.ctx.Err() != nil {
			return
		}
		select {
		case <-l.ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}
