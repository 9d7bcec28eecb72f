package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// BenchmarkReplication measures, for ReJot and for Postgres's logical
// replication on the same clusters and data, in this order:
//
//	(a) the initial copy of BENCH_ROWS rows of pgbench_accounts: native
//	    CREATE SUBSCRIPTION until the table is in sync; ReJot's publish
//	    until the first fill is in the event log, then subscribe until the
//	    target holds every row and streams;
//	(b) catch-up after BENCH_TXNS single-row updates queued while both are
//	    stopped (both sidecars stopped; subscription disabled): time from
//	    start/enable until the target equals the source;
//	(c) end-to-end latency of single-row updates at a steady
//	    BENCH_LATENCY_RATE per second for BENCH_LATENCY_SECONDS.
//
// Each system is measured while the other is paused (sidecars stopped,
// subscription disabled), so they never compete for the two clusters.
func BenchmarkReplication(b *testing.B) {
	cfg := readConfig(b)
	for range b.N {
		ctx, cancel := context.WithTimeout(context.Background(), 55*time.Minute)
		e := newEnv(b, ctx, cfg)
		var r results
		e.must(e.src.QueryRow(ctx, "SHOW server_version").Scan(&r.server))
		r.copy = e.initialCopy()
		r.catchUp = e.catchUp()
		r.latency = e.latency()
		r.cpu = e.cpuLog
		r.print(cfg)
		r.report(b)
		cancel()
	}
}

type copyResult struct {
	native, fill, subscribe time.Duration
}

// initialCopy runs phase (a): native first, then ReJot.
func (e *env) initialCopy() copyResult {
	var r copyResult
	progress("(a) native: CREATE SUBSCRIPTION with copy_data = true")
	r.native = e.nativeCopy()
	progress("(a) native copy: %v", r.native.Round(time.Millisecond))
	e.setNative(false)
	e.checkpoint()
	progress("(a) ReJot: publish (first fill of the event log)")
	r.fill = e.rejotFill()
	progress("(a) ReJot publish fill: %v", r.fill.Round(time.Millisecond))
	e.checkpoint()
	progress("(a) ReJot: subscribe (copy of the compacted state)")
	r.subscribe = e.rejotSubscribe()
	progress("(a) ReJot subscribe copy: %v", r.subscribe.Round(time.Millisecond))
	want := e.checksum(e.src, "pgbench_accounts")
	e.sameAs(want, e.native, "pgbench_accounts", "native target after (a)")
	e.sameAs(want, e.rejot, target, "ReJot target after (a)")
	return r
}

func (e *env) nativeCopy() time.Duration {
	e.checkpoint()
	conninfo := fmt.Sprintf("host=127.0.0.1 port=%d dbname=%s user=postgres", e.owner.Port, sourceDB)
	m := e.startInterval()
	start := time.Now()
	e.exec(e.native, fmt.Sprintf("CREATE SUBSCRIPTION %s CONNECTION '%s' PUBLICATION %s WITH (copy_data = true)",
		nativeName, conninfo, nativeName))
	// 's' (synced) or 'r' (ready): the copy is committed and the table
	// follows the stream, like ReJot's 'streaming'.
	e.waitFor("native initial copy", 30*time.Minute, 20*time.Millisecond, func() (bool, error) {
		var synced bool
		err := e.native.QueryRow(e.ctx, `SELECT count(*) > 0 AND bool_and(srsubstate IN ('s', 'r'))
			FROM pg_subscription_rel`).Scan(&synced)
		return synced, err
	}, e.nativeDiag)
	d := time.Since(start)
	e.endInterval("(a) native copy", m, d)
	e.nativeTouched = time.Now()
	e.countIs(e.native, "pgbench_accounts", e.cfg.rows)
	return d
}

func (e *env) rejotFill() time.Duration {
	conn := connect(e.b, e.ownerSC.url())
	defer conn.Close(e.ctx)
	m := e.startInterval()
	start := time.Now()
	e.exec(conn, fmt.Sprintf("CALL rejot.publish('%s', 1, 'SELECT aid, bid, abalance, filler FROM pgbench_accounts')", publication))
	// The first fill is one group: a truncate, then one upsert per row.
	e.waitFor("ReJot publish fill", 30*time.Minute, 20*time.Millisecond, func() (bool, error) {
		head, err := e.head()
		return head >= int64(e.cfg.rows)+1, err
	}, e.rejotDiag)
	d := time.Since(start)
	e.endInterval("(a) ReJot publish fill", m, d)
	return d
}

