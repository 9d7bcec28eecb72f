package bench

import (
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// catchUpAll queues the updates while every sidecar is stopped and every
// native subscription disabled, then measures native (when it is measured
// here) from ENABLE, and ReJot from starting the sidecars, each until every
// subscriber has applied the last update.
func (f *fanEnv) catchUpAll(label string) (native, rejot time.Duration) {
	f.stopReJot()
	f.setNatives(false)
	head0, err := f.head()
	f.must(err)
	lsn := f.queueUpdates(f.cfg.txns)
	want := f.checksum(f.src, "pgbench_accounts")
	f.settle()
	if f.measureNative {
		// The launcher starts workers at most once per
		// wal_retrieve_retry_interval (50 ms here, see quickLauncher):
		// the recent DISABLE must not count.
		time.Sleep(time.Until(f.nativeTouched.Add(time.Second)))
		m, start := f.startInterval(), time.Now()
		f.setNatives(true)
		f.waitFor("native catch-up", 30*time.Minute, 5*time.Millisecond, func() (bool, error) { return f.nativesPast(lsn) }, f.nativeDiag)
		native = time.Since(start)
		f.endInterval("catch-up, native, "+label, m, native)
		progress("catch-up, native, %s: %v", label, native.Round(time.Millisecond))
		f.nativeTargetsMatch(want)
		f.setNatives(false)
		f.settle()
	}
	m, start := f.startInterval(), time.Now()
	f.startReJot()
	f.waitFor("ReJot catch-up", 30*time.Minute, 5*time.Millisecond, func() (bool, error) {
		return f.allCaughtUp(head0 + int64(f.cfg.txns))
	}, f.rejotDiag)
	rejot = time.Since(start)
	f.endInterval("catch-up, ReJot, "+label, m, rejot)
	progress("catch-up, ReJot, %s: %v", label, rejot.Round(time.Millisecond))
	f.rejotTargetsMatch(want)
	return native, rejot
}

// latencyAll measures native (ReJot stopped) then ReJot (native disabled),
// each at the configured rate while all its subscribers follow, seen on
// the newest subscriber.
func (f *fanEnv) latencyAll(label string) (native, rejot latencyRun) {
	n := f.cfg.latencySecs * f.cfg.latencyRate
	head, err := f.head()
	f.must(err)
	for _, s := range f.subs {
		f.must(s.sc.ready(f.ctx))
	}
	if f.measureNative {
		f.stopReJot()
		f.setNatives(true)
		var lsn string
		f.must(f.src.QueryRow(f.ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&lsn))
		f.exec(f.src, "UPDATE pgbench_accounts SET abalance = abalance WHERE aid = 1")
		f.waitFor("native sync", 10*time.Minute, 10*time.Millisecond, func() (bool, error) { return f.nativesPast(lsn) }, f.nativeDiag)
		f.settle()
		time.Sleep(time.Second)
		last := len(f.natives)
		m, start := f.startInterval(), time.Now()
		native = f.measureLatency(f.consumer.URL(fmt.Sprintf("native%d", last)), "pgbench_accounts", f.nextRow, n)
		f.endInterval("latency, native, "+label, m, time.Since(start))
		progress("latency, native, %s: %s", label, native)
		f.nextRow += n
		f.setNatives(false)
		f.startReJot()
		head += 1 + int64(n)
		f.waitFor("ReJot catch-up before latency", 10*time.Minute, 10*time.Millisecond, func() (bool, error) {
			return f.allCaughtUp(head)
		}, f.rejotDiag)
	}
	f.settle()
	time.Sleep(time.Second)
	newest := f.subs[len(f.subs)-1]
	m, start := f.startInterval(), time.Now()
	rejot = f.measureLatency(f.consumer.URL(newest.db), target, f.nextRow, n)
	f.endInterval("latency, ReJot, "+label, m, time.Since(start))
	progress("latency, ReJot, %s: %s", label, rejot)
	f.nextRow += n
	return native, rejot
}

func (f *fanEnv) stopReJot() {
	f.ownerSC.stop()
	for _, s := range f.subs {
		s.sc.stop()
	}
}

// settle vacuums every database the intervals write and checkpoints both
// clusters, so that no interval pays for the dead rows and dirty pages of
// the one before it: native's catch-up runs right before ReJot's, and the
// autovacuum of its sixteen targets would otherwise land in ReJot's time
// (and ReJot's burst's in native's).
func (f *fanEnv) settle() {
	conns := []*pgx.Conn{f.src, f.log}
	for _, s := range f.subs {
		conns = append(conns, s.conn)
	}
	for _, c := range append(conns, f.natives...) {
		f.exec(c, "VACUUM")
	}
	f.checkpoint()
}

// startReJot starts the owner's sidecar and every subscriber's, at once.
func (f *fanEnv) startReJot() {
	f.must(f.ownerSC.start())
	for _, s := range f.subs {
		f.must(s.sc.start())
	}
}

// setNatives enables or disables every native subscription and waits
// until their apply workers run or are gone.
func (f *fanEnv) setNatives(on bool) {
	if !f.measureNative {
		return
	}
	verb := map[bool]string{true: "ENABLE", false: "DISABLE"}[on]
	for i, c := range f.natives {
		f.exec(c, fmt.Sprintf("ALTER SUBSCRIPTION %s_%d %s", nativeName, i+1, verb))
	}
	f.waitFor("native subscriptions "+verb, time.Minute, 10*time.Millisecond, func() (bool, error) {
		for i, c := range f.natives {
			var running bool
			err := c.QueryRow(f.ctx, "SELECT count(pid) > 0 FROM pg_stat_subscription WHERE subname = $1",
				fmt.Sprintf("%s_%d", nativeName, i+1)).Scan(&running)
			if err != nil || running != on {
				return false, err
			}
		}
		return true, nil
	}, f.nativeDiag)
	f.nativeTouched = time.Now()
}

// nativesPast says whether every native subscription has applied a
// source transaction that committed after lsn.
func (f *fanEnv) nativesPast(lsn string) (bool, error) {
	for i, c := range f.natives {
		var past bool
		err := c.QueryRow(f.ctx, `SELECT coalesce(bool_or(o.remote_lsn > $2::pg_lsn), false)
			FROM pg_replication_origin_status o JOIN pg_subscription s ON o.external_id = 'pg_' || s.oid
			WHERE s.subname = $1`, fmt.Sprintf("%s_%d", nativeName, i+1), lsn).Scan(&past)
		if err != nil || !past {
			return false, err
		}
	}
	return true, nil
}

// allCaughtUp says whether every ReJot subscriber has applied the log up
// to its head, and the head is at least want.
func (f *fanEnv) allCaughtUp(want int64) (bool, error) {
	head, err := f.head()
	if err != nil || head < want {
		return false, err
	}
	for _, s := range f.subs {
		status, position, err := subscriptionIn(f.ctx, s.conn)
		if err != nil || status != "streaming" || position == nil || *position != head {
			return false, err
		}
	}
	return true, nil
}

// burstAll measures a burst while everything runs: the same updates as a
// catch-up, committed as fast as the writers can while every subscriber
// follows (a batch job on the owner), timed from the first commit until
// every subscriber has applied the last; ReJot first (it runs after the
// latency runs), then native with ReJot stopped. No process starts in
// the interval, where a catch-up after a restart also times sixteen
// sidecars starting: on machines where starting a process is dear (this
// one: BENCHMARKS.md), that is a large part of it.
func (f *fanEnv) burstAll(label string) (native, rejot time.Duration) {
	// Native subscriptions just created (BENCH_FANOUT_STEPS without
	// catch-up or latency) are enabled: they must not follow ReJot's burst.
	f.setNatives(false)
	head, err := f.head()
	f.must(err)
	f.waitFor("ReJot caught up before the burst", 10*time.Minute, 10*time.Millisecond, func() (bool, error) {
		return f.allCaughtUp(head)
	}, f.rejotDiag)
	f.settle()
	time.Sleep(time.Second)
	m, start := f.startInterval(), time.Now()
	f.queueUpdates(f.cfg.txns)
	f.waitFor("ReJot burst", 30*time.Minute, 5*time.Millisecond, func() (bool, error) {
		return f.allCaughtUp(head + int64(f.cfg.txns))
	}, f.rejotDiag)
	rejot = time.Since(start)
	f.endInterval("burst, ReJot, "+label, m, rejot)
	progress("burst, ReJot, %s: %v", label, rejot.Round(time.Millisecond))
	want := f.checksum(f.src, "pgbench_accounts")
	f.rejotTargetsMatch(want)
	if !f.measureNative {
		return 0, rejot
	}
	f.stopReJot()
	f.setNatives(true)
	var lsn string
	f.must(f.src.QueryRow(f.ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&lsn))
	f.exec(f.src, "UPDATE pgbench_accounts SET abalance = abalance WHERE aid = 1")
	f.waitFor("native sync before the burst", 10*time.Minute, 10*time.Millisecond, func() (bool, error) { return f.nativesPast(lsn) }, f.nativeDiag)
	f.settle()
	time.Sleep(time.Second)
	m, start = f.startInterval(), time.Now()
	lsn = f.queueUpdates(f.cfg.txns)
	f.waitFor("native burst", 30*time.Minute, 5*time.Millisecond, func() (bool, error) { return f.nativesPast(lsn) }, f.nativeDiag)
	native = time.Since(start)
	f.endInterval("burst, native, "+label, m, native)
	progress("burst, native, %s: %v", label, native.Round(time.Millisecond))
	want = f.checksum(f.src, "pgbench_accounts")
	f.nativeTargetsMatch(want)
	// Back as the latency runs left it, for the next count.
	f.setNatives(false)
	f.startReJot()
	for _, s := range f.subs {
		f.must(s.sc.ready(f.ctx))
	}
	return native, rejot
}

// rejotTargetsMatch compares every ReJot target with the source's checksum.
func (f *fanEnv) rejotTargetsMatch(want checksum) {
	for _, s := range f.subs {
		f.sameAs(want, s.conn, target, "ReJot target in "+s.db)
	}
}

// nativeTargetsMatch compares every native target with the source's
// checksum.
func (f *fanEnv) nativeTargetsMatch(want checksum) {
	for _, c := range f.natives {
		f.sameAs(want, c, "pgbench_accounts", "native target")
	}
}
