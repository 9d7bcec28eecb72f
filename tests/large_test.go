package tests

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// largeSizes are the row counts of the large-data tests: a first fill of
// fillRows, and one source transaction of txnRows changes. Full size, as
// an owner's migration would have them (1M and 2M: about 50 s and 80 s on
// two cores); with -short smaller, through the same paths — still far
// more than one destination transaction's batch and many of the log's
// read chunks (5,000 changes each). REJOT_TEST_LARGE_ROWS sets both.
func largeSizes() (fillRows, txnRows int) {
	if n, err := strconv.Atoi(os.Getenv("REJOT_TEST_LARGE_ROWS")); err == nil && n > 0 {
		return n, n
	}
	if testing.Short() {
		return 100_000, 200_000
	}
	return 1_000_000, 2_000_000
}

// checksum is a table's row count and a sum of its rows' hashes: equal
// for equal sets of rows (with overwhelming likelihood), cheap for
// millions.
func checksum(t *testing.T, conn *pgx.Conn, query string) string {
	t.Helper()
	var n, sum int64
	err := conn.QueryRow(context.Background(), "SELECT count(*), coalesce(sum(hashtext(r::text)::int8), 0) FROM ("+query+") r").Scan(&n, &sum)
	if err != nil {
		return "error: " + err.Error()
	}
	return fmt.Sprintf("%d rows, checksum %d", n, sum)
}

// convergesLarge waits until the target's checksum is the projection's.
func convergesLarge(t *testing.T, d time.Duration, owner *pgx.Conn, projection string, consumer *pgx.Conn, target string) {
	t.Helper()
	want := checksum(t, owner, projection)
	var got string
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		if got = checksum(t, consumer, "SELECT * FROM "+target); got == want {
			return
		}
	}
	t.Fatalf("the target did not converge within %v: want %s, got %s", d, want, got)
}

// TestLargeFirstFillConverges: an owner's migration creates and fills a
// large table and publishes it; a team subscribes at once. The target
// converges to exactly the projection — no deadline bounds the size of
// what is applied. Then one source transaction truncates and reloads the
// table: the subscriber copies the state the log holds rather than
// apply the reload change by change.
func TestLargeFirstFillConverges(t *testing.T) {
	rows, _ := largeSizes()
	owner, consumer := newPublisher(t), newPublisher(t)
	name := owner.name("accounts")
	const projection = "SELECT aid, bid, abalance FROM accounts"
	started := time.Now()
	owner.execAll(t,
		"CREATE TABLE accounts (aid int PRIMARY KEY, bid int NOT NULL, abalance int NOT NULL, filler char(84))",
		fmt.Sprintf("INSERT INTO accounts SELECT g, g %% 10, 0, '' FROM generate_series(1, %d) g", rows))
	if err := owner.exec(t, "CALL rejot.publish($1, 1, $2)", name, "SELECT aid, bid, abalance FROM public.accounts"); err != nil {
		t.Fatal(err)
	}
	owner.catalogMinor(t, name, 1, 0)
	if err := consumer.exec(t, "CALL rejot.subscribe($1, 1, 'public.accounts_copy')", name); err != nil {
		t.Fatal(err)
	}
	convergesLarge(t, 10*time.Minute, owner.conn, projection, consumer.conn, "public.accounts_copy")
	t.Logf("%d rows: published and subscribed, converged after %v", rows, time.Since(started).Round(time.Second))

	started = time.Now()
	owner.execAll(t, "BEGIN", "TRUNCATE accounts",
		fmt.Sprintf("INSERT INTO accounts SELECT g, g %% 7, g, '' FROM generate_series(1, %d) g", rows), "COMMIT")
	convergesLarge(t, 10*time.Minute, owner.conn, projection, consumer.conn, "public.accounts_copy")
	t.Logf("%d rows truncated and reloaded in one transaction: converged after %v", rows, time.Since(started).Round(time.Second))
	if !strings.Contains(consumer.sc.logs(), "copying the state instead of applying it") {
		t.Fatalf("the subscriber applied the reload change by change")
	}
}

