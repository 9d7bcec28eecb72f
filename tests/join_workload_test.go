package tests

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// The join workload: customer 0 and orders 1..10 are the torn-read
// watcher's (nobody else touches them); the random writers change
// customers 1..40, orders 11.. and the regions.
const joinWorkloadSetup = `CREATE TABLE regions (id int PRIMARY KEY, name text NOT NULL);
	CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, region_id int);
	CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int, tag text, total int NOT NULL);
	INSERT INTO regions SELECT g, 'r' || g FROM generate_series(1, 5) g;
	INSERT INTO customers SELECT g, 'c' || g, 1 + g % 5 FROM generate_series(0, 40) g;
	INSERT INTO orders SELECT g, CASE WHEN g <= 10 THEN 0 ELSE 1 + g % 40 END, CASE WHEN g <= 10 THEN 'c0' END, g FROM generate_series(1, 400) g`

const joinWorkloadQuery = `SELECT o.id, o.customer_id AS cid, o.tag, o.total, c.name AS customer, r.name AS region
	FROM orders o LEFT JOIN customers c ON c.id = o.customer_id LEFT JOIN regions r ON r.id = c.region_id`

// joinTxn runs one random transaction of the workload.
func joinTxn(conn *pgx.Conn, rng *rand.Rand) error {
	c, c2 := 1+rng.IntN(40), 1+rng.IntN(40)
	o, o2 := 11+rng.IntN(390), 11+rng.IntN(390)
	stmt := func() string {
		switch rng.IntN(12) {
		case 0, 1:
			return fmt.Sprintf("UPDATE customers SET name = md5(random()::text) WHERE id = %d", c)
		case 2, 3:
			return fmt.Sprintf("UPDATE orders SET customer_id = %d, total = total + 1 WHERE id IN (%d, %d)", c2, o, o2)
		case 4:
			return fmt.Sprintf("UPDATE customers SET region_id = %d WHERE id = %d", 1+rng.IntN(6), c)
		case 5:
			return fmt.Sprintf("UPDATE regions SET name = md5(random()::text) WHERE id = %d", 1+rng.IntN(5))
		case 6:
			return fmt.Sprintf("DELETE FROM customers WHERE id = %d", c)
		case 7:
			return fmt.Sprintf("INSERT INTO customers VALUES (%d, 'new', %d) ON CONFLICT (id) DO UPDATE SET name = 'again'", c, 1+rng.IntN(5))
		case 8: // a customer's key changes, away and back
			return fmt.Sprintf("UPDATE customers SET id = CASE WHEN id > 100 THEN id - 100 ELSE id + 100 END WHERE id IN (%d, %d)", c, c+100)
		case 9: // an order's key changes
			return fmt.Sprintf("UPDATE orders SET id = id + 1000 WHERE id = %d AND NOT EXISTS (SELECT 1 FROM orders WHERE id = %d)", o, o+1000)
		case 10:
			return fmt.Sprintf("INSERT INTO orders VALUES (%d, %d, NULL, 1) ON CONFLICT (id) DO UPDATE SET customer_id = NULL", 2000+rng.IntN(200), c)
		default: // a truncate of a joined table, refilled in the same transaction
			return "TRUNCATE regions; INSERT INTO regions SELECT g, 't' || g FROM generate_series(1, 5) g"
		}
	}
	q := stmt()
	for range rng.IntN(3) { // multi-statement transactions
		q += "; " + stmt()
	}
	if rng.IntN(8) == 0 {
		q += "; SELECT 1/0" // rolled back
	}
	_, err := conn.Exec(context.Background(), "BEGIN; "+q+"; COMMIT")
	if err != nil {
		conn.Exec(context.Background(), "ROLLBACK")
	}
	return err
}

