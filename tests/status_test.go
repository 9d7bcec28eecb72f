package tests

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// subscriptionState is a subscription as rejot.subscriptions shows it.
type subscriptionState struct {
	status, err string
	behind      int64
	lag         float64
}

func subscriptionOf(t *testing.T, p *publisher, name, target string) subscriptionState {
	t.Helper()
	var r subscriptionState
	p.conn.QueryRow(context.Background(), `SELECT status, coalesce(error, ''), coalesce(lag_changes, -1), coalesce(lag_seconds, -1)
		FROM rejot.subscriptions WHERE publication = $1 AND target = $2`, name, target).Scan(&r.status, &r.err, &r.behind, &r.lag)
	return r
}

// TestStalledAndIdleSubscriptions: a subscription that has applied
// everything shows streaming with no lag, however long it has been idle;
// one whose target another session holds locked shows stalled within
// seconds, with the lag against the log's head and why (the lock, and the
// session that holds it), in rejot.subscriptions, the metrics and the
// catalog page alike; once the lock is gone it catches up and shows
// streaming again.
func TestStalledAndIdleSubscriptions(t *testing.T) {
	owner, consumer, name := replicated(t, "watched", "CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, g FROM generate_series(1, 10) g",
		"SELECT id, v FROM t", "public.copy")
	ctx := context.Background()
	admin, target := pg.Connect(t, owner.db), pg.Connect(t, consumer.db)
	targetConverges(t, 30*time.Second, admin, "SELECT id, v FROM t", target, "public.copy")
	consumerHTTP := consumer.sc.httpURL(t)
	labels := `target="public.copy"`

	// Idle: caught up, and it stays so with nothing to do.
	waitFor(t, 20*time.Second, func() bool {
		r := subscriptionOf(t, consumer, name, "public.copy")
		return r.status == "streaming" && r.behind == 0 && r.lag == 0
	})
	time.Sleep(2 * time.Second)
	if r := subscriptionOf(t, consumer, name, "public.copy"); r.status != "streaming" || r.behind != 0 || r.lag != 0 || r.err != "" {
		t.Fatalf("idle subscription: %+v; want streaming, caught up", r)
	}

	// Stalled: another session holds the target locked.
	locker := pg.Connect(t, consumer.db)
	mustExec(t, locker, "SET application_name = 'the_locker'; BEGIN; LOCK TABLE public.copy IN ACCESS EXCLUSIVE MODE")
	var lockerPID int
	locker.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&lockerPID)
	mustExec(t, admin, "UPDATE t SET v = v + 100")
	locked := time.Now()
	var r subscriptionState
	waitFor(t, 30*time.Second, func() bool {
		r = subscriptionOf(t, consumer, name, "public.copy")
		return r.status == "stalled"
	})
	t.Logf("stalled after %v: %s", time.Since(locked).Round(100*time.Millisecond), r.err)
	for _, want := range []string{"lock", fmt.Sprintf("PID %d", lockerPID), "the_locker", "idle in transaction"} {
		if !strings.Contains(r.err, want) {
			t.Errorf("stalled subscription's error %q does not mention %q", r.err, want)
		}
	}
	if r.behind <= 0 || r.lag < 1 {
		t.Errorf("stalled subscription: %d changes behind, lag %v s; want behind, with the time since the first change waiting", r.behind, r.lag)
	}
	if v := metric(t, consumerHTTP, "rejot_subscription_stalled", labels); v != 1 {
		t.Errorf("rejot_subscription_stalled = %v while stalled, want 1", v)
	}
	waitFor(t, 10*time.Second, func() bool {
		_, page, _ := get(owner.sc.httpURL(t) + "/")
		return strings.Contains(page, "stalled · 10 behind")
	})

	// Released: it catches up and streams again.
	mustExec(t, locker, "ROLLBACK")
	targetConverges(t, 30*time.Second, admin, "SELECT id, v FROM t", target, "public.copy")
	waitFor(t, 20*time.Second, func() bool {
		r = subscriptionOf(t, consumer, name, "public.copy")
		return r.status == "streaming" && r.behind == 0 && r.err == "" && metric(t, consumerHTTP, "rejot_subscription_stalled", labels) == 0
	})
}
