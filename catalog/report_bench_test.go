package catalog

import (
	"context"
	"testing"

	"github.com/rejot-dev/rejot/managed"
)

// BenchmarkReportSubscriptions: one subscriber's report of one
// subscription, as every sidecar sends each second for each of its
// subscriptions (the catalog checks the grant and the reporter's right to
// report for the system in it).
//
//	go test ./catalog -run '^$' -bench ReportSubscriptions
func BenchmarkReportSubscriptions(b *testing.B) {
	c := open(b)
	ctx := context.Background()
	for _, s := range []string{"shop", "billing"} {
		if err := c.RegisterSystem(ctx, System{Name: s, Database: s + "_db"}); err != nil {
			b.Fatal(err)
		}
	}
	cols := []Column{{Name: "id", Type: "bigint", TypeOID: 20, TypeMod: -1, IsKey: true}}
	apply(b, c, "shop", 1, "publish", managed.Published{Publication: "orders", Version: 1, Owner: "shop", Database: "shop_db",
		Query: "SELECT id FROM orders", Source: "public.orders", KeyColumns: []string{"id"}, Columns: cols})
	apply(b, c, "shop", 2, "grant", managed.Access{Publication: "orders", Version: 1, System: "billing", Restricted: true, Granted: []string{"billing"}})
	apply(b, c, "billing", 1, "subscribe", managed.SubscriptionCommand{Target: "billing.orders", Publication: "orders", Version: 1})
	position := int64(0)
	reports := []SubscriptionReport{{Target: "billing.orders", Status: "streaming", Position: &position}}
	b.ResetTimer()
	for b.Loop() {
		position++
		if err := c.ReportSubscriptions(ctx, "billing", reports); err != nil {
			b.Fatal(err)
		}
	}
}
