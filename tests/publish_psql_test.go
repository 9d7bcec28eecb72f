package tests

import (
	"regexp"
	"strings"
	"testing"
)

var psqlCode = regexp.MustCompile(`ERROR:  ([0-9A-Z]{5}):`)

// TestPublishRulesInPsql: every publishing rule, as a user at psql meets it.
func TestPublishRulesInPsql(t *testing.T) {
	p := newPublisher(t)
	url := p.sc.url(p.db, "postgres")
	setup := `CREATE TABLE shop_orders (id bigint PRIMARY KEY, customer int NOT NULL, total numeric(12,2), note text);
CREATE TABLE shop_lines (order_id bigint, line int, qty int, PRIMARY KEY (order_id, line));
CREATE TABLE shop_nokey (id int);
CREATE VIEW shop_view AS SELECT * FROM shop_orders;
CREATE ROLE shop_reader_` + p.db + ` LOGIN;
`
	if out := psql(t, url, setup); strings.Contains(out, "ERROR") {
		t.Fatalf("setup: %s", out)
	}
	name := p.name("po")
	cases := []struct{ sql, code string }{
		{"CALL rejot.publish('" + name + "', 1, 'SELECT id, customer, total FROM shop_orders')", ""},
		{"SELECT * FROM rejot.publish('" + name + "', 1, 'SELECT id, customer, total FROM shop_orders')", ""},
		{"SELECT rejot.publish('" + name + "', 1, 'SELECT id, customer, total, note FROM shop_orders')", ""},
		{"CALL rejot.publish('" + name + "', 1, 'SELECT id, customer FROM shop_orders')", "0A000"},
		{"CALL rejot.publish('" + name + "', 1, 'SELECT id, customer::text AS customer, total, note FROM shop_orders')", "0A000"},
		{"CALL rejot.publish('" + name + "_l', 1, 'SELECT order_id, line, qty FROM shop_lines')", ""},
		{"CALL rejot.publish('" + name + "_x', 1, 'SELEC id FROM shop_orders')", "42601"},
		{"CALL rejot.publish('" + name + "_x', 1, 'SELECT id FROM nosuch')", "42P01"},
		{"CALL rejot.publish('" + name + "_x', 1, 'SELECT id, nocol FROM shop_orders')", "42703"},
		{"CALL rejot.publish('" + name + "_x', 1, 'SELECT id FROM shop_view')", "0A000"},
		{"CALL rejot.publish('" + name + "_x', 1, 'SELECT id FROM shop_nokey')", "0A000"},
		{"CALL rejot.publish('" + name + "_x', 1, 'SELECT customer FROM shop_orders')", "0A000"},
		{"CALL rejot.publish('" + name + "_x', 1, 'SELECT id, now() AS at FROM shop_orders')", "42P17"},
		{"CALL rejot.publish('" + name + "_x', 1, 'SELECT id, random() AS r FROM shop_orders')", "42P17"},
		{"CALL rejot.publish('" + name + "_x', 1, 'SELECT id, total + 1 FROM shop_orders')", "42601"},
		{"CALL rejot.publish('" + name + "_x', 1, 'SELECT o.id FROM shop_orders o JOIN shop_lines l ON l.order_id = o.id')", "0A000"},
		{"CALL rejot.publish('" + name + "_x', 1, 'SELECT DISTINCT id FROM shop_orders')", "0A000"},
		{"CALL rejot.publish('" + name + "_x', 1, 'SELECT id FROM shop_orders LIMIT 1')", "0A000"},
		{"CALL rejot.publish('" + name + "_x', 1, 'SELECT id FROM shop_orders; SELECT 1')", "42601"},
		{"SET ROLE shop_reader_" + p.db + "; CALL rejot.publish('" + name + "_x', 1, 'SELECT id FROM shop_orders')", "42501"},
		{"CALL rejot.publish('Bad Name', 1, 'SELECT id FROM shop_orders')", "22023"},
		{"CALL rejot.publish('" + name + "_x', 0, 'SELECT id FROM shop_orders')", "22023"},
		{"CALL rejot.publish('" + name + "_x', 1)", "42883"},
		{"CALL rejot.publish(nme => 'x', version => 1, query => 'SELECT id FROM shop_orders')", "42883"},
	}
	for _, c := range cases {
		out := psql(t, url, "\\set VERBOSITY verbose\n"+c.sql+";\n")
		m := psqlCode.FindStringSubmatch(out)
		switch {
		case c.code == "" && m != nil:
			t.Errorf("%s: unexpected error\n%s", c.sql, out)
		case c.code != "" && (m == nil || m[1] != c.code):
			t.Errorf("%s: want %s\n%s", c.sql, c.code, out)
		}
	}
	// A syntax error points into the query argument, as psql shows it.
	out := psql(t, url, "CALL rejot.publish('"+name+"_y', 1, 'SELECT id FRM shop_orders');\n")
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "LINE 1: ") && i+1 < len(lines) {
			if caret, at := strings.Index(lines[i+1], "^"), strings.Index(l, "FRM ")+len("FRM "); caret != at {
				t.Errorf("caret at %d, want %d:\n%s", caret, at, out)
			}
			return
		}
	}
	t.Errorf("no LINE 1 in:\n%s", out)
}