func (e *env) rejotSubscribe() time.Duration {
	conn := connect(e.b, e.consumerSC.url())
	defer conn.Close(e.ctx)
	m := e.startInterval()
	start := time.Now()
	e.exec(conn, fmt.Sprintf("CALL rejot.subscribe('%s', 1, '%s')", publication, target))
	e.waitFor("ReJot subscribe copy", 30*time.Minute, 20*time.Millisecond, func() (bool, error) {
		status, position, err := e.subscription()
		return status == "streaming" && position != nil, err
	}, e.rejotDiag)
	d := time.Since(start)
	e.endInterval("(a) ReJot subscribe copy", m, d)
	e.countIs(e.rejot, target, e.cfg.rows)
	return d
}

// setNative enables or disables the native subscription and waits until
// its apply worker runs or is gone.
func (e *env) setNative(on bool) {
	verb := map[bool]string{true: "ENABLE", false: "DISABLE"}[on]
	e.exec(e.native, "ALTER SUBSCRIPTION "+nativeName+" "+verb)
	e.waitFor("native subscription "+verb, time.Minute, 10*time.Millisecond, func() (bool, error) {
		var running bool
		err := e.native.QueryRow(e.ctx, "SELECT count(pid) > 0 FROM pg_stat_subscription WHERE subname = $1", nativeName).Scan(&running)
		return running == on, err
	}, e.nativeDiag)
	e.nativeTouched = time.Now()
}

type catchUpResult struct {
	txns          int
	native, rejot time.Duration
	nativeStarted time.Duration // ENABLE until the apply worker ran
}

// catchUp runs phase (b).
func (e *env) catchUp() catchUpResult {
	r := catchUpResult{txns: e.cfg.txns}
	e.ownerSC.stop()
	e.consumerSC.stop()
	head0, err := e.head()
	e.must(err)
	lsn := e.queueUpdates(e.cfg.txns)
	want := e.checksum(e.src, "pgbench_accounts")
	e.checkpoint()
	e.printSlots("(b) before")
	progress("(b) native: ENABLE")
	r.native, r.nativeStarted = e.nativeCatchUp(lsn)
	progress("(b) native caught up: %v", r.native.Round(time.Millisecond))
	e.sameAs(want, e.native, "pgbench_accounts", "native target after (b)")
	e.setNative(false)
	e.checkpoint()
	progress("(b) ReJot: start both sidecars")
	r.rejot = e.rejotCatchUp(head0 + int64(e.cfg.txns))
	progress("(b) ReJot caught up: %v", r.rejot.Round(time.Millisecond))
	e.sameAs(want, e.rejot, target, "ReJot target after (b)")
	return r
}

