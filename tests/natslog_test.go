package tests

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/rejot-dev/rejot/internal/natstest"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// TestNATSLogSurvivesANodeAndSidecarKills: under a TPC-B-style load, with
// the event log on a three-node JetStream cluster whose servers are OS
// processes, one JetStream node is killed with -9, then both sidecars are
// killed with -9 while it is down; the node starts again on its store.
// The target converges exactly, a watcher of its total never sees half a
// source transaction, and the subscription ends at the log's head:
// nothing applied twice.
func TestNATSLogSurvivesANodeAndSidecarKills(t *testing.T) {
	nl := natsStarted(t, natstest.StartProcesses)
	s := startServers(t, "--log", nl.cluster.URL())
	ownerURL, targetURL := s.ownerSC.url("shop", "postgres"), s.targetSC.url("billing", "postgres")
	execRetry(t, ownerURL, fmt.Sprintf(`CREATE TABLE acct (id int PRIMARY KEY, balance bigint NOT NULL, note text);
		INSERT INTO acct SELECT g, 1000, 'n' FROM generate_series(1, %d) g`, accounts))
	execRetry(t, ownerURL, "CALL rejot.publish('accounts', 1, 'SELECT id, balance FROM acct')")
	execRetry(t, targetURL, "CREATE SCHEMA billing")
	execRetry(t, targetURL, "CALL rejot.subscribe('accounts', 1, 'billing.acct')")
	const total = accounts * 1000

	stop := make(chan struct{})
	wait := bankLoad(t, s.owner.URL("shop"), 3, stop)
	watched := watchSum(t, s.target.URL("billing"), total, stop)
	pause := func() { time.Sleep(time.Duration(600+rand.IntN(600)) * time.Millisecond) }
	pause()
	t.Log("kill -9 JetStream node 2")
	nl.cluster.Kill(1)
	pause()
	t.Log("kill -9 both sidecars")
	s.targetSC.kill(t)
	s.ownerSC.kill(t)
	s.ownerSC, s.targetSC = s.startOwner(t), s.startTarget(t)
	pause()
	t.Log("start JetStream node 2 again")
	if err := nl.cluster.Restart(1); err != nil {
		t.Fatal(err)
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
	targetConverges(t, 90*time.Second, owner, "SELECT id, balance FROM acct", target, "billing.acct")
	if len(bad) > 0 {
		t.Errorf("the target was seen in the middle of a source transaction: %v", bad)
	}
	log := nl.reader(t)
	waitFor(t, 30*time.Second, func() bool {
		var position int64
		head, _ := log.Head(context.Background(), eventlog.Version{Publication: "accounts", Number: 1})
		target.QueryRow(context.Background(), "SELECT position FROM _rejot.subscriptions WHERE target = 'billing.acct'").Scan(&position)
		return head > 0 && head == position
	})
}

// TestMoveLogFromPostgresToNATS follows docs/scale.md: a deployment on the
// Postgres log drains (its subscriber catches up), its sidecars stop, the
// owner writes meanwhile, they start again with --log on JetStream, each
// subscription is resynced, and the target converges with everything,
// streaming from the new log afterwards.
func TestMoveLogFromPostgresToNATS(t *testing.T) {
	if natsLog {
		t.Skip("moves from the Postgres log: runs with the Postgres suites")
	}
	nl := natsFor(t)
	s := startServers(t) // the log in the catalog
	ownerURL, targetURL := s.ownerSC.url("shop", "postgres"), s.targetSC.url("billing", "postgres")
	execRetry(t, ownerURL, `CREATE TABLE items (id int PRIMARY KEY, qty int NOT NULL, note text);
		INSERT INTO items SELECT g, g, 'before' FROM generate_series(1, 500) g`)
	execRetry(t, ownerURL, "CALL rejot.publish('items', 1, 'SELECT id, qty, note FROM items')")
	execRetry(t, targetURL, "CALL rejot.subscribe('items', 1, 'public.items')")
	execRetry(t, ownerURL, "UPDATE items SET qty = qty + 1 WHERE id % 3 = 0; DELETE FROM items WHERE id > 480")
	owner := connect(t, s.owner.URL("shop"))
	target := connect(t, s.target.URL("billing"))
	const projection = "SELECT id, qty, note FROM items"
	// 1. Drain: the subscriber has applied everything.
	targetConverges(t, 60*time.Second, owner, projection, target, "public.items")
	// 2. Stop the sidecars; the owner's applications go on writing.
	s.targetSC.kill(t)
	s.ownerSC.kill(t)
	if _, err := owner.Exec(context.Background(), "INSERT INTO items VALUES (1000, 1, 'while moving'); UPDATE items SET note = 'moved' WHERE id < 10"); err != nil {
		t.Fatal(err)
	}
	// 3. Start them on JetStream: the owner fills every version anew there.
	s.extra = []string{"--log", nl.cluster.URL()}
	s.ownerSC, s.targetSC = s.startOwner(t), s.startTarget(t)
	// 4. Resync each subscription: it copies the new log's state.
	execRetry(t, s.targetSC.url("billing", "postgres"), "CALL rejot.resync('public.items')")
	targetConverges(t, 60*time.Second, owner, projection, target, "public.items")
	// 5. It streams from the new log.
	if _, err := owner.Exec(context.Background(), "UPDATE items SET qty = 0 WHERE id = 1000; DELETE FROM items WHERE id = 2"); err != nil {
		t.Fatal(err)
	}
	targetConverges(t, 60*time.Second, owner, projection, target, "public.items")
	if head, _ := nl.reader(t).Head(context.Background(), eventlog.Version{Publication: "items", Number: 1}); head == 0 {
		t.Fatal("the new log holds nothing: the sidecars did not move to JetStream")
	}
}

// TestJoinVersionOnNATSConverges: a join version published by a system
// whose log is on JetStream keeps its base state there and its
// subscriber follows changes of every table it reads, beside the
// system's one-table version; the owner's sidecar killed and started again (it learns
// the base state from JetStream again) goes on exactly.
func TestJoinVersionOnNATSConverges(t *testing.T) {
	nl := natsFor(t)
	s := startServers(t, "--log", nl.cluster.URL())
	ownerURL, targetURL := s.ownerSC.url("shop", "postgres"), s.targetSC.url("billing", "postgres")
	execRetry(t, ownerURL, joinSetup)
	execRetry(t, ownerURL, "CALL rejot.publish('order_names', 1, '"+strings.ReplaceAll(joinQuery, "'", "''")+"')")
	execRetry(t, ownerURL, "CALL rejot.publish('order_totals', 1, 'SELECT id, total FROM orders')")
	execRetry(t, targetURL, "CALL rejot.subscribe('order_names', 1, 'names')")
	execRetry(t, targetURL, "CALL rejot.subscribe('order_totals', 1, 'totals')")
	owner := connect(t, s.owner.URL("shop"))
	target := connect(t, s.target.URL("billing"))
	targetConverges(t, 60*time.Second, owner, joinQuery, target, "names")
	mustExec(t, owner, "UPDATE customers SET name = 'renamed' WHERE id = 3")
	mustExec(t, owner, "UPDATE orders SET customer_id = 5 WHERE id IN (1, 2, 3)")
	mustExec(t, owner, "UPDATE regions SET name = 'east' WHERE id = 2")
	mustExec(t, owner, "UPDATE orders SET total = total + 1 WHERE id <= 10")
	targetConverges(t, 60*time.Second, owner, joinQuery, target, "names")
	targetConverges(t, 60*time.Second, owner, "SELECT id, total FROM orders", target, "totals")

	s.ownerSC.kill(t)
	mustExec(t, owner, "UPDATE regions SET name = 'west' WHERE id = 2")
	mustExec(t, owner, "DELETE FROM customers WHERE id = 4")
	s.ownerSC = s.startOwner(t)
	mustExec(t, owner, "UPDATE customers SET region_id = 2 WHERE id = 5")
	mustExec(t, owner, "TRUNCATE regions")
	mustExec(t, owner, "INSERT INTO regions VALUES (1, 'one'), (2, 'two')")
	targetConverges(t, 60*time.Second, owner, joinQuery, target, "names")
}
