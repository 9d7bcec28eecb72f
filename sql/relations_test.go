package sql

import (
	"testing"

	"github.com/rejot-dev/rejot/internal/pgerr"
)

func TestClassifyRelations(t *testing.T) {
	tests := []struct {
		query   string
		errCode string
		errPos  int
	}{
		{query: "SELECT * FROM rejot.publications"},
		{query: "SELECT p.publication, count(*) FROM rejot.publications p JOIN rejot.columns c USING (publication, version) GROUP BY 1 ORDER BY 2 DESC"},
		{query: "WITH s AS (SELECT * FROM rejot.systems) SELECT * FROM s WHERE system = $1"},
		{query: "SELECT * FROM rejot.subscriptions WHERE target IN (SELECT target FROM rejot.subscriptions)"},
		{query: "SELECT * FROM rejot.nothing", errCode: pgerr.UndefinedTable, errPos: 15},
		// The query runs in the caller's session: it may join the caller's own tables.
		{query: "SELECT * FROM rejot.systems, pg_class"},
		{query: "SELECT * FROM rejot.systems WHERE system IN (SELECT relname FROM public.t)"},
		{query: "WITH systems AS (SELECT 1) SELECT * FROM rejot.systems, systems"},
		{query: "SELECT * FROM otherdb.rejot.systems", errCode: pgerr.FeatureNotSupported, errPos: 15},
		{query: "WITH d AS (DELETE FROM rejot.systems RETURNING *) SELECT * FROM d", errCode: pgerr.FeatureNotSupported, errPos: 24},
		{query: "WITH d AS (INSERT INTO rejot.columns DEFAULT VALUES RETURNING *) SELECT * FROM d", errCode: pgerr.FeatureNotSupported, errPos: 24},
		{query: "SELECT * FROM rejot.systems FOR UPDATE OF rejot.systems", errCode: pgerr.FeatureNotSupported, errPos: 43},
		{query: "SELECT * FROM rejot.systems TABLESAMPLE SYSTEM (10)", errCode: pgerr.FeatureNotSupported, errPos: 15},
		{query: "EXPLAIN SELECT * FROM rejot.systems", errCode: pgerr.FeatureNotSupported, errPos: 23},
		{query: "DELETE FROM rejot.systems", errCode: pgerr.FeatureNotSupported, errPos: 13},
		{query: "SELECT * INTO copy FROM rejot.systems", errCode: pgerr.FeatureNotSupported},
		{query: "UPDATE rejot.publications SET status = 'retired'", errCode: pgerr.FeatureNotSupported, errPos: 8},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			st, err := ParseOne(tt.query)
			if err != nil {
				t.Fatal(err)
			}
			if !st.Relations || st.Call != nil {
				t.Fatalf("not a relations query: %+v", st)
			}
			switch {
			case tt.errCode == "" && st.Err != nil:
				t.Fatalf("unexpected error %v", st.Err)
			case tt.errCode != "" && (st.Err == nil || pgErrorOf(st.Err).Code != tt.errCode):
				t.Fatalf("want %s, got %v", tt.errCode, st.Err)
			case tt.errPos != 0 && pgErrorOf(st.Err).Position != tt.errPos:
				t.Fatalf("position %d, want %d", pgErrorOf(st.Err).Position, tt.errPos)
			}
		})
	}
	for _, q := range []string{"SELECT * FROM rejot_publications", "SELECT 'rejot.publications'", "SELECT * FROM public.rejot"} {
		if st, _ := ParseOne(q); st.Intercepted() {
			t.Errorf("%s: intercepted", q)
		}
	}
}
