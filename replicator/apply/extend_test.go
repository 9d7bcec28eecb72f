package apply

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/managed"
)

// TestAlterTargetTrustsOnlyTypes: the type of a column to add comes from
// a record its owner could have written: only a name Postgres reads as a
// type goes into the ALTER TABLE, and only a type of a superuser or the
// sidecar's role (whose domain checks would run as the sidecar).
func TestAlterTargetTrustsOnlyTypes(t *testing.T) {
	ctx := context.Background()
	db := pg.CreateDB(t)
	conn := pg.Connect(t, db)
	role := "typeowner_" + db
	for _, q := range []string{
		"CREATE TABLE public.t (id bigint PRIMARY KEY)",
		"CREATE ROLE " + role,
		"CREATE DOMAIN public.theirs AS int CHECK (VALUE > 0)",
		"ALTER DOMAIN public.theirs OWNER TO " + role,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	t.Cleanup(func() {
		c := pg.Connect(t, db)
		c.Exec(context.Background(), "DROP DOMAIN public.theirs CASCADE; DROP ROLE "+role)
	})
	tgt, err := newTarget("public", "t", []managed.SubscribedColumn{{Name: "id", Type: "bigint", Key: true}}, map[string]string{"id": "bigint"})
	if err != nil {
		t.Fatal(err)
	}
	try := func(name, typ string) error {
		return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			return alterTarget(ctx, tx, tgt, []managed.SubscribedColumn{{Name: name, Type: typ, Index: 1, Adding: true}})
		})
	}
	for _, c := range []struct{ typ, says string }{
		{"int; DROP TABLE public.t", ""},
		{"int) ; DROP TABLE public.t; --", ""},
		{"nosuchtype", "does not exist"},
		{"public.theirs", "not owned by the sidecar's role"},
	} {
		err := try("x", c.typ)
		if err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: %v, want refused (%s)", c.typ, err, c.says)
		}
	}
	if err := try(`a"b; --`, "numeric(12,2)"); err != nil {
		t.Fatal(err)
	}
	var def string
	conn.QueryRow(ctx, `SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
		FROM pg_attribute WHERE attrelid = 'public.t'::regclass AND attnum > 0 AND NOT attisdropped`).Scan(&def)
	if def != `id bigint, a"b; -- numeric(12,2)` {
		t.Fatalf("columns: %s", def)
	}
}
