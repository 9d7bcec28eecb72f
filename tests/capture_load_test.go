package tests

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/internal/pgtest"
)

// The crash tests under load run a pgbench-like bank on the owner's
// database: accounts (published with a filter rows leave and re-enter)
// and history (published whole), changed by concurrent writers going
// straight to Postgres, while the sidecar or the server is killed.

const (
	bankAccounts = 500     // accounts 1..bankAccounts exist at the start
	freshBase    = 100_000 // accounts moved or created by the load are above
	bankWriters  = 4
)

const bankSchema = `CREATE TABLE accounts (aid int PRIMARY KEY, bid int NOT NULL, abalance int NOT NULL, filler text);
CREATE TABLE history (id bigserial PRIMARY KEY, aid int NOT NULL, delta int NOT NULL, mtime timestamptz NOT NULL DEFAULT now());
INSERT INTO accounts SELECT g, 1 + g % 10, 0, 'acct ' || g FROM generate_series(1, 500) g`

// bankStream is a published version of the bank and the projection of the
// source it must converge to, in the log's text form, one row per line.
type bankStream struct {
	table, query, want string
}

var bankStreams = []bankStream{
	{"accounts", "SELECT aid, bid, abalance, upper(filler) AS tag FROM accounts WHERE abalance >= -50",
		`SELECT coalesce(string_agg(jsonb_build_array(aid::text, bid::text, abalance::text, upper(filler))::text, E'\n' ORDER BY aid), '')
		FROM accounts WHERE abalance >= -50`},
	{"history", "SELECT id, aid, delta FROM history",
		`SELECT coalesce(string_agg(jsonb_build_array(id::text, aid::text, delta::text)::text, E'\n' ORDER BY id), '') FROM history`},
}

// TestCaptureUnderLoadSurvivesKills: the sidecar is killed (kill -9) at
// random moments while four writers run bank transactions; after the last
// restart the log's state is the projection of the source, and every
// committed source transaction that changed a published table is in the
// log exactly once, in commit order.
func TestCaptureUnderLoadSurvivesKills(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	p := newPublisher(t)
	names := publishBank(t, p.conn, p.name)
	logDB := pg.Connect(t, "rejot")
	waitFirstStates(t, logDB, names)
	holdLog(t, logDB, names)
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	b := &bank{seed: seed, tolerate: isAppError}
	b.next.Store(freshBase)
	stop := b.start(t, ctx, func(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, pg.URL(p.db)) })
	r := rand.New(rand.NewPCG(seed, 0))
	sc := p.sc
	for range 4 {
		time.Sleep(randDuration(r, 200, 900))
		sc.kill(t)
		time.Sleep(randDuration(r, 0, 200))
		sc = startSidecar(t, p.db)
	}
	time.Sleep(randDuration(r, 200, 900))
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("load: %s", b)
	if b.accountTxns.Load() < 100 {
		t.Fatalf("the load committed too little to test anything: %s", b)
	}
	owner := pg.Connect(t, p.db)
	groups := map[string]int64{names[0]: 1 + b.accountTxns.Load(), names[1]: 1 + b.historyTxns.Load()}
	for i, s := range bankStreams {
		converge(t, owner, logDB, names[i], s.want, groups[names[i]], sc)
		checkStream(t, logDB, names[i])
	}
}

