package sql

import (
	"strings"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// TestNamedParams: :column parameters are found by the scanner, and
// nothing that only looks like one is touched.
func TestNamedParams(t *testing.T) {
	cases := []struct {
		text, want string // want: the text with each parameter made $k
		err        string
	}{
		{"INSERT INTO t VALUES (:id, upper(:name))", "INSERT INTO t VALUES ($1, upper($2))", ""},
		{"UPDATE t SET a = :a WHERE id = :id AND b = :a", "UPDATE t SET a = $1 WHERE id = $2 AND b = $1", ""},
		{"INSERT INTO t VALUES (':x', :x)", "INSERT INTO t VALUES (':x', $1)", ""},
		{"INSERT INTO t VALUES (:id::bigint, now()::text)", "INSERT INTO t VALUES ($1::bigint, now()::text)", ""},
		{"INSERT INTO t VALUES ($$ :x $$, $q$:y$q$, :z)", "INSERT INTO t VALUES ($$ :x $$, $q$:y$q$, $1)", ""},
		{"INSERT INTO t VALUES (:id) -- :not\n", "INSERT INTO t VALUES ($1) -- :not\n", ""},
		{"INSERT INTO t VALUES (:id /* :not */)", "INSERT INTO t VALUES ($1 /* :not */)", ""},
		{`INSERT INTO t VALUES (:"Mixed ""Case""", :ID, :Name)`, "INSERT INTO t VALUES ($1, $2, $3)", ""},
		{"INSERT INTO t VALUES (:type, :key, :value)", "INSERT INTO t VALUES ($1, $2, $3)", ""},
		{"INSERT INTO t VALUES (a[1:2], a[lo:hi], a[(:n)])", "INSERT INTO t VALUES (a[1:2], a[lo:hi], a[($1)])", ""},
		{`INSERT INTO t VALUES (":x")`, `INSERT INTO t VALUES (":x")`, ""},
		{"INSERT INTO t VALUES (: id)", "", "followed by the name"},
		{"INSERT INTO t VALUES ($1)", "", "no $n parameters"},
		{"INSERT INTO t VALUES ('open", "", "unterminated"},
	}
	for _, c := range cases {
		params, err := namedParams(c.text)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: want an error with %q, got %v", c.text, c.err, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", c.text, err)
			continue
		}
		got, _, _ := positional(c.text, params, func(string) string { return "" })
		got = strings.NewReplacer("($1)", "$1", "($2)", "$2", "($3)", "$3").Replace(got)
		if got != c.want {
			t.Errorf("%q:\n got %q\nwant %q", c.text, got, c.want)
		}
	}
	params, _ := namedParams(`INSERT INTO t VALUES (:"Mixed ""Case""", :ID)`)
	if len(params) != 2 || params[0].name != `Mixed "Case"` || params[1].name != "id" {
		t.Errorf("names: %+v", params)
	}
}

// TestPositionalMapsBack: positions in the rewritten text map back to the
// text as written.
func TestPositionalMapsBack(t *testing.T) {
	text := "INSERT INTO t VALUES (:id, :name, bogus)"
	params, err := namedParams(text)
	if err != nil {
		t.Fatal(err)
	}
	body, names, splices := positional(text, params, func(n string) string { return "::pg_catalog.text" })
	if strings.Join(names, ",") != "id,name" {
		t.Errorf("names %v", names)
	}
	at := strings.Index(body, "bogus")
	if got := originOf(splices, at); got != strings.Index(text, "bogus") {
		t.Errorf("bogus at %d maps to %d, want %d", at, got, strings.Index(text, "bogus"))
	}
	if got := originOf(splices, strings.Index(body, "$2")); got != strings.Index(text, ":name") {
		t.Errorf("$2 maps to %d, want %d", got, strings.Index(text, ":name"))
	}
}

// FuzzNamedParams: whatever the text, finding parameters does not fail
// other than with an error; the rewritten text scans to the same tokens
// but for the parameters, each of which became ( $k ), and every offset
// maps back into the text.
func FuzzNamedParams(f *testing.F) {
	for _, s := range []string{
		"INSERT INTO t VALUES (:id, upper(:name)) ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name",
		"DELETE FROM t WHERE id = :id AND x = ':x' AND y = $$:y$$",
		"UPDATE t SET a = a[1:2] || :b::int[] WHERE id = :\"Id\"",
		"MERGE INTO t USING (SELECT :id AS id) s ON t.id = s.id WHEN MATCHED THEN DELETE",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		params, err := namedParams(text)
		if err != nil {
			return
		}
		body, names, splices := positional(text, params, func(string) string { return "" })
		for off := 0; off <= len(body); off++ {
			if o := originOf(splices, off); o < 0 || o > len(text) {
				t.Fatalf("%q: offset %d maps to %d", text, off, o)
			}
		}
		before, err1 := pg_query.Scan(text)
		after, err2 := pg_query.Scan(body)
		if err1 != nil || err2 != nil {
			t.Fatalf("%q: scans %v, rewritten %q scans %v", text, err1, body, err2)
		}
		// Each parameter (two tokens) became three: ( PARAM ).
		if got, want := len(significant(after.Tokens)), len(significant(before.Tokens))+len(params); got != want {
			t.Fatalf("%q: rewritten %q has %d tokens, want %d", text, body, got, want)
		}
		if len(names) > len(params) {
			t.Fatalf("%q: %d names for %d parameters", text, len(names), len(params))
		}
	})
}
