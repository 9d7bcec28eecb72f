package sql

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rejot-dev/rejot/internal/pgerr"
	"github.com/rejot-dev/rejot/internal/pgtest"
)

var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &pg, pgtest.Options{})) }

// txSession runs a Session's queries in an open transaction of a real
// connection, as the proxy runs them inside the client's.
type txSession struct{ tx pgx.Tx }

func (s txSession) Query(ctx context.Context, sql string, params ...*string) (*Rows, error) {
	// Text results, as the proxy's session returns them.
	args := []any{pgx.QueryExecModeSimpleProtocol}
	for _, p := range params {
		if p != nil {
			args = append(args, *p)
		} else {
			args = append(args, nil)
		}
	}
	rows, err := s.tx.Query(ctx, sql, args...)
	if err != nil {
		return nil, queryError(err)
	}
	defer rows.Close()
	out := &Rows{}
	for _, f := range rows.FieldDescriptions() {
		out.Fields = append(out.Fields, Field{Name: f.Name, TableOID: f.TableOID, Column: int16(f.TableAttributeNumber), TypeOID: f.DataTypeOID, TypeMod: f.TypeModifier})
	}
	for rows.Next() {
		raw := rows.RawValues()
		row := make([]*string, len(raw))
		for i, v := range raw {
			if v != nil {
				s := string(v)
				row[i] = &s
			}
		}
		out.Values = append(out.Values, row)
	}
	return out, queryError(rows.Err())
}

func queryError(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pgerr.FromPgError(pe)
	}
	return err
}

const schema = `
CREATE TYPE order_status AS ENUM ('draft', 'placed', 'shipped');
CREATE DOMAIN cents AS bigint CHECK (VALUE >= 0);
CREATE TABLE orders (
	id bigint PRIMARY KEY,
	customer_id int NOT NULL,
	total numeric(12,2),
	total_cents cents NOT NULL,
	code varchar(40),
	tags int4[],
	status order_status NOT NULL DEFAULT 'draft',
	placed_at timestamptz,
	note text
);
CREATE TABLE pairs (a int, b int, v text, PRIMARY KEY (a, b));
CREATE TABLE nokey (id int);
CREATE VIEW orders_view AS SELECT * FROM orders;
CREATE FUNCTION pure_double(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT $1 * 2';
CREATE FUNCTION impure_double(int) RETURNS int VOLATILE LANGUAGE plpgsql AS 'BEGIN RETURN $1 * 2; END';
`

func validateIn(t *testing.T, tx pgx.Tx, query string) (*Validated, error) {
	t.Helper()
	p, perr := AnalyzeProjection(query)
	if perr != nil {
		return nil, perr
	}
	return Validate(context.Background(), txSession{tx}, p)
}

func setup(t *testing.T) pgx.Tx {
	t.Helper()
	conn := pg.Connect(t, pg.CreateDB(t))
	ctx := context.Background()
	if _, err := conn.Exec(ctx, schema); err != nil {
		t.Fatal(err)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tx.Rollback(context.Background()) })
	return tx
}

func TestValidateTypesKeysAndNullability(t *testing.T) {
	tx := setup(t)
	v, err := validateIn(t, tx, `SELECT o.id AS order_id, customer_id, total, total_cents, code, tags, status, placed_at,
		pure_double(customer_id) AS doubled, upper(note) AS loud FROM orders o WHERE status <> 'draft'`)
	if err != nil {
		t.Fatal(err)
	}
	want := []PublicColumn{
		{Name: "order_id", Type: "bigint", IsKey: true},
		{Name: "customer_id", Type: "integer"},
		{Name: "total", Type: "numeric(12,2)", Nullable: true},
		{Name: "total_cents", Type: "cents"},
		{Name: "code", Type: "character varying(40)", Nullable: true},
		{Name: "tags", Type: "integer[]", Nullable: true},
		{Name: "status", Type: "order_status"},
		{Name: "placed_at", Type: "timestamp with time zone", Nullable: true},
		{Name: "doubled", Type: "integer", Nullable: true},
		{Name: "loud", Type: "text", Nullable: true},
	}
	for i, w := range want {
		g := v.Columns[i]
		if g.Name != w.Name || g.Type != w.Type || g.IsKey != w.IsKey || g.Nullable != w.Nullable {
			t.Errorf("column %d = %+v, want %+v", i, g, w)
		}
	}
	if strings.Join(v.Key, ",") != "order_id" || v.Source != `"public"."orders"` {
		t.Errorf("key %v, source %s", v.Key, v.Source)
	}
	// A composite key, and uncommitted DDL earlier in the transaction.
	if _, err := tx.Exec(context.Background(), "CREATE TABLE fresh (k text PRIMARY KEY, n int)"); err != nil {
		t.Fatal(err)
	}
	for q, key := range map[string]string{"SELECT b, a, v FROM pairs": "b,a", "SELECT k AS key, n FROM fresh": "key"} {
		v, err := validateIn(t, tx, q)
		if err != nil || strings.Join(v.Key, ",") != key {
			t.Errorf("%s: key %v, %v", q, v, err)
		}
	}
}

