package tests

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// wantRefused fails the test unless err is a Postgres error with code
// whose message or hint mentions each of mentions.
func wantRefused(t *testing.T, what string, err error, code string, mentions ...string) {
	t.Helper()
	pe := pgErr(err)
	if pe.Code != code {
		t.Errorf("%s: %v; want %s", what, err, code)
		return
	}
	for _, m := range mentions {
		if !strings.Contains(pe.Message+" "+pe.Hint, m) {
			t.Errorf("%s: %q (hint %q) does not mention %q", what, pe.Message, pe.Hint, m)
		}
	}
}

// catalogText reads one value of the catalog as the superuser.
func catalogText(t *testing.T, catalogDB *pgx.Conn, query string, args ...any) string {
	t.Helper()
	var s *string
	if err := catalogDB.QueryRow(context.Background(), query, args...).Scan(&s); err != nil && err != pgx.ErrNoRows {
		t.Fatalf("%s: %v", query, err)
	}
	if s == nil {
		return "<null>"
	}
	return *s
}

// TestGrantsDecideWhoSubscribes (docs/security.md, "Who may subscribe, and
// system names"): the owner grants its version to billing; billing
// subscribes, crm is refused by its sidecar, and crm's administrator, who
// records a subscription past the sidecar, gets it stopped by the catalog
// and not one row applied. An intruder with only LOGIN cannot grant or
// revoke, through the sidecar or by calling the function itself. Revoking
// billing stops its subscription with the reason, and its rows stay as
// they were while the source changes; granting again and resyncing brings
// it back.
func TestGrantsDecideWhoSubscribes(t *testing.T) {
	owner, billing, crm := newPublisher(t), newPublisher(t), newPublisher(t)
	ctx := context.Background()
	name := owner.name("granted")
	intruder := "intruder_" + owner.db
	ownerDB, catalogDB := pg.Connect(t, owner.db), pg.Connect(t, "rejot")
	mustExec(t, ownerDB, "CREATE ROLE "+intruder+" LOGIN")
	dropRolesAtEnd(t, owner.db, intruder)
	owner.execAll(t, "CREATE TABLE orders (id bigint PRIMARY KEY, status text NOT NULL, total int)",
		"INSERT INTO orders SELECT g, 'placed', g FROM generate_series(1, 5) g")
	const query = "SELECT id, status, total FROM orders WHERE status <> 'draft'"
	if err := owner.exec(t, "CALL rejot.publish($1, 1, $2)", name, query); err != nil {
		t.Fatal(err)
	}
	owner.catalogMinor(t, name, 1, 0)
	var access string
	if err := owner.conn.QueryRow(ctx, "CALL rejot.grant($1, 1, $2)", name, billing.db).Scan(new(string), new(int), &access); err != nil || access != billing.db {
		t.Fatalf("grant: %q, %v", access, err)
	}
	accessIs := func(want string) {
		t.Helper()
		waitFor(t, 15*time.Second, func() bool {
			return catalogText(t, catalogDB, "SELECT access FROM rejot.publications WHERE publication = $1 AND version = 1", name) == want
		})
	}
	accessIs(billing.db)

	// billing may; crm's sidecar refuses, naming the owner to ask.
	if err := billing.exec(t, "CALL rejot.subscribe($1, 1, 'public.orders')", name); err != nil {
		t.Fatal(err)
	}
	billingDB := pg.Connect(t, billing.db)
	targetConverges(t, 30*time.Second, ownerDB, "SELECT * FROM orders", billingDB, "public.orders")
	err := crm.exec(t, "CALL rejot.subscribe($1, 1, 'public.orders')", name)
	wantRefused(t, "crm subscribes", err, "42501", owner.db, "rejot.grant")

	// crm's administrator records a subscription past its sidecar: the
	// catalog refuses it, and crm's apply copies nothing.
	crmDB := pg.Connect(t, crm.db)
	mustExec(t, crmDB, "CREATE TABLE public.stolen (id bigint PRIMARY KEY, status text, total int)")
	mustExec(t, crmDB, `SELECT _rejot.insert_subscription(current_user, 'public.stolen', 'public', 'stolen', '`+name+`', 1,
		'[{"name": "id", "type": "bigint", "key": true, "index": 0}, {"name": "status", "type": "text", "key": false, "index": 1}]', true)`)

	// The intruder, through the owner's sidecar and directly.
	for _, via := range []struct{ name, url string }{{"sidecar", owner.sc.url(owner.db, intruder)}, {"direct", directURL(owner.db, intruder)}} {
		conn := connectAs(t, via.url)
		var attacks []string
		if via.name == "sidecar" {
			attacks = []string{"CALL rejot.grant('" + name + "', 1, '" + crm.db + "')", "CALL rejot.revoke('" + name + "', 1, '" + billing.db + "')",
				"CALL rejot.grant('" + name + "', 1, '*')"}
		}
		attacks = append(attacks,
			"SELECT _rejot.set_access(current_user, '"+name+"', 1, '"+crm.db+"', true)",
			"SELECT _rejot.set_access(current_user, '"+name+"', 1, '"+billing.db+"', false)",
			"SELECT _rejot.set_access('postgres', '"+name+"', 1, '*', true)")
		for _, sql := range attacks {
			_, err := conn.Exec(ctx, sql)
			wantRefused(t, via.name+": "+sql, err, "42501")
		}
	}

	// Seconds later, as the superuser: nothing changed.
	waitFor(t, 20*time.Second, func() bool {
		return strings.Contains(catalogText(t, catalogDB, "SELECT status || ': ' || coalesce(error, '') FROM rejot.subscriptions WHERE system = $1 AND target = 'public.stolen'", crm.db),
			"stopped: system "+crm.db+" has no grant")
	})
	time.Sleep(3 * time.Second) // crm's apply has looked
	accessIs(billing.db)
	if n := catalogText(t, crmDB, "SELECT count(*)::text FROM public.stolen"); n != "0" {
		t.Fatalf("crm's apply copied %s rows it has no grant for", n)
	}
	if got := catalogText(t, crmDB, "SELECT status || ': ' || coalesce(error, '') FROM _rejot.subscriptions WHERE target = 'public.stolen'"); !strings.HasPrefix(got, "stopped: system "+crm.db+" has no grant") {
		t.Fatalf("crm's subscription is %q", got)
	}
	if n := catalogText(t, ownerDB, "SELECT count(*)::text FROM _rejot.commands WHERE caller = $1", intruder); n != "0" {
		t.Fatalf("the intruder recorded %s commands", n)
	}

	// Revoking billing stops its subscription, with the reason; its rows
	// stay as they were while the source changes.
	before := tableText(t, billingDB, "SELECT * FROM public.orders")
	if err := owner.conn.QueryRow(ctx, "CALL rejot.revoke($1, 1, $2)", name, billing.db).Scan(new(string), new(int), &access); err != nil || access != "none" {
		t.Fatalf("revoke: %q, %v", access, err)
	}
	accessIs("none")
	waitFor(t, 20*time.Second, func() bool {
		return strings.Contains(catalogText(t, catalogDB, "SELECT status || ': ' || coalesce(error, '') FROM rejot.subscriptions WHERE system = $1", billing.db),
			"stopped: system "+billing.db+" has no grant")
	})
	owner.execAll(t, "INSERT INTO orders VALUES (6, 'placed', 6)", "UPDATE orders SET total = 100 WHERE id = 1", "DELETE FROM orders WHERE id = 2")
	time.Sleep(4 * time.Second)
	if after := tableText(t, billingDB, "SELECT * FROM public.orders"); after != before {
		t.Fatalf("billing's target changed after the revoke:\nbefore %s\nafter  %s", before, after)
	}
	err = billing.exec(t, "CALL rejot.resync('public.orders')")
	wantRefused(t, "billing resyncs after the revoke", err, "42501", owner.db)

	// Granted again, a resync brings billing up to date.
	owner.execAll(t, "CALL rejot.grant('"+name+"', 1, '"+billing.db+"')")
	accessIs(billing.db)
	if err := billing.exec(t, "CALL rejot.resync('public.orders')"); err != nil {
		t.Fatal(err)
	}
	targetConverges(t, 30*time.Second, ownerDB, "SELECT * FROM orders", billingDB, "public.orders")
}

