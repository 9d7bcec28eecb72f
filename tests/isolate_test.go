package tests

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Failures isolated per version: a publication version the owner's
// schema breaks behind the sidecar's back fails alone, loudly, and is
// mended exactly.

const (
	isolatedRows  = 100 // rows of each broken version's table
	isolatedTotal = isolatedRows * 100
)

// isolation is an owner publishing as a role of its own, a subscriber,
// and a witness publication of the same system that must keep flowing
// whatever happens to the other versions.
type isolation struct {
	owner, consumer *publisher
	admin           *pgx.Conn // the superuser, straight to the owner's database
	role            string    // publishes, owns the tables
	as              *pgx.Conn // the role, through the owner's sidecar
	asDirect        *pgx.Conn // the role, straight to Postgres (DDL the sidecar does not see)
	witness, slot   string
}

func newIsolation(t *testing.T) *isolation {
	t.Helper()
	s := &isolation{owner: newPublisher(t), consumer: newPublisher(t)}
	s.admin = pg.Connect(t, s.owner.db)
	// The breaking DDL goes behind the sidecar's back, where it cannot
	// refuse it (a sidecar whose role may not make event triggers; see
	// TestContractSafeDDL for the refusals).
	mustExec(t, s.admin, "DROP EVENT TRIGGER rejot_guard_contract")
	s.role = "pub_" + s.owner.db
	s.slot = "rejot_" + strings.ToLower(s.owner.db)
	mustExec(t, s.admin, fmt.Sprintf("CREATE ROLE %[1]s LOGIN; GRANT CREATE ON SCHEMA public TO %[1]s", s.role))
	dropRolesAtEnd(t, s.owner.db, s.role)
	s.as = connectAs(t, s.owner.sc.url(s.owner.db, s.role))
	s.asDirect = connectAs(t, directURL(s.owner.db, s.role))
	s.witness = s.owner.name("witness")
	mustExec(t, s.as, "CREATE TABLE witness (id bigint PRIMARY KEY, v int); CREATE TABLE filler (v text)")
	s.publish(t, s.witness, "SELECT id, v FROM public.witness")
	mustExec(t, s.consumer.conn, "CREATE SCHEMA billing")
	s.subscribe(t, s.witness, "billing.witness")
	return s
}

func (s *isolation) publish(t *testing.T, name, query string) {
	t.Helper()
	if _, err := s.as.Exec(context.Background(), "CALL rejot.publish($1, 1, $2)", name, query); err != nil {
		t.Fatalf("publish %s: %v", name, err)
	}
}

func (s *isolation) subscribe(t *testing.T, name, target string) {
	t.Helper()
	s.owner.catalogMinor(t, name, 1, 0)
	if err := s.consumer.exec(t, "CALL rejot.subscribe($1, 1, $2)", name, target); err != nil {
		t.Fatalf("subscribe %s: %v", target, err)
	}
}

// version reads a version's status and problem as rejot.publications
// shows them through the owner's sidecar.
func (s *isolation) version(name string) (status, problem string) {
	s.owner.conn.QueryRow(context.Background(), "SELECT status, coalesce(problem, '') FROM rejot.publications WHERE publication = $1 AND version = 1",
		name).Scan(&status, &problem)
	return status, problem
}

