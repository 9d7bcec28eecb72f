package tests

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/internal/pgtest"
)

// servers is an owner, a subscriber and a catalog (with the event log),
// each on its own Postgres server, with a sidecar in front of the owner
// and one in front of the subscriber.
type servers struct {
	owner, target, catalog *pgtest.Cluster
	ownerSC, targetSC      *sidecar
	extra                  []string // more flags for both sidecars
}

func startServers(t *testing.T, extra ...string) *servers {
	t.Helper()
	ctx := context.Background()
	s := &servers{extra: extra}
	for _, c := range []**pgtest.Cluster{&s.owner, &s.target, &s.catalog} {
		cl, err := pgtest.Start(pgtest.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cl.Destroy)
		*c = cl
	}
	for _, db := range []struct {
		c    *pgtest.Cluster
		name string
	}{{s.owner, "shop"}, {s.target, "billing"}, {s.catalog, "rejot"}} {
		if err := db.c.Exec(ctx, "postgres", "CREATE DATABASE "+db.name); err != nil {
			t.Fatal(err)
		}
	}
	s.ownerSC = s.startOwner(t)
	s.targetSC = s.startTarget(t)
	return s
}

func (s *servers) startOwner(t *testing.T) *sidecar {
	return startSidecarUpstream(t, s.owner.URL("shop"), append([]string{"--catalog", s.catalog.URL("rejot")}, s.extra...)...)
}

func (s *servers) startTarget(t *testing.T) *sidecar {
	return startSidecarUpstream(t, s.target.URL("billing"), append([]string{"--catalog", s.catalog.URL("rejot")}, s.extra...)...)
}

// connect connects with retries (a server or sidecar may be restarting).
func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	var conn *pgx.Conn
	waitFor(t, 30*time.Second, func() bool {
		c, err := pgx.Connect(context.Background(), url)
		if err != nil {
			return false
		}
		conn = c
		return true
	})
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// execRetry runs a statement until it succeeds.
func execRetry(t *testing.T, url string, sql string, args ...any) {
	t.Helper()
	var last error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		conn, err := pgx.Connect(context.Background(), url)
		if err != nil {
			last = err
			continue
		}
		_, last = conn.Exec(context.Background(), sql, args...)
		conn.Close(context.Background())
		if last == nil {
			return
		}
	}
	t.Fatalf("%s: %v", sql, last)
}

const accounts = 200

// bankLoad runs writers on the owner that move money between accounts, change
// keys, open and close accounts and roll back — never changing the total —
// until stop is closed. It returns how many transactions committed.
func bankLoad(t *testing.T, url string, writers int, stop chan struct{}) (wait func() int64) {
	var committed atomic.Int64
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			untilStopped(url, stop, func(conn *pgx.Conn) bool {
				err := bankTxn(conn, rng)
				if err == nil {
					committed.Add(1)
				}
				// A conflict (deadlock, duplicate key) rolled the
				// transaction back; anything else drops the connection.
				var pe interface{ SQLState() string }
				return err == nil || errors.As(err, &pe)
			})
		}()
	}
	return func() int64 {
		wg.Wait()
		return committed.Load()
	}
}

// bankTxn runs one banking transaction. Repeatable read makes concurrent
// changes of the same rows fail (and roll back) instead of breaking the
// total.
func bankTxn(conn *pgx.Conn, rng *rand.Rand) error {
	ctx := context.Background()
	a, b := rng.IntN(accounts)+1, rng.IntN(accounts)+1
	amount := rng.IntN(50) + 1
	var q string
	switch rng.IntN(10) {
	case 0, 1, 2, 3, 4: // a transfer, when both accounts exist
		q = fmt.Sprintf(`UPDATE acct SET balance = balance + CASE WHEN id = %[1]d THEN -%[3]d ELSE %[3]d END
			WHERE id IN (%[1]d, %[2]d) AND (SELECT count(*) FROM acct WHERE id IN (%[1]d, %[2]d)) = 2`, a, b, amount)
	case 5: // a transfer that rolls back
		q = fmt.Sprintf(`UPDATE acct SET balance = balance - %d WHERE id = %d; SELECT 1/0`, amount, a)
	case 6: // a key change
		q = fmt.Sprintf(`UPDATE acct SET id = %d WHERE id = %d AND NOT EXISTS (SELECT 1 FROM acct WHERE id = %d)`, b+1000, a, b+1000)
	case 7: // a new account, with money from another
		q = fmt.Sprintf(`WITH moved AS (UPDATE acct SET balance = balance - %[3]d WHERE id = %[1]d RETURNING 1)
			INSERT INTO acct SELECT %[2]d, %[3]d, 'new' FROM moved ON CONFLICT (id) DO UPDATE SET balance = acct.balance + %[3]d`, a, b+2000, amount)
	case 8: // an account closes: its money moves to another first
		q = fmt.Sprintf(`WITH closed AS (DELETE FROM acct WHERE id = %[1]d AND %[1]d <> %[2]d AND EXISTS (SELECT 1 FROM acct WHERE id = %[2]d) RETURNING balance)
			UPDATE acct SET balance = balance + (SELECT balance FROM closed) WHERE id = %[2]d AND EXISTS (SELECT 1 FROM closed)`, a+2000, b)
	case 9: // a note (not published: nothing to apply)
		q = fmt.Sprintf(`UPDATE acct SET note = md5(random()::text) WHERE id = %d`, a)
	}
	_, err := conn.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ; "+q+"; COMMIT")
	if err != nil {
		conn.Exec(ctx, "ROLLBACK")
	}
	return err
}

