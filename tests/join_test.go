package tests

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// joinSetup is three tables along the data's keys: order → customer →
// region.
const joinSetup = `CREATE TABLE regions (id int PRIMARY KEY, name text NOT NULL);
	CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, region_id int);
	CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int, total numeric(12,2) NOT NULL, note text);
	INSERT INTO regions VALUES (1, 'north'), (2, 'south');
	INSERT INTO customers SELECT g, 'c' || g, 1 + g % 2 FROM generate_series(1, 20) g;
	INSERT INTO orders SELECT g, 1 + g % 20, g * 1.25, 'n' FROM generate_series(1, 200) g`

// joinQuery is a LEFT JOIN chain with an expression and a filter over
// two of the tables.
const joinQuery = `SELECT o.id, o.total, c.name AS customer, upper(r.name) AS region
	FROM orders o LEFT JOIN customers c ON c.id = o.customer_id LEFT JOIN regions r ON r.id = c.region_id
	WHERE o.total > 1 AND coalesce(r.name, '') <> 'east'`

// TestJoinProjection: a join version's rows follow every change of any of
// its tables exactly — a customer renamed updates all its orders, an
// order moved to another customer, a customer deleted under a LEFT JOIN,
// a region changed, key changes of each table, a filter over a joined
// table, truncates of a joined table and of the root — and rejot.publications
// lists the tables it reads. An inner join drops the rows it no longer
// meets.
func TestJoinProjection(t *testing.T) {
	owner, consumer, name := replicated(t, "joined", joinSetup, joinQuery, "order_view")
	ctx := context.Background()
	converge := func(step string) {
		t.Helper()
		t.Log(step)
		targetConverges(t, 30*time.Second, owner.conn, joinQuery, consumer.conn, "order_view")
	}
	converge("first state")
	var tables []string
	if err := owner.conn.QueryRow(ctx, "SELECT tables FROM rejot.publications WHERE publication = $1", name).Scan(&tables); err != nil {
		t.Fatal(err)
	}
	if strings.Join(tables, " ") != `"public"."orders" "public"."customers" "public"."regions"` {
		t.Fatalf("tables %v", tables)
	}
	for _, step := range []struct{ name, sql string }{
		{"rename a customer", "UPDATE customers SET name = 'renamed' WHERE id = 3"},
		{"rename a customer and change its orders together", "BEGIN; UPDATE customers SET name = 'both' WHERE id = 4; UPDATE orders SET total = total + 1 WHERE customer_id = 4; COMMIT"},
		{"move orders to another customer", "UPDATE orders SET customer_id = 5 WHERE id IN (1, 2, 3)"},
		{"change a customer's region", "UPDATE customers SET region_id = 2 WHERE id = 5"},
		{"rename a region", "UPDATE regions SET name = 'northern' WHERE id = 1"},
		{"a region leaves the filter", "UPDATE regions SET name = 'east' WHERE id = 2"},
		{"and comes back", "UPDATE regions SET name = 'west' WHERE id = 2"},
		{"delete a customer under the LEFT JOIN", "DELETE FROM customers WHERE id = 6"},
		{"change a customer's key", "UPDATE customers SET id = 106 WHERE id = 7"},
		{"give its orders the new key", "UPDATE orders SET customer_id = 106 WHERE customer_id = 7"},
		{"insert the missing customer", "INSERT INTO customers VALUES (6, 'back', 2)"},
		{"change an order's key", "UPDATE orders SET id = 1000 WHERE id = 10"},
		{"an order leaves the filter", "UPDATE orders SET total = 0 WHERE id = 11"},
		{"delete orders", "DELETE FROM orders WHERE id IN (12, 13)"},
		{"null a join column", "UPDATE orders SET customer_id = NULL WHERE id = 14"},
		{"a change the version does not read", "UPDATE orders SET note = 'x' WHERE id = 15"},
		{"a rolled back change", "BEGIN; UPDATE customers SET name = 'never' WHERE id = 8; ROLLBACK"},
		{"a customer's name out of line", "UPDATE customers SET name = (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 400) g) WHERE id = 9"},
		{"its region changes, the name left out of the WAL", "UPDATE customers SET region_id = 2 WHERE id = 9"},
		{"and its orders change", "UPDATE orders SET total = total + 1 WHERE customer_id = 9"},
		{"truncate a joined table", "TRUNCATE regions"},
		{"refill it", "INSERT INTO regions VALUES (1, 'one'), (2, 'two')"},
		{"truncate the root", "TRUNCATE orders"},
		{"new orders", "INSERT INTO orders SELECT g, 1 + g % 25, g, 'n' FROM generate_series(1, 50) g"},
	} {
		if err := owner.exec(t, step.sql); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		converge(step.name)
	}
}

