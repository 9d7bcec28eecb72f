package catalog

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/rejot-dev/rejot/internal/pgerr"
	"github.com/rejot-dev/rejot/managed"
)

// TestCommandsOfAnotherCatalogRole: a catalog role may register a system
// name nobody has, but not one another role registered, nor apply that
// system's commands or report its subscriptions; the owner's row and the
// catalog stay as they were.
func TestCommandsOfAnotherCatalogRole(t *testing.T) {
	ctx := context.Background()
	db := pg.CreateDB(t)
	c, err := Open(ctx, pg.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if err := c.RegisterSystem(ctx, System{Name: "shop", Database: "shop", Address: "a:1"}); err != nil {
		t.Fatal(err)
	}
	role := "other_" + db
	admin := pg.Connect(t, db)
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

	err = other.RegisterSystem(ctx, System{Name: "shop", Database: "evil", Address: "evil:1"})
	if !pgerr.Is(err, pgerr.InsufficientPrivilege) || !strings.Contains(err.Error(), `belongs to catalog role postgres`) {
		t.Fatalf("registering another role's system: %v", err)
	}
	if err := other.RegisterSystem(ctx, System{Name: "crm", Database: "crm"}); err != nil {
		t.Fatalf("a new name: %v", err)
	}
	payload, _ := json.Marshal(managed.Published{Publication: "orders", Version: 1, Query: "SELECT id FROM t", Source: `"public"."t"`,
		KeyColumns: []string{"id"}, Columns: []managed.Column{{Name: "id", Type: "integer", TypeOID: 23, IsKey: true}}})
	err = other.Apply(ctx, "shop", "00000000-0000-0000-0000-000000000001", 1, managed.KindPublish, payload)
	if !pgerr.Is(err, pgerr.InsufficientPrivilege) || IsRefusal(err) {
		t.Fatalf("applying another role's command: %v (want a 42501 to retry, not a refusal)", err)
	}
	var row string
	admin.QueryRow(ctx, "SELECT concat_ws(' ', database, address, catalog_role) FROM rejot_catalog.systems WHERE system = 'shop'").Scan(&row)
	var pubs int
	admin.QueryRow(ctx, "SELECT count(*) FROM rejot_catalog.publications").Scan(&pubs)
	if row != "shop a:1 postgres" || pubs != 0 {
		t.Fatalf("shop is %q, %d publications", row, pubs)
	}
}

// TestAccessApplies: a grant restricts a version to the owner and the
// granted systems, a revoke stops the revoked system's subscriptions with
// the reason, and a grant to '*' opens it again.
func TestAccessApplies(t *testing.T) {
	ctx := context.Background()
	c := open(t)
	for _, s := range []string{"shop", "billing", "crm"} {
		if err := c.RegisterSystem(ctx, System{Name: s, Database: s}); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	apply := func(system, kind string, payload any) error {
		n++
		b, _ := json.Marshal(payload)
		return c.Apply(ctx, system, fmt.Sprintf("00000000-0000-0000-0000-%012d", n), int64(n), kind, b)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(apply("shop", managed.KindPublish, managed.Published{Publication: "orders", Version: 1, Query: "SELECT id FROM t",
		Source: `"public"."t"`, KeyColumns: []string{"id"}, Columns: []managed.Column{{Name: "id", Type: "integer", TypeOID: 23, IsKey: true}}}))
	for _, s := range []string{"billing", "crm"} {
		must(apply(s, managed.KindSubscribe, managed.SubscriptionCommand{Target: "public.orders", Publication: "orders", Version: 1}))
	}
	must(apply("shop", managed.KindGrant, managed.Access{Publication: "orders", Version: 1, System: "billing", Restricted: true, Granted: []string{"billing"}}))
	state := func() string {
		var s string
		err := c.pool.QueryRow(ctx, `SELECT (SELECT access FROM rejot.publications WHERE publication = 'orders') || ' ' ||
			string_agg(system || '=' || status, ' ' ORDER BY system) FROM rejot_catalog.subscriptions`).Scan(&s)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	if got := state(); got != "billing billing=copying crm=stopped" {
		t.Fatalf("after the grant: %s", got)
	}
	err := apply("crm", managed.KindResync, managed.SubscriptionCommand{Target: "public.orders", Publication: "orders", Version: 1})
	if !IsRefusal(err) || !strings.Contains(err.Error(), "system crm has no grant") || !strings.Contains(err.Error(), "system shop") {
		t.Fatalf("crm resyncs: %v", err)
	}
	must(apply("shop", managed.KindRevoke, managed.Access{Publication: "orders", Version: 1, System: "billing", Restricted: true}))
	if got := state(); got != "none billing=stopped crm=stopped" {
		t.Fatalf("after the revoke: %s", got)
	}
	var reason string
	c.pool.QueryRow(ctx, "SELECT error FROM rejot_catalog.subscriptions WHERE system = 'billing'").Scan(&reason)
	if !strings.Contains(reason, "has no grant") {
		t.Fatalf("billing's reason: %q", reason)
	}
	// Its sidecar reports it streaming: the catalog keeps it stopped.
	must(c.ReportSubscriptions(ctx, "billing", []SubscriptionReport{{Target: "public.orders", Status: "streaming"}}))
	if got := state(); got != "none billing=stopped crm=stopped" {
		t.Fatalf("after billing's report: %s", got)
	}
	must(apply("shop", managed.KindGrant, managed.Access{Publication: "orders", Version: 1, System: "*"}))
	must(apply("crm", managed.KindResync, managed.SubscriptionCommand{Target: "public.orders", Publication: "orders", Version: 1}))
	if got := state(); got != "open billing=stopped crm=copying" {
		t.Fatalf("opened again, crm resynced: %s", got)
	}
}
