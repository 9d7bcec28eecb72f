package apply

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/managed"
	"github.com/rejot-dev/rejot/replicator/eventlog"
	"github.com/rejot-dev/rejot/replicator/eventlog/pglog"
)

// hostile is a table name a forged subscription might paste into SQL.
const hostile = "x;commit;alter/**/role/**/intruder/**/superuser"

// TestResolveTarget: a subscription's target is found in the catalog by
// the exact schema and name it records, and only when its target is their
// quoted form and it is an ordinary table; any other is refused before a
// statement is built. A real table with a hostile name is written as
// itself.
func TestResolveTarget(t *testing.T) {
	ctx := context.Background()
	db := pg.CreateDB(t)
	conn := pg.Connect(t, db)
	for _, q := range []string{
		"CREATE TABLE public.t (id bigint PRIMARY KEY, v text)",
		"CREATE VIEW public.v AS SELECT * FROM public.t",
		`CREATE SCHEMA "s;""x"`,
		`CREATE TABLE "s;""x"."a""b; DROP TABLE public.t; --" (id bigint PRIMARY KEY, v text)`,
		`CREATE TABLE public."` + hostile + `" (id bigint PRIMARY KEY, v text)`,
		"INSERT INTO public.t VALUES (1, 'kept')",
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	refused := []struct{ name, target, schema, table, why string }{
		{"the target is not the names' quoted form", hostile, "public", "t", "not the table it records, public.t"},
		{"the target is the hostile table unquoted", hostile, "public", hostile, "not the table it records, public.\"x;commit"},
		{"no such table", "public.nope", "public", "nope", "there is no table"},
		{"no case folding", `public."T"`, "public", "T", "there is no table"},
		{"a stored name with a schema in it", "public.t", "", "public.t", "schema name is empty"},
		{"a dotted name is one name", "public.t", "public.t", "", "table name is empty"},
		{"a view", "public.v", "public", "v", "is not a table"},
		{"a NUL", "public.t", "public", "t\x00;drop", "NUL"},
		{"too long", "public.t", "public", strings.Repeat("t", 64), "longer than 63"},
	}
	for _, c := range refused {
		t.Run(c.name, func(t *testing.T) {
			_, err := resolveTarget(ctx, conn, subscription{target: c.target, schema: c.schema, table: c.table})
			if err == nil || !strings.Contains(err.Error(), "refused") || !strings.Contains(err.Error(), c.why) {
				t.Fatalf("resolveTarget: %v, want refused: …%s…", err, c.why)
			}
		})
	}
	// A real table with hostile names: resolved, and written as itself.
	schema, table := `s;"x`, `a"b; DROP TABLE public.t; --`
	var quoted string
	if err := conn.QueryRow(ctx, "SELECT format('%I.%I', $1::text, $2::text)", schema, table).Scan(&quoted); err != nil {
		t.Fatal(err)
	}
	tbl, err := resolveTarget(ctx, conn, subscription{target: quoted, schema: schema, table: table})
	if err != nil {
		t.Fatal(err)
	}
	if tbl.schema != schema || tbl.table != table || tbl.types["id"] != "bigint" || tbl.types["v"] != "text" {
		t.Fatalf("resolved %+v", tbl)
	}
	tg, err := newTarget(tbl.schema, tbl.table, []managed.SubscribedColumn{{Name: "id", Key: true, Index: 0}, {Name: "v", Index: 1}}, tbl.types)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range []statement{tg.upsertStatement([][]eventlog.Value{values("1", "a"), values("2", "b")}),
		tg.deleteStatement([][]eventlog.Value{values("1")}), {sql: tg.clear}, tg.upsertStatement([][]eventlog.Value{values("3", "c")})} {
		if err := execOne(ctx, conn, st.sql, st.args...); err != nil {
			t.Fatalf("%s: %v", st.sql, err)
		}
	}
	var got string
	if err := conn.QueryRow(ctx, `SELECT string_agg(id || v, ',') FROM "s;""x"."a""b; DROP TABLE public.t; --"`).Scan(&got); err != nil || got != "3c" {
		t.Fatalf("the hostile-named table holds %q (%v), want 3c", got, err)
	}
	if err := conn.QueryRow(ctx, "SELECT string_agg(id || v, ',') FROM public.t").Scan(&got); err != nil || got != "1kept" {
		t.Fatalf("public.t holds %q (%v), want 1kept", got, err)
	}
}

// TestExecOneRunsOneStatement: a statement without arguments runs with
// the extended protocol, so a second statement in it is an error, not run.
func TestExecOneRunsOneStatement(t *testing.T) {
	ctx := context.Background()
	conn := pg.Connect(t, pg.CreateDB(t))
	if _, err := conn.Exec(ctx, "CREATE TABLE x (id int); INSERT INTO x VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	if err := execOne(ctx, conn, "DELETE FROM x; DROP TABLE x"); err == nil {
		t.Fatal("two statements ran")
	}
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM x").Scan(&n); err != nil || n != 1 {
		t.Fatalf("x has %d rows (%v), want 1", n, err)
	}
}

