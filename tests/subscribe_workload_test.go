package tests

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestRandomWorkloadConverges: owner and subscriber on different servers;
// concurrent writers run a random mix — single and multi-row inserts,
// updates in and out of the filter, key changes, deletes, truncates,
// rollbacks — and afterwards the target equals the projection of the
// source. Version 1 keeps flowing while version 2 is published and
// subscribed elsewhere.
func TestRandomWorkloadConverges(t *testing.T) {
	s := startServers(t)
	ctx := context.Background()
	ownerURL, targetURL := s.ownerSC.url("shop", "postgres"), s.targetSC.url("billing", "postgres")
	execRetry(t, ownerURL, `CREATE TABLE items (id int PRIMARY KEY, kind text NOT NULL, qty int, price numeric(10,2), note text)`)
	execRetry(t, ownerURL, `CALL rejot.publish('items', 1,
		$$SELECT id, kind, qty, price * qty AS value, upper(note) AS loud FROM items WHERE kind <> 'hidden'$$)`)
	execRetry(t, targetURL, "CALL rejot.subscribe('items', 1, 'public.items_v1')")
	v1 := "SELECT id, kind, qty, price * qty AS value, upper(note) AS loud FROM items WHERE kind <> 'hidden'"

	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			conn, err := pgx.Connect(ctx, s.owner.URL("shop"))
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close(ctx)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				conn.Exec(ctx, randomChange(rng)) // conflicts are fine: the transaction rolls back
			}
		}()
	}
	time.Sleep(1500 * time.Millisecond)
	// Version 2 beside version 1, subscribed in another table.
	execRetry(t, ownerURL, "CALL rejot.publish('items', 2, $$SELECT id, qty FROM items$$)")
	execRetry(t, targetURL, "CALL rejot.subscribe('items', 2, 'public.items_v2')")
	time.Sleep(1500 * time.Millisecond)
	close(stop)
	wg.Wait()
	owner := connect(t, s.owner.URL("shop"))
	target := connect(t, s.target.URL("billing"))
	targetConverges(t, 60*time.Second, owner, v1, target, "public.items_v1")
	targetConverges(t, 60*time.Second, owner, "SELECT id, qty FROM items", target, "public.items_v2")
	var n int
	owner.QueryRow(ctx, "SELECT count(*) FROM items").Scan(&n)
	t.Logf("%d rows at the end", n)
}

func randomChange(rng *rand.Rand) string {
	id := rng.IntN(300)
	kinds := []string{"tool", "part", "hidden"}
	kind := kinds[rng.IntN(len(kinds))]
	switch rng.IntN(20) {
	case 0:
		if rng.IntN(10) == 0 {
			return "TRUNCATE items"
		}
		return "DELETE FROM items WHERE id % 7 = " + fmt.Sprint(id%7)
	case 1, 2, 3:
		return fmt.Sprintf(`INSERT INTO items SELECT g, '%s', g %% 13, (g %% 100) / 3.0, 'bulk ' || g FROM generate_series(%d, %d) g
			ON CONFLICT (id) DO UPDATE SET qty = EXCLUDED.qty`, kind, id, id+rng.IntN(30))
	case 4, 5, 6, 7:
		return fmt.Sprintf("INSERT INTO items VALUES (%d, '%s', %d, %d.25, %s) ON CONFLICT (id) DO UPDATE SET kind = EXCLUDED.kind, note = EXCLUDED.note",
			id, kind, rng.IntN(10), rng.IntN(100), noteValue(rng))
	case 8, 9, 10, 11:
		return fmt.Sprintf("UPDATE items SET qty = qty + 1, kind = '%s' WHERE id = %d", kind, id)
	case 12:
		return fmt.Sprintf("UPDATE items SET id = %d WHERE id = %d", id+300, id)
	case 13:
		return fmt.Sprintf("DELETE FROM items WHERE id = %d", id)
	case 14:
		return fmt.Sprintf("BEGIN; UPDATE items SET qty = -1 WHERE id < %d; ROLLBACK", id)
	case 15, 16:
		return fmt.Sprintf("BEGIN; UPDATE items SET price = price + 1 WHERE id BETWEEN %d AND %d; DELETE FROM items WHERE id = %d; INSERT INTO items VALUES (%d, 'part', 1, 1, NULL) ON CONFLICT DO NOTHING; COMMIT",
			id, id+20, id+5, id+600)
	default:
		return fmt.Sprintf("UPDATE items SET note = %s WHERE id = %d", noteValue(rng), id)
	}
}

