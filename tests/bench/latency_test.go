package bench

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// pollWindow is how many rows past the first unseen update the reader
// looks at in one poll.
const pollWindow = 128

type latencyRun struct {
	updates    int
	writing    time.Duration   // how long the writer took to send them all
	latencies  []time.Duration // sorted
	lost       int             // never seen on the target
	outOfOrder int             // seen while an earlier update was not
}

type latencyResult struct {
	native, rejot latencyRun
}

// latency runs phase (c): native first (ReJot stopped), then ReJot
// (native disabled), each on its own range of accounts.
func (e *env) latency() latencyResult {
	n := e.cfg.latencySecs * e.cfg.latencyRate
	var r latencyResult
	// ReJot is caught up at head; what the source changes from now on it
	// has to catch up before its own run.
	head, err := e.head()
	e.must(err)
	e.ownerSC.stop()
	e.consumerSC.stop()
	e.setNative(true)
	e.nativeSync()
	time.Sleep(time.Second)
	progress("(c) native: %d updates at %d/s", n, e.cfg.latencyRate)
	m, start := e.startInterval(), time.Now()
	r.native = e.measureLatency(e.consumer.URL(nativeDB), "pgbench_accounts", 1, n)
	e.endInterval("(c) native latency run", m, time.Since(start))
	progress("(c) native: %s", r.native)
	e.setNative(false)
	e.must(e.ownerSC.start())
	e.must(e.consumerSC.start())
	e.must(e.ownerSC.ready(e.ctx))
	e.must(e.consumerSC.ready(e.ctx))
	e.waitFor("ReJot catch-up before (c)", 10*time.Minute, 10*time.Millisecond, func() (bool, error) {
		return e.caughtUp(head + 1 + int64(n)) // nativeSync's update, then the native run's
	}, e.rejotDiag)
	time.Sleep(time.Second)
	progress("(c) ReJot: %d updates at %d/s", n, e.cfg.latencyRate)
	m, start = e.startInterval(), time.Now()
	r.rejot = e.measureLatency(e.consumer.URL(consumerDB), target, 1+n, n)
	e.endInterval("(c) ReJot latency run", m, time.Since(start))
	progress("(c) ReJot: %s", r.rejot)
	return r
}

// nativeSync waits until the native subscription has applied an update
// made now: it has read whatever WAL came before.
func (e *env) nativeSync() {
	var lsn string
	e.must(e.src.QueryRow(e.ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&lsn))
	e.exec(e.src, "UPDATE pgbench_accounts SET abalance = abalance WHERE aid = 1")
	e.waitFor("native sync", 10*time.Minute, 10*time.Millisecond, func() (bool, error) { return e.nativePast(lsn) }, e.nativeDiag)
}

// measureLatency updates accounts base..base+n-1 in order, one
// transaction each, at the configured rate, setting filler to 'lat
// <send time>', while a reader polls the target every millisecond for
// the rows that show it.
func (e *env) measureLatency(targetURL, table string, base, n int) latencyRun {
	sent := make([]time.Time, n)
	seen := make([]time.Time, n)
	writerDone := make(chan struct{})
	var wg sync.WaitGroup
	var writing time.Duration
	var werr, rerr error
	var outOfOrder int
	wg.Add(2)
	go func() {
		defer wg.Done()
		defer close(writerDone)
		writing, werr = e.writeAtRate(base, sent)
	}()
	go func() {
		defer wg.Done()
		outOfOrder, rerr = e.watch(targetURL, table, base, seen, writerDone)
	}()
	wg.Wait()
	e.must(werr)
	e.must(rerr)
	run := latencyRun{updates: n, writing: writing, outOfOrder: outOfOrder}
	for i := range n {
		if seen[i].IsZero() {
			run.lost++
			continue
		}
		run.latencies = append(run.latencies, seen[i].Sub(sent[i]))
	}
	slices.Sort(run.latencies)
	return run
}

// writeAtRate sends one update per period on schedule (or at once when
// behind), recording when each was sent.
func (e *env) writeAtRate(base int, sent []time.Time) (time.Duration, error) {
	conn, err := pgx.Connect(e.ctx, e.owner.URL(sourceDB))
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	period := time.Second / time.Duration(e.cfg.latencyRate)
	start := time.Now()
	for i := range sent {
		if d := time.Until(start.Add(time.Duration(i) * period)); d > 0 {
			time.Sleep(d)
		}
		now := time.Now()
		sent[i] = now
		_, err := conn.Exec(e.ctx, "UPDATE pgbench_accounts SET filler = $2 WHERE aid = $1", base+i, fmt.Sprintf("lat %d", now.UnixNano()))
		if err != nil {
			return 0, err
		}
	}
	return time.Since(start), nil
}

// watch polls the target until every update is seen, or a minute after
// the writer is done. Rows appear in commit order on both systems, so an
// update seen while an earlier one is not counts as out of order.
func (e *env) watch(url, table string, base int, seen []time.Time, writerDone <-chan struct{}) (int, error) {
	conn, err := pgx.Connect(e.ctx, url)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	query := "SELECT aid FROM " + table + " WHERE aid >= $1 AND aid < $2 AND filler LIKE 'lat %'"
	var deadline time.Time
	lo, outOfOrder := 0, 0
	for lo < len(seen) {
		rows, err := conn.Query(e.ctx, query, base+lo, base+min(lo+pollWindow, len(seen)))
		if err != nil {
			return outOfOrder, err
		}
		aids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
		if err != nil {
			return outOfOrder, err
		}
		now := time.Now()
		var fresh []int
		for _, aid := range aids {
			if i := int(aid) - base; seen[i].IsZero() {
				seen[i] = now
				fresh = append(fresh, i)
			}
		}
		for lo < len(seen) && !seen[lo].IsZero() {
			lo++
		}
		for _, i := range fresh {
			if i > lo { // an earlier update is still missing
				outOfOrder++
			}
		}
		select {
		case <-writerDone:
			if deadline.IsZero() {
				deadline = now.Add(time.Minute)
			}
		default:
		}
		if !deadline.IsZero() && now.After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	return outOfOrder, nil
}

// percentile of sorted durations (nearest rank).
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func (r latencyRun) String() string {
	return fmt.Sprintf("%d updates sent in %v (%.0f/s); p50 %v, p99 %v, max %v; %d never seen, %d out of order",
		r.updates, r.writing.Round(time.Millisecond), float64(r.updates)/r.writing.Seconds(),
		ms(percentile(r.latencies, 0.50)), ms(percentile(r.latencies, 0.99)), ms(percentile(r.latencies, 1)), r.lost, r.outOfOrder)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }
