package natslog

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rejot-dev/rejot/internal/natstest"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// BenchmarkCompactionKeepsUp appends as a catching-up capture does (one
// append in flight, each of 100 single-row transactions, keys among
// 100 000) on a three-node cluster, samples every 100 ms how far the
// state's watermark trails the head, and after the appends waits until
// it reaches the head. It runs the background compaction paced (as the
// sidecar does) and at full speed (one pass to the head: how it went
// before pacing), one after the other. An op is one append; it reports
// the changes appended per second, the largest trail, and how long the
// state took to reach the head after the last append.
//
//	go test ./replicator/eventlog/natslog -run '^$' -bench CompactionKeepsUp -benchtime 1000x
func BenchmarkCompactionKeepsUp(b *testing.B) {
	c := natstest.Run(b, 3)
	open := opener(b, c)
	runs := 0
	for _, bc := range []struct {
		name string
		p    pass
	}{{"paced", backgroundPass}, {"fullSpeed", fullPass}} {
		b.Run(bc.name, func(b *testing.B) {
			runs++
			l := open()
			l.background = bc.p
			keepUp(b, l, eventlog.Version{Publication: "keepup", Number: runs})
		})
	}
}

func keepUp(b *testing.B, l *Log, v eventlog.Version) {
	ctx := context.Background()
	const perAppend = 100
	// The streams first, not under the sampler's reads.
	if _, err := l.ensureChangeStream(ctx, v); err != nil {
		b.Fatal(err)
	}
	var head atomic.Int64
	trail := make(chan int64)
	stop := make(chan struct{})
	go func() { trail <- sampleTrail(ctx, l, v, &head, stop) }()
	start := time.Now()
	b.ResetTimer()
	for i := range b.N {
		groups := make([]eventlog.Group, perAppend)
		for j := range groups {
			n := i*perAppend + j
			k, val := strconv.Itoa(n%100_000), strconv.Itoa(n)
			groups[j] = eventlog.Group{Version: v, System: "shop", CommitLSN: uint64(n + 1), Layout: eventlog.Layout{Columns: 2, Key: []int{0}},
				Changes: []eventlog.Change{{Op: eventlog.OpUpsert, Key: []eventlog.Value{&k}, Row: []eventlog.Value{&k, &val}}}}
		}
		if _, err := eventlog.Append(ctx, l, groups); err != nil {
			b.Fatal(err)
		}
		head.Store(int64((i + 1) * perAppend))
	}
	appended := time.Since(start)
	b.StopTimer()
	close(stop)
	most := <-trail
	drain, err := waitCompacted(ctx, l, v, head.Load())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(head.Load())/appended.Seconds(), "changes/s")
	b.ReportMetric(float64(most), "max-trail")
	b.ReportMetric(drain.Seconds(), "drain-s")
}

// sampleTrail returns the largest distance between the head and the
// state's watermark seen until stop.
func sampleTrail(ctx context.Context, l *Log, v eventlog.Version, head *atomic.Int64, stop chan struct{}) int64 {
	var most int64
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return most
		case <-t.C:
		}
		if pos, err := watermarkOf(ctx, l, v); err == nil {
			most = max(most, head.Load()-pos)
		}
	}
}

// waitCompacted waits until the state's watermark is at head.
func waitCompacted(ctx context.Context, l *Log, v eventlog.Version, head int64) (time.Duration, error) {
	start := time.Now()
	for {
		pos, err := watermarkOf(ctx, l, v)
		if err != nil || pos >= head {
			return time.Since(start), err
		}
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return 0, err
		}
	}
}

func watermarkOf(ctx context.Context, l *Log, v eventlog.Version) (int64, error) {
	ks, err := l.ensureStateStream(ctx, v, 1)
	if err != nil {
		return 0, err
	}
	mark, err := watermark(ctx, ks, stateSubjects(v, 1))
	return mark.pos, err
}