// untilStopped runs step on a connection to url, again and again, until
// stop is closed, connecting (again) whenever it has none: servers and
// sidecars restart under it. step says whether the connection is still
// good.
func untilStopped(url string, stop <-chan struct{}, step func(*pgx.Conn) bool) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for {
		select {
		case <-stop:
			return
		default:
		}
		if conn == nil {
			c, err := pgx.Connect(context.Background(), url)
			if err != nil {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			conn = c
		}
		if !step(conn) {
			conn.Close(context.Background())
			conn = nil
		}
	}
}

// watchSum polls the target until stop and reports every moment its total
// was neither empty nor the right one: a source transaction seen in part.
func watchSum(t *testing.T, url string, want int64, stop chan struct{}) (wait func() []string) {
	var bad []string
	var reads atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		untilStopped(url, stop, func(conn *pgx.Conn) bool {
			var sum *int64
			var n int64
			if err := conn.QueryRow(context.Background(), "SELECT sum(balance), count(*) FROM billing.acct").Scan(&sum, &n); err != nil {
				return false
			}
			reads.Add(1)
			if sum != nil && *sum != want && len(bad) < 10 {
				bad = append(bad, fmt.Sprintf("total %d over %d rows", *sum, n))
			}
			return true
		})
	}()
	return func() []string {
		<-done
		t.Logf("%d reads of the target's total", reads.Load())
		return bad
	}
}

// TestSubscriptionSurvivesCrashes: owner, subscriber and catalog on three
// servers; under a banking load, the subscriber's sidecar and the owner's
// are killed (kill -9), the target's server is restarted and crashed, and the
// catalog's (which holds the event log) is restarted and crashed. A reader
// polling the target never sees part of a source transaction (the total
// stays constant), and afterwards the target equals the projection of the
// source and the subscription is at the log's head.
func TestSubscriptionSurvivesCrashes(t *testing.T) {
	s := startServers(t)
	ownerURL, targetURL := s.ownerSC.url("shop", "postgres"), s.targetSC.url("billing", "postgres")
	execRetry(t, ownerURL, fmt.Sprintf(`CREATE TABLE acct (id int PRIMARY KEY, balance bigint NOT NULL, note text);
		INSERT INTO acct SELECT g, 1000, 'n' FROM generate_series(1, %d) g`, accounts))
	execRetry(t, ownerURL, "CALL rejot.publish('accounts', 1, 'SELECT id, balance FROM acct')")
	execRetry(t, targetURL, "CREATE SCHEMA billing")
	// The catalog learns of the publication just after the call commits.
	execRetry(t, targetURL, "CALL rejot.subscribe('accounts', 1, 'billing.acct')")
	const total = accounts * 1000

	stop := make(chan struct{})
	wait := bankLoad(t, s.owner.URL("shop"), 3, stop)
	watched := watchSum(t, s.target.URL("billing"), total, stop)
	pause := func() { time.Sleep(time.Duration(400+rand.IntN(600)) * time.Millisecond) }
	steps := []struct {
		name string
		do   func()
	}{
		{"kill -9 the subscriber's sidecar", func() { s.targetSC.kill(t); s.targetSC = s.startTarget(t) }},
		{"kill -9 the owner's sidecar", func() { s.ownerSC.kill(t); s.ownerSC = s.startOwner(t) }},
		{"restart the target's server", func() {
			if err := s.target.Restart(); err != nil {
				t.Fatal(err)
			}
		}},
		{"crash the target's server", func() {
			// Applies commit without waiting for the flush, except the
			// one whose position the log records next: the last ones
			// may be lost here, and are applied again.
			s.target.Kill()
			if err := s.target.Start(); err != nil {
				t.Fatal(err)
			}
		}},
		{"restart the catalog's server", func() {
			if err := s.catalog.Restart(); err != nil {
				t.Fatal(err)
			}
		}},
		{"crash the catalog's server", func() {
			s.catalog.Kill()
			if err := s.catalog.Start(); err != nil {
				t.Fatal(err)
			}
		}},
		{"kill -9 both sidecars", func() {
			s.targetSC.kill(t)
			s.ownerSC.kill(t)
			s.ownerSC, s.targetSC = s.startOwner(t), s.startTarget(t)
		}},
	}
	for _, step := range steps {
		pause()
		t.Log(step.name)
		step.do()
	}
	pause()
	close(stop)
	committed := wait()
	bad := watched()
	t.Logf("%d source transactions committed", committed)
	if committed < 100 {
		t.Fatalf("only %d transactions committed: the load did not run", committed)
	}
	owner := connect(t, s.owner.URL("shop"))
	target := connect(t, s.target.URL("billing"))
	var sum int64
	if err := owner.QueryRow(context.Background(), "SELECT sum(balance) FROM acct").Scan(&sum); err != nil || sum != total {
		t.Fatalf("the load itself broke the total: %d (%v)", sum, err)
	}
	targetConverges(t, 60*time.Second, owner, "SELECT id, balance FROM acct", target, "billing.acct")
	if len(bad) > 0 {
		t.Errorf("the target was seen in the middle of a source transaction: %v", bad)
	}
	// Exactly once: the subscription is at the head of the log, and every
	// position in between was applied in order (the position only moves
	// along whole spans, checked by the apply itself).
	logDB := connect(t, s.catalog.URL("rejot"))
	waitFor(t, 30*time.Second, func() bool {
		var position int64
		head := logHead(t, logDB, "accounts")
		target.QueryRow(context.Background(), "SELECT position FROM _rejot.subscriptions WHERE target = 'billing.acct'").Scan(&position)
		return head > 0 && head == position
	})
}

