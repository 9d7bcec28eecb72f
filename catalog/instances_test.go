package catalog

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rejot-dev/rejot/internal/pgerr"
)

// TestInstances: two instances of one system each keep their own row;
// the system's address is the active one's (a standby's registration
// leaves it); the instance that becomes active removes the row of the
// active it replaced; a stale instance is removed; another catalog role
// may not touch the system's instances.
func TestInstances(t *testing.T) {
	ctx := context.Background()
	db := pg.CreateDB(t)
	c, err := Open(ctx, pg.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	a, b := NewInstance(), NewInstance()
	sa := System{Name: "shop", Database: "shop", Address: "a:1", Version: "v1"}
	sb := System{Name: "shop", Database: "shop", Address: "b:1", Version: "v1"}
	if err := c.registerSystem(ctx, sa, true); err != nil {
		t.Fatal(err)
	}
	if err := c.registerSystem(ctx, sb, false); err != nil {
		t.Fatal(err)
	}
	a.Role, b.Role = RoleActive, RoleStandby
	for _, x := range []struct {
		s  System
		in Instance
	}{{sa, a}, {sb, b}} {
		if err := c.HeartbeatInstance(ctx, x.s, x.in, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if got := instances(t, c); got != "a:1 active, b:1 standby" {
		t.Fatalf("instances: %s", got)
	}
	if got := address(t, c); got != "a:1" {
		t.Fatalf("address %q, want the active instance's", got)
	}
	// a goes away (kill -9: its row stays); b takes the lease.
	b.Role = RoleActive
	if err := c.HeartbeatInstance(ctx, sb, b, time.Minute); err != nil {
		t.Fatal(err)
	}
	if got := instances(t, c); got != "b:1 active" {
		t.Fatalf("instances after the takeover: %s", got)
	}
	if got := address(t, c); got != "b:1" {
		t.Fatalf("address %q after the takeover", got)
	}
	// a comes back, as standby; then stops heartbeating.
	a.Role = RoleStandby
	if err := c.HeartbeatInstance(ctx, sa, a, time.Minute); err != nil {
		t.Fatal(err)
	}
	if got := instances(t, c); got != "a:1 standby, b:1 active" {
		t.Fatalf("instances: %s", got)
	}
	admin := pg.Connect(t, db)
	if _, err := admin.Exec(ctx, "UPDATE rejot_catalog.instances SET last_seen = now() - interval '2 minutes' WHERE instance = $1", a.ID); err != nil {
		t.Fatal(err)
	}
	if err := c.HeartbeatInstance(ctx, sb, b, time.Minute); err != nil {
		t.Fatal(err)
	}
	if got := instances(t, c); got != "b:1 active" {
		t.Fatalf("a stale instance is still shown: %s", got)
	}
	// Another catalog role, even with every privilege on the table.
	role := "intruder_" + db
	for _, q := range []string{"CREATE ROLE " + role + " LOGIN",
		"GRANT USAGE ON SCHEMA rejot, rejot_catalog TO " + role,
		"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public, rejot, rejot_catalog TO " + role} {
		if _, err := admin.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { admin.Exec(ctx, "DROP OWNED BY "+role+"; DROP ROLE "+role) })
	other, err := Open(ctx, strings.Replace(pg.URL(db), "postgres@", role+"@", 1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(other.Close)
	evil := NewInstance()
	evil.Role = RoleActive
	err = other.HeartbeatInstance(ctx, System{Name: "shop", Address: "evil:1"}, evil, time.Minute)
	if !pgerr.Is(err, pgerr.InsufficientPrivilege) {
		t.Fatalf("another role recording an instance of the system: %v", err)
	}
	if err := other.RemoveInstance(ctx, "shop", b.ID); !pgerr.Is(err, pgerr.InsufficientPrivilege) {
		t.Fatalf("another role removing an instance of the system: %v", err)
	}
	if got := instances(t, c); got != "b:1 active" {
		t.Fatalf("instances after the intruder: %s", got)
	}
	if got := address(t, c); got != "b:1" {
		t.Fatalf("address %q after the intruder", got)
	}
	// A clean stop removes the row.
	if err := c.RemoveInstance(ctx, "shop", b.ID); err != nil {
		t.Fatal(err)
	}
	if got := instances(t, c); got != "" {
		t.Fatalf("instances after the stop: %s", got)
	}
}

// instances renders rejot.instances as users read it: "address role, …".
func instances(t *testing.T, c *Catalog) string {
	t.Helper()
	rows, err := c.RelationRows(context.Background(), []string{"instances"})
	if err != nil {
		t.Fatal(err)
	}
	var got []struct{ Address, Role string }
	if err := json.Unmarshal([]byte(rows[0]), &got); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, in := range got {
		out = append(out, in.Address+" "+in.Role)
	}
	slices.Sort(out)
	return strings.Join(out, ", ")
}

func address(t *testing.T, c *Catalog) string {
	t.Helper()
	var a string
	if err := c.pool.QueryRow(context.Background(), "SELECT address FROM rejot.systems WHERE system = 'shop'").Scan(&a); err != nil {
		t.Fatal(err)
	}
	return a
}