// TestForgedSubscriptionsTouchNothing: rows of _rejot.subscriptions that
// rejot.subscribe did not write (forged by whoever could write the table)
// fail with a clear error and touch nothing, while a real subscription
// beside them copies and streams.
func TestForgedSubscriptionsTouchNothing(t *testing.T) {
	ctx := context.Background()
	db, logDB := pg.CreateDB(t), pg.CreateDB(t)
	conn := pg.Connect(t, db)
	if err := managed.Install(ctx, conn); err != nil {
		t.Fatal(err)
	}
	role := "intruder_apply" // the payload stays within 63 bytes
	payload := strings.ReplaceAll(hostile, "intruder", role)
	for _, q := range []string{
		"CREATE ROLE " + role + " LOGIN",
		"CREATE TABLE public.t (id bigint PRIMARY KEY, v text)",
		"CREATE TABLE public.victim (id bigint PRIMARY KEY, v text)",
		"INSERT INTO public.victim VALUES (1, 'kept'), (2, 'kept')",
		// What the old regclass check found, and the DELETE it ran emptied.
		"CREATE TABLE public.x (id bigint PRIMARY KEY, v text)",
		"INSERT INTO public.x VALUES (1, 'kept')",
		`CREATE TABLE public."` + payload + `" (id bigint PRIMARY KEY, v text)`,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	t.Cleanup(func() { pg.Connect(t, "postgres").Exec(context.Background(), "DROP ROLE IF EXISTS "+role) })
	cols, _ := json.Marshal([]managed.SubscribedColumn{{Name: "id", Type: "bigint", Key: true, Index: 0}, {Name: "v", Type: "text", Index: 1}})
	forged := [][3]string{
		{payload, "public", "victim"},
		{"public." + payload, "public", payload},
		{"public.victim; DROP TABLE public.victim", "public", "victim; DROP TABLE public.victim"},
		{`"a""b".c;x`, `a"b`, "c;x"},
	}
	for _, r := range append(forged, [3]string{"public.t", "public", "t"}) {
		if _, err := conn.Exec(ctx, `INSERT INTO _rejot.subscriptions (target, target_schema, target_table, publication, version, columns)
			VALUES ($1, $2, $3, $4, 1, $5)`, r[0], r[1], r[2], orders.Publication, string(cols)); err != nil {
			t.Fatal(err)
		}
	}
	l, err := pglog.Open(ctx, pg.URL(logDB))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	appendRow(t, l, 100, "1", "copied")
	appendRow(t, l, 200, "3", "streamed")
	s := &Subscriber{URL: pg.URL(db), System: "billing", Log: l, Check: 100 * time.Millisecond}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(runCtx)
	}()
	defer func() { stop(); <-done }()
	waitFor(t, "the real subscription copied and streamed", func() bool {
		var n int
		return conn.QueryRow(ctx, "SELECT count(*) FROM public.t").Scan(&n) == nil && n == 2
	})
	waitFor(t, "the forged subscriptions failed", func() bool {
		var n int
		return conn.QueryRow(ctx, `SELECT count(*) FROM _rejot.subscriptions
			WHERE target <> 'public.t' AND status = 'failed' AND error LIKE '%refused%'`).Scan(&n) == nil && n == len(forged)
	})
	time.Sleep(500 * time.Millisecond) // a retry or two
	var super bool
	if err := conn.QueryRow(ctx, "SELECT rolsuper FROM pg_roles WHERE rolname = $1", role).Scan(&super); err != nil || super {
		t.Fatalf("%s is superuser: %v (%v)", role, super, err)
	}
	for table, want := range map[string]string{"public.victim": "1kept,2kept", "public.x": "1kept", pgx.Identifier{"public", payload}.Sanitize(): ""} {
		var got string
		if err := conn.QueryRow(ctx, "SELECT coalesce(string_agg(id || v, ',' ORDER BY id), '') FROM "+table).Scan(&got); err != nil || got != want {
			t.Errorf("%s holds %q (%v), want %q", table, got, err, want)
		}
	}
	rows, _ := conn.Query(ctx, "SELECT target, error FROM _rejot.subscriptions WHERE target <> 'public.t' ORDER BY target")
	for rows.Next() {
		var target, msg string
		rows.Scan(&target, &msg)
		t.Logf("%s: %s", target, msg)
	}
}
