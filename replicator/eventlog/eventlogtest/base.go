package eventlogtest

import (
	"context"
	"fmt"
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
// the given rows of child (every row of table 0 when child is negative).
func referrers(t testing.TB, tx eventlog.Tx, child int, of ...string) string {
	t.Helper()
	var ks []string
	for _, o := range of {
		ks = append(ks, baseKey(o))
	}
	var all []string
	after := ""
	for {
		got, err := tx.Referrers(context.Background(), orders, 0, child, ks, after, 1)
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

func keys(ks ...string) string {
	var out []string
	for _, k := range ks {
		out = append(out, baseKey(k))
	}
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