// TestRepublishKeepsTheFilter: a re-publish of a version with another WHERE
// would change which rows its subscribers get; it is refused like a
// breaking change, and the version stays as it was. The same filter
// written otherwise, or a mended column expression, is a re-publish.
func TestRepublishKeepsTheFilter(t *testing.T) {
	p := newPublisher(t)
	ctx := context.Background()
	name := p.name("filtered")
	p.execAll(t, "CREATE TABLE orders (id bigint PRIMARY KEY, status text NOT NULL, total int)")
	if err := p.exec(t, "CALL rejot.publish($1, 1, $$SELECT id, status, total FROM orders WHERE status <> 'draft'$$)", name); err != nil {
		t.Fatal(err)
	}
	p.catalogMinor(t, name, 1, 0)
	admin := pg.Connect(t, p.db)
	record := func() string {
		return catalogText(t, admin, "SELECT minor || ' ' || query FROM _rejot.publications WHERE publication = $1 AND version = 1", name)
	}
	before := record()
	for _, q := range []string{
		"SELECT id, status, total FROM orders WHERE status <> 'cancelled'",
		"SELECT id, status, total FROM orders",
		"SELECT id, status, total FROM orders WHERE status <> 'draft' AND total > 0",
	} {
		err := p.exec(t, "CALL rejot.publish($1, 1, $2)", name, q)
		wantRefused(t, q, err, "0A000", "filter", "version 2")
	}
	if after := record(); after != before {
		t.Fatalf("the record changed: %q, was %q", after, before)
	}
	// The same filter, written otherwise; a column expression mended.
	for _, q := range []string{
		"SELECT id, status, total FROM orders WHERE orders.status<>'draft'",
		"SELECT id, status, (total + 0) AS total FROM public.orders o WHERE o.status <> 'draft'",
	} {
		if err := p.exec(t, "CALL rejot.publish($1, 1, $2)", name, q); err != nil {
			t.Errorf("%s: %v", q, err)
		}
	}
	var n int
	p.conn.QueryRow(ctx, "SELECT count(*) FROM rejot.publications WHERE publication = $1", name).Scan(&n)
	if n != 1 {
		t.Fatalf("%d versions", n)
	}
}

