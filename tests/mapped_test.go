package tests

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// mappedPair is an owner publishing orders and a consumer with a table of
// its own shape, each behind its sidecar.
func mappedPair(t *testing.T) (owner, consumer *publisher, pub string) {
	t.Helper()
	owner, consumer = newPublisher(t), newPublisher(t)
	pub = owner.name("orders")
	owner.execAll(t, `CREATE TABLE orders (id int PRIMARY KEY, customer_name text, total_cents bigint, status text)`,
		`INSERT INTO orders VALUES (1, 'ada', 100, 'paid'), (2, 'bob', 250, 'draft')`)
	if err := owner.exec(t, "CALL rejot.publish($1, 1, $$SELECT id, customer_name, total_cents, status FROM orders$$)", pub); err != nil {
		t.Fatal(err)
	}
	owner.catalogMinor(t, pub, 1, 0)
	consumer.execAll(t, "CREATE SCHEMA billing",
		"CREATE TABLE billing.order_view (order_id int PRIMARY KEY, who text, changes int NOT NULL DEFAULT 0)")
	return owner, consumer, pub
}

const (
	mappedUpsert = `INSERT INTO billing.order_view(order_id, who, changes) VALUES (:id, upper(:customer_name), 1)
		ON CONFLICT (order_id) DO UPDATE SET who = EXCLUDED.who, changes = billing.order_view.changes + 1`
	mappedDelete = `DELETE FROM billing.order_view WHERE order_id = :id`
)

// TestMappedSubscription: the DESIGN's example. The consumer's statements
// fill its own table (the copy first, then every change), the catalog
// shows the subscription mapped, and unsubscribe keeps the table.
func TestMappedSubscription(t *testing.T) {
	owner, consumer, pub := mappedPair(t)
	ctx := context.Background()
	if err := consumer.exec(t, `CALL rejot.subscribe(publication => $1, version => 1, target => 'billing.order_view',
		upsert => $2, delete => $3)`, pub, mappedUpsert, mappedDelete); err != nil {
		t.Fatal(err)
	}
	view := "SELECT order_id, who, changes FROM billing.order_view ORDER BY order_id"
	waitText(t, consumer, view, "(1,ADA,1)\n(2,BOB,1)")
	owner.execAll(t, "UPDATE orders SET customer_name = 'ada l' WHERE id = 1", "DELETE FROM orders WHERE id = 2",
		"INSERT INTO orders VALUES (3, 'cy', 5, 'paid')",
		"BEGIN", "UPDATE orders SET total_cents = 1 WHERE id = 3", "UPDATE orders SET total_cents = 2 WHERE id = 3", "COMMIT")
	// per change, not collapsed per key: 3 was written three times
	waitText(t, consumer, view, "(1,\"ADA L\",2)\n(3,CY,3)")
	waitFor(t, 20*time.Second, func() bool {
		var mapped bool
		var status string
		err := consumer.conn.QueryRow(ctx, "SELECT mapped, status FROM rejot.subscriptions WHERE target = 'billing.order_view' AND system = $1",
			consumer.db).Scan(&mapped, &status)
		return err == nil && mapped && status == "streaming"
	})
	err := consumer.exec(t, "CALL rejot.unsubscribe('billing.order_view', drop_table => true)")
	wantRefused(t, "unsubscribe dropping a mapped subscription's table", err, "0A000", "unsubscribe keeps it")
	consumer.execAll(t, "CALL rejot.unsubscribe('billing.order_view')")
	owner.execAll(t, "INSERT INTO orders VALUES (4, 'dee', 1, 'paid')")
	time.Sleep(time.Second)
	if got := tableText(t, consumer.conn, view); got != "(1,\"ADA L\",2)\n(3,CY,3)" {
		t.Errorf("after unsubscribe the table changed or went: %q", got)
	}
}

// waitText waits until a query of p's database renders as want.
func waitText(t *testing.T, p *publisher, query, want string) {
	t.Helper()
	var got string
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if got = tableText(t, p.conn, query); got == want {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s:\n got %q\nwant %q", query, got, want)
}

// TestMappedSubscriptionRefusals: what subscribe refuses, with the
// SQLSTATE and the position inside the argument.
func TestMappedSubscriptionRefusals(t *testing.T) {
	_, consumer, pub := mappedPair(t)
	consumer.execAll(t, "CREATE TABLE public.theirs (id int PRIMARY KEY)", "CREATE ROLE mapped_other NOLOGIN",
		"ALTER TABLE public.theirs OWNER TO mapped_other")
	t.Cleanup(func() { consumer.exec(t, "DROP TABLE IF EXISTS public.theirs; DROP ROLE IF EXISTS mapped_other") })
	call := func(target, upsert, del string) error {
		return consumer.exec(t, `CALL rejot.subscribe($1, 1, $2, upsert => $3, delete => $4)`, pub, target, upsert, del)
	}
	cases := []struct {
		name, target, upsert, del, code, mention string
	}{
		{"unknown parameter", "billing.order_view", "INSERT INTO billing.order_view(order_id) VALUES (:idd)", mappedDelete, "42703", `no column "idd"`},
		{"two statements", "billing.order_view", mappedUpsert + "; DELETE FROM billing.order_view", mappedDelete, "42601", "one statement"},
		{"not DML", "billing.order_view", "SELECT :id", mappedDelete, "0A000", "not SELECT"},
		{"transaction control", "billing.order_view", "COMMIT", mappedDelete, "0A000", "transaction control"},
		{"SET ROLE", "billing.order_view", "SET ROLE postgres", mappedDelete, "0A000", "SET"},
		{"DO", "billing.order_view", "DO $$BEGIN END$$", mappedDelete, "0A000", "DO"},
		{"delete by a column not the key", "billing.order_view", mappedUpsert, "DELETE FROM billing.order_view WHERE who = :customer_name", "42P10", "only the key"},
		{"not the owner of the target", "public.theirs", "INSERT INTO public.theirs VALUES (:id)", "DELETE FROM public.theirs WHERE id = :id", "42501", "mapped_other"},
		{"writes a table of another", "billing.order_view", "INSERT INTO public.theirs VALUES (:id)", mappedDelete, "42501", "mapped_other"},
		{"an unknown column of the table", "billing.order_view", "INSERT INTO billing.order_view(nope) VALUES (:id)", mappedDelete, "42703", "nope"},
		{"$n parameter", "billing.order_view", "INSERT INTO billing.order_view(order_id) VALUES ($1)", mappedDelete, "42601", ":column"},
		{"target missing", "billing.nope", mappedUpsert, mappedDelete, "42P01", "create the table"},
	}
	for _, c := range cases {
		err := call(c.target, c.upsert, c.del)
		wantRefused(t, c.name, err, c.code, c.mention)
	}
	// The position of an unknown parameter is where it is in the call.
	q := `CALL rejot.subscribe('` + pub + `', 1, 'billing.order_view', upsert => $$INSERT INTO billing.order_view(order_id) VALUES (:idd)$$, delete => $$` + mappedDelete + `$$)`
	err := consumer.exec(t, q)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "42703" || int(pe.Position) != strings.Index(q, ":idd")+1 {
		t.Errorf("unknown parameter: want 42703 at %d, got %v (position %d)", strings.Index(q, ":idd")+1, err, func() int32 {
			if pe != nil {
				return pe.Position
			}
			return 0
		}())
	}
}
