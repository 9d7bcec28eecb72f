package natslog

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"testing"

	"github.com/rejot-dev/rejot/internal/natstest"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// BenchmarkCopyKeptKeys measures what a copy holds in memory for the keys
// changed since the first state: a first state of 100 000 rows shaped like
// pgbench_accounts (four columns, an 84-character filler), every key
// updated once since and compacted, then copies. It reports the heap the
// copy holds once it has read the keys and folded the changes, per key
// (kept-bytes/key: what grows with the keys changed), and the copy's
// time.
//
//	go test ./replicator/eventlog/natslog -run '^$' -bench CopyKeptKeys -benchtime 3x
func BenchmarkCopyKeptKeys(b *testing.B) {
	const rows = 100_000
	c := natstest.Run(b, 1)
	open := opener(b, c)
	l := open()
	ctx := context.Background()
	v := eventlog.Version{Publication: "accounts", Number: 1}
	layout := eventlog.Layout{Columns: 4, Key: []int{0}}
	val := func(s string) eventlog.Value { return &s }
	filler := fmt.Sprintf("%84s", "")
	row := func(i int, balance string) []eventlog.Value {
		return []eventlog.Value{val(fmt.Sprint(i)), val(fmt.Sprint(i % 10)), val(balance), val(filler)}
	}
	tx, err := l.Begin(ctx)
	if err != nil {
		b.Fatal(err)
	}
	g := eventlog.Group{Version: v, System: "shop", CommitLSN: 1, Layout: layout, Changes: []eventlog.Change{{Op: eventlog.OpTruncate}}}
	for i := range rows {
		g.Changes = append(g.Changes, eventlog.Change{Op: eventlog.OpUpsert, Row: row(i, "0")})
	}
	if err := tx.Fill(ctx, g); err != nil {
		b.Fatal(err)
	}
	if _, err := tx.Commit(ctx); err != nil {
		b.Fatal(err)
	}
	for start := 0; start < rows; start += 10_000 {
		var groups []eventlog.Group
		for i := start; i < start+10_000; i++ {
			groups = append(groups, eventlog.Group{Version: v, System: "shop", CommitLSN: uint64(2 + i), Layout: layout,
				Changes: []eventlog.Change{{Op: eventlog.OpUpsert, Row: row(i, "1")}}})
		}
		if _, err := eventlog.Append(ctx, l, groups); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := l.compact(ctx, v); err != nil {
		b.Fatal(err)
	}
	// What the copy holds is the heap while it has the keys less the heap
	// once it returned: the JetStream server runs in this process, and
	// what it caches of the stream is in both.
	heap := func() uint64 {
		var ms runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	var holding, kept uint64
	copyFolded = func() { holding = heap() }
	defer func() { copyFolded = func() {} }()
	reader := open()
	b.ResetTimer()
	for range b.N {
		if _, err := reader.CopyState(ctx, v, []int{0, 1, 2, 3}, io.Discard); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if after := heap(); holding > after {
			kept = max(kept, holding-after)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(kept)/rows, "kept-bytes/key")
}