// queueUpdates commits n single-row updates of random accounts, from four
// connections; it returns the WAL position before the last one, which
// commits after every other.
func (e *env) queueUpdates(n int) string {
	start := time.Now()
	const writers = 4
	var wg sync.WaitGroup
	errs := make([]error, writers)
	for w := range writers {
		count := (n - 1) / writers
		if w < (n-1)%writers {
			count++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[w] = e.updateRandom(count)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		e.must(err)
	}
	var lsn string
	e.must(e.src.QueryRow(e.ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&lsn))
	e.exec(e.src, "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = $1", 1+rand.IntN(e.cfg.rows))
	progress("(b) queued %d single-row updates in %v", n, time.Since(start).Round(time.Millisecond))
	return lsn
}

func (e *env) updateRandom(n int) error {
	conn, err := pgx.Connect(e.ctx, e.owner.URL(sourceDB))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	for range n {
		if _, err := conn.Exec(e.ctx, "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = $1", 1+rand.IntN(e.cfg.rows)); err != nil {
			return err
		}
	}
	return nil
}

// nativeCatchUp enables the subscription and waits until it has applied
// the transaction that committed after lsn (its replication origin is past
// it); the checksum is compared afterwards.
func (e *env) nativeCatchUp(lsn string) (total, started time.Duration) {
	// The launcher starts workers at most once per wal_retrieve_retry_interval
	// (5 s): the benchmark's own recent DISABLE must not count.
	time.Sleep(time.Until(e.nativeTouched.Add(6 * time.Second)))
	m := e.startInterval()
	start := time.Now()
	e.exec(e.native, "ALTER SUBSCRIPTION "+nativeName+" ENABLE")
	e.waitFor("native catch-up", 30*time.Minute, 5*time.Millisecond, func() (bool, error) {
		if started == 0 {
			var running bool
			e.native.QueryRow(e.ctx, "SELECT count(pid) > 0 FROM pg_stat_subscription WHERE subname = $1", nativeName).Scan(&running)
			if running {
				started = time.Since(start)
			}
		}
		return e.nativePast(lsn)
	}, e.nativeDiag)
	total = time.Since(start)
	e.endInterval("(b) native catch-up", m, total)
	e.printWalsenders("(b) native")
	e.nativeTouched = time.Now()
	return total, started
}

// nativePast says whether the native subscription has applied a source
// transaction that committed after lsn.
func (e *env) nativePast(lsn string) (bool, error) {
	var past bool
	err := e.native.QueryRow(e.ctx, `SELECT coalesce(bool_or(o.remote_lsn > $2::pg_lsn), false)
		FROM pg_replication_origin_status o JOIN pg_subscription s ON o.external_id = 'pg_' || s.oid
		WHERE s.subname = $1`, nativeName, lsn).Scan(&past)
	return past, err
}

// rejotCatchUp starts both sidecars and waits until the target has applied
// the log up to its head, and the head holds every queued change.
func (e *env) rejotCatchUp(wantHead int64) time.Duration {
	m := e.startInterval()
	start := time.Now()
	e.must(e.ownerSC.start())
	e.must(e.consumerSC.start())
	var captured time.Duration // when the log's head reached wantHead
	e.waitFor("ReJot catch-up", 30*time.Minute, 5*time.Millisecond, func() (bool, error) {
		if captured == 0 {
			if head, err := e.head(); err == nil && head >= wantHead {
				captured = time.Since(start)
			}
		}
		return e.caughtUp(wantHead)
	}, e.rejotDiag)
	total := time.Since(start)
	if captured == 0 {
		captured = total
	}
	progress("(b) ReJot: every change in the log after %v, applied after %v", captured.Round(time.Millisecond), total.Round(time.Millisecond))
	e.printLines("(b) slot", `SELECT slot_name || ': ' || total_txns || ' txns, ' || total_bytes || ' bytes decoded, ' ||
		spill_txns || ' spilled' FROM pg_stat_replication_slots ORDER BY slot_name`)
	e.endInterval("(b) ReJot catch-up", m, total)
	e.printWalsenders("(b) ReJot")
	e.must(e.ownerSC.ready(e.ctx))
	e.must(e.consumerSC.ready(e.ctx))
	if head, _ := e.head(); head != wantHead {
		progress("(b) note: the log's head is %d, expected %d", head, wantHead)
	}
	return total
}

// printSlots prints how much WAL each slot must read before the changes
// it has yet to send: from its restart point and from its confirmed end.
func (e *env) printSlots(what string) {
	e.printLines(what+": slot", `SELECT slot_name || ': ' ||
			pg_size_pretty(pg_current_wal_lsn() - restart_lsn) || ' of WAL after its restart point, ' ||
			pg_size_pretty(pg_current_wal_lsn() - confirmed_flush_lsn) || ' after its confirmed end'
		FROM pg_replication_slots ORDER BY slot_name`)
}

// printLines prints each line a query on the source's server returns,
// after prefix; a diagnostic, so a query that fails prints nothing.
func (e *env) printLines(prefix, query string) {
	rows, err := e.src.Query(e.ctx, query)
	if err != nil {
		return
	}
	defer rows.Close()
	for rows.Next() {
		var line string
		if rows.Scan(&line) == nil {
			progress("%s %s", prefix, line)
		}
	}
}

// checksum sums what identifies a table's rows, whatever their order.
type checksum struct {
	rows, balance, hash int64
}

func (e *env) checksum(conn *pgx.Conn, table string) checksum {
	var c checksum
	err := conn.QueryRow(e.ctx, `SELECT count(*), coalesce(sum(abalance), 0),
		coalesce(sum(hashtext(format('%s|%s|%s|%s', aid, bid, abalance, filler))::bigint), 0) FROM `+table).
		Scan(&c.rows, &c.balance, &c.hash)
	e.must(err)
	return c
}

func (e *env) sameAs(want checksum, conn *pgx.Conn, table, what string) {
	e.b.Helper()
	if got := e.checksum(conn, table); got != want {
		e.b.Fatalf("%s differs from the source: got %+v, want %+v", what, got, want)
	}
}

func (e *env) countIs(conn *pgx.Conn, table string, n int) {
	e.b.Helper()
	var got int
	e.must(conn.QueryRow(e.ctx, "SELECT count(*) FROM "+table).Scan(&got))
	if got != n {
		e.b.Fatalf("%s has %d rows, want %d", table, got, n)
	}
}
