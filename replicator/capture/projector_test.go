package capture_test

import (
	"context"
	"testing"

	"github.com/rejot-dev/rejot/replicator/capture"
	"github.com/rejot-dev/rejot/replicator/eventlog"
	"github.com/rejot-dev/rejot/sql"
)

func s(v string) eventlog.Value { return &v }

// TestProjectEvaluatesInPostgres: tuples as the WAL carries them become the
// public rows the published query defines, filter included, with exact
// text values.
func TestProjectEvaluatesInPostgres(t *testing.T) {
	db := pg.CreateDB(t)
	conn := projectConn(t, db)
	ctx := context.Background()
	if _, err := conn.Exec(ctx, `CREATE TYPE st AS ENUM ('draft', 'placed');
		CREATE TABLE orders (id bigint PRIMARY KEY, status st NOT NULL, total numeric(12,2), note text, tags int[])`); err != nil {
		t.Fatal(err)
	}
	analysed, perr := sql.AnalyzeProjection(`SELECT o.id AS order_id, total, upper(note) AS loud, tags[1] AS first_tag
		FROM orders o WHERE o.status <> 'draft'`)
	if perr != nil {
		t.Fatal(perr)
	}
	p := &capture.Projection{Version: eventlog.Version{Publication: "orders", Number: 1}, Filter: analysed.Filter, KeyCols: []int{0}}
	for _, c := range analysed.Columns {
		p.Exprs = append(p.Exprs, c.Expr)
	}
	// Types as the capture names them: format_type with search_path pg_catalog.
	cols := []capture.SourceColumn{{Name: "id", Type: "bigint"}, {Name: "status", Type: "public.st"}, {Name: "total", Type: "numeric(12,2)"}, {Name: "note", Type: "text"}, {Name: "tags", Type: "integer[]"}}
	tuples := [][]eventlog.Value{
		{s("1"), s("placed"), s("12.50"), s("hello"), s("{7,8}")},
		{s("2"), s("draft"), s("1.00"), nil, nil},
		{s("3"), s("placed"), nil, s(""), s("{}")},
	}
	got, err := capture.Project(ctx, conn, p, cols, tuples)
	if err != nil {
		t.Fatal(err)
	}
	render := func(v eventlog.Value) string {
		if v == nil {
			return "NULL"
		}
		return *v
	}
	want := []struct {
		keep bool
		row  string
	}{{true, "1|12.50|HELLO|7"}, {false, "2|1.00|NULL|NULL"}, {true, "3|NULL||NULL"}}
	for i, w := range want {
		var parts []string
		for _, v := range got[i].Row {
			parts = append(parts, render(v))
		}
		if got[i].Keep != w.keep || join(parts) != w.row {
			t.Errorf("tuple %d: keep=%v row=%s, want keep=%v row=%s", i, got[i].Keep, join(parts), w.keep, w.row)
		}
	}
}

func join(parts []string) string {
	out := ""
	for i, p := range parts {
		if i > 0 {
			out += "|"
		}
		out += p
	}
	return out
}

// TestDirectProjectionMatchesPostgres: for plain column references of the
// types projected without a query, the values as the WAL carries them (the
// types' output) become exactly what Postgres's (column)::text gives —
// which is what the first fill and projections with a filter give.
func TestDirectProjectionMatchesPostgres(t *testing.T) {
	db := pg.CreateDB(t)
	conn := projectConn(t, db)
	ctx := context.Background()
	if _, err := conn.Exec(ctx, `CREATE TABLE v (i2 smallint, i4 integer, i8 bigint, o oid, t text, vc varchar(10), c char(5),
			n numeric(10,3), u uuid, j json, jb jsonb, b boolean, ip inet, net cidr);
		INSERT INTO v VALUES
			(-1, 2147483647, -9223372036854775808, 4294967295, '', 'x  ', 'ab', 'NaN', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
			 '{"b": 1,  "a": [1, 2]}', '{"b": 1,  "a": [1.50, 2]}', true, '10.0.0.1', '10.0.0.0/8'),
			(0, 0, 0, 0, 'tab	and ünï', 'é', '  a  ', 12.5, NULL, 'null', '"s"', false, '10.0.0.1/24', '::/0'),
			(NULL, NULL, NULL, NULL, NULL, NULL, '', -0.001, NULL, NULL, NULL, NULL, '::1', '2001:db8::/32'),
			(1, 1, 1, 1, 'x', '', NULL, NULL, NULL, NULL, NULL, NULL, '2001:db8::1/64', NULL)`); err != nil {
		t.Fatal(err)
	}
	names := []string{"i2", "i4", "i8", "o", "t", "vc", "c", "n", "u", "j", "jb", "b", "ip", "net"}
	var cols []capture.SourceColumn
	rows, err := conn.Query(ctx, `SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
		WHERE attrelid = 'v'::regclass AND attnum > 0 ORDER BY attnum`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var c capture.SourceColumn
		rows.Scan(&c.Name, &c.Type)
		cols = append(cols, c)
	}
	// The types' output, as the WAL carries it: the simple protocol
	// returns every value in text form.
	var tuples [][]eventlog.Value
	out, err := conn.PgConn().Exec(ctx, "SELECT * FROM v").ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range out[0].Rows {
		tuple := make([]eventlog.Value, len(r))
		for i, b := range r {
			if b != nil {
				tuple[i] = s(string(b))
			}
		}
		tuples = append(tuples, tuple)
	}
	direct := &capture.Projection{Version: eventlog.Version{Publication: "v", Number: 1}, KeyCols: []int{1}}
	for _, n := range names {
		direct.Exprs, direct.Sources = append(direct.Exprs, n), append(direct.Sources, n)
	}
	if _, ok := capture.Direct(direct, cols); !ok {
		t.Fatal("plain references of these types should be projected directly")
	}
	viaSQL := *direct
	viaSQL.Filter = "true" // a filter: Postgres evaluates it
	got, err := capture.Project(ctx, conn, direct, cols, tuples)
	if err != nil {
		t.Fatal(err)
	}
	want, err := capture.Project(ctx, conn, &viaSQL, cols, tuples)
	if err != nil {
		t.Fatal(err)
	}
	for i := range tuples {
		for j, n := range names {
			g, w := got[i].Row[j], want[i].Row[j]
			if (g == nil) != (w == nil) || (g != nil && *g != *w) {
				t.Errorf("row %d, %s: direct %v, Postgres %v", i, n, deref(g), deref(w))
			}
		}
	}
	// A type whose output follows session settings goes through Postgres.
	if _, ok := capture.Direct(direct, append(cols[:len(cols):len(cols)], capture.SourceColumn{Name: "ts", Type: "timestamp with time zone"})); !ok {
		t.Fatal("an extra column nobody reads changed the decision")
	}
	withTime := *direct
	withTime.Sources = append(append([]string{}, direct.Sources...), "ts")
	withTime.Exprs = append(append([]string{}, direct.Exprs...), "ts")
	if _, ok := capture.Direct(&withTime, append(cols[:len(cols):len(cols)], capture.SourceColumn{Name: "ts", Type: "timestamp with time zone"})); ok {
		t.Fatal("a timestamptz column was projected without Postgres")
	}
}

func deref(v eventlog.Value) any {
	if v == nil {
		return nil
	}
	return *v
}
