package tests

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestAdvisoryLocksOfOthers: no lock a role with only LOGIN can take
// stops a sidecar (docs/security.md, "Locks"). Such a role holds, directly
// against the databases, every advisory lock a release ever took: the
// migration keys of the managed schema, the catalog and the event log; the
// compaction keys of the next versions of the log; the keys that
// serialised a publish of the version and a subscribe into the target
// about to be made. Sidecars then start, install, publish, fill, subscribe
// and stream as if nobody held anything.
func TestAdvisoryLocksOfOthers(t *testing.T) {
	ctx := context.Background()
	ownerDB, consumerDB := pg.CreateDB(t), pg.CreateDB(t)
	locker := "locker_" + ownerDB
	admin := pg.Connect(t, ownerDB)
	mustExec(t, admin, "CREATE ROLE "+locker+" LOGIN")
	t.Cleanup(func() { pg.Exec(ctx, "postgres", "DROP ROLE IF EXISTS "+locker) })
	// The catalog and log database every test's sidecars share, made
	// first here when this test runs alone, so its keys can be held before
	// a sidecar migrates it.
	var exists bool
	admin.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'rejot')").Scan(&exists)
	if !exists {
		mustExec(t, admin, "CREATE DATABASE rejot")
	}
	var nextStream int64
	catalog := pg.Connect(t, "rejot")
	catalog.QueryRow(ctx, "SELECT to_regclass('rejot_log.streams') IS NOT NULL").Scan(&exists)
	if exists {
		if err := catalog.QueryRow(ctx, "SELECT coalesce(max(id), 0) FROM rejot_log.streams").Scan(&nextStream); err != nil {
			t.Fatal(err)
		}
	}
	name := "locked_" + ownerDB
	migrationKeys := "SELECT pg_advisory_lock(7265106111), pg_advisory_lock(7265106112), pg_advisory_lock(7265106113)"
	hold := map[string][]string{
		"rejot": {migrationKeys, fmt.Sprintf("SELECT pg_advisory_lock(1919251314, id::int) FROM generate_series(%d, %d) AS id", nextStream+1, nextStream+40)},
		ownerDB: {migrationKeys, "BEGIN", fmt.Sprintf("SELECT pg_advisory_xact_lock(hashtextextended('rejot publish %s/1', 0))", name)},
		consumerDB: {migrationKeys, "BEGIN", "SELECT pg_advisory_xact_lock(hashtextextended('rejot subscription public.copy', 0))",
			"SELECT pg_advisory_xact_lock(hashtextextended('rejot subscription \"public\".\"copy\"', 0))"},
	}
	for db, statements := range hold {
		conn, err := pgx.Connect(ctx, directURL(db, locker))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		for _, s := range statements {
			mustExec(t, conn, s)
		}
	}

	mustExec(t, admin, "CREATE TABLE orders (id int PRIMARY KEY, item text); INSERT INTO orders VALUES (1, 'one'), (2, 'two')")
	owner, consumer := publisherOn(t, ownerDB), publisherOn(t, consumerDB)
	callCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := owner.conn.Exec(callCtx, "CALL rejot.publish($1, 1, 'SELECT id, item FROM orders')", name); err != nil {
		t.Fatalf("publish while another role holds the old keys: %v", err)
	}
	owner.catalogMinor(t, name, 1, 0)
	if _, err := consumer.conn.Exec(callCtx, "CALL rejot.subscribe($1, 1, 'public.copy')", name); err != nil {
		t.Fatalf("subscribe while another role holds the old keys: %v", err)
	}
	targetConverges(t, 30*time.Second, owner.conn, "SELECT * FROM orders", consumer.conn, "public.copy")
	mustExec(t, admin, "INSERT INTO orders VALUES (3, 'three')")
	targetConverges(t, 30*time.Second, owner.conn, "SELECT * FROM orders", consumer.conn, "public.copy")
}
