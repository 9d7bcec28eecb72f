package apply

import (
	"strings"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"github.com/rejot-dev/rejot/managed"
)

// FuzzTargetStatements: whatever the names of a target's schema, table
// and columns, each statement built for it is exactly one statement on
// exactly that table and those columns, as Postgres's parser reads it; a
// name Postgres cannot have (empty, NUL, too long, not UTF-8) is refused
// before anything is built. More seeds live in
// testdata/fuzz/FuzzTargetStatements.
func FuzzTargetStatements(f *testing.F) {
	for _, s := range [][4]string{
		{"public", "t", "id", "v"},
		{"public", "x;commit;alter/**/role/**/intruder/**/superuser", "id", "v"},
		{`a"b`, `c"; DROP TABLE victim; --`, `"`, `""`},
		{"s'q", `t\`, `k'; DELETE FROM t; --`, "v /* c */"},
		{"-- x", "/* y", "*/", "\n;\n"},
		{"Ünïcødé", "表", "ключ", "😀"},
		{"", "t", "id", "v"},
		{"public", "", "id", "v"},
		{"public", "t", "", "v"},
		{"pub\x00lic", "t", "id", "v"},
		{"public", "t\x00; DROP TABLE x", "id", "v"},
		{"public", "t", "id\x00", "v"},
		{strings.Repeat("s", 63), strings.Repeat("t", 63), strings.Repeat("k", 63), strings.Repeat("é", 31)},
		{strings.Repeat("s", 64), "t", "id", "v"},
		{"public", "t", "id", strings.Repeat("v", 64)},
		{"public", "\xff\xfe", "id", "v"},
		{"$1", "u&\"x\"", "$$", "E'\\''"},
	} {
		f.Add(s[0], s[1], s[2], s[3])
	}
	f.Fuzz(func(t *testing.T, schema, table, key, col string) {
		cols := []managed.SubscribedColumn{{Name: key, Key: true, Index: 0}, {Name: col, Index: 1}}
		types := map[string]string{key: "bigint", col: "text"}
		tg, err := newTarget(schema, table, cols, types)
		valid := true
		for _, n := range []string{schema, table, key, col} {
			valid = valid && validName(n) == nil
		}
		if !valid {
			if err == nil {
				t.Fatalf("names %q %q %q %q: built, want refused", schema, table, key, col)
			}
			return
		}
		if err != nil {
			t.Fatalf("names %q %q %q %q: %v", schema, table, key, col, err)
		}
		check := func(what, sql string, rel func(*pg_query.Node) (schema, table string)) {
			t.Helper()
			res, err := pg_query.Parse(sql)
			if err != nil {
				t.Fatalf("%s does not parse: %v\n%s", what, err, sql)
			}
			if len(res.Stmts) != 1 {
				t.Fatalf("%s is %d statements:\n%s", what, len(res.Stmts), sql)
			}
			if s, tb := rel(res.Stmts[0].Stmt); s != schema || tb != table {
				t.Fatalf("%s writes %q.%q, want %q.%q:\n%s", what, s, tb, schema, table, sql)
			}
		}
		check("the upsert", tg.upsert, func(n *pg_query.Node) (string, string) {
			ins := n.GetInsertStmt()
			if ins == nil {
				t.Fatalf("the upsert is not an INSERT: %s", tg.upsert)
			}
			var names []string
			for _, c := range ins.Cols {
				names = append(names, c.GetResTarget().GetName())
			}
			if len(names) != 2 || names[0] != key || names[1] != col {
				t.Fatalf("the upsert names columns %q, want %q and %q: %s", names, key, col, tg.upsert)
			}
			var conflict []string
			for _, e := range ins.GetOnConflictClause().GetInfer().GetIndexElems() {
				conflict = append(conflict, e.GetIndexElem().GetName())
			}
			if len(conflict) != 1 || conflict[0] != key {
				t.Fatalf("the upsert's conflict target is %q, want %q: %s", conflict, key, tg.upsert)
			}
			return ins.GetRelation().GetSchemaname(), ins.GetRelation().GetRelname()
		})
		check("the delete", tg.delete, func(n *pg_query.Node) (string, string) {
			del := n.GetDeleteStmt()
			if del == nil {
				t.Fatalf("the delete is not a DELETE: %s", tg.delete)
			}
			fields := del.GetWhereClause().GetAExpr().GetLexpr().GetColumnRef().GetFields()
			if len(fields) != 2 || fields[1].GetString_().GetSval() != key {
				t.Fatalf("the delete's condition is not on the key %q: %s", key, tg.delete)
			}
			return del.GetRelation().GetSchemaname(), del.GetRelation().GetRelname()
		})
		check("the truncate", tg.clear, func(n *pg_query.Node) (string, string) {
			del := n.GetDeleteStmt()
			if del == nil || del.WhereClause != nil || del.UsingClause != nil {
				t.Fatalf("the truncate is not a DELETE of every row: %s", tg.clear)
			}
			return del.GetRelation().GetSchemaname(), del.GetRelation().GetRelname()
		})
		check("the copy", tg.copySQL, func(n *pg_query.Node) (string, string) {
			cp := n.GetCopyStmt()
			if cp == nil || !cp.IsFrom || cp.IsProgram || cp.Filename != "" || cp.Query != nil {
				t.Fatalf("the copy is not a COPY FROM STDIN: %s", tg.copySQL)
			}
			var names []string
			for _, a := range cp.Attlist {
				names = append(names, a.GetString_().GetSval())
			}
			if len(names) != 2 || names[0] != key || names[1] != col {
				t.Fatalf("the copy names columns %q, want %q and %q: %s", names, key, col, tg.copySQL)
			}
			return cp.GetRelation().GetSchemaname(), cp.GetRelation().GetRelname()
		})
	})
}