// TestCaptureUnderLoadSurvivesUpstreamRestart: the owner's server (which
// also holds the catalog and the log) is restarted twice and crashes once
// while writers run bank transactions, reconnecting when their connection
// fails; the log converges to the projection of the source, with no
// source transaction twice and groups in commit order. (What the writers
// committed is not known exactly here: a commit can be lost with its
// connection, so the source's final state is the reference.)
func TestCaptureUnderLoadSurvivesUpstreamRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	up, err := pgtest.Start(pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Destroy)
	if err := up.Exec(ctx, "postgres", "CREATE DATABASE shop"); err != nil {
		t.Fatal(err)
	}
	sc := startSidecarUpstream(t, up.URL("shop"))
	conn := registered(t, sc, "shop")
	names := publishBank(t, conn, func(base string) string { return base })
	conn.Close(ctx)
	logDB := connectTo(t, up, "rejot")
	waitFirstStates(t, logDB, names)
	holdLog(t, logDB, names)
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	b := &bank{seed: seed, tolerate: func(error) bool { return true }}
	b.next.Store(freshBase)
	stop := b.start(t, ctx, func(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, up.URL("shop")) })
	r := rand.New(rand.NewPCG(seed, 0))
	for _, outage := range []struct {
		name string
		do   func() error
	}{
		{"restart", up.Restart},
		{"crash", func() error { return crash(up) }},
		{"restart", up.Restart},
	} {
		time.Sleep(randDuration(r, 200, 900))
		start := time.Now()
		if err := outage.do(); err != nil {
			t.Fatalf("%s: %v", outage.name, err)
		}
		t.Logf("upstream %s: back in %v", outage.name, time.Since(start).Round(time.Millisecond))
	}
	time.Sleep(randDuration(r, 200, 900))
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("load: %s", b)
	if b.accountTxns.Load() < 100 {
		t.Fatalf("the load committed too little to test anything: %s", b)
	}
	owner, logDB := connectTo(t, up, "shop"), connectTo(t, up, "rejot") // the first log connection died with the server
	for i, s := range bankStreams {
		converge(t, owner, logDB, names[i], s.want, 0, sc)
		checkStream(t, logDB, names[i])
	}
}