// TestJoinProjectionInner: under an inner JOIN, a root row appears only
// while it meets a row of the joined table.
func TestJoinProjectionInner(t *testing.T) {
	const query = "SELECT o.id, c.name FROM orders o JOIN customers c ON c.id = o.customer_id"
	owner, consumer, _ := replicated(t, "inner", joinSetup, query, "inner_view")
	converge := func(step string) {
		t.Helper()
		targetConverges(t, 30*time.Second, owner.conn, query, consumer.conn, "inner_view")
	}
	converge("first state")
	for _, q := range []string{
		"DELETE FROM customers WHERE id = 2",
		"UPDATE orders SET customer_id = 999 WHERE id = 5",
		"INSERT INTO customers VALUES (999, 'late', 1), (2, 'again', 1)",
		"UPDATE customers SET id = 1999 WHERE id = 999",
		"TRUNCATE customers CASCADE",
	} {
		if err := owner.exec(t, q); err != nil {
			t.Fatal(err)
		}
		converge(q)
	}
}

// TestJoinPublishValidation: a join projection is validated as one
// table's is — types, nullability (a LEFT JOINed table's columns are
// nullable, an inner one's NOT NULL columns are not), the public key,
// immutability, privileges and the compatibility rules — and each joined
// table must be met on exactly its primary key, by columns of its types.
func TestJoinPublishValidation(t *testing.T) {
	p := newPublisher(t)
	ctx := context.Background()
	stranger := p.name("stranger")
	if err := p.exec(t, joinSetup+`; CREATE TABLE notes (id bigint PRIMARY KEY, body text);
		CREATE ROLE `+stranger+`; GRANT SELECT ON orders TO `+stranger); err != nil {
		t.Fatal(err)
	}
	name := p.name("lines")
	const q = `SELECT o.id, o.total, c.name AS customer, r.name AS region FROM orders o
		JOIN customers c ON c.id = o.customer_id LEFT JOIN regions r ON r.id = c.region_id`
	var pub, cols string
	var version, minor int
	publish := func(query string) error {
		return p.conn.QueryRow(ctx, "SELECT * FROM rejot.publish($1, 1, $2)", name, query).Scan(&pub, &version, &minor, &cols)
	}
	if err := publish(q); err != nil {
		t.Fatal(err)
	}
	if cols != "id bigint key, total numeric(12,2), customer text, region text" {
		t.Fatalf("columns %q", cols)
	}
	p.catalogMinor(t, name, 1, 0)
	rows, err := p.conn.Query(ctx, "SELECT name || ' ' || nullable FROM rejot.columns WHERE publication = $1 ORDER BY position", name)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || strings.Join(got, ", ") != "id false, total false, customer false, region true" {
		t.Fatalf("nullability %v, %v", got, err)
	}
	// Expressions follow the one-table rules: a cast of a NOT NULL column,
	// coalesce with a constant, arithmetic of not-null values, and a LEFT
	// JOINed column the filter requires, are not null; a LEFT JOINed NOT
	// NULL column is nullable (the rules do not infer from the filter that
	// its row is there).
	exprs := p.name("exprs")
	if err := p.exec(t, "CALL rejot.publish($1, 1, $2)", exprs, `SELECT o.id, c.name::varchar(40) AS customer, coalesce(r.name, 'none') AS region,
		o.total + 1 AS next_total, r.id AS region_id, r.name AS region_name, c.region_id AS raw_region
		FROM orders o JOIN customers c ON c.id = o.customer_id LEFT JOIN regions r ON r.id = c.region_id WHERE r.id IS NOT NULL`); err != nil {
		t.Fatal(err)
	}
	p.catalogMinor(t, exprs, 1, 0)
	rows, err = p.conn.Query(ctx, "SELECT name || ' ' || nullable FROM rejot.columns WHERE publication = $1 ORDER BY position", exprs)
	if err != nil {
		t.Fatal(err)
	}
	got, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if want := "id false, customer false, region false, next_total false, region_id false, region_name true, raw_region true"; err != nil || strings.Join(got, ", ") != want {
		t.Fatalf("nullability of expressions %v, %v; want %s", got, err, want)
	}
	// The same again is a no-op; a column more is a minor; another filter
	// is refused.
	if err := publish(q); err != nil || minor != 0 {
		t.Fatalf("republish: minor %d, %v", minor, err)
	}
	more := strings.Replace(q, "r.name AS region", "r.name AS region, c.id AS customer_id", 1)
	if err := publish(more); err != nil || minor != 1 {
		t.Fatalf("a column added: minor %d, %v", minor, err)
	}
	if pe := pgErr(p.exec(t, "CALL rejot.publish($1, 1, $2)", name, more+" WHERE r.id > 1")); pe.Code != "0A000" || !strings.Contains(pe.Message, "which rows") {
		t.Fatalf("a new filter: %v", pe)
	}
	for _, c := range []struct{ query, code, says string }{
		{"SELECT o.id FROM orders o JOIN customers c ON c.region_id = o.customer_id", "0A000", "not on its primary key"},
		{"SELECT o.id FROM orders o JOIN notes n ON n.id = o.customer_id", "0A000", "types differ"},
		{"SELECT o.total FROM orders o JOIN customers c ON c.id = o.customer_id", "0A000", "primary key of its root table"},
		{"SELECT o.id, c.name || random() AS x FROM orders o JOIN customers c ON c.id = o.customer_id", "42P17", "not allowed"},
		{"SELECT o.id FROM orders o JOIN customers c ON c.id = o.nosuch", "42703", "nosuch"},
		{"SELECT o.id FROM orders o JOIN nosuch c ON c.id = o.customer_id", "42P01", "nosuch"},
		{"SELECT o.id FROM orders o RIGHT JOIN customers c ON c.id = o.customer_id", "0A000", "RIGHT JOIN"},
	} {
		pe := pgErr(p.exec(t, "CALL rejot.publish($1, 2, $2)", name, c.query))
		if pe.Code != c.code || !strings.Contains(pe.Message, c.says) {
			t.Errorf("%s: %s %q; want %s mentioning %q", c.query, pe.Code, pe.Message, c.code, c.says)
		}
	}
	// A role that may read the root but not a joined table is refused by
	// Postgres itself, through its own session.
	if err := p.exec(t, "SET ROLE "+stranger); err != nil {
		t.Fatal(err)
	}
	pe := pgErr(p.exec(t, "CALL rejot.publish($1, 3, $2)", stranger, q))
	if err := p.exec(t, "RESET ROLE"); err != nil {
		t.Fatal(err)
	}
	if pe.Code != "42501" {
		t.Fatalf("a role without SELECT on a joined table: %s %q", pe.Code, pe.Message)
	}
}

