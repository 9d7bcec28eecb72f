package catalog

import (
	"context"
	"strings"
	"testing"

	"github.com/rejot-dev/rejot/managed"
)

// TestReportFailures: a version its owner reports failed shows status
// failed with its problem in rejot.publications, its subscriptions show
// failed with the problem, and the overview too; another system cannot
// report for it; once the owner reports it no longer failed, the version
// is back to the lifecycle status it kept (deprecated here).
func TestReportFailures(t *testing.T) {
	c := open(t)
	ctx := context.Background()
	for _, s := range []string{"shop", "billing"} {
		if err := c.RegisterSystem(ctx, System{Name: s, Database: s + "_db"}); err != nil {
			t.Fatal(err)
		}
	}
	cols := []Column{{Name: "id", Type: "bigint", TypeOID: 20, TypeMod: -1, IsKey: true}}
	for v := 1; v <= 2; v++ {
		apply(t, c, "shop", int64(v), "publish", managed.Published{Publication: "orders", Version: v, Owner: "shop", Database: "shop_db",
			Query: "SELECT id FROM orders", Source: "public.orders", KeyColumns: []string{"id"}, Columns: cols})
	}
	apply(t, c, "shop", 3, "deprecate", managed.Lifecycle{Publication: "orders", Version: 1, Status: "deprecated"})
	apply(t, c, "billing", 1, "subscribe", managed.SubscriptionCommand{Target: "billing.orders", Publication: "orders", Version: 1})
	if err := c.ReportSubscriptions(ctx, "billing", []SubscriptionReport{{Target: "billing.orders", Status: "streaming"}}); err != nil {
		t.Fatal(err)
	}
	state := func() string {
		var out string
		err := c.pool.QueryRow(ctx, `SELECT string_agg(p.version || ' ' || p.status || ' ' || coalesce(p.problem, '-'), '; ' ORDER BY p.version)
				|| ' / ' || (SELECT s.status || ' ' || coalesce(s.error, '-') FROM rejot.subscriptions s)
			FROM rejot.publications p`).Scan(&out)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	const problem = "column customer of public.orders is gone; publish the version again"
	failed := []VersionFailure{{Publication: "orders", Version: 1, Problem: problem}}
	if err := c.ReportFailures(ctx, "billing", failed); err != nil {
		t.Fatal(err)
	}
	if got := state(); got != "1 deprecated -; 2 active - / streaming -" {
		t.Errorf("another system reported a failure of shop's: %s", got)
	}
	if err := c.ReportFailures(ctx, "shop", failed); err != nil {
		t.Fatal(err)
	}
	want := "1 failed " + problem + "; 2 active - / failed publication orders version 1 failed at its owner: " + problem
	if got := state(); got != want {
		t.Errorf("failed:\n got %s\nwant %s", got, want)
	}
	o, err := c.Overview(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v := o.Publications[0]; v.Status != "failed" || v.Problem != problem || v.Subscriptions[0].Status != "failed" ||
		!strings.Contains(v.Subscriptions[0].Error, problem) {
		t.Errorf("overview: %+v", v)
	}
	if err := c.ReportFailures(ctx, "shop", nil); err != nil { // not known yet: nothing changes
		t.Fatal(err)
	}
	if got := state(); got != want {
		t.Errorf("after a report of nothing known: %s", got)
	}
	if err := c.ReportFailures(ctx, "shop", []VersionFailure{}); err != nil {
		t.Fatal(err)
	}
	if got := state(); got != "1 deprecated -; 2 active - / streaming -" {
		t.Errorf("mended: %s", got)
	}
}