func noteValue(rng *rand.Rand) string {
	switch rng.IntN(4) {
	case 0:
		return "NULL"
	case 1:
		return "''"
	case 2:
		return "repeat('long text ', 1000)" // stored out of line
	}
	return "'n" + strings.Repeat("x", rng.IntN(5)) + "'"
}

// TestSubscribersMoveAtTheirOwnSpeed: two subscribers of one publication,
// in different databases; one's sidecar stops while the owner writes, the
// other keeps up; the stopped one resumes where it was; an unsubscribed
// one lets go of the log.
func TestSubscribersMoveAtTheirOwnSpeed(t *testing.T) {
	owner := newPublisher(t)
	fast, slow := newPublisher(t), newPublisher(t)
	ctx := context.Background()
	name := owner.name("shared")
	if err := owner.exec(t, "CREATE TABLE t (id int PRIMARY KEY, v int)"); err != nil {
		t.Fatal(err)
	}
	if err := owner.exec(t, "CALL rejot.publish($1, 1, 'SELECT id, v FROM t')", name); err != nil {
		t.Fatal(err)
	}
	owner.catalogMinor(t, name, 1, 0)
	for _, c := range []*publisher{fast, slow} {
		if err := c.exec(t, "CALL rejot.subscribe($1, 1, 'copy')", name); err != nil {
			t.Fatal(err)
		}
	}
	if err := owner.exec(t, "INSERT INTO t SELECT g, g FROM generate_series(1, 100) g"); err != nil {
		t.Fatal(err)
	}
	projection := "SELECT id, v FROM t"
	targetConverges(t, 30*time.Second, owner.conn, projection, fast.conn, "copy")
	targetConverges(t, 30*time.Second, owner.conn, projection, slow.conn, "copy")
	// The slow one's sidecar stops; the fast one keeps up.
	slow.sc.kill(t)
	for i := range 20 {
		if err := owner.exec(t, "UPDATE t SET v = v + 1 WHERE id <= $1", (i+1)*5); err != nil {
			t.Fatal(err)
		}
	}
	targetConverges(t, 30*time.Second, owner.conn, projection, fast.conn, "copy")
	direct, err := pgx.Connect(ctx, directURL(slow.db, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(ctx)
	if tableText(t, direct, "SELECT * FROM copy") == tableText(t, owner.conn, projection) {
		t.Fatal("the stopped subscriber moved")
	}
	// It resumes where it was.
	slow.sc = startSidecar(t, slow.db)
	targetConverges(t, 30*time.Second, owner.conn, projection, direct, "copy")
	// Unsubscribed, it no longer holds the log.
	slowConn, err := pgx.Connect(ctx, slow.sc.url(slow.db, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer slowConn.Close(ctx)
	if _, err := slowConn.Exec(ctx, "CALL rejot.unsubscribe('copy')"); err != nil {
		t.Fatal(err)
	}
	logDB := pg.Connect(t, "rejot")
	var readers string
	defer func() {
		if t.Failed() {
			t.Logf("readers: %s", readers)
		}
	}()
	waitFor(t, 20*time.Second, func() bool {
		readers = logReaders(t, logDB, name)
		return readers == fast.db+"/public.copy"
	})
}

// TestRetiredVersionStopsSubscriptions: when the owner retires a version
// its subscribers still follow (force), rejot.subscriptions says they are
// stopped, and why.
func TestRetiredVersionStopsSubscriptions(t *testing.T) {
	owner, consumer, name := replicated(t, "retiring", "CREATE TABLE t (id int PRIMARY KEY)", "SELECT id FROM t", "copy")
	ctx := context.Background()
	status := func() (string, string) {
		var st string
		var msg *string
		consumer.conn.QueryRow(ctx, "SELECT status, error FROM rejot.subscriptions WHERE system = $1 AND target = 'public.copy'", consumer.db).Scan(&st, &msg)
		if msg == nil {
			return st, ""
		}
		return st, *msg
	}
	waitFor(t, 30*time.Second, func() bool { st, _ := status(); return st == "streaming" })
	if pe := pgErr(owner.exec(t, "CALL rejot.unpublish($1, 1)", name)); pe.Code != "55006" {
		t.Fatalf("unpublish with a subscriber: %v", pe)
	}
	if err := owner.exec(t, "CALL rejot.unpublish($1, 1, force => true)", name); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() bool {
		st, msg := status()
		return st == "stopped" && strings.Contains(msg, "is retired")
	})
}