// waitStatus waits until a version has a status (and, when failed, a
// problem that mentions every word of mentions).
func (s *isolation) waitStatus(t *testing.T, d time.Duration, name, want string, mentions ...string) string {
	t.Helper()
	var status, problem string
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		status, problem = s.version(name)
		ok := status == want && (want != "failed") == (problem == "")
		for _, m := range mentions {
			ok = ok && strings.Contains(problem, m)
		}
		if ok {
			return problem
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s version 1: status %q, problem %q; want %s mentioning %q", name, status, problem, want, mentions)
	return ""
}

// retained is how much WAL the system's slot keeps the owner's server
// holding: past what it confirmed, and past its restart position.
func (s *isolation) retained(t *testing.T) (confirmed, restart int64) {
	t.Helper()
	err := s.admin.QueryRow(context.Background(), `SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::int8, (pg_current_wal_lsn() - restart_lsn)::int8
		FROM pg_replication_slots WHERE slot_name = $1`, s.slot).Scan(&confirmed, &restart)
	if err != nil {
		t.Fatalf("slot %s: %v", s.slot, err)
	}
	return confirmed, restart
}

// writeWAL writes about mb megabytes of WAL to an unpublished table in
// pieces of 4 MB; after each piece it waits for the slot to confirm past
// it (a capture that stopped confirming would keep all of it), while a
// sampler watches how much WAL the slot keeps past its confirmed
// position, which must stay under 16 MB. At the end, with a checkpoint
// to give the server a point to restart decoding from, the slot's restart
// position follows too.
func (s *isolation) writeWAL(t *testing.T, mb int) {
	t.Helper()
	ctx := context.Background()
	var start string
	s.admin.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&start)
	var most atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		untilStopped(pg.URL(s.owner.db), stop, func(conn *pgx.Conn) bool {
			var kept int64
			err := conn.QueryRow(ctx, `SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::int8 FROM pg_replication_slots
				WHERE slot_name = $1`, s.slot).Scan(&kept)
			if err == nil && kept > most.Load() {
				most.Store(kept)
			}
			time.Sleep(10 * time.Millisecond)
			return err == nil
		})
	}()
	for range mb / 4 {
		mustExec(t, s.admin, "INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 3900)")
		var end string
		s.admin.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&end)
		waitFor(t, 60*time.Second, func() bool {
			var past bool
			s.admin.QueryRow(ctx, "SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
				s.slot, end).Scan(&past)
			return past
		})
	}
	close(stop)
	<-sampled
	var written int64
	s.admin.QueryRow(ctx, "SELECT (pg_current_wal_lsn() - $1::text::pg_lsn)::int8", start).Scan(&written)
	mustExec(t, s.admin, "TRUNCATE filler; CHECKPOINT")
	var restart int64
	waitFor(t, 60*time.Second, func() bool {
		_, restart = s.retained(t)
		return restart < 16<<20
	})
	t.Logf("%d MB of WAL written; the slot kept at most %d kB past its confirmed position; %d kB past its restart position after a checkpoint",
		written>>20, most.Load()>>10, restart>>10)
	if written < int64(mb)<<20*9/10 {
		t.Fatalf("wrote %d bytes of WAL, want about %d MB", written, mb)
	}
	if most.Load() >= 16<<20 {
		t.Errorf("the slot kept %d MB of WAL past its confirmed position, want under 16", most.Load()>>20)
	}
}

// load writes until stop: transfers between rows of the tables (each
// keeps its total) and inserts into the witness. A table's name may
// change under it (names); a write that fails (its table is gone for a
// while) is simply not made.
type load struct {
	names    []*atomic.Pointer[string]
	witness  atomic.Int64 // rows inserted
	stop     chan struct{}
	wg       sync.WaitGroup
	failures atomic.Int64
}

func (s *isolation) startLoad(t *testing.T, tables []string) *load {
	l := &load{stop: make(chan struct{})}
	for _, name := range tables {
		p := &atomic.Pointer[string]{}
		p.Store(&name)
		l.names = append(l.names, p)
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		rng := rand.New(rand.NewPCG(1, 2))
		untilStopped(pg.URL(s.owner.db), l.stop, func(conn *pgx.Conn) bool {
			ctx := context.Background()
			table := *l.names[rng.IntN(len(l.names))].Load()
			a, b, n := 1+rng.IntN(isolatedRows), 1+rng.IntN(isolatedRows), 1+rng.IntN(9)
			err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
				q := "UPDATE " + pgx.Identifier{table}.Sanitize() + " SET total = total + $2 WHERE id = $1"
				if _, err := tx.Exec(ctx, q, a, -n); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, q, b, n)
				return err
			})
			if err != nil {
				l.failures.Add(1)
			}
			id := l.witness.Add(1)
			if _, err := conn.Exec(ctx, "INSERT INTO witness VALUES ($1, $2)", id, n); err != nil {
				l.witness.Add(-1)
				return !conn.IsClosed()
			}
			time.Sleep(2 * time.Millisecond)
			return !conn.IsClosed()
		})
	}()
	return l
}

func (l *load) rename(i int, name string) { l.names[i].Store(&name) }

func (l *load) end() {
	close(l.stop)
	l.wg.Wait()
}

