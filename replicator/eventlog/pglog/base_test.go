package pglog

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// TestBaseStates: base rows are written in order (the last of a table and
// key wins, a nil row deletes it and its refs), read by key, found by
// what they refer to (paged, in key order), cleared per table or all at
// once, only when the append commits; the base position is the last one
// written.
func TestBaseStates(t *testing.T) {
	l, _ := open(t)
	ctx := context.Background()
	key := func(s string) string { return eventlog.KeyString([]eventlog.Value{v(s)}) }
	row := func(table int, k string, ref string, vals ...string) eventlog.BaseRow {
		r := eventlog.BaseRow{Table: table, Key: key(k)}
		for _, x := range vals {
			r.Row = append(r.Row, v(x))
		}
		if ref != "" {
			r.Refs = map[int]string{1: key(ref)}
		}
		return r
	}
	tx, err := l.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	err = tx.PutBase(ctx, orders, "shop", 100, []eventlog.BaseRow{
		row(0, "o1", "c1", "o1", "c1"), row(0, "o2", "c1", "o2", "c1"), row(0, "o3", "c2", "o3", "c2"),
		row(1, "c1", "", "c1", "Ann"), row(1, "c2", "", "c2", "Bo"),
		row(0, "o2", "c2", "o2", "c2"), // moved: the last wins
		{Table: 0, Key: key("o3")},     // gone
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := l.BaseAt(ctx, orders, "shop"); ok {
		t.Fatal("a base position before the commit")
	}
	if _, err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if at, ok, err := l.BaseAt(ctx, orders, "shop"); err != nil || !ok || at != 100 {
		t.Fatalf("base position %d %v %v", at, ok, err)
	}
	tx, err = l.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	refs := func(child int, of ...string) string {
		var ks []string
		for _, o := range of {
			ks = append(ks, key(o))
		}
		var all []string
		after := ""
		for {
			got, err := tx.Referrers(ctx, orders, 0, child, ks, after, 1) // a page of one: paging in key order
			if err != nil {
				t.Fatal(err)
			}
			all = append(all, got...)
			if len(got) < 1 {
				return fmt.Sprint(all)
			}
			after = got[0]
		}
	}
	if got, want := refs(1, "c1"), fmt.Sprint([]string{key("o1")}); got != want {
		t.Errorf("rows meeting c1: %s, want %s", got, want)
	}
	if got, want := refs(1, "c1", "c2"), fmt.Sprint([]string{key("o1"), key("o2")}); got != want {
		t.Errorf("rows meeting c1 or c2: %s, want %s", got, want)
	}
	if got, want := refs(-1), fmt.Sprint([]string{key("o1"), key("o2")}); got != want {
		t.Errorf("every root row: %s, want %s", got, want)
	}
	rows, err := tx.Base(ctx, orders, 1, []string{key("c1"), key("c9")})
	if err != nil || len(rows) != 1 || *rows[key("c1")][1] != "Ann" {
		t.Fatalf("base rows %v, %v", rows, err)
	}
	if err := tx.ClearBase(ctx, orders, 1); err != nil {
		t.Fatal(err)
	}
	if rows, _ := tx.Base(ctx, orders, 1, []string{key("c1")}); len(rows) != 0 {
		t.Fatalf("a cleared table has rows: %v", rows)
	}
	if got := refs(-1); !slices.Equal([]string{got}, []string{fmt.Sprint([]string{key("o1"), key("o2")})}) {
		t.Fatalf("clearing one table cleared another: %s", got)
	}
	if err := tx.ClearBase(ctx, orders, -1); err != nil {
		t.Fatal(err)
	}
	if got := refs(1, "c1", "c2"); got != "[]" {
		t.Fatalf("refs after clearing all: %s", got)
	}
}

// TestParseKeyString: KeyString's encoding reads back, NULL and empty
// string apart; malformed text is an error, not a panic.
func TestParseKeyString(t *testing.T) {
	for _, key := range [][]eventlog.Value{{}, {nil}, {v("")}, {v("a;b"), nil, v("3:x;")}, {v("ünï")}} {
		got, err := eventlog.ParseKeyString(eventlog.KeyString(key))
		if err != nil || eventlog.KeyString(got) != eventlog.KeyString(key) || len(got) != len(key) {
			t.Errorf("%q: %v, %v", eventlog.KeyString(key), got, err)
		}
	}
	for _, bad := range []string{"3:ab;", "x:a;", "2:ab", "-1:;", "1:ab"} {
		if _, err := eventlog.ParseKeyString(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
