package sql

import (
	"fmt"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// FuzzRewriteRelations: every statement the sidecar accepts as a query over
// the catalog relations rewrites to exactly one statement that parses and
// names no rejot relation, and every position maps back into the statement.
func FuzzRewriteRelations(f *testing.F) {
	for _, s := range []string{
		"SELECT * FROM rejot.systems",
		"SELECT p.publication FROM rejot.publications p JOIN rejot.columns c USING (publication, version) WHERE p.version = $1",
		`SELECT rejot.publications.publication FROM "rejot"."publications" /* x */ , ONLY (rejot.systems) s`,
		"TABLE rejot.subscriptions",
		"WITH x AS (TABLE ONLY rejot.systems) SELECT * FROM x, rejot.columns * AS c(a, b) ORDER BY 1",
		"SELECT * FROM rejot.systems s, LATERAL (SELECT * FROM rejot.columns WHERE name = s.system) c",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, query string) {
		st, err := ParseOne(query)
		if err != nil || !st.Relations || st.Err != nil {
			return
		}
		q, err := rewriteRelations(st.Text(query), 0, testColumns)
		if err != nil {
			return // refused, with an error
		}
		if msg := checkRewritten(q); msg != "" {
			t.Fatalf("%q: %s", query, msg)
		}
		for off := 0; off <= len(q.text); off++ {
			if o := q.origin(off); o < 0 || o > len(st.Text(query)) {
				t.Fatalf("%q: offset %d maps to %d", query, off, o)
			}
		}
	})
}

// checkRewritten says what is wrong with a rewritten statement, or "".
func checkRewritten(q *relationQuery) string {
	tree, err := pg_query.Parse(q.text)
	if err != nil {
		return fmt.Sprintf("%s: does not parse: %v", q.text, err)
	}
	if len(tree.Stmts) != 1 {
		return fmt.Sprintf("%s: %d statements", q.text, len(tree.Stmts))
	}
	found := ""
	walk(tree.Stmts[0].Stmt.ProtoReflect(), func(m protoreflect.Message) {
		// "reJot" quoted is another schema: names are case-sensitive once parsed.
		if rv, ok := m.Interface().(*pg_query.RangeVar); ok && rv.Schemaname == "rejot" {
			found = rv.Relname
		}
	})
	if found != "" {
		return fmt.Sprintf("%s: still names rejot.%s", q.text, found)
	}
	return ""
}