// watchTargets polls targets until stop and reports every moment one held
// neither isolatedRows rows nor a total of isolatedTotal: a source
// transaction, or a mend, seen in part.
func watchTargets(t *testing.T, url string, targets []string, stop chan struct{}) (wait func() []string) {
	var mu sync.Mutex
	var bad []string
	var reads atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		untilStopped(url, stop, func(conn *pgx.Conn) bool {
			for _, target := range targets {
				var n int64
				var sum *int64
				err := conn.QueryRow(context.Background(), "SELECT count(*), sum(total) FROM "+target).Scan(&n, &sum)
				if err != nil {
					return false
				}
				reads.Add(1)
				if n != isolatedRows || sum == nil || *sum != isolatedTotal {
					mu.Lock()
					if len(bad) < 10 {
						got := "NULL"
						if sum != nil {
							got = fmt.Sprint(*sum)
						}
						bad = append(bad, fmt.Sprintf("%s: %d rows, total %s", target, n, got))
					}
					mu.Unlock()
				}
			}
			time.Sleep(5 * time.Millisecond)
			return true
		})
	}()
	return func() []string {
		<-done
		t.Logf("%d reads of the targets' totals", reads.Load())
		return bad
	}
}

// ddlCase is a change of the owner's schema, made behind the sidecar's
// back, that breaks a version, and what mends it. %[1]s is the table,
// %[2]s the publication.
type ddlCase struct {
	name     string
	breaks   string
	renamed  string // the table's name after breaks ("" when the same)
	mentions string // what the problem names
	mend     string // through the owner's sidecar, as the role
	// projection is the version's rows from the table as mended.
	projection string
}

var ddlCases = []ddlCase{
	{name: "drop_column", breaks: "ALTER TABLE %[1]s DROP COLUMN customer", mentions: "customer",
		mend:       "ALTER TABLE %[1]s ADD COLUMN customer text",
		projection: "SELECT id, customer, total FROM %[1]s"},
	{name: "retype", breaks: "ALTER TABLE %[1]s ALTER COLUMN customer TYPE varchar(200)", mentions: "type",
		mend:       "CALL rejot.publish('%[2]s', 1, 'SELECT id, customer::text AS customer, total FROM public.%[1]s')",
		projection: "SELECT id, customer::text AS customer, total FROM %[1]s"},
	{name: "drop_table", breaks: "CREATE TABLE %[1]s_copy AS SELECT * FROM %[1]s; DROP TABLE %[1]s", mentions: "does not exist",
		mend:       "CREATE TABLE %[1]s (id int PRIMARY KEY, customer text, total int); INSERT INTO %[1]s SELECT * FROM %[1]s_copy",
		projection: "SELECT id, customer, total FROM %[1]s"},
	{name: "rename_table", breaks: "ALTER TABLE %[1]s RENAME TO %[1]s_new", renamed: "%[1]s_new", mentions: "does not exist",
		mend:       "CALL rejot.publish('%[2]s', 1, 'SELECT id, customer, total FROM public.%[1]s_new')",
		projection: "SELECT id, customer, total FROM %[1]s_new"},
	// A rename of a column breaks nothing: columns are bound by identity
	// (TestColumnsBoundByIdentity).
	{name: "revoke", breaks: "REVOKE SELECT ON %[1]s FROM CURRENT_USER", mentions: "GRANT SELECT",
		mend:       "GRANT SELECT ON %[1]s TO CURRENT_USER",
		projection: "SELECT id, customer, total FROM %[1]s"},
}

// published is every case's version 1 as first published.
const published = "SELECT id, customer, total FROM public.%[1]s"

// brokenVersion is one case's table and publication.
type brokenVersion struct {
	ddlCase
	table, pub, target string
}

func (b *brokenVersion) sql(q string) string { return fmt.Sprintf(q, b.table, b.pub) }

// setUp makes the case's table, publishes it and subscribes to it.
func (s *isolation) setUp(t *testing.T, c ddlCase, rows int) *brokenVersion {
	t.Helper()
	b := &brokenVersion{ddlCase: c, table: "o_" + c.name, pub: s.owner.name("o_" + c.name), target: "billing.o_" + c.name}
	mustExec(t, s.as, b.sql(`CREATE TABLE %[1]s (id int PRIMARY KEY, customer text, total int);
		INSERT INTO %[1]s SELECT g, 'customer ' || g, 100 FROM generate_series(1, `+fmt.Sprint(rows)+`) g`))
	s.publish(t, b.pub, b.sql(published))
	s.subscribe(t, b.pub, b.target)
	return b
}

