package tests

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// contractCode is the SQLSTATE of a DDL transaction refused because a
// published version depends on what it changes.
const contractCode = "2BP01"

// refusedBy fails the test unless err is the contract's refusal naming the
// version.
func refusedBy(t *testing.T, err error, name string) {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != contractCode || !strings.Contains(pe.Message, "publication "+name+" version 1") ||
		!strings.Contains(pe.Hint, "re-publish version 1") {
		t.Fatalf("got %v; want %s naming publication %s version 1 and the fix", err, contractCode, name)
	}
}

// columnsOf is a table's columns as the superuser reads them, name:type.
func columnsOf(t *testing.T, conn *pgx.Conn, table string) string {
	t.Helper()
	var cols string
	if err := conn.QueryRow(context.Background(), `SELECT string_agg(attname || ':' || format_type(atttypid, atttypmod), ',' ORDER BY attnum)
		FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped`, table).Scan(&cols); err != nil {
		t.Fatal(err)
	}
	return cols
}

// TestContractSafeDDL: DDL that would break a published version is
// refused at its commit with 2BP01 naming the version and the fix —
// through the sidecar in both protocols (without the event trigger), and
// bypassing it where the sidecar's role is a superuser (with it) — and
// the superuser finds the table unchanged. The same DDL commits when its
// transaction re-publishes the version (after the DDL) or retires it, and
// DDL that touches nothing published, or a version broken before, is
// never refused.
func TestContractSafeDDL(t *testing.T) {
	p := newPublisher(t)
	ctx := context.Background()
	admin := pg.Connect(t, p.db)
	name := p.name("orders")
	p.execAll(t, "CREATE TABLE orders (id int PRIMARY KEY, customer text, total numeric(12,2), note text)",
		"INSERT INTO orders VALUES (1, 'ann', 10, 'x')",
		"CALL rejot.publish('"+name+"', 1, 'SELECT id, customer, total FROM orders')")
	want := columnsOf(t, admin, "orders")

	t.Run("bypassing the sidecar, with the event trigger", func(t *testing.T) {
		for _, ddl := range []string{"ALTER TABLE orders DROP COLUMN customer", "ALTER TABLE orders ALTER COLUMN customer TYPE varchar(10)",
			"ALTER TABLE orders ALTER COLUMN total TYPE numeric(14,2)", "ALTER TABLE orders RENAME TO orders_old", "DROP TABLE orders"} {
			_, err := admin.Exec(ctx, ddl)
			refusedBy(t, err, name)
		}
		if got := columnsOf(t, admin, "orders"); got != want {
			t.Fatalf("columns %s; want %s", got, want)
		}
	})

	// From here on only the sidecar guards.
	mustExec(t, admin, "DROP EVENT TRIGGER rejot_guard_contract")

	t.Run("simple protocol", func(t *testing.T) {
		refusedBy(t, p.exec(t, "ALTER TABLE orders DROP COLUMN customer"), name)
		_, err := p.conn.Exec(ctx, "SELECT 1; ALTER TABLE orders DROP COLUMN customer; SELECT 2", pgx.QueryExecModeSimpleProtocol)
		refusedBy(t, err, name)
		if got := columnsOf(t, admin, "orders"); got != want {
			t.Fatalf("columns %s; want %s", got, want)
		}
	})

	t.Run("extended protocol, explicit transaction", func(t *testing.T) {
		tx, err := p.conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "ALTER TABLE orders ALTER COLUMN total TYPE numeric(14,2)", pgx.QueryExecModeCacheStatement); err != nil {
			t.Fatal(err)
		}
		refusedBy(t, tx.Commit(ctx), name)
		if got := columnsOf(t, admin, "orders"); got != want {
			t.Fatalf("columns %s; want %s", got, want)
		}
	})

	t.Run("re-published after the DDL, in its transaction", func(t *testing.T) {
		if err := p.exec(t, `BEGIN; ALTER TABLE orders RENAME COLUMN customer TO customer_name;
			CALL rejot.publish('`+name+`', 1, 'SELECT id, customer_name AS customer, total FROM orders'); COMMIT`); err != nil {
			t.Fatal(err)
		}
		if got := columnsOf(t, admin, "orders"); !strings.Contains(got, "customer_name:text") {
			t.Fatalf("columns %s: the rename did not commit", got)
		}
		mustExec(t, admin, "INSERT INTO orders VALUES (2, 'bob', 20, 'y')")
		waitFor(t, 30e9, func() bool { return strings.Contains(versionState(t, name), `"bob"`) })
	})

	t.Run("retyped, re-published unchanged but for a cast, in its transaction", func(t *testing.T) {
		if err := p.exec(t, `BEGIN; ALTER TABLE orders ALTER COLUMN total TYPE numeric(14,2);
			CALL rejot.publish('`+name+`', 1, 'SELECT id, customer_name AS customer, total::numeric(12,2) AS total FROM orders'); COMMIT`); err != nil {
			t.Fatal(err)
		}
		if got := columnsOf(t, admin, "orders"); !strings.Contains(got, "total:numeric(14,2)") {
			t.Fatalf("columns %s: the retype did not commit", got)
		}
	})

	t.Run("nothing published touched", func(t *testing.T) {
		if err := p.exec(t, "ALTER TABLE orders DROP COLUMN note"); err != nil {
			t.Fatal(err)
		}
		if err := p.exec(t, "CREATE TABLE scratch (a int); ALTER TABLE scratch ADD COLUMN b int; DROP TABLE scratch"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a version broken before does not hold off other DDL", func(t *testing.T) {
		other := p.name("other")
		p.execAll(t, "CREATE TABLE other (id int PRIMARY KEY, v text)", "CALL rejot.publish('"+other+"', 1, 'SELECT id, v FROM other')")
		mustExec(t, admin, "ALTER TABLE other DROP COLUMN v") // no event trigger: it gets past
		if err := p.exec(t, "CREATE TABLE scratch2 (a int); ALTER TABLE scratch2 ADD COLUMN b int"); err != nil {
			t.Fatal(err)
		}
		refusedBy(t, p.exec(t, "ALTER TABLE orders DROP COLUMN total"), name)
	})

	t.Run("as a team role with LOGIN only", func(t *testing.T) {
		team := "team_" + p.db
		mustExec(t, admin, "CREATE ROLE "+team+" LOGIN; CREATE TABLE team_orders (id int PRIMARY KEY, v text); ALTER TABLE team_orders OWNER TO "+team)
		dropRolesAtEnd(t, p.db, team)
		conn := connectAs(t, p.sc.url(p.db, team))
		teamName := p.name("team")
		mustExec(t, conn, "CALL rejot.publish('"+teamName+"', 1, 'SELECT id, v FROM team_orders')")
		_, err := conn.Exec(ctx, "ALTER TABLE team_orders DROP COLUMN v")
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != contractCode || !strings.Contains(pe.Message, teamName) {
			t.Fatalf("got %v; want %s naming %s", err, contractCode, teamName)
		}
		mustExec(t, conn, "ALTER TABLE team_orders ADD COLUMN w int")
	})

	t.Run("retired in its transaction", func(t *testing.T) {
		if err := p.exec(t, `BEGIN; CALL rejot.unpublish('`+name+`', 1, force => true); ALTER TABLE orders DROP COLUMN total; COMMIT`); err != nil {
			t.Fatal(err)
		}
	})
}