// TestJoinVersionFailsAlone: a joined table losing a column the version
// reads, behind the sidecar's back, fails that version alone (with its
// problem in rejot.publications) while a version of the same system goes
// on; bringing the column back and publishing again mends it exactly.
func TestJoinVersionFailsAlone(t *testing.T) {
	const query = "SELECT o.id, c.name FROM orders o LEFT JOIN customers c ON c.id = o.customer_id"
	owner, consumer, name := replicated(t, "breaks", joinSetup, query, "broken_view")
	ctx := context.Background()
	targetConverges(t, 30*time.Second, owner.conn, query, consumer.conn, "broken_view")
	witness := owner.name("witness")
	if err := owner.exec(t, "CALL rejot.publish($1, 1, 'SELECT id, total FROM orders')", witness); err != nil {
		t.Fatal(err)
	}
	owner.catalogMinor(t, witness, 1, 0)
	if err := consumer.exec(t, "CALL rejot.subscribe($1, 1, 'witness')", witness); err != nil {
		t.Fatal(err)
	}
	admin := pg.Connect(t, owner.db)
	mustExec(t, admin, "DROP EVENT TRIGGER IF EXISTS rejot_guard_contract")
	mustExec(t, admin, "ALTER TABLE customers DROP COLUMN name; UPDATE customers SET region_id = 2 WHERE id = 1; UPDATE orders SET total = total + 1")
	waitFor(t, 30*time.Second, func() bool {
		var status string
		var problem *string
		owner.conn.QueryRow(ctx, "SELECT status, problem FROM rejot.publications WHERE publication = $1", name).Scan(&status, &problem)
		return status == "failed" && problem != nil && strings.Contains(*problem, "name")
	})
	targetConverges(t, 30*time.Second, owner.conn, "SELECT id, total FROM orders", consumer.conn, "witness")
	mustExec(t, admin, "ALTER TABLE customers ADD COLUMN name text; UPDATE customers SET name = 'back ' || id")
	if err := owner.exec(t, "CALL rejot.publish($1, 1, $2)", name, query); err != nil {
		t.Fatal(err)
	}
	mustExec(t, admin, "UPDATE customers SET name = 'after' WHERE id = 2")
	targetConverges(t, 60*time.Second, owner.conn, query, consumer.conn, "broken_view")
}

