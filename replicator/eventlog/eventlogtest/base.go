package eventlogtest

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"testing"

	"github.com/rejot-dev/rejot/replicator/eventlog"
)

func baseKey(s string) string { return eventlog.KeyString([]eventlog.Value{V(s)}) }

func baseRow(table int, k string, ref string, vals ...string) eventlog.BaseRow {
	r := eventlog.BaseRow{Table: table, Key: baseKey(k), Row: []eventlog.Value{}}
	for _, x := range vals {
		r.Row = append(r.Row, V(x))
	}
	if ref != "" {
		r.Refs = map[int]string{1: baseKey(ref)}
	}
	return r
}

// referrers pages, one key a page, through the rows of table 0 that meet
// the given rows of child (every row of table 0 when child is negative),
// and returns their keys in key order.
func referrers(t testing.TB, tx eventlog.Tx, child int, of ...string) string {
	t.Helper()
	var ks []string
	for _, o := range of {
		ks = append(ks, baseKey(o))
	}
	return fmt.Sprint(allReferrers(t, tx, child, ks, 1))
}

// allReferrers reads every page of a Referrers listing of table 0, each
// at most limit keys, and returns the keys sorted; a key twice fails.
func allReferrers(t testing.TB, tx eventlog.Tx, child int, refs []string, limit int) []string {
	t.Helper()
	var all []string
	seen := map[string]bool{}
	cursor := ""
	for {
		got, next, err := tx.Referrers(context.Background(), orders, 0, child, refs, cursor, limit)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) > limit {
			t.Fatalf("a page of %d keys, limit %d", len(got), limit)
		}
		for _, k := range got {
			if seen[k] {
				t.Fatalf("key %s on two pages", k)
			}
			seen[k] = true
		}
		all = append(all, got...)
		if next == "" {
			slices.Sort(all)
			return all
		}
		cursor = next
	}
}

func keys(ks ...string) string {
	var out []string
	for _, k := range ks {
		out = append(out, baseKey(k))
	}
	slices.Sort(out)
	return fmt.Sprint(out)
}

