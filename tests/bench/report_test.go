package bench

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// results are one run's figures.
type results struct {
	server  string // Postgres version
	copy    copyResult
	catchUp catchUpResult
	latency latencyResult
	cpu     []cpuRecord
}

// Issue 5's targets.
const (
	targetCopyRatio  = 1.5 // ReJot's fill + copy time over native's, at most
	targetCatchRatio = 1.0 // ReJot's catch-up throughput over native's, at least
	targetP50        = 20 * time.Millisecond
	targetP99        = 100 * time.Millisecond
)

func (r results) copyRatio() float64 {
	return (r.copy.fill + r.copy.subscribe).Seconds() / r.copy.native.Seconds()
}

func (r results) catchUpRatio() float64 {
	return r.catchUp.native.Seconds() / r.catchUp.rejot.Seconds()
}

// print writes the figures as a Markdown table, ready for BENCHMARKS.md.
func (r results) print(cfg config) {
	var b strings.Builder
	fmt.Fprintf(&b, "\nReJot vs Postgres logical replication: %d rows, %d queued txns, latency %d s at %d/s; Postgres %s, %d CPUs\n\n",
		cfg.rows, cfg.txns, cfg.latencySecs, cfg.latencyRate, r.server, runtime.NumCPU())
	fmt.Fprintln(&b, "| figure | Postgres | ReJot | ReJot / Postgres | target | met |")
	fmt.Fprintln(&b, "|---|--:|--:|--:|---|---|")
	c := r.copy
	fmt.Fprintf(&b, "| (a) publish fill (rows into the event log) | — | %s | | | |\n", secs(c.fill))
	fmt.Fprintf(&b, "| (a) subscribe copy (log state into the target) | — | %s | | | |\n", secs(c.subscribe))
	fmt.Fprintf(&b, "| (a) initial copy of %d rows | %s | %s | %.2f× the time | ≤ %.1f× | %s |\n",
		cfg.rows, secs(c.native), secs(c.fill+c.subscribe), r.copyRatio(), targetCopyRatio, met(r.copyRatio() <= targetCopyRatio))
	u := r.catchUp
	fmt.Fprintf(&b, "| (b) catch-up of %d queued txns | %s, %.0f txns/s | %s, %.0f txns/s | %.2f× the throughput | ≥ %.1f× | %s |\n",
		u.txns, secs(u.native), float64(u.txns)/u.native.Seconds(), secs(u.rejot), float64(u.txns)/u.rejot.Seconds(),
		r.catchUpRatio(), targetCatchRatio, met(r.catchUpRatio() >= targetCatchRatio))
	n, j := r.latency.native, r.latency.rejot
	for _, p := range []struct {
		name   string
		q      float64
		target time.Duration
	}{{"p50", 0.5, targetP50}, {"p99", 0.99, targetP99}, {"max", 1, 0}} {
		nv, jv := percentile(n.latencies, p.q), percentile(j.latencies, p.q)
		want, ok := "", ""
		if p.target > 0 {
			want, ok = "≤ "+ms(p.target), met(jv <= p.target && j.lost == 0)
		}
		fmt.Fprintf(&b, "| (c) latency %s at %d/s | %s | %s | %.1f× | %s | %s |\n",
			p.name, cfg.latencyRate, ms(nv), ms(jv), float64(jv)/float64(max(nv, 1)), want, ok)
	}
	fmt.Fprintf(&b, "\n(a) native: the subscription's table reached 's'/'r'. (b) native's apply worker ran %v after ENABLE.\n",
		u.nativeStarted.Round(time.Millisecond))
	fmt.Fprintf(&b, "(c) native: %s\n(c) ReJot:  %s\n", n, j)
	printCPU(&b, r.cpu)
	fmt.Fprint(os.Stdout, b.String())
}

// report records the figures as benchmark metrics.
func (r results) report(b *testing.B) {
	b.ReportMetric(r.copy.native.Seconds(), "a_native_s")
	b.ReportMetric(r.copy.fill.Seconds(), "a_rejot_fill_s")
	b.ReportMetric(r.copy.subscribe.Seconds(), "a_rejot_copy_s")
	b.ReportMetric(r.copyRatio(), "a_time_ratio")
	b.ReportMetric(float64(r.catchUp.txns)/r.catchUp.native.Seconds(), "b_native_txns/s")
	b.ReportMetric(float64(r.catchUp.txns)/r.catchUp.rejot.Seconds(), "b_rejot_txns/s")
	b.ReportMetric(r.catchUpRatio(), "b_throughput_ratio")
	b.ReportMetric(msf(percentile(r.latency.native.latencies, 0.5)), "c_native_p50_ms")
	b.ReportMetric(msf(percentile(r.latency.native.latencies, 0.99)), "c_native_p99_ms")
	b.ReportMetric(msf(percentile(r.latency.rejot.latencies, 0.5)), "c_rejot_p50_ms")
	b.ReportMetric(msf(percentile(r.latency.rejot.latencies, 0.99)), "c_rejot_p99_ms")
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func met(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}
