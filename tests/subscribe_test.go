package tests

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// tableText renders a query's rows as text, one row per line, in order.
func tableText(t *testing.T, conn *pgx.Conn, query string) string {
	t.Helper()
	rows, err := conn.Query(context.Background(), "SELECT coalesce(string_agg(r::text, E'\\n' ORDER BY r::text), '') FROM ("+query+") r")
	if err != nil {
		return "error: " + err.Error()
	}
	defer rows.Close()
	var out string
	for rows.Next() {
		rows.Scan(&out)
	}
	if rows.Err() != nil {
		return "error: " + rows.Err().Error()
	}
	return out
}

// execAll runs statements in order through p's sidecar, failing the test
// at the first error.
func (p *publisher) execAll(t *testing.T, statements ...string) {
	t.Helper()
	for _, q := range statements {
		if err := p.exec(t, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// replicated sets up an owner and a subscriber, each database behind its
// own sidecar: the owner runs setup and publishes query as version 1 of a
// publication named after base, and the subscriber subscribes target to it.
func replicated(t *testing.T, base, setup, query, target string) (owner, consumer *publisher, name string) {
	t.Helper()
	owner, consumer = newPublisher(t), newPublisher(t)
	name = owner.name(base)
	if err := owner.exec(t, setup); err != nil {
		t.Fatal(err)
	}
	if err := owner.exec(t, "CALL rejot.publish($1, 1, $2)", name, query); err != nil {
		t.Fatal(err)
	}
	owner.catalogMinor(t, name, 1, 0)
	if err := consumer.exec(t, "CALL rejot.subscribe($1, 1, $2)", name, target); err != nil {
		t.Fatal(err)
	}
	return owner, consumer, name
}

// targetConverges waits until the target holds exactly the projection.
func targetConverges(t *testing.T, d time.Duration, owner *pgx.Conn, projection string, consumer *pgx.Conn, target string) {
	t.Helper()
	var want, got string
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		want, got = tableText(t, owner, projection), tableText(t, consumer, "SELECT * FROM "+target)
		if want == got {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("the target did not converge within %v\nwant:\n%s\ngot:\n%s", d, want, got)
}

// TestSubscribeCopiesThenStreams: a subscriber's sidecar creates the
// target, copies what the owner has, then follows inserts, updates, rows
// leaving the filter, key changes, deletes and truncates; status and lag
// show in rejot.subscriptions; unsubscribe stops it and keeps the table.
func TestSubscribeCopiesThenStreams(t *testing.T) {
	owner := newPublisher(t)
	consumer := newPublisher(t)
	ctx := context.Background()
	name := owner.name("subs")
	for _, q := range []string{
		"CREATE TABLE orders (id bigint PRIMARY KEY, status text NOT NULL, total numeric(12,2), note text, secret text)",
		"INSERT INTO orders SELECT g, 'placed', g * 1.5, 'n' || g, 's' FROM generate_series(1, 300) g",
		"CALL rejot.publish($1, 1, $$SELECT id, status, total, note FROM orders WHERE status <> 'draft'$$)",
	} {
		var args []any
		if strings.Contains(q, "$1") {
			args = append(args, name)
		}
		if err := owner.exec(t, q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	owner.catalogMinor(t, name, 1, 0)
	// Let the owner's capture fill the log first, so the subscription
	// starts with a copy (it would stream the fill otherwise).
	logDB := pg.Connect(t, "rejot")
	waitFor(t, 30*time.Second, func() bool {
		var head int64
		logDB.QueryRow(ctx, "SELECT head FROM rejot_log.streams WHERE publication = $1", name).Scan(&head)
		return head == 301
	})
	if err := consumer.exec(t, "CREATE SCHEMA billing"); err != nil {
		t.Fatal(err)
	}
	var target, status string
	if err := consumer.conn.QueryRow(ctx, "CALL rejot.subscribe($1, 1, 'billing.orders')", name).Scan(&target, new(string), new(int), &status); err != nil {
		t.Fatal(err)
	}
	if target != "billing.orders" || status != "copying" {
		t.Fatalf("subscribe returned %s %s", target, status)
	}
	// The table has the public columns, exact types, the key.
	var def string
	consumer.conn.QueryRow(ctx, `SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod) || CASE WHEN attnotnull THEN ' not null' ELSE '' END, ', ' ORDER BY attnum)
		FROM pg_attribute WHERE attrelid = 'billing.orders'::regclass AND attnum > 0`).Scan(&def)
	if def != "id bigint not null, status text not null, total numeric(12,2), note text" {
		t.Fatalf("target columns: %s", def)
	}
	projection := "SELECT id, status, total, note FROM orders WHERE status <> 'draft'"
	targetConverges(t, 30*time.Second, owner.conn, projection, consumer.conn, "billing.orders")
	owner.execAll(t,
		"INSERT INTO orders VALUES (1000, 'placed', 1, E'tab\\there\\nnewline \\\\ back', 's'), (1001, 'draft', 2, NULL, 's')",
		"UPDATE orders SET total = 99.99 WHERE id = 1",
		"UPDATE orders SET status = 'draft' WHERE id = 2",
		"UPDATE orders SET status = 'placed' WHERE id = 1001",
		"UPDATE orders SET id = 5000 WHERE id = 3",
		"DELETE FROM orders WHERE id BETWEEN 10 AND 20",
		"UPDATE orders SET secret = 'changed' WHERE id = 4",
		"BEGIN; INSERT INTO orders VALUES (2000, 'placed', 5, 'rolled back', 's'); ROLLBACK",
	)
	targetConverges(t, 30*time.Second, owner.conn, projection, consumer.conn, "billing.orders")
	if err := owner.exec(t, "TRUNCATE orders"); err != nil {
		t.Fatal(err)
	}
	if err := owner.exec(t, "INSERT INTO orders VALUES (7, 'placed', 7, 'after truncate', 's')"); err != nil {
		t.Fatal(err)
	}
	targetConverges(t, 30*time.Second, owner.conn, projection, consumer.conn, "billing.orders")
	// rejot.subscriptions: streaming, no lag in changes.
	defer func() {
		if t.Failed() {
			t.Log(tableText(t, consumer.conn, "SELECT * FROM rejot.subscriptions"))
		}
	}()
	waitFor(t, 20*time.Second, func() bool {
		var st string
		var lagChanges *int64
		var copied int64
		consumer.conn.QueryRow(ctx, "SELECT status, lag_changes, copied_rows FROM rejot.subscriptions WHERE target = 'billing.orders' AND system = $1",
			consumer.db).Scan(&st, &lagChanges, &copied)
		return st == "streaming" && lagChanges != nil && *lagChanges == 0 && copied == 300
	})
	// Subscribing again the same way is a no-op; to something else, refused.
	if err := consumer.exec(t, "CALL rejot.subscribe($1, 1, 'billing.orders')", name); err != nil {
		t.Fatal(err)
	}
	// Unsubscribe: it stops, the table stays.
	if err := consumer.exec(t, "CALL rejot.unsubscribe('billing.orders')"); err != nil {
		t.Fatal(err)
	}
	if err := owner.exec(t, "INSERT INTO orders VALUES (8, 'placed', 8, 'after unsubscribe', 's')"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if got := tableText(t, consumer.conn, "SELECT id FROM billing.orders"); got != "(7)" {
		t.Fatalf("after unsubscribe the target has %s", got)
	}
	waitFor(t, 20*time.Second, func() bool {
		var n int
		consumer.conn.QueryRow(ctx, "SELECT count(*) FROM rejot.subscriptions WHERE target = 'billing.orders' AND system = $1", consumer.db).Scan(&n)
		return n == 0
	})
}

// TestSubscribeRefusesMisfits: bad subscriptions get clear errors.
func TestSubscribeRefusesMisfits(t *testing.T) {
	owner := newPublisher(t)
	consumer := newPublisher(t)
	name := owner.name("misfit")
	if err := owner.exec(t, "CREATE TABLE items (id int PRIMARY KEY, price numeric(10,2) NOT NULL, label text)"); err != nil {
		t.Fatal(err)
	}
	if err := owner.exec(t, "CALL rejot.publish($1, 1, 'SELECT id, price, label FROM items')", name); err != nil {
		t.Fatal(err)
	}
	owner.catalogMinor(t, name, 1, 0)
	if err := consumer.exec(t, "CREATE TABLE wrong (id int, price integer, extra text NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		call, code, says string
	}{
		{"CALL rejot.subscribe('nope_nothing', 1, 'x')", "42704", "does not exist"},
		{"CALL rejot.subscribe($1, 2, 'x')", "42704", "version 2 does not exist"},
		{"CALL rejot.subscribe($1, 1, 'nosuchschema.x')", "3F000", `schema "nosuchschema" does not exist`},
		{"CALL rejot.subscribe($1, 1, 'a.b.c.d')", "22023", "invalid target"},
		{"CALL rejot.subscribe($1, 1, 'x', columns => '{price}')", "42P10", `key column "id"`},
		{"CALL rejot.subscribe($1, 1, 'x', columns => '{id,nope}')", "42703", `no column "nope"`},
		{"CALL rejot.subscribe($1, 1, 'wrong')", "42P16", "column price is integer, the publication's is numeric(10,2); column label is missing; column extra is NOT NULL without a default, and the publication does not fill it; the table has no primary key"},
	} {
		var err error
		if strings.Contains(c.call, "$1") {
			err = consumer.exec(t, c.call, name)
		} else {
			err = consumer.exec(t, c.call)
		}
		pe := pgErr(err)
		if pe.Code != c.code || !strings.Contains(pe.Message, c.says) {
			t.Errorf("%s: got %v, want %s %q", c.call, err, c.code, c.says)
		}
	}
	// A subset of columns works and makes the table with those only.
	if err := consumer.exec(t, "CALL rejot.subscribe($1, 1, 'public.prices', columns => ARRAY['id', 'price'])", name); err != nil {
		t.Fatal(err)
	}
	if err := owner.exec(t, "INSERT INTO items VALUES (1, 9.99, 'x')"); err != nil {
		t.Fatal(err)
	}
	targetConverges(t, 30*time.Second, owner.conn, "SELECT id, price FROM items", consumer.conn, "public.prices")
	// Another publication into the same table is refused.
	pe := pgErr(consumer.exec(t, "CALL rejot.subscribe($1, 1, 'prices')", name+"x"))
	if pe.Code != "42704" {
		t.Errorf("second subscription: %v", pe)
	}
}

// TestSubscribeNotFoundOnTheDefaultCatalog: a sidecar given no --catalog
// warns at start that its catalog is on its upstream's server, and a
// subscribe to a publication that catalog lacks says the publication may
// be in another catalog and to point --catalog at the shared one; with
// --catalog given, neither says a word about it.
func TestSubscribeNotFoundOnTheDefaultCatalog(t *testing.T) {
	for _, c := range []struct {
		name  string
		extra []string
	}{{"default", nil}, {"given", []string{"--catalog", pg.URL("rejot")}}} {
		t.Run(c.name, func(t *testing.T) {
			db := pg.CreateDB(t)
			sc := startSidecar(t, db, c.extra...)
			conn := connect(t, sc.url(db, "postgres"))
			_, err := conn.Exec(context.Background(), "CALL rejot.subscribe('nope_elsewhere', 1, 'public.x')")
			pe := pgErr(err)
			if pe.Code != "42704" {
				t.Fatalf("subscribe to an unknown publication: %v", err)
			}
			hinted := strings.Contains(pe.Hint, "no --catalog") && strings.Contains(pe.Hint, pg.Addr()) &&
				strings.Contains(pe.Hint, "Point --catalog of every sidecar at one shared catalog")
			warned := strings.Contains(sc.logs(), "no --catalog given")
			if c.extra == nil && (!hinted || !warned) {
				t.Errorf("default catalog: hint %q, start warning %v", pe.Hint, warned)
			}
			if c.extra != nil && (strings.Contains(pe.Hint, "--catalog") || warned) {
				t.Errorf("--catalog given: hint %q, start warning %v", pe.Hint, warned)
			}
		})
	}
}

// TestSubscribeAppliesTransactionsLargerThanASpan: a source transaction of
// more changes than an apply takes at once (5,000) is applied whole, read
// from the log as it is applied, and so is one that truncates and refills
// the table; the small transactions around them go in spans read ahead.
func TestSubscribeAppliesTransactionsLargerThanASpan(t *testing.T) {
	owner, consumer, _ := replicated(t, "bulk", "CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL)",
		"SELECT id, n FROM items", "public.items")
	projection := "SELECT id, n FROM items"
	targetConverges(t, 30*time.Second, owner.conn, projection, consumer.conn, "public.items")
	owner.execAll(t,
		"INSERT INTO items VALUES (-1, 0)",
		"INSERT INTO items SELECT g, g FROM generate_series(1, 12000) g",
		"UPDATE items SET n = n + 1 WHERE id = -1",
		"BEGIN; UPDATE items SET n = -n WHERE id % 2 = 0; TRUNCATE items; INSERT INTO items SELECT g, 2 * g FROM generate_series(1, 7000) g; DELETE FROM items WHERE id % 3 = 0; COMMIT",
		"UPDATE items SET n = 0 WHERE id = 1",
	)
	targetConverges(t, 60*time.Second, owner.conn, projection, consumer.conn, "public.items")
}