// TestSubscriptionFailsVisiblyAndRecovers: a target changed by hand so that
// changes no longer apply shows the failure in rejot.subscriptions, with
// the error, and catches up once the table is fixed; rejot.resync copies
// everything again.
func TestSubscriptionFailsVisiblyAndRecovers(t *testing.T) {
	owner, consumer, _ := replicated(t, "fragile", `CREATE TABLE items (id int PRIMARY KEY, label text);
		INSERT INTO items VALUES (1, 'one'), (2, 'two')`, "SELECT id, label FROM items", "items")
	ctx := context.Background()
	targetConverges(t, 30*time.Second, owner.conn, "SELECT id, label FROM items", consumer.conn, "items")
	// Someone adds a constraint the owner's data breaks.
	if err := consumer.exec(t, "ALTER TABLE items ADD CONSTRAINT short CHECK (length(label) < 5)"); err != nil {
		t.Fatal(err)
	}
	if err := owner.exec(t, "INSERT INTO items VALUES (3, 'three')"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() bool {
		var status string
		var msg *string
		consumer.conn.QueryRow(ctx, "SELECT status, error FROM rejot.subscriptions WHERE system = $1 AND target = 'public.items'", consumer.db).Scan(&status, &msg)
		return status == "failed" && msg != nil && strings.Contains(*msg, `violates check constraint "short"`)
	})
	// Nothing after the failing change was skipped: fixing the table lets
	// it through.
	if err := owner.exec(t, "INSERT INTO items VALUES (4, 'four')"); err != nil {
		t.Fatal(err)
	}
	if err := consumer.exec(t, "ALTER TABLE items DROP CONSTRAINT short"); err != nil {
		t.Fatal(err)
	}
	targetConverges(t, 60*time.Second, owner.conn, "SELECT id, label FROM items", consumer.conn, "items")
	waitFor(t, 30*time.Second, func() bool {
		var status string
		var msg *string
		consumer.conn.QueryRow(ctx, "SELECT status, error FROM rejot.subscriptions WHERE system = $1 AND target = 'public.items'", consumer.db).Scan(&status, &msg)
		return status == "streaming" && msg == nil
	})
	// A resync repairs rows changed by hand.
	if err := consumer.exec(t, "DELETE FROM items WHERE id = 1; UPDATE items SET label = 'wrong' WHERE id = 2"); err != nil {
		t.Fatal(err)
	}
	if err := consumer.exec(t, "CALL rejot.resync('items')"); err != nil {
		t.Fatal(err)
	}
	targetConverges(t, 30*time.Second, owner.conn, "SELECT id, label FROM items", consumer.conn, "items")
}