// TestBrokenVersionsFailAlone: for each kind of DDL that breaks a version
// (a published column dropped or retyped without a re-publish,
// the table dropped or renamed away, the publishing role's privilege
// revoked), all made behind the sidecar's back at once under concurrent
// writes, each broken version shows status failed with its problem within
// seconds, and so do its subscriptions and the metric; the witness
// publication of the same system keeps flowing, and the slot keeps
// confirming while 64 MB of WAL are written. Mended — by a valid
// re-publish, or by undoing the cause — every target converges to exactly
// the projection of the source, and a reader of the targets never sees a
// source transaction or a mend in part.
func TestBrokenVersionsFailAlone(t *testing.T) {
	s := newIsolation(t)
	ctx := context.Background()
	var versions []*brokenVersion
	var tables, targets []string
	for _, c := range ddlCases {
		b := s.setUp(t, c, isolatedRows)
		versions, tables, targets = append(versions, b), append(tables, b.table), append(targets, b.target)
	}
	for _, b := range versions {
		targetConverges(t, 60*time.Second, s.admin, b.sql(published), s.consumer.conn, b.target)
	}
	l := s.startLoad(t, tables)
	stopWatch := make(chan struct{})
	watched := watchTargets(t, pg.URL(s.consumer.db), targets, stopWatch)

	for i, b := range versions {
		if _, err := s.asDirect.Exec(ctx, b.sql(b.breaks)); err != nil {
			t.Fatalf("%s: %s: %v", b.name, b.sql(b.breaks), err)
		}
		if b.renamed != "" {
			l.rename(i, b.sql(b.renamed))
		}
	}
	broke := time.Now()
	for _, b := range versions {
		problem := s.waitStatus(t, 20*time.Second, b.pub, "failed", b.mentions)
		t.Logf("%s: failed after %v: %s", b.name, time.Since(broke).Round(time.Millisecond), problem)
	}
	httpURL := s.owner.sc.httpURL(t)
	for _, b := range versions {
		if v := metric(t, httpURL, "rejot_version_failed", `publication="`+b.pub+`"`); v != 1 {
			t.Errorf("%s: rejot_version_failed = %v, want 1", b.name, v)
		}
		// The subscriber's sidecar learns it from the catalog: a moment
		// later. (The catalog is shared: other tests' subscribers have
		// targets of the same name.)
		var status, errText string
		var err error
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			err = s.consumer.conn.QueryRow(ctx, "SELECT status, coalesce(error, '') FROM rejot.subscriptions WHERE target = $1 AND publication = $2",
				b.target, b.pub).Scan(&status, &errText)
			if err == nil && status == "failed" && strings.Contains(errText, b.pub) {
				break
			}
		}
		if err != nil || status != "failed" || !strings.Contains(errText, b.pub) {
			t.Errorf("%s: subscription %s: %q, %q, %v; want failed naming the publication", b.name, b.target, status, errText, err)
		}
	}
	if status, problem := s.version(s.witness); status != "active" || problem != "" {
		t.Errorf("witness: %s %q, want active", status, problem)
	}

	// The witness keeps flowing and the slot keeps confirming.
	before := l.witness.Load()
	s.writeWAL(t, 64)
	waitFor(t, 60*time.Second, func() bool {
		var n int64
		s.consumer.conn.QueryRow(ctx, "SELECT count(*) FROM billing.witness WHERE id > $1", before).Scan(&n)
		return n > 0
	})
	for _, b := range versions {
		if status, _ := s.version(b.pub); status != "failed" {
			t.Errorf("%s: %s before the mend, want failed", b.name, status)
		}
	}

	for _, b := range versions {
		if _, err := s.as.Exec(ctx, b.sql(b.mend)); err != nil {
			t.Fatalf("%s: mend %s: %v", b.name, b.sql(b.mend), err)
		}
	}
	for _, b := range versions {
		s.waitStatus(t, 60*time.Second, b.pub, "active")
	}
	l.end()
	for _, b := range versions {
		targetConverges(t, 60*time.Second, s.admin, b.sql(b.projection), s.consumer.conn, b.target)
	}
	targetConverges(t, 60*time.Second, s.admin, "SELECT id, v FROM witness", s.consumer.conn, "billing.witness")
	close(stopWatch)
	if bad := watched(); len(bad) > 0 {
		t.Errorf("a reader saw a target in part:\n%s", strings.Join(bad, "\n"))
	}
	for _, b := range versions {
		if v := metric(t, httpURL, "rejot_version_failed", `publication="`+b.pub+`"`); v != -1 {
			t.Errorf("%s: rejot_version_failed = %v after the mend, want none", b.name, v)
		}
		var status string
		s.consumer.conn.QueryRow(ctx, "SELECT status FROM rejot.subscriptions WHERE target = $1 AND publication = $2", b.target, b.pub).Scan(&status)
		if status != "streaming" {
			t.Errorf("%s: subscription %s after the mend, want streaming", b.name, status)
		}
	}
	t.Logf("%d transfers refused while a table was away", l.failures.Load())
}

