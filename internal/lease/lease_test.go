package lease

import (
	"context"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rejot-dev/rejot/internal/pgtest"
	"github.com/rs/zerolog"
)

var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &pg, pgtest.Options{})) }

// instance is one process's lease and what its active part saw.
type instance struct {
	l       *Lease
	stop    context.CancelFunc
	done    chan struct{}
	runs    atomic.Int32 // times active began
	running atomic.Bool
}

func start(t *testing.T, db string, tune func(*Lease)) *instance {
	t.Helper()
	in := &instance{l: &Lease{URL: pg.URL(db), System: "shop", Poll: 100 * time.Millisecond, Check: 100 * time.Millisecond,
		Logger: zerolog.New(zerolog.NewTestWriter(t))}, done: make(chan struct{})}
	if tune != nil {
		tune(in.l)
	}
	ctx, cancel := context.WithCancel(context.Background())
	in.stop = cancel
	go func() {
		defer close(in.done)
		in.l.Run(ctx, func(ctx context.Context) {
			in.runs.Add(1)
			in.running.Store(true)
			<-ctx.Done()
			in.running.Store(false)
		})
	}()
	t.Cleanup(func() { cancel(); <-in.done })
	return in
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
	}
}

// TestOneActiveAndTakeover: of two instances one is active, the other
// stands by; when the active stops, its active part has ended before the
// standby's begins, and the standby takes over.
func TestOneActiveAndTakeover(t *testing.T) {
	db := pg.CreateDB(t)
	a := start(t, db, nil)
	waitFor(t, "a active", a.l.Active)
	b := start(t, db, nil)
	time.Sleep(500 * time.Millisecond) // several of b's attempts
	if b.l.Active() || b.runs.Load() != 0 {
		t.Fatal("two instances active at once")
	}
	// Another system in the same database has a lease of its own.
	other := start(t, db, func(l *Lease) { l.System = "billing" })
	waitFor(t, "another system's instance active", other.l.Active)

	a.stop()
	<-a.done
	if a.running.Load() {
		t.Fatal("Run returned while its active part ran")
	}
	waitFor(t, "b takes over", b.l.Active)
	waitFor(t, "b's active part runs", b.running.Load)
}

// TestLeaseSessionEnded: the server ends the holder's session (as when it
// is cut off, or idle past idle_session_timeout): the holder's active part
// stops within a check, and the other instance takes over.
func TestLeaseSessionEnded(t *testing.T) {
	db := pg.CreateDB(t)
	a := start(t, db, nil)
	waitFor(t, "a active", a.l.Active)
	b := start(t, db, nil)
	admin := pg.Connect(t, db)
	if _, err := admin.Exec(context.Background(), `SELECT pg_terminate_backend(pid) FROM pg_locks
		WHERE locktype = 'advisory' AND granted AND classid::int8 = $1 AND objid::int8 = ($2::int8 & 4294967295)`,
		int64(Namespace), int64(Key("shop"))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a's active part stops", func() bool { return !a.running.Load() && !a.l.Active() })
	waitFor(t, "b takes over", b.l.Active)
	// a stands by, and does not run again while b holds the lease.
	time.Sleep(300 * time.Millisecond)
	if a.l.Active() || a.runs.Load() != 1 {
		t.Fatalf("a active again (%d runs) while b holds the lease", a.runs.Load())
	}
}

// TestHungHolder: a holder that stops checking its session (hung) loses
// the lease to the server's idle_session_timeout, and the other instance
// takes over without it; when it wakes, its check fails and its active
// part stops.
func TestHungHolder(t *testing.T) {
	db := pg.CreateDB(t)
	a := start(t, db, func(l *Lease) { l.Check, l.Idle = 3*time.Second, time.Second })
	waitFor(t, "a active", a.l.Active)
	b := start(t, db, nil)
	waitFor(t, "b takes over from a hung holder", b.l.Active)
	waitFor(t, "a notices", func() bool { return !a.running.Load() && !a.l.Active() })
}
