package sql

import (
	"errors"
	"strings"
	"testing"

	"github.com/rejot-dev/rejot/internal/pgerr"
)

// fuzzSplitSeeds are statements the sidecar meets: ordinary SQL, every
// accepted call form, the refused forms, and text that is hard to split.
// More live in testdata/fuzz/FuzzSplit.
var fuzzSplitSeeds = []string{
	"",
	";",
	"SELECT 1",
	"SELECT rejot.version()",
	"CALL rejot.version()",
	"SELECT * FROM rejot.version()",
	"select 'rejot'",
	"SELECT 1, rejot.version()",
	"CALL rejot.publish(name => 'x', version => $1)",
	"CALL rejot.publish('orders', 1, $$SELECT id FROM public.orders WHERE status <> 'draft'$$, description => 'd')",
	"CALL rejot.deprecate('orders', 1, sunset => date '2027-06-01', note => NULL)",
	"SELECT rejot.version() AS v; SELECT 1; CALL rejot.version()",
	"BEGIN; SELECT rejot.version(); COMMIT",
	"SELECT * FROM rejot.version() AS v(x)",
	"SELECT rejot.f(VARIADIC $1)",
	"SELECT rejot.f(-1.5, -2, 1e999, true, NULL::text, $2::int4[])",
	"SELECT rejot.f(x'ff', B'101')",
	"CALL public.rejot.version()",
	"SELECT count(*) OVER () FROM rejot.publications",
	"COPY t FROM STDIN; SELECT rejot.version()",
	"/* rejot */ SELECT 1 -- rejot",
	"SELECT U&\"\\0072ejot\".version()",
	"SELECT rejot.version()\x00junk",
	"SELECT 'unterminated",
	"CALL rejot.f($0, $2147483647)",
	"SELECT ROW(rejot.version())",
	"WITH x AS (SELECT rejot.version()) SELECT * FROM x",
}

func FuzzSplit(f *testing.F) {
	for _, s := range fuzzSplitSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, query string) {
		stmts, err := Split(query)
		if err != nil {
			if !errors.Is(err, ErrNotParsed) || stmts != nil {
				t.Fatalf("Split(%q) = %v, %v; want only ErrNotParsed", query, stmts, err)
			}
		}
		end := 0
		for i, st := range stmts {
			checkStatement(t, query, st)
			if st.Offset < end {
				t.Fatalf("Split(%q): statement %d at %d overlaps the one before (ends at %d)", query, i, st.Offset, end)
			}
			end = st.Offset + st.Length
			checkMention(t, query, st)
		}
		one, err := ParseOne(query)
		switch {
		case len(stmts) == 1 && err != nil:
			t.Fatalf("ParseOne(%q): %v, but Split found one statement", query, err)
		case len(stmts) != 1 && !errors.Is(err, ErrNotParsed):
			t.Fatalf("ParseOne(%q) = %v; want ErrNotParsed for %d statements", query, err, len(stmts))
		case err == nil && (one.Offset != stmts[0].Offset || one.Length != stmts[0].Length || one.Intercepted() != stmts[0].Intercepted()):
			t.Fatalf("ParseOne(%q) = %+v; Split says %+v", query, one, stmts[0])
		}
	})
}

// checkStatement asserts what the proxy relies on when it slices the query
// and reports errors: everything points inside the text.
func checkStatement(t *testing.T, query string, st Statement) {
	t.Helper()
	if st.Offset < 0 || st.Length < 0 || st.Offset+st.Length > len(query) {
		t.Fatalf("Split(%q): statement [%d, +%d) outside the query (%d bytes)", query, st.Offset, st.Length, len(query))
	}
	_ = st.Text(query)
	if st.Call != nil && st.Err != nil {
		t.Fatalf("Split(%q): statement has both a call and an error: %+v, %v", query, st.Call, st.Err)
	}
	if c := st.Call; c != nil {
		if c.Function == "" {
			t.Fatalf("Split(%q): call without a function name: %+v", query, c)
		}
		if c.Location < 0 || c.Location >= len(query) {
			t.Fatalf("Split(%q): call location %d outside the query", query, c.Location)
		}
		for _, a := range c.Args {
			if a.Location < -1 || a.Location >= len(query) {
				t.Fatalf("Split(%q): argument location %d outside the query", query, a.Location)
			}
		}
	}
	if e := pgErrorOf(st.Err); e != nil {
		if len(e.Code) != 5 || e.Message == "" {
			t.Fatalf("Split(%q): malformed error %+v", query, e)
		}
		if e.Position < 0 || e.Position > len(query)+1 {
			t.Fatalf("Split(%q): error position %d outside the query (%d bytes)", query, e.Position, len(query))
		}
	}
}

