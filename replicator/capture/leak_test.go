package capture_test

import (
	"context"
	"fmt"
	"regexp"
	"runtime"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/replicator/capture"
	"github.com/rejot-dev/rejot/replicator/eventlog"
	"github.com/rejot-dev/rejot/replicator/eventlog/pglog"
	"github.com/rs/zerolog"
)

// TestRunnerLeavesNoGoroutines: a Runner stopped while its session
// decodes and appends a steady stream of writes returns only once every
// goroutine it started has ended (the session's append in flight, a
// first fill's readers, the WALReader itself), several times over. Each
// append takes a while to commit, so a Runner that did not wait would
// return while one is in flight.
func TestRunnerLeavesNoGoroutines(t *testing.T) {
	l, _ := open(t)
	src, ctx, _ := recordedEvents(t, "leak_events")
	v := eventlog.Version{Publication: "leak_events", Number: 1}
	owner, err := pgx.Connect(ctx, src.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close(context.Background())
	insert := func(id int) {
		t.Helper()
		if _, err := owner.Exec(ctx, "INSERT INTO events VALUES ($1, 'x')", id); err != nil {
			t.Fatal(err)
		}
	}
	for round := range 3 {
		r := &capture.Runner{URL: src.URL("postgres"), System: "leak", Log: slowLog{l}, Logger: zerolog.Nop(), Check: 100 * time.Millisecond}
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { r.Run(runCtx); close(done) }()
		// Once the round's first write is in the log, the session runs;
		// the writes that follow keep appends in flight as it stops.
		first := round * 1000
		insert(first)
		waitUntil(t, func() bool { return headHas(t, l, v, first) })
		for i := 1; i < 200; i++ {
			insert(first + i)
		}
		stop()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: Run did not return within 30 s of its context ending", round)
		}
		// A goroutine that has handed over its result may still be
		// returning: a moment's grace, far less than a session takes to
		// stop.
		left := captureGoroutines()
		for deadline := time.Now().Add(100 * time.Millisecond); left != "" && time.Now().Before(deadline); left = captureGoroutines() {
			time.Sleep(5 * time.Millisecond)
		}
		if left != "" {
			t.Fatalf("round %d: goroutines of the capture outlived Run:\n%s", round, left)
		}
	}
}

// headHas says whether the version's state holds the row with key id.
func headHas(t testing.TB, l *pglog.Log, v eventlog.Version, id int) bool {
	t.Helper()
	want, found := fmt.Sprint(id), false
	if _, err := l.State(context.Background(), v, func(row []eventlog.Value) error {
		found = found || (row[0] != nil && *row[0] == want)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return found
}

// inCapture matches a stack frame of package capture or its paced reader
// (not of this test package, capture_test).
var inCapture = regexp.MustCompile(`rejot/replicator/capture(/paced)?\.`)

// captureGoroutines returns the stacks of the goroutines running code of
// the capture, "" when there are none.
func captureGoroutines() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out string
	for _, g := range regexp.MustCompile(`\n\n`).Split(string(buf), -1) {
		if inCapture.MatchString(g) {
			out += g + "\n\n"
		}
	}
	return out
}

// slowLog is an event log whose appends take slowCommit to commit.
type slowLog struct{ eventlog.Writer }

const slowCommit = 300 * time.Millisecond

func (l slowLog) Begin(ctx context.Context) (eventlog.Tx, error) {
	tx, err := l.Writer.Begin(ctx)
	if err != nil {
		return nil, err
	}
	return slowTx{tx}, nil
}

type slowTx struct{ eventlog.Tx }

func (t slowTx) Commit(ctx context.Context) (int, error) {
	time.Sleep(slowCommit)
	return t.Tx.Commit(ctx)
}
