package apply

import (
	"context"
	"encoding/json"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/internal/pgtest"
	"github.com/rejot-dev/rejot/managed"
	"github.com/rejot-dev/rejot/replicator/eventlog"
	"github.com/rejot-dev/rejot/replicator/eventlog/pglog"
)

var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &pg, pgtest.Options{})) }

var orders = eventlog.Version{Publication: "orders", Number: 1}

// slowToStop is an event log that takes a while to notice that a wait
// was cancelled: a subscriber that does not wait for its readers returns
// while they still run.
type slowToStop struct{ eventlog.Reader }

func (l slowToStop) Wait(ctx context.Context, v eventlog.Version, d time.Duration) {
	l.Reader.Wait(ctx, v, d)
	if ctx.Err() != nil {
		time.Sleep(300 * time.Millisecond)
	}
}

func appendRow(t *testing.T, l *pglog.Log, lsn uint64, id, v string) {
	t.Helper()
	g := eventlog.Group{Version: orders, System: "shop", CommitLSN: lsn, CommitTime: time.Now(),
		Layout:  eventlog.Layout{Columns: 2, Key: []int{0}},
		Changes: []eventlog.Change{{Op: eventlog.OpUpsert, Key: values(id), Row: values(id, v)}}}
	if _, err := eventlog.Append(context.Background(), l, []eventlog.Group{g}); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 20s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// subscribedTable makes a consumer's database with _rejot, a table
// public.t (id bigint key, v text) subscribed to orders version 1, and an
// event log in a database of its own: the database's name, a connection
// to it, and the log.
func subscribedTable(t *testing.T) (string, *pgx.Conn, *pglog.Log) {
	t.Helper()
	ctx := context.Background()
	db, logDB := pg.CreateDB(t), pg.CreateDB(t)
	conn := pg.Connect(t, db)
	if err := managed.Install(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE public.t (id bigint PRIMARY KEY, v text)"); err != nil {
		t.Fatal(err)
	}
	cols, _ := json.Marshal([]managed.SubscribedColumn{{Name: "id", Type: "bigint", Key: true, Index: 0}, {Name: "v", Type: "text", Index: 1}})
	if _, err := conn.Exec(ctx, managed.InsertSubscription, "public.t", "public", "t", orders.Publication, "1", string(cols), "true"); err != nil {
		t.Fatal(err)
	}
	l, err := pglog.Open(ctx, pg.URL(logDB))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return db, conn, l
}

// runSubscriber runs s until the test ends.
func runSubscriber(t *testing.T, s *Subscriber) {
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(ctx)
	}()
	t.Cleanup(func() { stop(); <-done })
}

// rowCount is a condition for waitFor: public.t has want rows.
func rowCount(conn *pgx.Conn, want int) func() bool {
	return func() bool {
		var n int
		return conn.QueryRow(context.Background(), "SELECT count(*) FROM public.t").Scan(&n) == nil && n == want
	}
}

// applyGoroutines are the stacks of the goroutines running this package's
// code (other than its tests').
func applyGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, line := range strings.Split(g, "\n") {
			if strings.Contains(line, "/replicator/apply/") && !strings.Contains(line, "_test.go") {
				out = append(out, g)
				break
			}
		}
	}
	return out
}

// TestRunLeavesNoGoroutine: a subscriber stopped while a subscription
// streams returns only when everything it started has ended: workers,
// their read-ahead, the report loop. Each case makes one of them slow to
// stop, so that a subscriber that did not wait for it would be caught.
func TestRunLeavesNoGoroutine(t *testing.T) {
	t.Run("a report in flight", func(t *testing.T) { runAndStop(t, time.Second, false) })
	t.Run("a read-ahead in flight", func(t *testing.T) { runAndStop(t, 0, true) })
}

// runAndStop runs a subscriber with one subscription until it streams and
// has reported, then stops it, with reports taking reportTime and, when
// slowLog, a log slow to notice the end of a wait.
func runAndStop(t *testing.T, reportTime time.Duration, slowLog bool) {
	ctx := context.Background()
	db, conn, l := subscribedTable(t)
	appendRow(t, l, 100, "1", "copied")

	var log eventlog.Reader = l
	if slowLog {
		log = slowToStop{l}
	}
	reporting := make(chan struct{}, 1)
	s := &Subscriber{URL: pg.URL(db), System: "billing", Log: log, Check: 100 * time.Millisecond,
		Report: func(context.Context, []managed.SubscriptionReport) error {
			select {
			case reporting <- struct{}{}:
			default:
			}
			time.Sleep(reportTime) // a slow catalog, deaf to the cancel
			return nil
		}}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(runCtx)
	}()
	rows := func(want int) func() bool {
		return func() bool {
			var n int
			return conn.QueryRow(ctx, "SELECT count(*) FROM public.t").Scan(&n) == nil && n == want
		}
	}
	waitFor(t, "the state copied", rows(1))
	appendRow(t, l, 200, "2", "streamed")
	waitFor(t, "a change streamed", rows(2))
	<-reporting
	stop()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return within 30s of its context ending")
	}
	// A goroutine that has signalled its end may still be returning: a
	// moment's grace, far shorter than the slow step each case stages.
	left := applyGoroutines()
	for deadline := time.Now().Add(200 * time.Millisecond); len(left) > 0 && time.Now().Before(deadline); left = applyGoroutines() {
		time.Sleep(5 * time.Millisecond)
	}
	if len(left) > 0 {
		t.Fatalf("Run returned with %d goroutine(s) of package apply running:\n%s", len(left), strings.Join(left, "\n\n"))
	}
}
