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
	ch, release := l.waiter().wait(v)
	defer release()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-ch:
	}
}

// notifier listens on the log's channel with one connection and wakes the
// waiters of each version. An append notified while no one waits on its
// version (a reader between two waits, reading or applying) is
// remembered, and the next Wait returns at once: the reader may have read
// before it committed, and would otherwise wait for the next append, or
// its whole timeout.
type notifier struct {
	mu      sync.Mutex
	waiters map[string]*waitSet
	missed  map[string]bool // versions waited on before: notified since their last wait ended
}

// waitSet is the waiters of one version: the channel a wake-up closes,
// and how many wait on it.
type waitSet struct {
	ch chan struct{}
	n  int
}

func (l *Log) waiter() *notifier {
	l.notifyOnce.Do(func() {
		l.notify = &notifier{waiters: map[string]*waitSet{}, missed: map[string]bool{}}
		l.listening.Go(func() { l.listen(l.notify) })
	})
	return l.notify
}

// closed is a channel that is ready at once.
var closed = func() chan struct{} { ch := make(chan struct{}); close(ch); return ch }()

// wait returns the channel a wake-up of v closes (closed already when one
// was missed since the last wait), and the release to call when done
// waiting on it.
func (n *notifier) wait(v eventlog.Version) (<-chan struct{}, func()) {
	key := versionKey(v)
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.missed[key] {
		n.missed[key] = false
		return closed, func() {}
	}
	n.missed[key] = false // waited on: what comes while no one waits is remembered from now
	ws := n.waiters[key]
	if ws == nil {
		ws = &waitSet{ch: make(chan struct{})}
		n.waiters[key] = ws
	}
	ws.n++
	return ws.ch, func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		if ws.n--; ws.n == 0 && n.waiters[key] == ws {
			delete(n.waiters, key)
		}
	}
}

// wake wakes the waiters of one version ("" wakes all), and remembers the
// wake-up for a version waited on before that no one waits on now.
func (n *notifier) wake(key string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for k := range n.missed {
		if key != "" && k != key {
			continue
		}
		if ws := n.waiters[k]; ws != nil {
			close(ws.ch)
			delete(n.waiters, k)
		} else {
			n.missed[k] = true
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