// TestJoinWorkloadSurvivesKills: concurrent random writers over three
// joined tables (renames, moves, region changes, deletes under the LEFT
// JOIN, key changes of the root and of a joined table, truncates of a
// joined table, multi-statement transactions, rollbacks), while the
// owner's sidecar, the subscriber's, and both are killed (kill -9). A
// watcher transaction renames customer 0 and tags its orders with the new
// name together: a reader polling the target never sees one without the
// other. Afterwards the target equals the join evaluated on the source,
// and a mapped subscription of the same version (the consumer's own
// statements) equals its mapping of the join.
func TestJoinWorkloadSurvivesKills(t *testing.T) {
	s := startServers(t)
	ownerURL, targetURL := s.ownerSC.url("shop", "postgres"), s.targetSC.url("billing", "postgres")
	execRetry(t, ownerURL, joinWorkloadSetup)
	execRetry(t, ownerURL, "UPDATE orders SET tag = 'c0' WHERE customer_id = 0")
	execRetry(t, ownerURL, "CALL rejot.publish('order_lines', 1, $1)", joinWorkloadQuery)
	execRetry(t, targetURL, "CREATE SCHEMA billing")
	execRetry(t, targetURL, "CALL rejot.subscribe('order_lines', 1, 'billing.order_lines')")
	// The same version mapped into the consumer's own model.
	execRetry(t, targetURL, "CREATE TABLE billing.labels (order_id bigint PRIMARY KEY, label text NOT NULL, total int)")
	execRetry(t, targetURL, `CALL rejot.subscribe('order_lines', 1, 'billing.labels',
		upsert => $$INSERT INTO billing.labels VALUES (:id, coalesce(:customer, '-') || '@' || coalesce(:region, '-'), :total)
			ON CONFLICT (order_id) DO UPDATE SET label = EXCLUDED.label, total = EXCLUDED.total$$,
		delete => $$DELETE FROM billing.labels WHERE order_id = :id$$,
		truncate => $$DELETE FROM billing.labels$$)`)

	stop := make(chan struct{})
	var committed atomic.Int64
	var wg sync.WaitGroup
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			untilStopped(s.owner.URL("shop"), stop, func(conn *pgx.Conn) bool {
				err := joinTxn(conn, rng)
				if err == nil {
					committed.Add(1)
				}
				var pe interface{ SQLState() string }
				return err == nil || errors.As(err, &pe)
			})
		}()
	}
	var renames atomic.Int64
	wg.Add(1)
	go func() { // the torn-read writer
		defer wg.Done()
		n := 0
		untilStopped(s.owner.URL("shop"), stop, func(conn *pgx.Conn) bool {
			n++
			_, err := conn.Exec(context.Background(), fmt.Sprintf(`BEGIN; UPDATE customers SET name = 'w%[1]d' WHERE id = 0;
				UPDATE orders SET tag = 'w%[1]d' WHERE customer_id = 0; COMMIT`, n))
			if err == nil {
				renames.Add(1)
			}
			time.Sleep(5 * time.Millisecond)
			return err == nil
		})
	}()
	var torn []string
	var reads, watchedRows atomic.Int64
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		untilStopped(s.target.URL("billing"), stop, func(conn *pgx.Conn) bool {
			var bad, n int
			// Half of it: a row named apart from its tag, or rows of
			// customer 0 under two names.
			err := conn.QueryRow(context.Background(), `SELECT count(*) FILTER (WHERE customer IS DISTINCT FROM tag)
					+ CASE WHEN count(DISTINCT customer) > 1 THEN 1 ELSE 0 END, count(*)
				FROM billing.order_lines WHERE cid = 0`).Scan(&bad, &n)
			if err != nil {
				return false
			}
			reads.Add(1)
			watchedRows.Add(int64(n))
			if bad > 0 && len(torn) < 5 {
				torn = append(torn, fmt.Sprintf("%d of %d rows of customer 0 named apart from their tag or from each other", bad, n))
			}
			return true
		})
	}()
	// The kills start once the target has its first state, under the
	// load (on JetStream the first state and the copy take a second or
	// two, and the kills would otherwise all land before them).
	for deadline := time.Now().Add(60 * time.Second); watchedRows.Load() == 0 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	pause := func() { time.Sleep(time.Duration(700+rand.IntN(600)) * time.Millisecond) }
	for _, step := range []struct {
		name string
		do   func()
	}{
		{"kill -9 the owner's sidecar", func() { s.ownerSC.kill(t); s.ownerSC = s.startOwner(t) }},
		{"kill -9 the subscriber's sidecar", func() { s.targetSC.kill(t); s.targetSC = s.startTarget(t) }},
		{"kill -9 both sidecars", func() {
			s.ownerSC.kill(t)
			s.targetSC.kill(t)
			s.ownerSC, s.targetSC = s.startOwner(t), s.startTarget(t)
		}},
	} {
		pause()
		t.Log(step.name)
		step.do()
	}
	pause()
	close(stop)
	wg.Wait()
	<-watched
	t.Logf("%d random transactions committed, %d renames of customer 0 with its orders, %d reads of the target",
		committed.Load(), renames.Load(), reads.Load())
	if committed.Load() < 100 || renames.Load() < 10 || watchedRows.Load() == 0 {
		t.Fatalf("the load did not run: %d transactions, %d renames, %d rows watched", committed.Load(), renames.Load(), watchedRows.Load())
	}
	owner := connect(t, s.owner.URL("shop"))
	target := connect(t, s.target.URL("billing"))
	stopped := time.Now()
	targetConverges(t, 90*time.Second, owner, joinWorkloadQuery, target, "billing.order_lines")
	targetConverges(t, 90*time.Second, owner, "SELECT id, coalesce(customer, '-') || '@' || coalesce(region, '-'), total FROM ("+joinWorkloadQuery+") AS q",
		target, "billing.labels")
	t.Logf("the targets converged %v after the load stopped", time.Since(stopped).Round(100*time.Millisecond))
	if len(torn) > 0 {
		t.Errorf("the target was seen in the middle of a source transaction: %v", torn)
	}
}