// TestMendSurvivesKill: a failed version stays failed across a kill -9
// of the owner's sidecar, and a mend interrupted by another, in the
// middle of filling the version's state again, still converges exactly
// once the sidecar is back — with a reader of the target that never sees
// it in part.
func TestMendSurvivesKill(t *testing.T) {
	s := newIsolation(t)
	ctx := context.Background()
	const rows = 100_000 // a fill that takes a while
	began := time.Now()
	b := s.setUp(t, ddlCases[0], rows)
	targetConverges(t, 120*time.Second, s.admin, b.sql(published), s.consumer.conn, b.target)
	t.Logf("subscribed at %v", time.Since(began).Round(time.Millisecond))
	if _, err := s.asDirect.Exec(ctx, b.sql(b.breaks)); err != nil {
		t.Fatal(err)
	}
	// A write for the capture to meet the change with.
	mustExec(t, s.admin, b.sql("UPDATE %[1]s SET total = total + 1 WHERE id = 1"))
	s.waitStatus(t, 20*time.Second, b.pub, "failed", b.mentions)

	restart := func() string {
		s.owner.sc.kill(t)
		killed := s.owner.sc.logs()
		s.owner.sc = startSidecar(t, s.owner.db)
		s.owner.conn = connect(t, s.owner.sc.url(s.owner.db, "postgres"))
		s.as = connect(t, s.owner.sc.url(s.owner.db, s.role))
		return killed
	}
	restart()
	// Failed still, at every look, while the capture goes on: nothing
	// mends it but a mend.
	mustExec(t, s.admin, "INSERT INTO witness VALUES (1, 1)")
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if status, problem := s.version(b.pub); status != "" && (status != "failed" || !strings.Contains(problem, b.mentions)) {
			t.Fatalf("after a restart: %s %q, want failed", status, problem)
		}
	}
	targetConverges(t, 60*time.Second, s.admin, "SELECT id, v FROM witness", s.consumer.conn, "billing.witness")
	s.waitStatus(t, 5*time.Second, b.pub, "failed", b.mentions)

	t.Logf("failed across a restart at %v", time.Since(began).Round(time.Millisecond))
	stopWatch := make(chan struct{})
	watched := watchLarge(t, pg.URL(s.consumer.db), b.target, rows, stopWatch)
	if _, err := s.as.Exec(ctx, b.sql(b.mend)); err != nil {
		t.Fatal(err)
	}
	const mending = "filling its state again from a snapshot"
	waitFor(t, 60*time.Second, func() bool { return strings.Contains(s.owner.sc.logs(), mending) })
	killed := restart()
	_, after, _ := strings.Cut(killed, mending)
	if strings.Contains(after, `"first state captured"`) || strings.Contains(after, `"publication version mended`) {
		t.Errorf("the sidecar was killed after the mend, not in its middle:\n%s", after)
	}
	t.Logf("killed in the middle of the mend at %v", time.Since(began).Round(time.Millisecond))
	s.waitStatus(t, 120*time.Second, b.pub, "active")
	t.Logf("mended at %v", time.Since(began).Round(time.Millisecond))
	targetConverges(t, 120*time.Second, s.admin, b.sql(b.projection), s.consumer.conn, b.target)
	t.Logf("converged at %v", time.Since(began).Round(time.Millisecond))
	close(stopWatch)
	if bad := watched(); len(bad) > 0 {
		t.Errorf("a reader saw the target in part:\n%s", strings.Join(bad, "\n"))
	}
}

// watchLarge polls a target of rows rows whose customers a mend turns to
// NULL, and reports every moment it held other than rows rows, or a mix
// of old and mended customers.
func watchLarge(t *testing.T, url, target string, rows int64, stop chan struct{}) (wait func() []string) {
	var bad []string
	var reads atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		untilStopped(url, stop, func(conn *pgx.Conn) bool {
			var n, named int64
			err := conn.QueryRow(context.Background(), "SELECT count(*), count(customer) FROM "+target).Scan(&n, &named)
			if errors.Is(err, context.Canceled) || err != nil {
				return false
			}
			reads.Add(1)
			if (n != rows || (named != 0 && named != rows)) && len(bad) < 10 {
				bad = append(bad, fmt.Sprintf("%d rows, %d with a customer", n, named))
			}
			time.Sleep(20 * time.Millisecond)
			return true
		})
	}()
	return func() []string {
		<-done
		t.Logf("%d reads of the target", reads.Load())
		return bad
	}
}