// TestLargeTransactionIsAppliedWhole: one source transaction of millions
// of changes reaches the target as one destination transaction — a
// watcher on the target only ever sees none of it or all of it — read
// from the log in chunks, so the subscriber's memory does not grow with
// it.
func TestLargeTransactionIsAppliedWhole(t *testing.T) {
	_, rows := largeSizes()
	owner, consumer := newPublisher(t), newPublisher(t)
	ctx := context.Background()
	name := owner.name("big")
	const projection = "SELECT id, v FROM big"
	owner.execAll(t, "CREATE TABLE big (id int PRIMARY KEY, v int NOT NULL)", "INSERT INTO big VALUES (0, 0)")
	if err := owner.exec(t, "CALL rejot.publish($1, 1, $2)", name, "SELECT id, v FROM public.big"); err != nil {
		t.Fatal(err)
	}
	owner.catalogMinor(t, name, 1, 0)
	if err := consumer.exec(t, "CALL rejot.subscribe($1, 1, 'public.big_copy')", name); err != nil {
		t.Fatal(err)
	}
	convergesLarge(t, time.Minute, owner.conn, projection, consumer.conn, "public.big_copy")
	ownerBefore, consumerBefore := peakRSS(t, owner.sc.cmd.Process.Pid), peakRSS(t, consumer.sc.cmd.Process.Pid)

	// The watcher: the target holds the sentinel alone, or every row.
	watcher := connect(t, consumer.sc.url(consumer.db, "postgres"))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var torn []string
	looks := 0
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond): // pace: a look scans every row written so far
			}
			var n, sum int64
			if err := watcher.QueryRow(ctx, "SELECT count(*), coalesce(sum(v), 0) FROM public.big_copy").Scan(&n, &sum); err != nil {
				torn = append(torn, err.Error())
				return
			}
			looks++
			if !(n == 1 && sum == 0) && !(n == int64(rows)+1 && sum == int64(rows)) {
				torn = append(torn, fmt.Sprintf("%d rows, sum %d", n, sum))
			}
		}
	})
	started := time.Now()
	owner.execAll(t, fmt.Sprintf("INSERT INTO big SELECT g, 1 FROM generate_series(1, %d) g", rows))
	ownerHTTP := owner.sc.httpURL(t)
	waitFor(t, 10*time.Minute, func() bool {
		return metric(t, ownerHTTP, "rejot_capture_changes_total", `publication="`+name+`"`) >= float64(rows)
	})
	captured := time.Since(started)
	convergesLarge(t, 10*time.Minute, owner.conn, projection, consumer.conn, "public.big_copy")
	took := time.Since(started)
	close(stop)
	wg.Wait()
	if len(torn) > 0 {
		t.Fatalf("the watcher saw a partial transaction: %v", torn[:min(len(torn), 5)])
	}
	ownerAfter, consumerAfter := peakRSS(t, owner.sc.cmd.Process.Pid), peakRSS(t, consumer.sc.cmd.Process.Pid)
	t.Logf("one transaction of %d changes: in the log after %v, applied after %v; the watcher looked %d times; peak RSS of the owner's sidecar %d → %d MB, of the subscriber's %d → %d MB",
		rows, captured.Round(time.Second), took.Round(time.Second), looks, ownerBefore>>20, ownerAfter>>20, consumerBefore>>20, consumerAfter>>20)
	const bound = 500 << 20
	if grew := consumerAfter - consumerBefore; grew > bound {
		t.Fatalf("the subscriber's sidecar grew by %d MB applying one transaction (bound %d MB): it holds the transaction in memory", grew>>20, bound>>20)
	}
	if grew := ownerAfter - ownerBefore; grew > bound {
		t.Fatalf("the owner's sidecar grew by %d MB capturing one transaction (bound %d MB)", grew>>20, bound>>20)
	}
}
