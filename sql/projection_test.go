package sql

import (
	"strings"
	"testing"

	"github.com/rejot-dev/rejot/internal/pgerr"
)

func TestAnalyzeProjection(t *testing.T) {
	p, err := AnalyzeProjection(`SELECT o.id, o.customer_id AS customer, total_cents / 100.0 AS total, upper(o.status) AS status
		FROM public.orders o WHERE o.status <> 'draft'`)
	if err != nil {
		t.Fatal(err)
	}
	if p.Schema != "public" || p.Table != "orders" {
		t.Fatalf("table %s.%s", p.Schema, p.Table)
	}
	want := []ProjectedColumn{
		{Name: "id", Source: "id", Expr: "id"},
		{Name: "customer", Source: "customer_id", Expr: "customer_id"},
		{Name: "total", Expr: "total_cents / 100.0"},
		{Name: "status", Expr: "upper(status)"},
	}
	for i, w := range want {
		got := p.Columns[i]
		if got.Name != w.Name || got.Source != w.Source || got.Expr != w.Expr {
			t.Errorf("column %d = %+v, want %+v", i, got, w)
		}
	}
	if p.Filter != "status <> 'draft'" {
		t.Errorf("filter %q", p.Filter)
	}
	if got := strings.Join(p.References, ","); got != "id,customer_id,total_cents,status" {
		t.Errorf("references %s", got)
	}
}

func TestAnalyzeProjectionRefuses(t *testing.T) {
	tests := []struct {
		query, code, says string
		pos               int
	}{
		{"SELEC id FROM t", pgerr.SyntaxError, "syntax error", 1},
		{"SELECT id FROM t; SELECT 2", pgerr.SyntaxError, "one SELECT statement", 18},
		{"INSERT INTO t VALUES (1)", pgerr.FeatureNotSupported, "must be a SELECT", 1},
		{"SELECT id FROM a JOIN b USING (id)", pgerr.FeatureNotSupported, "JOIN", 16},
		{"SELECT a.id FROM a, b", pgerr.FeatureNotSupported, "exactly one table", 21},
		{"SELECT id FROM (SELECT id FROM t) s", pgerr.FeatureNotSupported, "subqueries", 0},
		{"SELECT id, (SELECT 1) AS one FROM t", pgerr.FeatureNotSupported, "subqueries", 12},
		{"SELECT DISTINCT id FROM t", pgerr.FeatureNotSupported, "DISTINCT", 0},
		{"SELECT id FROM t GROUP BY id", pgerr.FeatureNotSupported, "GROUP BY", 27},
		{"SELECT id FROM t ORDER BY id", pgerr.FeatureNotSupported, "ORDER BY", 27},
		{"SELECT id FROM t LIMIT 5", pgerr.FeatureNotSupported, "LIMIT", 24},
		{"SELECT id FROM t UNION SELECT id FROM u", pgerr.FeatureNotSupported, "UNION", 0},
		{"WITH x AS (SELECT 1) SELECT id FROM t", pgerr.FeatureNotSupported, "WITH", 1},
		{"SELECT count(*) AS n FROM t", pgerr.FeatureNotSupported, "aggregate", 8},
		{"SELECT id, row_number() OVER () AS n FROM t", pgerr.FeatureNotSupported, "window", 12},
		{"SELECT * FROM t", pgerr.FeatureNotSupported, "list the columns", 8},
		{"SELECT id, a + b FROM t", pgerr.SyntaxError, "needs a name", 12},
		{"SELECT id, id FROM t", "42701", "more than once", 12},
		{"SELECT id FROM t WHERE id = $1", pgerr.FeatureNotSupported, "parameters", 29},
		{"SELECT id FROM t FOR UPDATE", pgerr.FeatureNotSupported, "FOR UPDATE", 0},
		{"SELECT id FROM generate_series(1, 3) id", pgerr.FeatureNotSupported, "function in FROM", 16},
		{"SELECT id FROM other.db.t", pgerr.FeatureNotSupported, "cross-database", 16},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			_, err := AnalyzeProjection(tt.query)
			if err == nil {
				t.Fatal("accepted")
			}
			e := pgErrorOf(err)
			if e.Code != tt.code || !strings.Contains(e.Message, tt.says) || (tt.pos != 0 && e.Position != tt.pos) {
				t.Fatalf("got %s %q at %d; want %s %q at %d", e.Code, e.Message, e.Position, tt.code, tt.says, tt.pos)
			}
		})
	}
}

func TestAnalyzeProjectionTrailingSemicolon(t *testing.T) {
	p, err := AnalyzeProjection("SELECT id FROM t;  \n")
	if err != nil || p.Query != "SELECT id FROM t" {
		t.Fatalf("%q, %v", p.Query, err)
	}
}

func TestParseNameList(t *testing.T) {
	for in, want := range map[string]string{
		"{id,total}":            "id|total",
		"id, total ":            "id|total",
		`{"id","a b","q\"x"}`:   `id|a b|q"x`,
		`{ "back\\slash" , x }`: `back\slash|x`,
		"":                      "",
		"{}":                    "",
	} {
		if got := strings.Join(parseNameList(in), "|"); got != want {
			t.Errorf("parseNameList(%q) = %q, want %q", in, got, want)
		}
	}
}
