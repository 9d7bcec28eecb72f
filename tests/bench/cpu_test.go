package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/rejot-dev/rejot/internal/pgtest"
)

// CPU accounting from /proc: what each side spent during a measured
// interval tells where the time goes without a profiler (on 2 cores,
// whoever burns CPU slows everyone else down).

const clockTick = 10 * time.Millisecond // USER_HZ is 100 on Linux

// cpuSample is CPU time (user + system) used so far.
type cpuSample struct {
	owner, consumer, sidecars time.Duration
	bench                     time.Duration // this process: the load, the pollers and in-process JetStream servers
}

func (a cpuSample) sub(b cpuSample) cpuSample {
	return cpuSample{a.owner - b.owner, a.consumer - b.consumer, a.sidecars - b.sidecars, a.bench - b.bench}
}

// cpuRecord is what one measured interval used.
type cpuRecord struct {
	what string
	wall time.Duration
	used cpuSample
}

// cpu samples both clusters and both sidecars now.
func (e *env) cpu() cpuSample {
	sidecars := e.ownerSC.cpu() + e.consumerSC.cpu()
	for _, s := range e.subscriberSCs {
		sidecars += s.cpu()
	}
	_, self, _ := procStat(os.Getpid(), false)
	return cpuSample{owner: clusterCPU(e.owner), consumer: clusterCPU(e.consumer), sidecars: sidecars, bench: self}
}

// startInterval begins a measured interval: it returns the CPU used so
// far (and forgets the statement statistics, when they are kept).
func (e *env) startInterval() cpuSample {
	e.resetStatements()
	return e.cpu()
}

// endInterval notes what an interval that started with before and lasted
// wall used.
func (e *env) endInterval(what string, before cpuSample, wall time.Duration) {
	r := cpuRecord{what: what, wall: wall, used: e.cpu().sub(before)}
	e.cpuLog = append(e.cpuLog, r)
	progress("%s: CPU owner %s, consumer %s, sidecars %s, benchmark %s in %s", what,
		secs(r.used.owner), secs(r.used.consumer), secs(r.used.sidecars), secs(r.used.bench), secs(r.wall))
	e.printStatements(what)
}

// clusterCPU is the CPU time of a cluster's postmaster and its children,
// including those that exited (counted in the postmaster's cutime and
// cstime once reaped); 0 when it cannot be read.
func clusterCPU(c *pgtest.Cluster) time.Duration {
	b, err := os.ReadFile(filepath.Join(c.Dir, "data", "postmaster.pid"))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil {
		return 0
	}
	// A child reaped during the scan would be missed: scan again then.
	var total time.Duration
	for range 5 {
		_, before, _ := procStat(pid, true)
		total = before
		dirs, _ := os.ReadDir("/proc")
		for _, d := range dirs {
			child, err := strconv.Atoi(d.Name())
			if err != nil {
				continue
			}
			if ppid, used, err := procStat(child, true); err == nil && ppid == pid {
				total += used
			}
		}
		if _, after, _ := procStat(pid, true); after == before {
			break
		}
	}
	return total
}

// procStat reads a process's parent and CPU time (with its reaped
// children's when children is set) from /proc/PID/stat.
func procStat(pid int, children bool) (ppid int, used time.Duration, err error) {
	f, err := statFields(pid)
	if err != nil {
		return 0, 0, err
	}
	ppid, _ = strconv.Atoi(f[1])
	last := 12 // utime, stime
	if children {
		last = 14 // and cutime, cstime
	}
	for i := 11; i <= last; i++ {
		used += ticks(f[i])
	}
	return ppid, used, nil
}

// statFields is /proc/PID/stat's fields after the command name (which may
// hold spaces; the fields after it do not): f[1] is the parent, f[11] to
// f[14] are utime, stime, cutime and cstime.
func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 15 {
		return nil, fmt.Errorf("short /proc/%d/stat", pid)
	}
	return f, nil
}

func ticks(field string) time.Duration {
	n, _ := strconv.ParseInt(field, 10, 64)
	return time.Duration(n) * clockTick
}

// printCPU writes the CPU table.
func printCPU(b *strings.Builder, log []cpuRecord) {
	fmt.Fprintln(b, "\nCPU time used during each measured interval (user + system, from /proc; 2 cores = 2 s of CPU per second):")
	fmt.Fprintln(b)
	fmt.Fprintln(b, "| interval | wall | owner's Postgres | consumer's Postgres | ReJot sidecars | benchmark process |")
	fmt.Fprintln(b, "|---|--:|--:|--:|--:|--:|")
	for _, r := range log {
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s |\n", r.what, secs(r.wall), secs(r.used.owner), secs(r.used.consumer),
			secs(r.used.sidecars), secs(r.used.bench))
	}
}

// printWalsenders prints, for each walsender of the owner's server, the
// CPU it used since it started (user and system apart): how the client
// reads a replication stream changes what sending it costs.
func (e *env) printWalsenders(what string) {
	rows, err := e.src.Query(e.ctx, "SELECT pid, application_name FROM pg_stat_replication ORDER BY application_name")
	if err != nil {
		return
	}
	defer rows.Close()
	for rows.Next() {
		var pid int
		var name string
		if rows.Scan(&pid, &name) != nil {
			return
		}
		user, system, err := procUserSystem(pid)
		if err == nil {
			progress("%s: walsender for %s used %.2f s user, %.2f s system", what, name, user.Seconds(), system.Seconds())
		}
	}
}

// procUserSystem is a process's own user and system CPU time.
func procUserSystem(pid int) (user, system time.Duration, err error) {
	f, err := statFields(pid)
	if err != nil {
		return 0, 0, err
	}
	return ticks(f[11]), ticks(f[12]), nil
}
