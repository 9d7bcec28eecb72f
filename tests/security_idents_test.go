package tests

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestForgedSubscriptionTargets: rows of a subscriber's
// _rejot.subscriptions that rejot.subscribe did not write — forged, here
// by a superuser standing in for whoever could write the table — whose
// target, schema or table is SQL (the payload that once made an attacker
// superuser: the target was pasted into a multi-statement DELETE) are
// refused by the subscriber's sidecar with a clear error and touch
// nothing, while a real subscription beside them keeps streaming. Read as
// a superuser afterwards: the role is not superuser, no table was dropped
// or emptied.
func TestForgedSubscriptionTargets(t *testing.T) {
	ctx := context.Background()
	owner, consumer, _ := replicated(t, "idents", `CREATE TABLE items (id bigint PRIMARY KEY, v text);
		INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 50) g`, "SELECT id, v FROM items", "public.legit")
	projection := "SELECT id, v FROM items"
	targetConverges(t, 30*time.Second, owner.conn, projection, consumer.conn, "public.legit")

	su := pg.Connect(t, consumer.db)
	role := "intruder_idents" // the payload stays within 63 bytes
	payload := "x;commit;alter/**/role/**/" + role + "/**/superuser"
	for _, q := range []string{
		"DROP ROLE IF EXISTS " + role,
		"CREATE ROLE " + role + " LOGIN",
		"CREATE TABLE public.victim (id bigint PRIMARY KEY, v text)",
		"INSERT INTO public.victim VALUES (1, 'kept'), (2, 'kept')",
		// The tables the payload needs to pass the old regclass check and
		// run: x is what its DELETE empties.
		"CREATE TABLE public.x (id bigint PRIMARY KEY, v text)",
		"INSERT INTO public.x VALUES (1, 'kept')",
		`CREATE TABLE public."` + payload + `" (id bigint PRIMARY KEY, v text)`,
		`INSERT INTO public."` + payload + `" VALUES (1, 'kept')`,
	} {
		if _, err := su.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	t.Cleanup(func() { pg.Connect(t, "postgres").Exec(context.Background(), "DROP ROLE IF EXISTS "+role) })
	forged := [][3]string{ // target, target_schema, target_table
		{payload, "public", "victim"},
		{"public." + payload, "public", payload},
		{"public.victim; DROP TABLE public.victim", "public", "victim; DROP TABLE public.victim"},
		{`"a""b".c;x`, `a"b`, "c;x"},
		{"public.victim", "public';DROP TABLE public.victim;--", "victim"},
	}
	for _, f := range forged {
		// The real subscription's row, with another target: whatever else
		// the table records is as rejot.subscribe wrote it.
		if _, err := su.Exec(ctx, `INSERT INTO _rejot.subscriptions
			SELECT (jsonb_populate_record(s, jsonb_build_object('target', $1::text, 'target_schema', $2::text, 'target_table', $3::text,
				'status', 'copying', 'position', NULL, 'error', NULL, 'generation', 1, 'copied_rows', 0))).*
			FROM _rejot.subscriptions s WHERE s.target = 'public.legit'`, f[0], f[1], f[2]); err != nil {
			t.Fatalf("forge %q: %v", f[0], err)
		}
	}
	if _, err := su.Exec(ctx, "NOTIFY rejot_subscriptions"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(6 * time.Second) // three re-reads, and the NOTIFY

	var super bool
	if err := su.QueryRow(ctx, "SELECT rolsuper FROM pg_roles WHERE rolname = $1", role).Scan(&super); err != nil || super {
		t.Fatalf("%s is superuser: %v (%v)\n%s", role, super, err, consumer.sc.logs())
	}
	for table, want := range map[string]string{"public.victim": "1kept,2kept", "public.x": "1kept",
		pgx.Identifier{"public", payload}.Sanitize(): "1kept"} {
		var got string
		if err := su.QueryRow(ctx, "SELECT coalesce(string_agg(id || v, ',' ORDER BY id), '') FROM "+table).Scan(&got); err != nil || got != want {
			t.Errorf("%s holds %q (%v), want %q", table, got, err, want)
		}
	}
	// Each forged subscription is failed, saying why.
	waitFor(t, 20*time.Second, func() bool {
		var n int
		return su.QueryRow(ctx, `SELECT count(*) FROM _rejot.subscriptions
			WHERE target <> 'public.legit' AND status = 'failed' AND error LIKE 'subscription % refused: %'`).Scan(&n) == nil && n == len(forged)
	})
	rows, err := su.Query(ctx, "SELECT target, error FROM _rejot.subscriptions WHERE target <> 'public.legit'")
	if err != nil {
		t.Fatal(err)
	}
	errs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (e [2]string, err error) { return e, r.Scan(&e[0], &e[1]) })
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range errs {
		if !strings.Contains(e[1], "there is no table") && !strings.Contains(e[1], "is not the table it records") {
			t.Errorf("%s: unclear error %q", e[0], e[1])
		}
		t.Logf("%s: %s", e[0], e[1])
	}
	// The real subscription still streams.
	owner.execAll(t, "INSERT INTO items VALUES (1000, 'after')", "DELETE FROM items WHERE id = 1")
	targetConverges(t, 30*time.Second, owner.conn, projection, consumer.conn, "public.legit")
}
