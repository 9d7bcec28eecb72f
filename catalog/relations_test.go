package catalog

import (
	"context"
	"encoding/json"
	"slices"
	"testing"

	"github.com/rejot-dev/rejot/managed"
)

// TestRelationColumns: each relation's columns in order, with built-in
// types spelled as format_type does.
func TestRelationColumns(t *testing.T) {
	c := open(t)
	ctx := context.Background()
	want := map[string][]RelationColumn{
		"systems": {{"system", "text"}, {"database", "text"}, {"address", "text"}, {"version", "text"},
			{"last_seen", "timestamp with time zone"}, {"problem", "text"}, {"catalog_role", "text"}},
		"publications": {{"publication", "text"}, {"version", "integer"}, {"minor", "integer"}, {"owner", "text"},
			{"database", "text"}, {"query", "text"}, {"key_columns", "text[]"}, {"description", "text"},
			{"status", "text"}, {"sunset", "date"}, {"created_at", "timestamp with time zone"},
			{"updated_at", "timestamp with time zone"}, {"access", "text"}, {"granted_to", "text[]"},
			{"owner_role", "text"}, {"problem", "text"}, {"tables", "text[]"}},
		"instances": {{"system", "text"}, {"address", "text"}, {"role", "text"}, {"version", "text"},
			{"started_at", "timestamp with time zone"}, {"last_seen", "timestamp with time zone"}, {"instance", "uuid"}},
	}
	for rel, cols := range want {
		got, err := c.RelationColumns(ctx, rel)
		if err != nil || !slices.Equal(got, cols) {
			t.Errorf("%s: %v, %v", rel, got, err)
		}
	}
	for _, rel := range Relations {
		if cols, err := c.RelationColumns(ctx, rel); err != nil || len(cols) == 0 {
			t.Errorf("%s: %v, %v", rel, cols, err)
		}
	}
	if _, err := c.RelationColumns(ctx, "applied_commands"); err == nil {
		t.Error("a table that is not a catalog relation has columns")
	}
}

// TestRelationRows: the rows of several relations, read in one snapshot,
// as JSON arrays; an empty relation is [].
func TestRelationRows(t *testing.T) {
	c := open(t)
	ctx := context.Background()
	if err := c.RegisterSystem(ctx, System{Name: "shop", Database: "shop_db"}); err != nil {
		t.Fatal(err)
	}
	apply(t, c, "shop", 1, "publish", managed.Published{Publication: "orders", Version: 1, Owner: "shop", Database: "shop_db",
		Query: "SELECT id FROM orders", Source: "public.orders", KeyColumns: []string{"id"}, Description: "naïve 🦆",
		Columns: []Column{{Name: "id", Type: "bigint", TypeOID: 20, TypeMod: -1, IsKey: true}}})
	rows, err := c.RelationRows(ctx, []string{"publications", "subscriptions", "columns"})
	if err != nil {
		t.Fatal(err)
	}
	var pubs []map[string]any
	if err := json.Unmarshal([]byte(rows[0]), &pubs); err != nil || len(pubs) != 1 {
		t.Fatalf("publications: %s, %v", rows[0], err)
	}
	if p := pubs[0]; p["description"] != "naïve 🦆" || p["sunset"] != nil || len(p["key_columns"].([]any)) != 1 {
		t.Errorf("publication: %v", p)
	}
	if rows[1] != "[]" {
		t.Errorf("subscriptions: %s", rows[1])
	}
	if _, err := c.RelationRows(ctx, []string{"publications; DROP TABLE x"}); err == nil {
		t.Error("a relation that is not a catalog relation was read")
	}
}
