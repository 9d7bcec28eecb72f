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
	"github.com/jackc/pgx/v5/pgconn"
)

// TestSubscribeAgainAddsColumns: a subscriber of version 1 subscribes the
// same target again after the owner added a column (minor 1), while the
// owner keeps writing. The column appears in the target filled, in one
// transaction: a watcher never sees a row with it NULL, nor one whose
// columns come from two moments (every source row has a = 'v' || b).
// Nothing is copied again, and the target ends exactly the projection.
func TestSubscribeAgainAddsColumns(t *testing.T) {
	owner, consumer, name := replicated(t, "addcols",
		`CREATE TABLE items (id int PRIMARY KEY, a text NOT NULL, b int);
		 INSERT INTO items SELECT g, 'v' || g, g FROM generate_series(1, 2000) g`,
		"SELECT id, a FROM items", "public.items")
	ctx := context.Background()
	targetConverges(t, 60*time.Second, owner.conn, "SELECT id, a FROM items", consumer.conn, "public.items")
	admin := pg.Connect(t, consumer.db)
	copied := func() int64 {
		var n int64
		admin.QueryRow(ctx, "SELECT copied_rows FROM _rejot.subscriptions WHERE target = 'public.items'").Scan(&n)
		return n
	}
	before := copied()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var writes atomic.Int64
	wg.Add(2)
	go func() { // the owner's writes: a and b always together
		defer wg.Done()
		conn, err := pgx.Connect(ctx, pg.URL(owner.db))
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close(ctx)
		rng := rand.New(rand.NewPCG(1, 2))
		for n := 3000; ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			id := 1 + rng.IntN(2500)
			if _, err := conn.Exec(ctx, "INSERT INTO items VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET a = EXCLUDED.a, b = EXCLUDED.b",
				id, fmt.Sprintf("v%d", n), n); err != nil {
				t.Error(err)
				return
			}
			writes.Add(1)
		}
	}()
	var seen, bad atomic.Int64
	var badRow atomic.Value
	go func() { // a reader of the target
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			var n int64
			var row *string
			err := admin.QueryRow(ctx, `SELECT count(*), min(t::text) FILTER (WHERE b IS NULL OR a <> 'v' || b) FROM public.items t`).Scan(&n, &row)
			var pe *pgconn.PgError
			switch {
			case errors.As(err, &pe) && pe.Code == "42703": // no column b yet
			case err != nil:
				t.Error(err)
				return
			case row != nil:
				bad.Add(1)
				badRow.Store(*row)
			default:
				seen.Add(1)
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	waitFor(t, 20*time.Second, func() bool { return writes.Load() > 100 })

	if err := owner.exec(t, "CALL rejot.publish($1, 1, 'SELECT id, a, b FROM items')", name); err != nil {
		t.Fatal(err)
	}
	owner.catalogMinor(t, name, 1, 1)
	var status string
	if err := consumer.conn.QueryRow(ctx, "SELECT * FROM rejot.subscribe($1, 1, 'public.items')", name).Scan(new(string), new(string), new(int), &status); err != nil {
		t.Fatal(err)
	}
	if status != "streaming" {
		t.Fatalf("subscribe again: status %s", status)
	}
	waitFor(t, 60*time.Second, func() bool { return seen.Load() > 20 })
	at := writes.Load()
	waitFor(t, 20*time.Second, func() bool { return writes.Load() > at+200 })
	close(stop)
	wg.Wait()
	stop = make(chan struct{})
	targetConverges(t, 60*time.Second, owner.conn, "SELECT id, a, b FROM items", consumer.conn, "public.items")
	if n := bad.Load(); n > 0 {
		t.Fatalf("%d reads saw a row with b missing or from another moment than a, e.g. %v", n, badRow.Load())
	}
	if after := copied(); after != before {
		t.Fatalf("the state was copied again: copied_rows %d, was %d", after, before)
	}
	waitFor(t, 20*time.Second, func() bool { // and the catalog says so
		var st string
		var n int64
		consumer.conn.QueryRow(ctx, "SELECT status, copied_rows FROM rejot.subscriptions WHERE target = 'public.items' AND system = $1",
			consumer.db).Scan(&st, &n)
		return st == "streaming" && n == before
	})
	var def string
	admin.QueryRow(ctx, `SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
		FROM pg_attribute WHERE attrelid = 'public.items'::regclass AND attnum > 0 AND NOT attisdropped`).Scan(&def)
	if def != "id integer, a text, b integer" {
		t.Fatalf("target columns: %s", def)
	}
	// Subscribing again now is a no-op; the rows keep flowing.
	if err := consumer.exec(t, "CALL rejot.subscribe($1, 1, 'public.items')", name); err != nil {
		t.Fatal(err)
	}
	owner.execAll(t, "UPDATE items SET a = 'v0', b = 0 WHERE id <= 10")
	targetConverges(t, 60*time.Second, owner.conn, "SELECT id, a, b FROM items", consumer.conn, "public.items")
}

// TestSubscribeAgainRefuses: subscribing again adds only columns the
// table does not have, of types the sidecar may run the code of, and only
// for the table's owner; what was refused changed nothing. Once mended, an
// enum of the subscriber's own (named by its schema for the apply) is
// added and filled.
func TestSubscribeAgainRefuses(t *testing.T) {
	owner, consumer, name := replicated(t, "addrefused",
		`CREATE TYPE mood AS ENUM ('ok', 'bad');
		 CREATE TABLE items (id int PRIMARY KEY, a text NOT NULL, b int, m mood);
		 INSERT INTO items SELECT g, 'v' || g, g, 'bad' FROM generate_series(1, 50) g`,
		"SELECT id, a FROM items", "public.items")
	ctx := context.Background()
	if err := owner.exec(t, "CALL rejot.publish($1, 1, 'SELECT id, a, b, m FROM items')", name); err != nil {
		t.Fatal(err)
	}
	owner.catalogMinor(t, name, 1, 1)
	admin := pg.Connect(t, consumer.db)
	record := func() string {
		return tableText(t, admin, "SELECT columns::text, generation FROM _rejot.subscriptions")
	}
	before := record()
	stranger := "stranger_" + consumer.db
	mustExec(t, admin, "CREATE ROLE "+stranger+" LOGIN; CREATE TYPE public.mood AS ENUM ('ok', 'bad'); ALTER TYPE public.mood OWNER TO "+stranger)
	dropRolesAtEnd(t, consumer.db, stranger)
	conn := connectAs(t, consumer.sc.url(consumer.db, stranger))
	_, err := conn.Exec(ctx, "CALL rejot.subscribe($1, 1, 'public.items')", name)
	wantRefused(t, "a stranger subscribes again", err, "42501", "owns")
	err = consumer.exec(t, "CALL rejot.subscribe($1, 1, 'public.items')", name)
	wantRefused(t, "a type of the stranger's", err, "42501", "belongs to role "+stranger)
	mustExec(t, admin, "ALTER TYPE public.mood OWNER TO postgres; ALTER TABLE public.items ADD COLUMN b int")
	err = consumer.exec(t, "CALL rejot.subscribe($1, 1, 'public.items')", name)
	wantRefused(t, "the table has the column already", err, "22023", "not in the table yet")
	if after := record(); after != before {
		t.Fatalf("the subscription changed:\n%s\nwas\n%s", after, before)
	}
	mustExec(t, admin, "ALTER TABLE public.items DROP COLUMN b")
	if err := consumer.exec(t, "CALL rejot.subscribe($1, 1, 'public.items')", name); err != nil {
		t.Fatal(err)
	}
	owner.execAll(t, "UPDATE items SET m = 'ok' WHERE id <= 10")
	targetConverges(t, 60*time.Second, owner.conn, "SELECT id, a, b, m::text FROM items", consumer.conn, "(SELECT id, a, b, m::text FROM public.items) AS x")
}
