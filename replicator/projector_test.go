package replicator

import (
	"context"
	"os"
	"testing"

	"github.com/rejot-dev/rejot/sql"
	"github.com/rejot-dev/rejot/tests/pgtest"
)

var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &pg, pgtest.Options{})) }

func s(v string) Value { return &v }

// TestProjectEvaluatesInPostgres: tuples as the WAL carries them become the
// public rows the published query defines, filter included, with exact
// text values.
func TestProjectEvaluatesInPostgres(t *testing.T) {
	db := pg.CreateDB(t)
	conn := pg.Connect(t, db)
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
	p := &Projection{Stream: Stream{"orders", 1}, Filter: analysed.Filter, KeyCols: []int{0}}
	for _, c := range analysed.Columns {
		p.Exprs = append(p.Exprs, c.Expr)
	}
	cols := []SourceColumn{{"id", "bigint"}, {"status", "st"}, {"total", "numeric(12,2)"}, {"note", "text"}, {"tags", "integer[]"}}
	tuples := [][]Value{
		{s("1"), s("placed"), s("12.50"), s("hello"), s("{7,8}")},
		{s("2"), s("draft"), s("1.00"), nil, nil},
		{s("3"), s("placed"), nil, s(""), s("{}")},
	}
	got, err := Project(ctx, conn, p, cols, tuples)
	if err != nil {
		t.Fatal(err)
	}
	render := func(v Value) string {
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
