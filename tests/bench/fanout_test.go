package bench

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rejot-dev/rejot/internal/natstest"
	"github.com/rejot-dev/rejot/internal/pgtest"
	"github.com/rejot-dev/rejot/replicator/eventlog"
	"github.com/rejot-dev/rejot/replicator/eventlog/natslog"
	"github.com/rejot-dev/rejot/replicator/eventlog/pglog"
)

// BenchmarkLogFanOut measures the event log engines alone, without
// capture or apply: BENCH_TXNS single-row transactions appended as the
// capture does (a thousand per append), then read from position 0 to the
// head by 1, 4 and 16 readers at once, each with a log of its own (as
// each subscriber's sidecar has), with the Postgres log and the NATS log
// (three nodes, three replicas) in one run:
//
//	go test ./tests/bench -run '^$' -bench LogFanOut -benchtime 1x -v
func BenchmarkLogFanOut(b *testing.B) {
	txns := envInt(b, "BENCH_TXNS", 100_000, 1)
	ctx := context.Background()
	pg, err := pgtest.Start(pgtest.Options{Settings: clusterSettings})
	if err != nil {
		b.Fatal(err)
	}
	defer pg.Destroy()
	if err := pg.Exec(ctx, "postgres", "CREATE DATABASE fanout"); err != nil {
		b.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "rejot-fanout-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	js, err := natstest.Start(3, dir)
	if err != nil {
		b.Fatal(err)
	}
	defer js.Shutdown()
	engines := []struct {
		name string
		open func() (eventlog.Log, error)
	}{
		{"postgres", func() (eventlog.Log, error) { return pglog.Open(ctx, pg.URL("fanout")) }},
		{"nats", func() (eventlog.Log, error) { return natslog.Open(ctx, js.URL()) }},
	}
	var report strings.Builder
	fmt.Fprintf(&report, "\nEvent log engines alone: %d single-row transactions\n\n| log | append | 1 reader | 4 readers | 16 readers |\n|---|--:|--:|--:|--:|\n", txns)
	for range b.N {
		for _, e := range engines {
			fmt.Fprintf(&report, "| %s |", e.name)
			fmt.Fprintf(&report, " %s |", rate(txns, appendAll(b, e.open, txns)))
			for _, n := range []int{1, 4, 16} {
				d := readAll(b, e.open, n, int64(txns))
				fmt.Fprintf(&report, " %s each, %s in all |", rate(txns, d), rate(n*txns, d))
			}
			report.WriteString("\n")
		}
	}
	fmt.Print(report.String())
}

var fanoutVersion = eventlog.Version{Publication: "fanout", Number: 1}

func rate(n int, d time.Duration) string {
	return fmt.Sprintf("%.0f txns/s", float64(n)/d.Seconds())
}

func appendAll(b *testing.B, open func() (eventlog.Log, error), txns int) time.Duration {
	l, err := open()
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	pad := strings.Repeat("x", 84)
	start := time.Now()
	for first := 0; first < txns; first += 1000 {
		var groups []eventlog.Group
		for i := first; i < min(first+1000, txns); i++ {
			k, bal := fmt.Sprint(i%100_000), fmt.Sprint(i)
			groups = append(groups, eventlog.Group{Version: fanoutVersion, System: "bench", CommitLSN: uint64(i + 1),
				CommitTime: time.Now(), Layout: eventlog.Layout{Columns: 3, Key: []int{0}},
				Changes: []eventlog.Change{{Op: eventlog.OpUpsert, Key: []eventlog.Value{&k}, Row: []eventlog.Value{&k, &bal, &pad}}}})
		}
		if _, err := eventlog.Append(context.Background(), l, groups); err != nil {
			b.Fatal(err)
		}
	}
	return time.Since(start)
}

// readAll has n readers fetch everything to the head at once, as caught-up
// subscribers apply (spans of up to 5000 changes).
func readAll(b *testing.B, open func() (eventlog.Log, error), n int, head int64) time.Duration {
	logs := make([]eventlog.Log, n)
	for i := range logs {
		l, err := open()
		if err != nil {
			b.Fatal(err)
		}
		defer l.Close()
		logs[i] = l
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	start := time.Now()
	for _, l := range logs {
		wg.Go(func() {
			for after := int64(0); after < head; {
				span, _, err := l.Fetch(context.Background(), fanoutVersion, after, 5000)
				if err != nil {
					errs <- err
					return
				}
				if span.Groups == 0 {
					errs <- fmt.Errorf("nothing after %d", after)
					return
				}
				after = span.Upto
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}