// TestSystemNameBelongsToCatalogRole: a second sidecar that connects to the
// catalog as another role and claims an existing system's name is refused
// and stops, saying why; that role cannot change the system's row
// directly either. As the superuser afterwards the row is as it was.
func TestSystemNameBelongsToCatalogRole(t *testing.T) {
	p := newPublisher(t)
	ctx := context.Background()
	other := "other_" + p.db
	catalogDB := pg.Connect(t, "rejot")
	mustExec(t, catalogDB, "CREATE ROLE "+other+" LOGIN")
	mustExec(t, catalogDB, guideSQL(t, map[string]string{"rejot_billing": other})["in the database rejot"])
	dropRolesAtEnd(t, "rejot", other)
	row := func() string {
		return catalogText(t, catalogDB, "SELECT concat_ws(' ', database, address, catalog_role) FROM rejot_catalog.systems WHERE system = $1", p.db)
	}
	before := row()
	if !strings.HasSuffix(before, " postgres") {
		t.Fatalf("system row %q: want it to belong to postgres", before)
	}

	// Directly, as the other role.
	conn := connectAs(t, directURL("rejot", other))
	for _, sql := range []string{
		"UPDATE rejot_catalog.systems SET address = 'evil:5432', database = 'evil' WHERE system = '" + p.db + "'",
		"UPDATE rejot_catalog.systems SET catalog_role = current_user WHERE system = '" + p.db + "'",
		"DELETE FROM rejot_catalog.systems WHERE system = '" + p.db + "'",
		"INSERT INTO rejot_catalog.systems (system, database) VALUES ('" + p.db + "', 'evil') ON CONFLICT (system) DO UPDATE SET database = 'evil'",
	} {
		_, err := conn.Exec(ctx, sql)
		wantRefused(t, sql, err, "42501", "belongs to catalog role postgres")
	}

	// A sidecar in front of another database, under p's name.
	db := pg.CreateDB(t)
	// It may stop before it listens: launched, not waited for.
	sc := launchSidecar(t, pg.URL(db), "--name", p.db, "--catalog", directURL("rejot", other))
	waitFor(t, 20*time.Second, func() bool {
		return strings.Contains(sc.logs(), "rejot: cannot register system")
	})
	if l := sc.logs(); !strings.Contains(l, "belongs to catalog role postgres") || !strings.Contains(l, "--name") {
		t.Fatalf("the refusal does not say why and what to do:\n%s", l)
	}
	time.Sleep(2 * time.Second)
	if after := row(); after != before {
		t.Fatalf("system %s changed: %q, was %q", p.db, after, before)
	}
}