// crash kills the server and starts it again, which recovers from the WAL.
// Start is retried: the backends, each in its own process group, outlive
// the killed postmaster for a moment, and until they are gone Start fails
// ("pre-existing shared memory block is still in use").
func crash(c *pgtest.Cluster) error {
	if err := c.Kill(); err != nil {
		return err
	}
	var err error
	for range 100 {
		if err = c.Start(); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

func randDuration(r *rand.Rand, minMS, maxMS int) time.Duration {
	return time.Duration(minMS+r.IntN(maxMS-minMS+1)) * time.Millisecond
}

func connectTo(t *testing.T, c *pgtest.Cluster, db string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), c.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// registered connects through the sidecar once it has installed _rejot and
// registered its system in the catalog.
func registered(t *testing.T, sc *sidecar, db string) *pgx.Conn {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, sc.url(db, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	waitFor(t, 20*time.Second, func() bool {
		var n int
		var ok bool
		// Two queries: one may not mix catalog relations and tables.
		err := conn.QueryRow(ctx, "SELECT count(*) FROM rejot.systems WHERE system = $1", db).Scan(&n)
		conn.QueryRow(ctx, "SELECT to_regclass('_rejot.commands') IS NOT NULL").Scan(&ok)
		return err == nil && n == 1 && ok
	})
	return conn
}

// publishBank creates the bank through the sidecar and publishes its
// versions; it returns their names.
func publishBank(t *testing.T, conn *pgx.Conn, name func(string) string) []string {
	t.Helper()
	ctx := context.Background()
	if _, err := conn.Exec(ctx, bankSchema); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range bankStreams {
		n := name(s.table)
		if _, err := conn.Exec(ctx, "CALL rejot.publish($1, 1, $2)", n, s.query); err != nil {
			t.Fatalf("publish %s: %v", n, err)
		}
		names = append(names, n)
	}
	return names
}

// waitFirstStates waits until every version has its first state in the
// log: from then on the capture runs for all of them.
func waitFirstStates(t *testing.T, logDB *pgx.Conn, names []string) {
	t.Helper()
	waitFor(t, 30*time.Second, func() bool {
		var n int
		logDB.QueryRow(context.Background(), `SELECT count(*) FROM rejot_log.streams s
			WHERE s.publication = ANY ($1) AND s.version = 1 AND s.head > 0`, names).Scan(&n)
		return n == len(names)
	})
}

// holdLog registers a reader at position 0 of every version, like a
// subscriber that has read nothing: the capture's pruning then keeps every
// change, which checkStream reads.
func holdLog(t *testing.T, logDB *pgx.Conn, names []string) {
	t.Helper()
	_, err := logDB.Exec(context.Background(), `INSERT INTO rejot_log.readers (stream, reader, position)
		SELECT id, 'tests/hold', 0 FROM rejot_log.streams WHERE publication = ANY ($1) AND version = 1`, names)
	if err != nil {
		t.Fatal(err)
	}
}

// converge waits until the log's state of a version is the projection of
// the source and, when groups > 0, the version has that many groups; it
// fails with the difference otherwise.
func converge(t *testing.T, owner, logDB *pgx.Conn, name, wantQuery string, groups int64, sc *sidecar) {
	t.Helper()
	ctx := context.Background()
	var want string
	if err := owner.QueryRow(ctx, wantQuery).Scan(&want); err != nil {
		t.Fatal(err)
	}
	var got string
	var n int64
	start := time.Now()
	for time.Since(start) < 30*time.Second {
		got, n = logState(t, logDB, name)
		if got == want && (groups == 0 || n >= groups) {
			t.Logf("%s: converged in %v (%d groups)", name, time.Since(start).Round(time.Millisecond), n)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got != want {
		t.Fatalf("%s: the log's state is not the projection of the source (%d groups):\n%s\nsidecar log tail:\n%s",
			name, n, lineDiff(want, got), tail(sc.logs(), 40))
	}
	if groups > 0 && n != groups {
		t.Fatalf("%s: %d groups in the log, want %d (the first state and one per committed source transaction)", name, n, groups)
	}
}

func logState(t *testing.T, logDB *pgx.Conn, name string) (string, int64) {
	t.Helper()
	var state string
	var groups int64
	err := logDB.QueryRow(context.Background(), `SELECT
			coalesce((SELECT string_agg(to_jsonb(r)::text, E'\n' ORDER BY r[1]::bigint) FROM rejot_log.state_rows($1, 1) AS r), ''),
			-- the groups the change log holds, and a first state nobody read
			-- (no changes: the log starts after it)
			(SELECT count(*) FROM rejot_log.change_groups g WHERE g.stream = s.id) +
			(SELECT CASE WHEN min(position) > 1 THEN 1 ELSE 0 END FROM rejot_log.changes c WHERE c.stream = s.id)
		FROM rejot_log.streams s WHERE s.publication = $1 AND s.version = 1`, name).Scan(&state, &groups)
	if err != nil {
		t.Logf("%s: read the log: %v", name, err)
	}
	return state, groups
}

// checkStream asserts that no source transaction was appended twice and
// that the log is whole: positions 1..head each hold one change, the
// groups cover them without gap or overlap, each change carries its
// group's commit LSN, and groups are in commit order.
func checkStream(t *testing.T, logDB *pgx.Conn, name string) {
	t.Helper()
	if err := streamProblem(context.Background(), logDB, name); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

func streamProblem(ctx context.Context, logDB *pgx.Conn, name string) error {
	// A first state nobody read yet keeps no change log (only the
	// compacted state): the changes start after it.
	var head, changes, minPos, maxPos, grouped, groups, distinct int64
	err := logDB.QueryRow(ctx, `SELECT s.head,
			(SELECT count(*) FROM rejot_log.changes c WHERE c.stream = s.id),
			(SELECT coalesce(min(position), 0) FROM rejot_log.changes c WHERE c.stream = s.id),
			(SELECT coalesce(max(position), 0) FROM rejot_log.changes c WHERE c.stream = s.id),
			(SELECT coalesce(sum(last_position - first_position + 1), 0) FROM rejot_log.change_groups g WHERE g.stream = s.id),
			(SELECT count(*) FROM rejot_log.change_groups g WHERE g.stream = s.id),
			(SELECT count(DISTINCT g.commit_lsn) FROM rejot_log.change_groups g WHERE g.stream = s.id)
		FROM rejot_log.streams s WHERE s.publication = $1 AND s.version = 1`, name).
		Scan(&head, &changes, &minPos, &maxPos, &grouped, &groups, &distinct)
	if err != nil {
		return err
	}
	unread := minPos - 1
	if changes == 0 || changes != grouped || changes+unread != head || maxPos != head || groups != distinct {
		return fmt.Errorf("head %d, %d changes at positions %d..%d, %d in %d groups of %d distinct commits",
			head, changes, minPos, maxPos, grouped, groups, distinct)
	}
	// Groups are whole (they end at a mark), their changes carry one
	// commit LSN, and they are in commit order.
	var misplaced, mislabelled int64
	err = logDB.QueryRow(ctx, `WITH g AS (SELECT g.*, lag(last_position) OVER w AS prev_last, lag(commit_lsn) OVER w AS prev_lsn
			FROM rejot_log.change_groups g WHERE g.stream = (SELECT id FROM rejot_log.streams WHERE publication = $1 AND version = 1)
			WINDOW w AS (ORDER BY first_position))
		SELECT count(*) FILTER (WHERE NOT whole OR first_position <> coalesce(prev_last, first_position - 1) + 1 OR commit_lsn <= prev_lsn),
			count(*) FILTER (WHERE commit_lsn <> last_commit_lsn)
		FROM g`, name).Scan(&misplaced, &mislabelled)
	if err != nil {
		return err
	}
	if misplaced != 0 || mislabelled != 0 {
		return fmt.Errorf("%d groups out of place or out of commit order, %d with changes of another commit", misplaced, mislabelled)
	}
	return nil
}

// lineDiff lists the lines only in want and only in got (a few of each).
func lineDiff(want, got string) string {
	count := func(s string) map[string]int {
		m := map[string]int{}
		for _, l := range strings.Split(s, "\n") {
			if l != "" {
				m[l]++
			}
		}
		return m
	}
	w, g := count(want), count(got)
	only := func(a, b map[string]int) []string {
		var out []string
		for l, n := range a {
			if n > b[l] {
				out = append(out, l)
			}
		}
		sort.Strings(out)
		return out
	}
	missing, extra := only(w, g), only(g, w)
	return fmt.Sprintf("%d rows in the source, %d in the log; missing from the log (%d): %s; not in the source (%d): %s",
		len(w), len(g), len(missing), firstFew(missing), len(extra), firstFew(extra))
}

func firstFew(lines []string) string {
	if len(lines) > 10 {
		return strings.Join(lines[:10], " ") + " …"
	}
	return strings.Join(lines, " ")
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// bank runs the load and counts what it committed.
type bank struct {
	seed     uint64
	tolerate func(error) bool // errors a writer carries on after
	next     atomic.Int64     // the last fresh account number handed out
	// Committed transactions that changed accounts, that added history.
	accountTxns, historyTxns atomic.Int64
	commits, rollbacks       atomic.Int64
	failed                   atomic.Int64
}

func (b *bank) String() string {
	return fmt.Sprintf("%d commits (%d changed accounts, %d added history), %d rolled back, %d failed",
		b.commits.Load(), b.accountTxns.Load(), b.historyTxns.Load(), b.rollbacks.Load(), b.failed.Load())
}

// isAppError: errors an application meets and retries, the transaction
// rolled back (deadlock, a key taken by a concurrent transaction).
func isAppError(err error) bool {
	code := pgErr(err).Code
	return code == "40P01" || code == "23505"
}

// start runs the writers until stop is called (at the latest when the
// test ends); stop waits for them to finish their transaction and returns
// the first error not tolerated.
func (b *bank) start(t *testing.T, ctx context.Context, connect func(context.Context) (*pgx.Conn, error)) (stop func() error) {
	var stopping atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, bankWriters)
	for w := range bankWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := b.write(ctx, w+1, connect, &stopping); err != nil {
				errs <- fmt.Errorf("writer %d: %w", w+1, err)
			}
		}()
	}
	stop = sync.OnceValue(func() error {
		stopping.Store(true)
		wg.Wait()
		close(errs)
		return <-errs
	})
	t.Cleanup(func() { stop() })
	return stop
}

// write is one writer: transactions back to back, reconnecting when the
// connection is lost. Stopping is checked between transactions only, so
// that what was committed is known.
func (b *bank) write(ctx context.Context, id int, connect func(context.Context) (*pgx.Conn, error), stopping *atomic.Bool) error {
	r := rand.New(rand.NewPCG(b.seed, uint64(id)))
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for !stopping.Load() {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if conn == nil {
			c, err := b.connect(ctx, connect)
			if err != nil {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			conn = c
		}
		err := b.transaction(ctx, conn, r)
		if err == nil {
			continue
		}
		b.failed.Add(1)
		if !b.tolerate(err) {
			return err
		}
		if conn.IsClosed() {
			conn = nil
		}
	}
	return nil
}

func (b *bank) connect(ctx context.Context, connect func(context.Context) (*pgx.Conn, error)) (*pgx.Conn, error) {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := connect(cctx)
	if err != nil {
		return nil, err
	}
	// Deadlocks are part of the load: find them fast.
	if _, err := conn.Exec(cctx, "SET deadlock_timeout = '50ms'"); err != nil {
		conn.Close(context.Background())
		return nil, err
	}
	return conn, nil
}

// stmt is one statement of a bank transaction, and the published table it
// may change.
type stmt struct {
	table string
	sql   string
	args  []any
}

// transaction runs one planned transaction and counts it if committed.
func (b *bank) transaction(ctx context.Context, conn *pgx.Conn, r *rand.Rand) error {
	stmts, commit := b.plan(r)
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) // after a commit, a no-op
	changed := map[string]bool{}
	for _, s := range stmts {
		tag, err := tx.Exec(ctx, s.sql, s.args...)
		if err != nil {
			return err
		}
		if s.table != "" && tag.RowsAffected() > 0 {
			changed[s.table] = true
		}
	}
	if !commit {
		b.rollbacks.Add(1)
		return tx.Rollback(ctx)
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	b.commits.Add(1)
	if changed["accounts"] {
		b.accountTxns.Add(1)
	}
	if changed["history"] {
		b.historyTxns.Add(1)
	}
	return nil
}

// plan draws a transaction: mostly pgbench's TPC-B (an account's balance,
// a history row), some rolled back, transfers between two accounts, key
// changes, deletes, re-inserts and branch-wide updates.
func (b *bank) plan(r *rand.Rand) ([]stmt, bool) {
	aid, other, delta := b.pick(r), b.pick(r), int64(r.IntN(51)-25)
	tpcb := []stmt{
		{"accounts", "UPDATE accounts SET abalance = abalance + $2 WHERE aid = $1", []any{aid, delta}},
		{"", "SELECT abalance FROM accounts WHERE aid = $1", []any{aid}},
		{"history", "INSERT INTO history (aid, delta) VALUES ($1, $2)", []any{aid, delta}},
	}
	switch k := r.IntN(100); {
	case k < 50:
		return tpcb, true
	case k < 60:
		return tpcb, false
	case k < 70:
		return append(tpcb,
			stmt{"accounts", "UPDATE accounts SET abalance = abalance - $2 WHERE aid = $1", []any{other, delta}},
			stmt{"history", "INSERT INTO history (aid, delta) VALUES ($1, $2)", []any{other, -delta}}), true
	case k < 80:
		to := 1 + r.Int64N(bankAccounts) // back among the first: may be taken (23505)
		if aid <= bankAccounts {
			to = b.next.Add(1)
		}
		return []stmt{{"accounts", "UPDATE accounts SET aid = $2 WHERE aid = $1", []any{aid, to}}}, true
	case k < 85:
		return []stmt{{"accounts", "DELETE FROM accounts WHERE aid = $1", []any{aid}}}, true
	case k < 92:
		return []stmt{{"accounts", "INSERT INTO accounts VALUES ($1, $2, 0, 'reborn') ON CONFLICT (aid) DO NOTHING",
			[]any{1 + r.Int64N(bankAccounts), 1 + r.Int64N(10)}}}, true
	default:
		return []stmt{{"accounts", "UPDATE accounts SET abalance = abalance + $2 WHERE bid = $1",
			[]any{1 + r.Int64N(10), int64(r.IntN(15) - 7)}}}, true
	}
}

// pick draws an account number, from the first accounts or those the load
// moved or created.
func (b *bank) pick(r *rand.Rand) int64 {
	if n := b.next.Load(); n > freshBase && r.IntN(4) == 0 {
		return freshBase + 1 + r.Int64N(n-freshBase)
	}
	return 1 + r.Int64N(bankAccounts)
}