// checkMention asserts that MentionsRejot is a safe pre-filter: a statement
// the sidecar intercepts names the rejot schema in its text. The one known
// exception is an identifier spelled with Unicode escapes (U&"\0072ejot"),
// which the filter lets through to the database unparsed.
func checkMention(t *testing.T, query string, st Statement) {
	t.Helper()
	if !st.Intercepted() || MentionsRejot([]byte(query)) || strings.Contains(strings.ToUpper(query), "U&") {
		return
	}
	t.Fatalf("Split(%q) intercepts a statement, but MentionsRejot is false", query)
}

func FuzzMentionsRejot(f *testing.F) {
	for _, s := range []string{"", "rejot", "REJOT", "ReJoT", "rejo", "rrejot", "re jot", "xrejotx",
		"SELECT rejot.version()", "\xffrejot", "r\x00ejot", "RÉJOT", "\u212aRejot", "Rejo", "rejoT\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, text []byte) {
		want := strings.Contains(strings.ToLower(string(text)), "rejot")
		if got := MentionsRejot(text); got != want {
			t.Fatalf("MentionsRejot(%q) = %v, want %v", text, got, want)
		}
	})
}

// TestSplitClassifiesTypicalInput pins the classification of the inputs the
// fuzz seeds start from.
func TestSplitClassifiesTypicalInput(t *testing.T) {
	tests := []struct {
		query    string
		function string // "" when the statement is not a call
		form     Form
		alias    string
		args     []Arg
		errCode  string // set when the statement is refused
		errPos   int
	}{
		{query: "SELECT rejot.version()", function: "version", form: FormSelect},
		{query: "CALL rejot.version()", function: "version", form: FormCall},
		{query: "SELECT * FROM rejot.version()", function: "version", form: FormSelectFrom},
		{query: "select Rejot.Version() AS v", function: "version", form: FormSelect, alias: "v"},
		{query: "SELECT * FROM rejot.version() AS v(x)", function: "version", form: FormSelectFrom, alias: "v"},
		{query: "select 'rejot'"},
		{query: `SELECT "Rejot".version()`},
		{query: "SELECT 1, rejot.version()", errCode: pgerr.FeatureNotSupported, errPos: 11},
		{query: "SELECT rejot.version() FROM t", errCode: pgerr.FeatureNotSupported, errPos: 8},
		{query: "SELECT rejot.version() WHERE true", errCode: pgerr.FeatureNotSupported, errPos: 8},
		{query: "SELECT upper(rejot.version())", errCode: pgerr.FeatureNotSupported, errPos: 14},
		{query: "CALL public.rejot.version()", errCode: pgerr.UndefinedFunction, errPos: 6},
		{query: "SELECT rejot.f(VARIADIC $1)", errCode: pgerr.SyntaxError, errPos: 8},
		{query: "CALL rejot.f(now())", errCode: pgerr.FeatureNotSupported, errPos: 14},
		{query: "CALL rejot.f(x'ff')", errCode: pgerr.FeatureNotSupported, errPos: 14},
		{
			query: "CALL rejot.publish(name => 'x', version => $1)", function: "publish", form: FormCall,
			args: []Arg{
				{Name: "name", Kind: ArgString, Value: "x", Location: 27},
				{Name: "version", Kind: ArgParam, Param: 1, Location: 43},
			},
		},
		{
			query: "CALL rejot.f($$q'uote$$, -2, 1.5, false, NULL, $2::int8, 'd'::date)", function: "f", form: FormCall,
			args: []Arg{
				{Kind: ArgString, Value: "q'uote", Location: 13},
				{Kind: ArgNumber, Value: "-2", Location: 25},
				{Kind: ArgNumber, Value: "1.5", Location: 29},
				{Kind: ArgBool, Value: "false", Location: 34},
				{Kind: ArgNull, Location: 41},
				{Kind: ArgParam, Param: 2, Cast: "int8", Location: 47},
				{Kind: ArgString, Value: "d", Cast: "date", Location: 57},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			st, err := ParseOne(tt.query)
			if err != nil {
				t.Fatal(err)
			}
			checkClassification(t, st, tt.function, tt.form, tt.alias, tt.args, tt.errCode, tt.errPos)
		})
	}
}

