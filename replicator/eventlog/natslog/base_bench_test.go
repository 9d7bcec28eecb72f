package natslog

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/rejot-dev/rejot/internal/natstest"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// BenchmarkBaseJoinedTransaction counts what one source transaction that
// renames a customer costs the base state on a three-node cluster, doing
// what the capture does for it (replicator/capture/join_changes.go): the
// customer's row written, its orders found (Referrers), their rows and the
// rows they meet read (Base), the append committed. Orders 1..400 meet
// customers 1..40, which meet regions 1..5. It reports the messages the
// log sends per transaction (requests and publishes) and the time.
//
//	go test ./replicator/eventlog/natslog -run '^$' -bench BaseJoinedTransaction -benchtime 200x
func BenchmarkBaseJoinedTransaction(b *testing.B) {
	c := natstest.Run(b, 3)
	ctx := context.Background()
	l := opener(b, c)()
	v := eventlog.Version{Publication: "bench", Number: 1}
	key := func(n int) string { s := strconv.Itoa(n); return eventlog.KeyString([]eventlog.Value{&s}) }
	row := func(table, n, ref int, name string) eventlog.BaseRow {
		id := strconv.Itoa(n)
		r := eventlog.BaseRow{Table: table, Key: key(n), Row: []eventlog.Value{&id, &name}}
		if ref > 0 {
			r.Refs = map[int]string{table + 1: key(ref)}
		}
		return r
	}
	var rows []eventlog.BaseRow
	for o := 1; o <= 400; o++ {
		rows = append(rows, row(0, o, 1+o%40, "o"))
	}
	for cu := 1; cu <= 40; cu++ {
		rows = append(rows, row(1, cu, 1+cu%5, "c"))
	}
	for r := 1; r <= 5; r++ {
		rows = append(rows, row(2, r, 0, "r"))
	}
	tx, _ := l.Begin(ctx)
	if err := tx.PutBase(ctx, v, "shop", 1, rows); err != nil {
		b.Fatal(err)
	}
	if _, err := tx.Commit(ctx); err != nil {
		b.Fatal(err)
	}
	before := l.nc.Stats().OutMsgs
	start := time.Now()
	b.ResetTimer()
	for i := range b.N {
		cu := 1 + i%40
		if err := renameCustomer(ctx, l, v, uint64(i+2), row(1, cu, 1+cu%5, fmt.Sprint("n", i))); err != nil {
			b.Fatal(err)
		}
	}
	took := time.Since(start)
	b.ReportMetric(float64(l.nc.Stats().OutMsgs-before)/float64(b.N), "msgs/txn")
	b.ReportMetric(float64(took.Microseconds())/float64(b.N), "µs/txn")
}

// renameCustomer is one source transaction changing a customer, as the
// capture appends it.
func renameCustomer(ctx context.Context, l *Log, v eventlog.Version, lsn uint64, customer eventlog.BaseRow) error {
	tx, err := l.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if err := tx.PutBase(ctx, v, "shop", lsn, []eventlog.BaseRow{customer}); err != nil {
		return err
	}
	orders, _, err := tx.Referrers(ctx, v, 0, 1, []string{customer.Key}, "", 2000)
	if err != nil {
		return err
	}
	if len(orders) != 10 {
		return fmt.Errorf("%d orders meet customer %s, want 10", len(orders), customer.Key)
	}
	roots, err := tx.Base(ctx, v, 0, orders)
	if err != nil {
		return err
	}
	customers, err := tx.Base(ctx, v, 1, []string{customer.Key})
	if err != nil || len(customers) != 1 {
		return fmt.Errorf("customer: %v %v", customers, err)
	}
	if _, err := tx.Base(ctx, v, 2, []string{customer.Refs[2]}); err != nil {
		return err
	}
	if len(roots) != 10 {
		return fmt.Errorf("%d order rows, want 10", len(roots))
	}
	g := eventlog.Group{Version: v, System: "shop", CommitLSN: lsn, Layout: eventlog.Layout{Columns: 2, Key: []int{0}}}
	for _, k := range orders {
		vals, _ := eventlog.ParseKeyString(k)
		g.Changes = append(g.Changes, eventlog.Change{Op: eventlog.OpUpsert, Key: vals, Row: append(vals, customer.Row[1])})
	}
	if err := tx.Append(ctx, []eventlog.Group{g}); err != nil {
		return err
	}
	_, err = tx.Commit(ctx)
	return err
}
