package bench

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"
)

// Issue 18's targets.
const (
	targetFanOutRatio = 2.0 // with the most subscribers, ReJot's catch-up throughput over native's, at least
)

type fanOutResults struct {
	server  string
	counts  []int
	cfg     config
	native  []fanOutRun
	engines []engineResult // the Postgres log, then the NATS log
}

// print writes the figures as Markdown tables, ready for BENCHMARKS.md.
func (r fanOutResults) print() {
	var b strings.Builder
	c := r.cfg
	fmt.Fprintf(&b, "\nFan-out, ReJot vs Postgres logical replication: %d rows, %d queued txns per catch-up, latency %d s at %d/s; Postgres %s, %d CPUs\n\n",
		c.rows, c.txns, c.latencySecs, c.latencyRate, r.server, runtime.NumCPU())
	r.throughputTable(&b, "catch-up", func(f fanOutRun) time.Duration { return f.catchUp })
	fmt.Fprintln(&b)
	fmt.Fprintln(&b, "The same updates as a burst while every subscriber follows (no process starts in the interval):")
	fmt.Fprintln(&b)
	r.throughputTable(&b, "burst", func(f fanOutRun) time.Duration { return f.burst })
	fmt.Fprintln(&b)
	fmt.Fprint(&b, "| subscribers | native p50 / p99 |")
	for _, e := range r.engines {
		fmt.Fprintf(&b, " %s log p50 / p99 |", e.name)
	}
	fmt.Fprint(&b, "\n|--:|--:|")
	fmt.Fprintln(&b, strings.Repeat("--:|", len(r.engines)))
	for i, n := range r.counts {
		fmt.Fprintf(&b, "| %d | %s |", n, p50p99(r.native[i].latency))
		for _, e := range r.engines {
			fmt.Fprintf(&b, " %s |", p50p99(e.runs[i].latency))
		}
		fmt.Fprintln(&b)
	}
	last := len(r.counts) - 1
	for _, e := range r.engines {
		catchUp := r.native[last].catchUp.Seconds() / e.runs[last].catchUp.Seconds()
		p99 := percentile(e.runs[last].latency.latencies, 0.99)
		burst := r.native[last].burst.Seconds() / e.runs[last].burst.Seconds()
		fmt.Fprintf(&b, "\n%s log with %d subscribers: catch-up %s native's, burst %s (target ≥ %.1f×: %s, %s); p99 %s (target ≤ %s: %s)\n",
			e.name, r.counts[last], ratio(r.native[last].catchUp, e.runs[last].catchUp), ratio(r.native[last].burst, e.runs[last].burst),
			targetFanOutRatio, met(catchUp >= targetFanOutRatio), met(burst >= targetFanOutRatio),
			ms(p99), ms(targetP99), met(p99 <= targetP99 && e.runs[last].latency.lost == 0))
	}
	for i, n := range r.counts {
		fmt.Fprintf(&b, "\n%d subscribers, native: %s\n", n, r.native[i].latency)
		for _, e := range r.engines {
			fmt.Fprintf(&b, "%d subscribers, %s log: %s\n", n, e.name, e.runs[i].latency)
		}
	}
	for _, e := range r.engines {
		fmt.Fprintf(&b, "\n%s log run:\n", e.name)
		printCPU(&b, e.cpu)
	}
	fmt.Fprint(os.Stdout, b.String())
}

// throughputTable writes one row per subscriber count: native's rate,
// then each log's and its ratio to native's, for the interval of what
// (catch-up, burst) that took.
func (r fanOutResults) throughputTable(b *strings.Builder, what string, took func(fanOutRun) time.Duration) {
	fmt.Fprintf(b, "| subscribers | native %s |", what)
	for _, e := range r.engines {
		fmt.Fprintf(b, " %s log | × native |", e.name)
	}
	fmt.Fprint(b, "\n|--:|--:|")
	fmt.Fprintln(b, strings.Repeat("--:|--:|", len(r.engines)))
	for i, n := range r.counts {
		nat := took(r.native[i])
		fmt.Fprintf(b, "| %d | %s | ", n, stepRate(r.cfg.txns, nat))
		for _, e := range r.engines {
			d := took(e.runs[i])
			fmt.Fprintf(b, "%s | %s | ", stepRate(r.cfg.txns, d), ratio(nat, d))
		}
		fmt.Fprintln(b)
	}
}

// stepRate is rate, or "—" for a step BENCH_FANOUT_STEPS left out.
func stepRate(n int, d time.Duration) string {
	if d == 0 {
		return "—"
	}
	return rate(n, d)
}

// ratio is how many times faster than native (native/d), or "—" when either
// step was left out.
func ratio(native, d time.Duration) string {
	if native == 0 || d == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f×", native.Seconds()/d.Seconds())
}

func p50p99(l latencyRun) string {
	if len(l.latencies) == 0 {
		return "—"
	}
	return ms(percentile(l.latencies, 0.5)) + " / " + ms(percentile(l.latencies, 0.99))
}
