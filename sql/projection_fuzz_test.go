package sql

import "testing"

// FuzzAnalyzeProjection: any text gets either a projection that makes
// sense or an error with a SQLSTATE and a position inside the text.
func FuzzAnalyzeProjection(f *testing.F) {
	for _, s := range []string{
		"SELECT id, customer_id AS c FROM public.orders o WHERE o.status <> 'draft'",
		"SELECT id, total / 100.0 AS total FROM orders",
		"SELECT * FROM t", "SELECT count(*) AS n FROM t", "SELECT id FROM a JOIN b USING (id)",
		"SELECT id FROM t; DROP TABLE t", "WITH x AS (SELECT 1) SELECT id FROM x", "SELECT $1 AS p FROM t",
		"SELECT id, (SELECT 1) AS s FROM t", "SELECT id FROM t ORDER BY id LIMIT 1", "", "SELECT", "\x00",
		"SELECT id, 'a''b' AS q, $$x$$ AS d FROM t WHERE v IN (1, 2) AND w IS NOT NULL",
		"SELECT id, ARRAY[1,2] AS a, row(1, 2) AS r, CASE WHEN a THEN 1 END AS c FROM t",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, query string) {
		p, err := AnalyzeProjection(query)
		if err != nil {
			e := pgErrorOf(err)
			if len(e.Code) != 5 || e.Message == "" || e.Position < 0 || e.Position > len(query)+1 {
				t.Fatalf("bad error %+v for %q", err, query)
			}
			return
		}
		if p.Table == "" || len(p.Columns) == 0 {
			t.Fatalf("accepted without a table or columns: %q", query)
		}
		seen := map[string]bool{}
		for _, c := range p.Columns {
			if c.Name == "" || seen[c.Name] {
				t.Fatalf("column names %+v for %q", p.Columns, query)
			}
			seen[c.Name] = true
		}
	})
}

// FuzzAnalyzeJoin: any text gets either a join projection whose tables
// each join to one before it, with every reference resolved, or an
// error with a SQLSTATE and a position inside the text.
func FuzzAnalyzeJoin(f *testing.F) {
	for _, s := range []string{
		"SELECT o.id, c.name AS customer FROM orders o JOIN customers c ON c.id = o.customer_id",
		"SELECT o.id, r.name AS region FROM orders o LEFT JOIN customers c ON c.id = o.customer_id LEFT JOIN regions r ON r.id = c.region_id WHERE o.total > 0",
		"SELECT o.id FROM orders o JOIN customers c ON c.id = o.a AND c.t = o.t",
		"SELECT o.id FROM orders o RIGHT JOIN c ON c.id = o.x", "SELECT o.id FROM o JOIN c USING (id)",
		"SELECT o.id FROM o JOIN (c JOIN r ON r.id = c.r) ON c.id = o.c", "SELECT id FROM o JOIN c ON c.id = o.c",
		"SELECT o.id FROM o JOIN c ON c.id = o.c OR true", "SELECT o.id FROM o JOIN o ON o.id = o.p", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, query string) {
		p, err := AnalyzeJoin(query)
		if err != nil {
			e := pgErrorOf(err)
			if len(e.Code) != 5 || e.Message == "" || e.Position < 0 || e.Position > len(query)+1 {
				t.Fatalf("bad error %+v for %q", err, query)
			}
			return
		}
		if len(p.Tables) == 0 || len(p.Columns) == 0 || p.Tables[0].Parent != -1 {
			t.Fatalf("accepted without a root or columns: %q", query)
		}
		for i, tb := range p.Tables[1:] {
			if tb.Parent < 0 || tb.Parent > i || len(tb.On) == 0 {
				t.Fatalf("table %s joins to %d on %v: %q", tb.Alias, tb.Parent, tb.On, query)
			}
		}
	})
}
