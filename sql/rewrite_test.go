package sql

import (
	"fmt"
	"strings"
	"testing"

	"github.com/rejot-dev/rejot/catalog"
)

// testColumns stands for the catalog: each relation has one column per
// kind of type, named after it.
func testColumns(rel string) ([]catalog.RelationColumn, error) {
	if !catalog.IsRelation(rel) {
		return nil, fmt.Errorf("no relation %s", rel)
	}
	return []catalog.RelationColumn{{Name: rel[:1], Type: "text"}, {Name: "At", Type: "timestamp with time zone"}}, nil
}

func sub(k int, rel string) string {
	return fmt.Sprintf(`(SELECT * FROM pg_catalog.jsonb_to_recordset($%d::pg_catalog.jsonb) AS r("%s" text, "At" timestamp with time zone))`, k, rel[:1])
}

func TestRewriteRelations(t *testing.T) {
	tests := []struct {
		query   string
		nParams int
		want    string
		rels    []string
	}{
		{"SELECT * FROM rejot.systems", 0, "SELECT * FROM " + sub(1, "systems") + ` AS "systems" `, []string{"systems"}},
		{"SELECT s.system FROM rejot.systems s WHERE s.system = $1", 1, "SELECT s.system FROM " + sub(2, "systems") + " s WHERE s.system = $1", []string{"systems"}},
		{"SELECT * FROM rejot.systems WHERE system = $3", 1, "SELECT * FROM " + sub(4, "systems") + ` AS "systems"  WHERE system = $3`, []string{"systems"}},
		{"SELECT $1", 2, "SELECT $1", nil},
		{`SELECT rejot.publications.p, rejot . publications.* FROM "rejot" /* c */ ."publications" JOIN rejot.columns c ON true, rejot.publications q`, 0,
			`SELECT publications.p, publications.* FROM ` + sub(1, "publications") + ` AS "publications"  JOIN ` + sub(2, "columns") + " c ON true, " + sub(1, "publications") + " q",
			[]string{"publications", "columns"}},
		{"TABLE rejot.systems", 0, "SELECT * FROM " + sub(1, "systems") + ` AS "systems" `, []string{"systems"}},
		{"SELECT * FROM ONLY rejot.systems, ONLY (rejot.columns) c, rejot.publications * AS p", 0,
			"SELECT * FROM " + sub(1, "systems") + ` AS "systems" , ` + sub(2, "columns") + " c, " + sub(3, "publications") + " AS p",
			[]string{"systems", "columns", "publications"}},
		{"WITH x AS (TABLE rejot.systems) SELECT * FROM x", 0, "WITH x AS (SELECT * FROM " + sub(1, "systems") + ` AS "systems" ) SELECT * FROM x`, []string{"systems"}},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			q, err := rewriteRelations(tt.query, tt.nParams, testColumns)
			if err != nil {
				t.Fatal(err)
			}
			if q.text != tt.want || strings.Join(q.rels, ",") != strings.Join(tt.rels, ",") {
				t.Fatalf("got  %s %v\nwant %s %v", q.text, q.rels, tt.want, tt.rels)
			}
			if msg := checkRewritten(q); msg != "" {
				t.Fatal(msg)
			}
		})
	}
}

// TestRewrittenPositions: a position in the rewritten text maps back to the
// same token in the statement; one inside a splice to the splice's start.
func TestRewrittenPositions(t *testing.T) {
	query := "SELECT nocolumn, rejot.systems.s FROM rejot.systems WHERE x = 1"
	q, err := rewriteRelations(query, 0, testColumns)
	if err != nil {
		t.Fatal(err)
	}
	for _, word := range []string{"nocolumn", "systems.s", "WHERE", "x = 1"} {
		if got, want := q.origin(strings.Index(q.text, word)), strings.Index(query, word); got != want {
			t.Errorf("%s: at %d, want %d", word, got, want)
		}
	}
	if got, want := q.origin(strings.Index(q.text, "jsonb_to_recordset")), strings.Index(query, "rejot.systems WHERE"); got != want {
		t.Errorf("inside the splice: at %d, want %d", got, want)
	}
}

func TestNoParamsInSimpleQueries(t *testing.T) {
	err := noParams("SELECT * FROM rejot.systems WHERE system = $1", 10)
	if e := pgErrorOf(err); e == nil || e.Code != "42P02" || e.Position != 54 {
		t.Fatalf("got %v", err)
	}
}

func TestASCIIJSON(t *testing.T) {
	if got := asciiJSON(`["naïve 🦆", "x"]`); got != `["na\u00efve \ud83e\udd86", "x"]` {
		t.Fatalf("got %s", got)
	}
}
