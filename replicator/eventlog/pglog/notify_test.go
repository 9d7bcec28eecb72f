package pglog

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"
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