func checkClassification(t *testing.T, st Statement, function string, form Form, alias string, args []Arg, errCode string, errPos int) {
	t.Helper()
	switch {
	case errCode != "":
		if e := pgErrorOf(st.Err); e == nil || e.Code != errCode || e.Position != errPos {
			t.Fatalf("got error %+v, call %+v; want SQLSTATE %s at %d", st.Err, st.Call, errCode, errPos)
		}
	case function == "":
		if st.Intercepted() {
			t.Fatalf("intercepted (call %+v, error %v); want an ordinary statement", st.Call, st.Err)
		}
	default:
		c := st.Call
		if st.Err != nil || c == nil {
			t.Fatalf("got error %v; want a call of %s", st.Err, function)
		}
		if c.Function != function || c.Form != form || c.Alias != alias || len(c.Args) != len(args) {
			t.Fatalf("got %+v; want %s, form %d, alias %q, %d args", c, function, form, alias, len(args))
		}
		for i, a := range args {
			if c.Args[i] != a {
				t.Errorf("argument %d: got %+v, want %+v", i, c.Args[i], a)
			}
		}
	}
}

// TestSplitStatementsOfSeparatedQuery checks the slicing the proxy relies on
// to send the ordinary statements of a mixed query string upstream.
func TestSplitStatementsOfSeparatedQuery(t *testing.T) {
	query := "SELECT 1;\n/* c */ CALL rejot.version() ; select 'x;y'"
	stmts, err := Split(query)
	if err != nil {
		t.Fatal(err)
	}
	var texts []string
	for _, st := range stmts {
		texts = append(texts, st.Text(query))
	}
	want := []string{"SELECT 1", "\n/* c */ CALL rejot.version() ", " select 'x;y'"}
	if strings.Join(texts, "|") != strings.Join(want, "|") {
		t.Fatalf("got %q, want %q", texts, want)
	}
	if stmts[0].Intercepted() || !stmts[1].Intercepted() || stmts[2].Intercepted() {
		t.Fatalf("wrong classification: %+v", stmts)
	}
}

// FuzzMentionsDDL: text the parser finds guarded DDL in (sql.Statement's
// Guarded) always MentionsDDL, so the cheap scan never lets such DDL past
// unguarded.
func FuzzMentionsDDL(f *testing.F) {
	for _, s := range []string{"ALTER TABLE t DROP COLUMN c", "alter/**/table t rename to u", "DROP TABLE t", "drop\tschema s cascade",
		"ALTER TABLE \"drop\" ADD b int", "SELECT dropoff FROM t", "DROP OWNED BY r", "ALTER TABLE t RENAME COLUMN a TO b",
		"ALTER TABLE t SET SCHEMA s", "DROP INDEX CONCURRENTLY i", "CREATE TABLE t (a int);ALTER TABLE t ADD b int", "/*x*/Drop Type y"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, text []byte) {
		stmts, err := Split(string(text))
		if err != nil || MentionsDDL(text) {
			return
		}
		for _, st := range stmts {
			if st.Guarded {
				t.Fatalf("%q has guarded DDL, but MentionsDDL says no", text)
			}
		}
	})
}

func TestGuardedStatements(t *testing.T) {
	for query, want := range map[string]bool{
		"ALTER TABLE t DROP COLUMN c": true, "ALTER TABLE t RENAME COLUMN a TO b": true, "ALTER TABLE t RENAME TO u": true,
		"ALTER TABLE t ALTER COLUMN a TYPE text": true, "ALTER TABLE t SET SCHEMA s": true, "DROP TABLE t": true,
		"DROP SCHEMA s CASCADE": true, "DROP TYPE y": true, "DROP DOMAIN d": true, "DROP OWNED BY r": true, "ALTER SCHEMA s RENAME TO u": true,
		"ALTER INDEX i RENAME TO j": false, "DROP INDEX CONCURRENTLY i": false, "DROP INDEX i": false, "ALTER SYSTEM SET work_mem = '1MB'": false,
		"DROP DATABASE d": false, "ALTER ROLE r LOGIN": false, "SELECT 1": false, "CREATE TABLE t (a int)": false,
	} {
		st, err := ParseOne(query)
		if err != nil {
			t.Fatalf("%s: %v", query, err)
		}
		if st.Guarded != want {
			t.Errorf("%s: guarded %v, want %v", query, st.Guarded, want)
		}
	}
}