func TestValidateRefuses(t *testing.T) {
	tests := []struct{ query, code, says string }{
		{"SELECT id FROM nosuch", "42P01", `relation "nosuch" does not exist`},
		{"SELECT id, nocol FROM orders", "42703", "nocol"},
		{"SELECT id FROM orders_view", "0A000", "view"},
		{"SELECT id FROM nokey", "0A000", "no primary key"},
		{"SELECT customer_id FROM orders", "0A000", "missing: id"},
		{"SELECT id + 0 AS id FROM orders", "0A000", "missing: id"},
		{"SELECT a, v FROM pairs", "0A000", "missing: b"},
		{"SELECT id, now() AS at FROM orders", "42P17", "now()"},
		{"SELECT id, random() AS r FROM orders", "42P17", "random()"},
		{"SELECT id, impure_double(customer_id) AS d FROM orders", "42P17", "impure_double"},
		{"SELECT id, placed_at::text AS t FROM orders", "42P17", "placed_at::text"},
		{"SELECT id FROM orders WHERE placed_at > now() - interval '1 day'", "42P17", "filter"},
		{"SELECT id, nextval('s') AS n FROM orders", "42P01", "relation \"s\""},
		{"SELECT id, nosuchfn(id) AS n FROM orders", "42883", "nosuchfn"},
		{"SELECT id, sum(total) AS s FROM orders", "0A000", "aggregate function sum()"},
		{"SELECT id, rank() AS r FROM orders", "0A000", "window function rank()"},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			tx := setup(t)
			ctx := context.Background()
			tx.Exec(ctx, "SAVEPOINT v")
			_, err := validateIn(t, tx, tt.query)
			tx.Exec(ctx, "ROLLBACK TO SAVEPOINT v")
			var e *pgerr.Error
			if !errors.As(err, &e) || e.Code != tt.code || !strings.Contains(e.Message, tt.says) {
				t.Fatalf("got %v; want %s containing %q", err, tt.code, tt.says)
			}
			if tt.code == "42P17" && e.Position == 0 {
				t.Errorf("no position")
			}
			// Nothing is left behind in the caller's transaction.
			var n int
			if err := tx.QueryRow(context.Background(), "SELECT count(*) FROM pg_class WHERE relname = 'rejot_immutability_check'").Scan(&n); err != nil || n != 0 {
				t.Errorf("leftover check table: %d, %v", n, err)
			}
		})
	}
}

// TestValidateStoresQualifiedQuery: the stored query names every table,
// function, operator and type outside pg_catalog by its schema, as it
// resolved for the caller (a shadowing public.lower(varchar) included),
// so it means the same under the capture's search_path pg_catalog; and
// validating it leaves the caller's search_path and catalog as they were.
func TestValidateStoresQualifiedQuery(t *testing.T) {
	tx := setup(t)
	ctx := context.Background()
	if _, err := tx.Exec(ctx, `CREATE FUNCTION public.lower(varchar) RETURNS text IMMUTABLE LANGUAGE sql AS 'SELECT ''shadow''';
		SET LOCAL search_path = "$user", public`); err != nil {
		t.Fatal(err)
	}
	for query, want := range map[string][]string{
		"SELECT id, customer_id FROM orders": {"SELECT id, customer_id FROM public.orders"},
		"SELECT o.id, pure_double(customer_id) AS d, lower(code) AS c, status FROM orders o WHERE status <> 'draft'": {
			"public.pure_double(", "public.lower(", "FROM public.orders o", "'draft'::public.order_status"},
	} {
		v, err := validateIn(t, tx, query)
		if err != nil {
			t.Fatalf("%s: %v", query, err)
		}
		for _, w := range want {
			if !strings.Contains(v.Stored, w) {
				t.Errorf("%s: stored %q, want it to contain %q", query, v.Stored, w)
			}
		}
		var path string
		var views int
		tx.QueryRow(ctx, "SELECT current_setting('search_path'), (SELECT count(*) FROM pg_class WHERE relname LIKE 'rejot_stored_%')").Scan(&path, &views)
		if path != `"$user", public` || views != 0 {
			t.Errorf("%s: left search_path %q and %d views", query, path, views)
		}
	}
}

// TestValidateRefusesRowSecurity: a table whose row policies apply to the
// caller is not published (the WAL has every row).
func TestValidateRefusesRowSecurity(t *testing.T) {
	tx := setup(t)
	ctx := context.Background()
	var db string
	tx.QueryRow(ctx, "SELECT current_database()").Scan(&db)
	role := "tenant_" + db
	if _, err := tx.Exec(ctx, `CREATE ROLE `+role+`; ALTER TABLE pairs OWNER TO `+role+`;
		ALTER TABLE pairs ENABLE ROW LEVEL SECURITY; ALTER TABLE pairs FORCE ROW LEVEL SECURITY;
		CREATE POLICY mine ON pairs USING (a = 1); SET LOCAL ROLE `+role); err != nil {
		t.Fatal(err)
	}
	_, err := validateIn(t, tx, "SELECT a, b, v FROM pairs")
	var e *pgerr.Error
	if !errors.As(err, &e) || e.Code != pgerr.InsufficientPrivilege || !strings.Contains(e.Message, "row-level security") {
		t.Fatalf("got %v; want 42501 naming row-level security", err)
	}
}
