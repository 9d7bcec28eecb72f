package sql

import (
	"fmt"
	"strings"
	"testing"
)

// TestAnalyzeJoinChain: a root joined to a table, which is joined to
// another (a chain), with a LEFT JOIN: the tables in order, each with the
// table it joins to and the columns that meet, what each is read for,
// expressions with their references qualified, and LEFT carried down
// the chain.
func TestAnalyzeJoinChain(t *testing.T) {
	q := `SELECT o.id, o.total, c.name AS customer_name, upper(r.name) AS region
		FROM public.orders o JOIN customers AS c ON c.id = o.customer_id
		LEFT JOIN regions r ON o.tenant = r.tenant AND r.id = o.region_id
		LEFT JOIN planets p ON p.id = r.planet_id
		WHERE o.total > 0 AND c.active`
	if !IsJoin(q) {
		t.Fatal("IsJoin: false")
	}
	p, err := AnalyzeJoin(q)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, tb := range p.Tables {
		got = append(got, fmt.Sprintf("%s.%s as %s parent %d left %v on %v reads %v", tb.Schema, tb.Table, tb.Alias, tb.Parent, tb.Left,
			pairs(tb.On), tb.References))
	}
	want := []string{
		"public.orders as o parent -1 left false on [] reads [customer_id tenant region_id id total]",
		".customers as c parent 0 left false on [id=customer_id] reads [id name active]",
		".regions as r parent 0 left true on [tenant=tenant id=region_id] reads [tenant id planet_id name]",
		".planets as p parent 2 left true on [id=planet_id] reads [id]",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("tables:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	var cols []string
	for _, c := range p.Columns {
		cols = append(cols, c.Name+"="+c.Expr+"/"+c.Source)
	}
	if w := "id=o.id/o.id total=o.total/o.total customer_name=c.name/c.name region=upper(r.name)/"; strings.Join(cols, " ") != w {
		t.Fatalf("columns %q, want %q", strings.Join(cols, " "), w)
	}
	if p.Filter != "o.total > 0 AND c.active" {
		t.Fatalf("filter %q", p.Filter)
	}
}

func pairs(on []JoinPair) []string {
	out := []string{}
	for _, x := range on {
		out = append(out, x.Column+"="+x.ParentColumn)
	}
	return out
}

// TestAnalyzeJoinRefusals: each shape a join projection cannot be gets a
// Postgres error naming it, at its position.
func TestAnalyzeJoinRefusals(t *testing.T) {
	for _, c := range []struct {
		query, code, says, at string
	}{
		{"SELECT o.id FROM orders o RIGHT JOIN customers c ON c.id = o.customer_id", "0A000", "RIGHT JOIN", "customers"},
		{"SELECT o.id FROM orders o FULL JOIN customers c ON c.id = o.customer_id", "0A000", "FULL JOIN", "customers"},
		{"SELECT o.id FROM orders o CROSS JOIN customers c", "0A000", "CROSS JOIN", "customers"},
		{"SELECT o.id FROM orders o JOIN customers c USING (id)", "0A000", "USING", "customers"},
		{"SELECT o.id FROM orders o NATURAL JOIN customers c", "0A000", "NATURAL", "customers"},
		{"SELECT o.id FROM orders o JOIN customers c ON c.id > o.customer_id", "0A000", "equalities", "> o"},
		{"SELECT o.id FROM orders o JOIN customers c ON c.id = o.customer_id OR c.id = 1", "0A000", "equalities", "OR"},
		{"SELECT o.id FROM orders o JOIN customers c ON c.id = 1", "0A000", "equalities", "= 1"},
		{"SELECT o.id FROM orders o JOIN customers c ON id = o.customer_id", "0A000", "alias", "id = o"},
		{"SELECT id FROM orders o JOIN customers c ON c.id = o.customer_id", "0A000", "alias", "id FROM"},
		{"SELECT o.id FROM orders o JOIN customers c ON c.id = o.customer_id WHERE total > 0", "0A000", "alias", "total > 0"},
		{"SELECT o.id FROM orders o JOIN customers c ON c.id = x.customer_id", "42P01", `"x"`, "x.customer_id"},
		{"SELECT o.id FROM orders o JOIN customers c ON c.id = c.parent_id", "0A000", "before it", "c.id = c"},
		{"SELECT o.id FROM orders o JOIN customers c ON o.id = r.x JOIN regions r ON r.id = c.region_id", "42P01", `"r"`, "r.x"},
		{"SELECT o.id FROM orders o JOIN customers c ON c.id = o.a JOIN regions r ON r.id = c.region_id AND r.t = o.t", "0A000", "one table before it", "r.t"},
		{"SELECT o.id FROM orders o JOIN orders o ON o.id = o.parent", "42712", `"o"`, "orders o ON"},
		{"SELECT o.id FROM orders o JOIN (customers c JOIN regions r ON r.id = c.region_id) ON c.id = o.customer_id", "0A000", "parenthesised", "customers c JOIN regions"},
		{"SELECT o.id FROM orders o JOIN (SELECT 1 AS id) c ON c.id = o.x", "0A000", "subquer", ""},
		{"SELECT o.id FROM orders o JOIN generate_series(1, 2) g ON g.g = o.x", "0A000", "function", "generate_series"},
		{"SELECT o.id FROM orders o, customers c", "0A000", "one FROM item", "customers c"},
		{"SELECT o.*, c.name FROM orders o JOIN customers c ON c.id = o.customer_id", "0A000", "*", "o.*"},
		{"SELECT o.id, c.id FROM orders o JOIN customers c ON c.id = o.customer_id", "42701", `"id"`, "c.id FROM"},
		{"SELECT o.id FROM orders o JOIN customers c (cid) ON c.cid = o.customer_id", "0A000", "column aliases", "customers c"},
		{"SELECT o.id FROM orders o JOIN public.customers.x c ON c.id = o.customer_id", "0A000", "cross-database", "public.customers.x"},
	} {
		_, err := AnalyzeJoin(c.query)
		if err == nil {
			t.Errorf("%s: accepted", c.query)
			continue
		}
		e := pgErrorOf(err)
		if e.Code != c.code || !strings.Contains(e.Message, c.says) {
			t.Errorf("%s: %s %q; want %s mentioning %q", c.query, e.Code, e.Message, c.code, c.says)
			continue
		}
		if c.at != "" {
			if want := strings.Index(c.query, c.at) + 1; e.Position != want {
				t.Errorf("%s: position %d (%q), want %d (%q)", c.query, e.Position, c.query[max(e.Position-1, 0):], want, c.at)
			}
		}
	}
}

// TestFlattenRefs: the immutability check's rewrite names alias.column
// references as one column "alias.column", leaving everything else.
func TestFlattenRefs(t *testing.T) {
	got, err := flattenRefs(`upper(c.name) || o.note || 'a.b'`)
	if err != nil || got != `(upper("c.name") || "o.note") || 'a.b'` {
		t.Fatalf("%q, %v", got, err)
	}
}

// TestAnalyzeJoinLeftJoin: LeftJoin is a table's own join; Left also
// says a table before it was LEFT JOINed.
func TestAnalyzeJoinLeftJoin(t *testing.T) {
	p, err := AnalyzeJoin("SELECT o.id FROM orders o LEFT JOIN customers c ON c.id = o.cid JOIN regions r ON r.id = c.rid")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, tb := range p.Tables {
		got = append(got, fmt.Sprintf("%s %v %v", tb.Alias, tb.Left, tb.LeftJoin))
	}
	if strings.Join(got, ", ") != "o false false, c true true, r true false" {
		t.Fatalf("%v", got)
	}
}
