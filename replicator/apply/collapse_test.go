package apply

import (
	"strings"
	"testing"

	"github.com/rejot-dev/rejot/managed"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

func val(s string) eventlog.Value { return &s }

// values makes a row or key: "-" is NULL.
func values(vs ...string) []eventlog.Value {
	out := make([]eventlog.Value, len(vs))
	for i, s := range vs {
		if s != "-" {
			out[i] = val(s)
		}
	}
	return out
}

// up upserts a row keyed by its first keyLen values.
func up(keyLen int, row ...string) eventlog.Entry {
	return eventlog.Entry{Change: eventlog.Change{Op: eventlog.OpUpsert, Key: values(row[:keyLen]...), Row: values(row...)}}
}

func del(key ...string) eventlog.Entry {
	return eventlog.Entry{Change: eventlog.Change{Op: eventlog.OpDelete, Key: values(key...)}}
}

func truncate() eventlog.Entry {
	return eventlog.Entry{Change: eventlog.Change{Op: eventlog.OpTruncate}}
}

// render writes a statement as its kind and its argument arrays, NULL
// for a missing value: "upsert [1 2] [a b]".
func render(t *target, st statement) string {
	kind := map[string]string{t.upsert: "upsert", t.delete: "delete", t.clear: "truncate"}[st.sql]
	if kind == "" {
		kind = "unknown statement " + st.sql
	}
	parts := []string{kind}
	for _, a := range st.args {
		var vs []string
		for _, v := range a.(textArray) {
			if v == nil {
				vs = append(vs, "NULL")
			} else {
				vs = append(vs, *v)
			}
		}
		parts = append(parts, "["+strings.Join(vs, " ")+"]")
	}
	return strings.Join(parts, " ")
}

func mustTarget(t *testing.T, cols ...managed.SubscribedColumn) *target {
	t.Helper()
	types := map[string]string{}
	for _, c := range cols {
		types[c.Name] = c.Type
	}
	tg, err := newTarget("public", "t", cols, types)
	if err != nil {
		t.Fatal(err)
	}
	return tg
}

// TestChangeStatements: within a group the last change per key wins, in
// the order keys were first seen, deletes before upserts; a truncate
// clears what came before it.
func TestChangeStatements(t *testing.T) {
	id := managed.SubscribedColumn{Name: "id", Type: "bigint", Key: true, Index: 0}
	v := managed.SubscribedColumn{Name: "v", Type: "text", Index: 1}
	plain := mustTarget(t, id, v)
	composite := mustTarget(t, managed.SubscribedColumn{Name: "a", Type: "int", Key: true, Index: 0},
		managed.SubscribedColumn{Name: "b", Type: "text", Key: true, Index: 1}, managed.SubscribedColumn{Name: "v", Type: "text", Index: 2})
	// A minor added column w: rows appended before it have no value for it.
	added := mustTarget(t, id, v, managed.SubscribedColumn{Name: "w", Type: "text", Index: 2})
	// A subscription to some of the version's columns.
	some := mustTarget(t, id, managed.SubscribedColumn{Name: "w", Type: "text", Index: 2})
	cases := []struct {
		name   string
		target *target
		recs   []eventlog.Entry
		want   []string
	}{
		{"nothing", plain, nil, nil},
		{"insert", plain, []eventlog.Entry{up(1, "1", "a")}, []string{"upsert [1] [a]"}},
		{"update twice: the last wins", plain, []eventlog.Entry{up(1, "1", "a"), up(1, "1", "b"), up(1, "1", "c")},
			[]string{"upsert [1] [c]"}},
		{"insert then delete: a delete only", plain, []eventlog.Entry{up(1, "1", "a"), del("1")}, []string{"delete [1]"}},
		{"delete then insert: an upsert", plain, []eventlog.Entry{del("1"), up(1, "1", "a")}, []string{"upsert [1] [a]"}},
		{"key change: delete the old key, upsert the new", plain, []eventlog.Entry{up(1, "1", "a"), del("1"), up(1, "2", "a")},
			[]string{"delete [1]", "upsert [2] [a]"}},
		{"truncate in the middle", plain, []eventlog.Entry{up(1, "1", "a"), del("3"), truncate(), up(1, "2", "b"), del("4")},
			[]string{"truncate", "delete [4]", "upsert [2] [b]"}},
		{"truncate last", plain, []eventlog.Entry{up(1, "1", "a"), truncate()}, []string{"truncate"}},
		{"two truncates", plain, []eventlog.Entry{up(1, "1", "a"), truncate(), up(1, "2", "b"), truncate(), up(1, "3", "c")},
			[]string{"truncate", "truncate", "upsert [3] [c]"}},
		{"keys keep their first-seen order", plain, []eventlog.Entry{up(1, "3", "c"), up(1, "1", "a"), del("5"), up(1, "2", "b"),
			del("4"), up(1, "3", "d")}, []string{"delete [5 4]", "upsert [3 1 2] [d a b]"}},
		{"NULL stays NULL, empty stays empty", plain, []eventlog.Entry{up(1, "1", "-"), up(1, "2", "")},
			[]string{"upsert [1 2] [NULL ]"}},
		{"composite keys", composite, []eventlog.Entry{up(2, "1", "x", "p"), up(2, "1", "y", "q"), up(2, "2", "x", "r"),
			del("1", "x"), up(2, "1", "y", "s")}, []string{"delete [1] [x]", "upsert [1 2] [y x] [s r]"}},
		{"a row without a column a minor added: NULL", added, []eventlog.Entry{up(1, "1", "a"), up(1, "2", "b", "c")},
			[]string{"upsert [1 2] [a b] [NULL c]"}},
		{"some of the version's columns", some, []eventlog.Entry{up(1, "1", "a", "b"), del("2")},
			[]string{"delete [2]", "upsert [1] [b]"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var got []string
			for _, st := range changeStatements(c.target, c.recs) {
				got = append(got, render(c.target, st))
			}
			if strings.Join(got, "; ") != strings.Join(c.want, "; ") || len(got) != len(c.want) {
				t.Errorf("statements:\n got %q\nwant %q", got, c.want)
			}
		})
	}
}

// TestTargetStatements: the statements built for a target, exactly.
func TestTargetStatements(t *testing.T) {
	tg := mustTarget(t, managed.SubscribedColumn{Name: "a", Type: "int", Key: true, Index: 0},
		managed.SubscribedColumn{Name: "v", Type: "numeric(12,2)", Index: 2}, managed.SubscribedColumn{Name: "b", Type: "text", Key: true, Index: 1})
	for _, c := range []struct{ name, got, want string }{
		{"upsert", tg.upsert, `INSERT INTO "public"."t" ("a", "v", "b") SELECT u.c0::int, u.c1::numeric(12,2), u.c2::text ` +
			`FROM unnest($1::text[], $2::text[], $3::text[]) AS u(c0, c1, c2) ORDER BY 1, 3 ON CONFLICT ("a", "b") DO UPDATE SET "v" = EXCLUDED."v"`},
		{"delete", tg.delete, `DELETE FROM "public"."t" AS t USING unnest($1::text[], $2::text[]) AS d(k0, k1) WHERE t."a" = d.k0::int AND t."b" = d.k1::text`},
		{"copy", tg.copySQL, `COPY "public"."t" ("a", "v", "b") FROM STDIN`},
	} {
		if c.got != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.name, c.got, c.want)
		}
	}
	keyOnly := mustTarget(t, managed.SubscribedColumn{Name: "id", Type: "bigint", Key: true})
	if !strings.HasSuffix(keyOnly.upsert, `ON CONFLICT ("id") DO NOTHING`) {
		t.Errorf("key-only upsert: %s", keyOnly.upsert)
	}
	if _, err := newTarget("public", "t", []managed.SubscribedColumn{{Name: "gone"}}, map[string]string{}); err == nil {
		t.Error("a subscribed column missing from the target: no error")
	}
}
