package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rejot-dev/rejot/managed"
)

// TestOverview: the overview has every version with its columns in order,
// its lifecycle, its subscriptions with their reported status, and the
// systems; versions without subscribers and systems with a problem too.
func TestOverview(t *testing.T) {
	c := open(t)
	ctx := context.Background()
	for _, s := range []string{"shop", "billing"} {
		if err := c.RegisterSystem(ctx, System{Name: s, Database: s + "_db", Address: "127.0.0.1:6432", Version: "v9"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Heartbeat(ctx, "shop", "wal_level is replica"); err != nil {
		t.Fatal(err)
	}
	cols := []Column{
		{Name: "id", Type: "bigint", TypeOID: 20, TypeMod: -1, IsKey: true},
		{Name: "total", Type: "numeric(12,2)", TypeOID: 1700, TypeMod: 786438, Nullable: true},
	}
	apply(t, c, "shop", 1, "publish", managed.Published{Publication: "orders", Version: 1, Owner: "shop", Database: "shop_db",
		Query: "SELECT id, total FROM orders", Source: "public.orders", KeyColumns: []string{"id"}, Columns: cols,
		Description: "Orders other teams may rely on"})
	apply(t, c, "shop", 2, "publish", managed.Published{Publication: "orders", Version: 2, Owner: "shop", Database: "shop_db",
		Query: "SELECT id FROM orders", Source: "public.orders", KeyColumns: []string{"id"}, Columns: cols[:1]})
	apply(t, c, "shop", 3, "deprecate", managed.Lifecycle{Publication: "orders", Version: 1, Status: "deprecated",
		Sunset: "2027-06-01", Note: "use version 2"})
	apply(t, c, "billing", 1, "subscribe", managed.SubscriptionCommand{Target: "billing.orders", Publication: "orders", Version: 1})
	pos, lag, behind := int64(42), 0.25, int64(3)
	applied := time.Now().Truncate(time.Millisecond)
	if err := c.ReportSubscriptions(ctx, "billing", []SubscriptionReport{{Target: "billing.orders", Status: "streaming",
		CopiedRows: 300, Position: &pos, LagSeconds: &lag, LagChanges: &behind, LastAppliedAt: &applied}}); err != nil {
		t.Fatal(err)
	}

	o, err := c.Overview(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Publications) != 2 || len(o.Systems) != 2 || time.Since(o.At).Abs() > time.Minute {
		t.Fatalf("overview: %+v", o)
	}
	v1, v2 := o.Publications[0], o.Publications[1]
	if v1.Publication != "orders" || v1.Version != 1 || v1.Owner != "shop" || v1.Database != "shop_db" ||
		v1.Status != "deprecated" || v1.Sunset != "2027-06-01" || v1.Note != "use version 2" ||
		v1.Description != "Orders other teams may rely on" || strings.Join(v1.KeyColumns, ",") != "id" || v1.CreatedAt.IsZero() {
		t.Errorf("version 1: %+v", v1)
	}
	if len(v1.Columns) != 2 || v1.Columns[0] != cols[0] || v1.Columns[1] != cols[1] {
		t.Errorf("version 1 columns: %+v", v1.Columns)
	}
	if len(v1.Subscriptions) != 1 {
		t.Fatalf("version 1 subscriptions: %+v", v1.Subscriptions)
	}
	s := v1.Subscriptions[0]
	if s.Target != "billing.orders" || s.System != "billing" || s.Status != "streaming" || s.CopiedRows != 300 ||
		*s.AppliedPosition != 42 || *s.LagSeconds != 0.25 || *s.LagChanges != 3 || !s.LastAppliedAt.Equal(applied) || s.Error != "" {
		t.Errorf("subscription: %+v", s)
	}
	if v2.Version != 2 || v2.Status != "active" || v2.Sunset != "" || len(v2.Columns) != 1 || len(v2.Subscriptions) != 0 {
		t.Errorf("version 2: %+v", v2)
	}
	billing, shop := o.Systems[0], o.Systems[1]
	if billing.Name != "billing" || billing.Database != "billing_db" || billing.Problem != "" ||
		shop.Name != "shop" || shop.Version != "v9" || shop.Problem != "wal_level is replica" || shop.LastSeen.IsZero() {
		t.Errorf("systems: %+v", o.Systems)
	}
}

// TestOverviewEmptyAndJSON: an empty catalog is empty lists, not nulls, so
// the page's script can iterate them; JSON uses the relations' column names.
func TestOverviewEmptyAndJSON(t *testing.T) {
	c := open(t)
	o, err := c.Overview(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(o)
	if !strings.Contains(string(b), `"publications":[]`) || !strings.Contains(string(b), `"systems":[]`) {
		t.Fatalf("empty overview: %s", b)
	}
	var lazy Lazy
	if _, err := lazy.Overview(context.Background()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("unconnected: %v", err)
	}
	lazy.cur.Store(c)
	if _, err := lazy.Overview(context.Background()); err != nil {
		t.Fatalf("connected: %v", err)
	}
}

func apply(t testing.TB, c *Catalog, system string, id int64, kind string, payload any) {
	t.Helper()
	b, err := json.Marshal(payload)
	if err != nil {
		t.Fatal(err)
	}
	uid := fmt.Sprintf("00000000-0000-0000-0000-%012d", id) // unique per system, as applied commands are
	if err := c.Apply(context.Background(), system, uid, id, kind, b); err != nil {
		t.Fatalf("%s %d: %v", kind, id, err)
	}
}