// testBaseStates: base rows are written in order (the last of a table and
// key wins, a nil row deletes it and its refs), read by key and found by
// what they refer to (paged, in key order) within the append that wrote
// them, cleared per table or all at once, only when the append commits,
// and kept across appends and reopened logs (a row that moves drops its
// old refs); the base position is the last one written, and committed
// with the append.
func testBaseStates(t *testing.T, open func() eventlog.Log) {
	l := open()
	ctx := context.Background()
	tx, err := l.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	err = tx.PutBase(ctx, orders, "shop", 100, []eventlog.BaseRow{
		baseRow(0, "o1", "c1", "o1", "c1"), baseRow(0, "o2", "c1", "o2", "c1"), baseRow(0, "o3", "c2", "o3", "c2"),
		baseRow(1, "c1", "", "c1", "Ann"), baseRow(1, "c2", "", "c2", "Bo"),
		baseRow(0, "o2", "c2", "o2", "c2"), // moved: the last wins
		{Table: 0, Key: baseKey("o3")},     // gone
	})
	if err != nil {
		t.Fatal(err)
	}
	// The append reads what it wrote.
	if got, want := referrers(t, tx, 1, "c2"), keys("o2"); got != want {
		t.Errorf("in the append, rows meeting c2: %s, want %s", got, want)
	}
	if rows, err := tx.Base(ctx, orders, 1, []string{baseKey("c2")}); err != nil || len(rows) != 1 || *rows[baseKey("c2")][1] != "Bo" {
		t.Fatalf("in the append, base rows %v, %v", rows, err)
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

	// An append rolled back leaves the base as it was.
	tx, err = l.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.PutBase(ctx, orders, "shop", 150, []eventlog.BaseRow{baseRow(0, "o9", "c1", "o9", "c1"), {Table: 0, Key: baseKey("o1")}}); err != nil {
		t.Fatal(err)
	}
	if err := tx.ClearBase(ctx, orders, 1); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if at, _, _ := l.BaseAt(ctx, orders, "shop"); at != 100 {
		t.Fatalf("base position %d after a rollback", at)
	}

	tx, err = l.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := referrers(t, tx, 1, "c1"), keys("o1"); got != want {
		t.Errorf("rows meeting c1: %s, want %s", got, want)
	}
	if got, want := referrers(t, tx, 1, "c1", "c2"), keys("o1", "o2"); got != want {
		t.Errorf("rows meeting c1 or c2: %s, want %s", got, want)
	}
	if got, want := referrers(t, tx, -1), keys("o1", "o2"); got != want {
		t.Errorf("every root row: %s, want %s", got, want)
	}
	rows, err := tx.Base(ctx, orders, 1, []string{baseKey("c1"), baseKey("c9")})
	if err != nil || len(rows) != 1 || *rows[baseKey("c1")][1] != "Ann" {
		t.Fatalf("base rows %v, %v", rows, err)
	}
	// A committed row that moves drops its old refs; one that goes, its row.
	if err := tx.PutBase(ctx, orders, "shop", 200, []eventlog.BaseRow{baseRow(0, "o1", "c2", "o1", "c2"), {Table: 1, Key: baseKey("c1")}}); err != nil {
		t.Fatal(err)
	}
	if got, want := referrers(t, tx, 1, "c1"), "[]"; got != want {
		t.Errorf("in the append, rows meeting c1 after o1 moved: %s, want %s", got, want)
	}
	if _, err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	l = open() // kept in the store, not in the process
	if at, ok, err := l.BaseAt(ctx, orders, "shop"); err != nil || !ok || at != 200 {
		t.Fatalf("base position %d %v %v", at, ok, err)
	}
	tx, err = l.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := referrers(t, tx, 1, "c1"), "[]"; got != want {
		t.Errorf("rows meeting c1 after o1 moved: %s, want %s", got, want)
	}
	if got, want := referrers(t, tx, 1, "c2"), keys("o1", "o2"); got != want {
		t.Errorf("rows meeting c2 after o1 moved: %s, want %s", got, want)
	}
	if rows, _ := tx.Base(ctx, orders, 1, []string{baseKey("c1"), baseKey("c2")}); len(rows) != 1 {
		t.Fatalf("customers after c1 went: %v", rows)
	}
	if err := tx.ClearBase(ctx, orders, 1); err != nil {
		t.Fatal(err)
	}
	if rows, _ := tx.Base(ctx, orders, 1, []string{baseKey("c2")}); len(rows) != 0 {
		t.Fatalf("a cleared table has rows: %v", rows)
	}
	if got, want := referrers(t, tx, -1), keys("o1", "o2"); got != want {
		t.Fatalf("clearing one table cleared another: %s", got)
	}
	if _, err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	tx, err = l.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rows, _ := tx.Base(ctx, orders, 1, []string{baseKey("c2")}); len(rows) != 0 {
		t.Fatalf("a table cleared and committed has rows: %v", rows)
	}
	if got, want := referrers(t, tx, 1, "c2"), keys("o1", "o2"); got != want {
		t.Errorf("rows meeting c2 after customers were cleared: %s, want %s", got, want)
	}
	if err := tx.ClearBase(ctx, orders, -1); err != nil {
		t.Fatal(err)
	}
	if err := tx.PutBase(ctx, orders, "shop", 300, []eventlog.BaseRow{baseRow(0, "o5", "c5", "o5", "c5")}); err != nil {
		t.Fatal(err)
	}
	if got, want := referrers(t, tx, 1, "c2"), "[]"; got != want {
		t.Fatalf("refs after clearing all: %s", got)
	}
	if _, err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	tx, err = l.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if got, want := referrers(t, tx, -1), keys("o5"); got != want {
		t.Fatalf("root rows after clearing all and committed: %s, want %s", got, want)
	}
	if got, want := referrers(t, tx, 1, "c5"), keys("o5"); got != want {
		t.Fatalf("rows meeting c5: %s, want %s", got, want)
	}
}

// testBaseReferrerPages: a listing of many referrers (more than one
// request of the NATS log answers: a customer with many orders) comes in
// pages of at most the limit, each key once over them, committed rows and
// the append's own (rows moved in, moved away, new) together, for the
// rows meeting some rows and for every row of the table.
func testBaseReferrerPages(t *testing.T, open func() eventlog.Log) {
	l := open()
	ctx := context.Background()
	tx, err := l.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { tx.Rollback(ctx) }() // the last one
	const many = 1100
	var rows []eventlog.BaseRow
	for i := range many {
		o := "o" + strconv.Itoa(i)
		rows = append(rows, baseRow(0, o, "c1", o, "c1"))
	}
	rows = append(rows, baseRow(0, "x1", "c2", "x1", "c2"), baseRow(0, "x2", "c2", "x2", "c2"))
	if err := tx.PutBase(ctx, orders, "shop", 100, rows); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	tx, err = l.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// In this append: o0 moves to c2, x1 to c1, o1 goes, n1 and n2 come.
	err = tx.PutBase(ctx, orders, "shop", 200, []eventlog.BaseRow{baseRow(0, "o0", "c2", "o0", "c2"),
		baseRow(0, "x1", "c1", "x1", "c1"), {Table: 0, Key: baseKey("o1")}, baseRow(0, "n1", "c1", "n1", "c1"), baseRow(0, "n2", "c3", "n2", "c3")})
	if err != nil {
		t.Fatal(err)
	}
	var c1 []string
	for i := 2; i < many; i++ {
		c1 = append(c1, "o"+strconv.Itoa(i))
	}
	c1 = append(c1, "x1", "n1")
	all := append(slices.Clone(c1), "o0", "x2", "n2")
	for _, limit := range []int{7, 500, 5000} {
		for _, tc := range []struct {
			what  string
			child int
			refs  []string
			want  []string
		}{
			{"rows meeting c1", 1, []string{baseKey("c1")}, c1},
			{"rows meeting c2, c1 or c3", 1, []string{baseKey("c2"), baseKey("c1"), baseKey("c3")}, all},
			{"every root row", -1, nil, all},
		} {
			got := allReferrers(t, tx, tc.child, tc.refs, limit)
			if fmt.Sprint(got) != keys(tc.want...) {
				t.Errorf("%s in pages of %d: %d keys, want %d", tc.what, limit, len(got), len(tc.want))
			}
		}
	}
	if got, want := fmt.Sprint(allReferrers(t, tx, 1, []string{baseKey("c2")}, 1)), keys("o0", "x2"); got != want {
		t.Errorf("rows meeting c2: %s, want %s", got, want)
	}
}
