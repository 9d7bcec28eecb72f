package tests

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestRefactorKeepsTheVersion: the owner changes its table under a
// published version, and in the same migration re-publishes the version
// with a query that yields the same public columns — a retype mended
// with a cast, a column split in two and merged back by an expression.
// Each is accepted as a re-publish (same columns, NOT NULL kept), and the
// subscriber's target keeps following, under concurrent inserts, to
// exactly the projection of the source.
func TestRefactorKeepsTheVersion(t *testing.T) {
	owner, consumer, name := replicated(t, "refactor",
		"CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, name text NOT NULL, total int)",
		"SELECT id, customer, name, total FROM orders", "public.orders")
	ctx := context.Background()
	columns := func() string {
		return tableText(t, owner.conn, fmt.Sprintf(`SELECT name, type, is_key, nullable FROM rejot.columns
			WHERE publication = '%s' AND version = 1 ORDER BY position`, name))
	}
	want := "(customer,text,f,f)\n(id,bigint,t,f)\n(name,text,f,f)\n(total,integer,f,t)"
	waitFor(t, 15*time.Second, func() bool { return columns() == want })

	// Concurrent writers, through their own connection to the database.
	var next atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		conn, err := pgx.Connect(ctx, pg.URL(owner.db))
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close(ctx)
		for {
			select {
			case <-stop:
				return
			default:
			}
			i := next.Add(1)
			// Whichever shape the table has, the insert names what it has.
			conn.Exec(ctx, `DO $$ BEGIN
				IF EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'orders'::regclass AND attname = 'first' AND NOT attisdropped) THEN
					INSERT INTO orders (id, customer, first, last, total) VALUES (`+fmt.Sprint(i)+`, 'c`+fmt.Sprint(i)+`', 'f', 'l`+fmt.Sprint(i)+`', `+fmt.Sprint(i)+`);
				ELSE
					INSERT INTO orders (id, customer, name, total) VALUES (`+fmt.Sprint(i)+`, 'c`+fmt.Sprint(i)+`', 'f l`+fmt.Sprint(i)+`', `+fmt.Sprint(i)+`);
				END IF; END $$`)
			time.Sleep(5 * time.Millisecond)
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	waitFor(t, 15*time.Second, func() bool { return next.Load() > 50 })

	migrate := func(statements ...string) {
		t.Helper()
		tx, err := owner.conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		for _, s := range statements[:len(statements)-1] {
			if _, err := tx.Exec(ctx, s); err != nil {
				t.Fatalf("%s: %v", s, err)
			}
		}
		var cols string
		var minor int
		if err := tx.QueryRow(ctx, "SELECT * FROM rejot.publish($1, 1, $2)", name, statements[len(statements)-1]).Scan(new(string), new(int), &minor, &cols); err != nil {
			t.Fatal(err)
		}
		if cols != "id bigint key, customer text, name text, total integer" || minor != 0 {
			t.Fatalf("the re-publish has columns %s, minor %d", cols, minor)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// A retype mended with a cast (the last "statement" is the query).
	q2 := "SELECT id, customer::text AS customer, name, total FROM orders"
	migrate("ALTER TABLE orders ALTER COLUMN customer TYPE varchar(200)", q2)
	targetConverges(t, 60*time.Second, owner.conn, q2, consumer.conn, "public.orders")
	// A column split in two, merged back by an expression.
	q3 := "SELECT id, customer::text AS customer, first || ' ' || last AS name, total FROM orders"
	migrate("LOCK TABLE orders",
		"ALTER TABLE orders ADD COLUMN first text, ADD COLUMN last text",
		"UPDATE orders SET first = split_part(name, ' ', 1), last = split_part(name, ' ', 2)",
		"ALTER TABLE orders ALTER COLUMN first SET NOT NULL, ALTER COLUMN last SET NOT NULL, DROP COLUMN name",
		q3)
	at := next.Load()
	waitFor(t, 30*time.Second, func() bool { return next.Load() > at+50 })
	targetConverges(t, 60*time.Second, owner.conn, q3, consumer.conn, "public.orders")
	if got := columns(); got != want {
		t.Fatalf("the version's columns changed:\n%s\nwant\n%s", got, want)
	}
	// The catalog has the new query, under the same minor.
	var versions, minor int
	var query string
	waitFor(t, 15*time.Second, func() bool {
		owner.conn.QueryRow(ctx, "SELECT count(*), max(minor), max(query) FROM rejot.publications WHERE publication = $1", name).Scan(&versions, &minor, &query)
		return strings.Contains(query, "first || ' '")
	})
	if versions != 1 || minor != 0 {
		t.Fatalf("%d versions, minor %d, query %s", versions, minor, query)
	}
	// The target's NOT NULL columns held every row.
	var def string
	consumer.conn.QueryRow(ctx, `SELECT string_agg(attname || CASE WHEN attnotnull THEN ' not null' ELSE '' END, ', ' ORDER BY attnum)
		FROM pg_attribute WHERE attrelid = 'public.orders'::regclass AND attnum > 0`).Scan(&def)
	if def != "id not null, customer not null, name not null, total" {
		t.Fatalf("target columns: %s", def)
	}
}