// TestJoinContractSafeDDL: DDL on a joined table that would break a join
// version — a drop, a rename (joined tables' columns are matched by name)
// or a retype of a column it reads, a rename or drop of the table — is
// refused at commit with 2BP01 naming the version, with the event trigger
// and through the sidecar; the superuser finds the table unchanged. A
// re-publish in the same transaction lets it commit, and the version
// keeps flowing; DDL on columns the version does not read is never
// refused.
func TestJoinContractSafeDDL(t *testing.T) {
	p := newPublisher(t)
	admin := pg.Connect(t, p.db)
	name := p.name("joined")
	const query = "SELECT o.id, o.total, c.name AS customer FROM orders o LEFT JOIN customers c ON c.id = o.customer_id"
	p.execAll(t, joinSetup, "CALL rejot.publish('"+name+"', 1, '"+query+"')")
	want := columnsOf(t, admin, "customers")
	breaking := []string{"ALTER TABLE customers DROP COLUMN name", "ALTER TABLE customers RENAME COLUMN name TO full_name",
		"ALTER TABLE customers ALTER COLUMN name TYPE varchar(10)", "ALTER TABLE customers RENAME TO clients", "DROP TABLE customers CASCADE"}

	t.Run("bypassing the sidecar, with the event trigger", func(t *testing.T) {
		for _, ddl := range breaking {
			_, err := admin.Exec(context.Background(), ddl)
			refusedBy(t, err, name)
		}
		if got := columnsOf(t, admin, "customers"); got != want {
			t.Fatalf("columns %s; want %s", got, want)
		}
	})

	mustExec(t, admin, "DROP EVENT TRIGGER rejot_guard_contract")

	t.Run("through the sidecar", func(t *testing.T) {
		for _, ddl := range breaking {
			refusedBy(t, p.exec(t, ddl), name)
		}
		if got := columnsOf(t, admin, "customers"); got != want {
			t.Fatalf("columns %s; want %s", got, want)
		}
	})

	t.Run("columns it does not read", func(t *testing.T) {
		if err := p.exec(t, "ALTER TABLE customers ADD COLUMN tier text; ALTER TABLE customers DROP COLUMN tier; ALTER TABLE regions DROP COLUMN name"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("renamed and re-published in one transaction", func(t *testing.T) {
		const renamed = "SELECT o.id, o.total, c.full_name AS customer FROM orders o LEFT JOIN customers c ON c.id = o.customer_id"
		if err := p.exec(t, "BEGIN; ALTER TABLE customers RENAME COLUMN name TO full_name; CALL rejot.publish('"+name+"', 1, '"+renamed+"'); COMMIT"); err != nil {
			t.Fatal(err)
		}
		if got := columnsOf(t, admin, "customers"); !strings.Contains(got, "full_name:text") {
			t.Fatalf("columns %s: the rename did not commit", got)
		}
		mustExec(t, admin, "UPDATE customers SET full_name = 'renamed after' WHERE id = 3")
		waitFor(t, 30*time.Second, func() bool { return strings.Contains(versionState(t, name), `"renamed after"`) })
		// and from now on the new name is what is guarded
		refusedBy(t, p.exec(t, "ALTER TABLE customers DROP COLUMN full_name"), name)
	})
}
