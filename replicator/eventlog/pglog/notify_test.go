package pglog

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// TestCloseEndsListen: the goroutine that listens for Wait's wake-ups
// ends with the log; Close returns only once it has. A Close that did not
// wait would leave it to end moments later, too soon to be seen every
// time: the test closes several logs, and checks at once, without retry.
func TestCloseEndsListen(t *testing.T) {
	ctx := context.Background()
	url := pg.URL(pg.CreateDB(t))
	before := listeners()
	for i := range 20 {
		l, err := Open(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		// Wait starts the listener; it returns early once the listener
		// has its connection (every waiter wakes then), or at the timeout.
		l.Wait(ctx, orders, 10*time.Second)
		if n := listeners(); n != before+1 {
			t.Fatalf("log %d: %d listeners after Wait, want %d", i, n, before+1)
		}
		l.Close()
		if n := listeners(); n != before {
			t.Fatalf("log %d: %d listeners after Close, want %d: the listener outlived Close", i, n, before)
		}
	}
}

// listeners counts the goroutines that run a log's listen.
func listeners() int {
	buf := make([]byte, 1<<16)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), "pglog.(*Log).listen(")
		}
		buf = make([]byte, 2*len(buf))
	}
}

// TestWaitMissesNoAppend: an append notified while the reader is between
// two waits (it read before the append committed, and has not waited
// again yet) is not lost: the next Wait returns at once, not after its
// timeout; one after it waits again.
func TestWaitMissesNoAppend(t *testing.T) {
	l, _ := open(t)
	ctx := context.Background()
	l.Wait(ctx, orders, 10*time.Second) // returns once the listener has its connection
	if _, err := l.Append(ctx, []eventlog.Group{group(100, upsert("1", v("a")))}); err != nil {
		t.Fatal(err)
	}
	// The notification reaches the listener on its own time: once it
	// has, Wait returns at once with it however long it may wait.
	deadline := time.Now().Add(20 * time.Second)
	for !l.notified(orders) {
		if time.Now().After(deadline) {
			t.Fatal("the append's notification did not reach the listener within 20s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	returned := make(chan struct{})
	go func() {
		defer close(returned)
		l.Wait(ctx, orders, time.Hour)
	}()
	select {
	case <-returned:
	case <-time.After(20 * time.Second):
		t.Fatal("Wait missed the append notified between two waits: still waiting after 20s")
	}
	waitCtx, cancel := context.WithCancel(ctx)
	time.AfterFunc(200*time.Millisecond, cancel)
	l.Wait(waitCtx, orders, time.Hour)
	if waitCtx.Err() == nil {
		t.Fatal("a second Wait returned without a new append")
	}
}

// notified says whether a notification of v came while no one waited
// (tests use it to know the listener has seen an append).
func (l *Log) notified(v eventlog.Version) bool {
	n := l.waiter()
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.missed[versionKey(v)]
}
