package capture_test

import (
	"context"
	"errors"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/internal/pgtest"
	"github.com/rejot-dev/rejot/replicator/capture"
	"github.com/rejot-dev/rejot/replicator/eventlog"
	"github.com/rejot-dev/rejot/replicator/eventlog/pglog"
	"github.com/rejot-dev/rejot/sql"
	"github.com/rs/zerolog"
)

// source builds a capture source from a published query over a table in
// public, as the sidecar does from its record of publications.
func source(t testing.TB, stream eventlog.Version, query string, key ...string) capture.Source {
	t.Helper()
	a, err := sql.AnalyzeProjection(query)
	if err != nil {
		t.Fatal(err)
	}
	src, serr := capture.NewSource(stream, query, key, "public", a.Table)
	if serr != nil {
		t.Fatal(serr)
	}
	return src
}

// TestCaptureToLog: changes in the owner's table reach the log's compacted
// state as the projection of the table, with inserts, updates, rows
// leaving the filter, key changes, deletes and truncates; and the slot is
// confirmed past them.
func TestCaptureToLog(t *testing.T) {
	l, _, srcDB, owner, ctx := ownerAndLog(t)
	exec := func(q string) {
		t.Helper()
		if _, err := owner.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	exec(`CREATE TABLE orders (id bigint PRIMARY KEY, status text NOT NULL, total numeric(12,2), note text)`)
	stream := eventlog.Version{Publication: "cap_orders", Number: 1}
	query := "SELECT id, total, upper(note) AS loud FROM orders WHERE status <> 'draft'"
	system := "cap_" + srcDB
	pub := &capture.WALReader{URL: pg.URL(srcDB), System: system, Log: l,
		Sources: []capture.Source{source(t, stream, query, "id")}, Logger: zerolog.Nop(), StatusInterval: 100 * time.Millisecond}
	defer owner.Exec(context.Background(), "SELECT pg_drop_replication_slot($1)", capture.SlotName(system))
	// Changes before the slot is active are not captured.
	runPublisher(t, ctx, pub, owner)
	for _, q := range []string{
		"INSERT INTO orders VALUES (1, 'placed', 10.50, 'a'), (2, 'draft', 1, 'b'), (3, 'placed', NULL, NULL)",
		"UPDATE orders SET total = 11.00 WHERE id = 1",
		"UPDATE orders SET status = 'placed' WHERE id = 2",
		"UPDATE orders SET status = 'draft' WHERE id = 3",
		"UPDATE orders SET id = 10 WHERE id = 1",
		"BEGIN; INSERT INTO orders VALUES (4, 'placed', 4, 'x'); DELETE FROM orders WHERE id = 4; COMMIT",
		"INSERT INTO orders VALUES (5, 'placed', 5, repeat('long ', 5000))",
		"UPDATE orders SET total = 6 WHERE id = 5",
	} {
		exec(q)
	}
	want := projection(t, owner, query)
	waitUntil(t, func() bool { return sortedState(t, l, stream) == want })
	// A truncate empties the state.
	exec("TRUNCATE orders")
	exec("INSERT INTO orders VALUES (7, 'placed', 7, 'after')")
	want = projection(t, owner, query)
	waitUntil(t, func() bool { return sortedState(t, l, stream) == want })
	// The slot is confirmed up to what was captured.
	waitUntil(t, func() bool {
		var lag int64
		owner.QueryRow(ctx, `SELECT pg_current_wal_lsn() - confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1`,
			capture.SlotName(system)).Scan(&lag)
		return lag < 1<<20
	})
}

// fills counts the first states in a stream's change log (each starts
// with a truncate).
func fills(t *testing.T, l *pglog.Log, s eventlog.Version) int {
	t.Helper()
	recs, err := l.Changes(context.Background(), s, 0, 100000)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range recs {
		if r.Op == eventlog.OpTruncate {
			n++
		}
	}
	return n
}

// projection renders what the published query gives now, as state does
// (rows sorted: the two orders differ).
func projection(t *testing.T, owner *pgx.Conn, query string) string {
	t.Helper()
	a, perr := sql.AnalyzeProjection(query)
	if perr != nil {
		t.Fatal(perr)
	}
	var exprs []string
	for _, c := range a.Columns {
		exprs = append(exprs, "("+c.Expr+")::text")
	}
	q := "SELECT ARRAY[" + strings.Join(exprs, ", ") + "] FROM " + a.Table
	if a.Filter != "" {
		q += " WHERE " + a.Filter
	}
	rows, err := owner.Query(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var vals []*string
		if err := rows.Scan(&vals); err != nil {
			t.Fatal(err)
		}
		out = append(out, renderRow(vals))
	}
	sort.Strings(out)
	return strings.Join(out, " | ")
}

func sortedState(t *testing.T, l *pglog.Log, s eventlog.Version) string {
	got, _ := state(t, l, s)
	rows := strings.Split(got, " | ")
	sort.Strings(rows)
	return strings.Join(rows, " | ")
}

func waitUntil(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 20s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestFirstFill: a version published over existing rows starts with them,
// consistently with the changes that follow, as one group appended in
// chunks; a restart does not fill again.
func TestFirstFill(t *testing.T) {
	l, logDB, srcDB, owner, ctx := ownerAndLog(t)
	if _, err := owner.Exec(ctx, `CREATE TABLE items (id int PRIMARY KEY, v text);
		INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 12000) g`); err != nil {
		t.Fatal(err)
	}
	stream := eventlog.Version{Publication: "fill_items", Number: 1}
	query := "SELECT id, v FROM items WHERE id % 2 = 0"
	system := "fill_" + srcDB
	// A subscriber reads the stream from the start: the log keeps the
	// first state's changes for it.
	if err := l.SetReader(ctx, stream, "test/reader", 0); err != nil {
		t.Fatal(err)
	}
	defer owner.Exec(context.Background(), "SELECT pg_drop_replication_slot($1)", capture.SlotName(system))
	run := func() (stop func()) {
		pub := &capture.WALReader{URL: pg.URL(srcDB), System: system, Log: l,
			Sources: []capture.Source{source(t, stream, query, "id")}, Logger: zerolog.Nop(), StatusInterval: 100 * time.Millisecond}
		return startPublisher(t, ctx, pub, owner)
	}
	stop := run()
	waitUntil(t, func() bool { return sortedState(t, l, stream) == projection(t, owner, query) })
	if _, err := owner.Exec(ctx, "UPDATE items SET v = 'changed' WHERE id <= 10; DELETE FROM items WHERE id > 11000"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, func() bool { return sortedState(t, l, stream) == projection(t, owner, query) })
	stop()
	if _, err := owner.Exec(ctx, "INSERT INTO items VALUES (100000, 'while down')"); err != nil {
		t.Fatal(err)
	}
	stop = run()
	defer stop()
	waitUntil(t, func() bool { return sortedState(t, l, stream) == projection(t, owner, query) })
	if truncates := fills(t, l, stream); truncates != 1 {
		t.Fatalf("the first state was taken %d times", truncates)
	}
	var first, last int64
	pg.Connect(t, logDB).QueryRow(ctx, `SELECT first_position, last_position FROM rejot_log.change_groups g JOIN rejot_log.streams s ON s.id = g.stream
		WHERE s.publication = $1 ORDER BY first_position LIMIT 1`, stream.Publication).Scan(&first, &last)
	if first != 1 || last != 6001 { // a truncate, then 6000 rows over two chunks
		t.Fatalf("the first state's group spans %d..%d", first, last)
	}
}

// TestIdleSourceKeepsNoWAL: while another database writes WAL and the
// published table is idle, the slot's confirmed position keeps up.
func TestIdleSourceKeepsNoWAL(t *testing.T) {
	l, _ := open(t)
	srcDB, busyDB := pg.CreateDB(t), pg.CreateDB(t)
	owner, busy := pg.Connect(t, srcDB), pg.Connect(t, busyDB)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := owner.Exec(ctx, "CREATE TABLE quiet (id int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	if _, err := busy.Exec(ctx, "CREATE TABLE noise (id serial PRIMARY KEY, pad text)"); err != nil {
		t.Fatal(err)
	}
	system := "idle_" + srcDB
	slot := capture.SlotName(system)
	defer owner.Exec(context.Background(), "SELECT pg_drop_replication_slot($1)", slot)
	pub := &capture.WALReader{URL: pg.URL(srcDB), System: system, Log: l, Logger: zerolog.Nop(), StatusInterval: 100 * time.Millisecond,
		Sources: []capture.Source{source(t, eventlog.Version{Publication: "idle", Number: 1}, "SELECT id FROM quiet", "id")}}
	runPublisher(t, ctx, pub, owner)
	lag := func() int64 {
		var n int64
		owner.QueryRow(ctx, "SELECT pg_current_wal_lsn() - confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&n)
		return n
	}
	// About 40 MB of WAL elsewhere.
	for range 20 {
		if _, err := busy.Exec(ctx, "INSERT INTO noise (pad) SELECT repeat('x', 1000) FROM generate_series(1, 2000)"); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, func() bool { return lag() < 1<<20 })
}

// TestTypeMatrixRoundTrips: every built-in type family, captured from the
// WAL, is in the log exactly as Postgres prints it from the table.
func TestTypeMatrixRoundTrips(t *testing.T) {
	l, _, srcDB, owner, ctx := ownerAndLog(t)
	if _, err := owner.Exec(ctx, `CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
		CREATE DOMAIN posint AS int CHECK (VALUE > 0);
		CREATE TABLE types (id int PRIMARY KEY,
			b boolean, i2 smallint, i4 integer, i8 bigint, n numeric, n2 numeric(12,2), f4 real, f8 double precision,
			t text, vc varchar(10), c char(3), by bytea, d date, tm time, ttz timetz, ts timestamp, tstz timestamptz,
			iv interval, u uuid, j json, jb jsonb, arr int[], tarr text[], inet_ inet, cidr_ cidr, mac macaddr,
			bits bit varying(8), rng int4range, pt point, m mood, dom posint, x xml, money_ money, oid_ oid)`); err != nil {
		t.Fatal(err)
	}
	cols := "id, b, i2, i4, i8, n, n2, f4, f8, t, vc, c, by, d, tm, ttz, ts, tstz, iv, u, j, jb, arr, tarr, inet_, cidr_, mac, bits, rng, pt, m, dom, x, money_, oid_"
	stream := eventlog.Version{Publication: "types", Number: 1}
	query := "SELECT " + cols + " FROM types"
	system := "types_" + srcDB
	defer owner.Exec(context.Background(), "SELECT pg_drop_replication_slot($1)", capture.SlotName(system))
	pub := &capture.WALReader{URL: pg.URL(srcDB), System: system, Log: l, Logger: zerolog.Nop(), StatusInterval: 100 * time.Millisecond,
		Sources: []capture.Source{source(t, stream, query, "id")}}
	runPublisher(t, ctx, pub, owner)
	rows := []string{
		`(1, true, -32768, 2147483647, -9223372036854775808, 'NaN', 12.30, 'Infinity', -1.0000000000000002,
		  '', 'ünïcödé', 'ab', '\x00ff'::bytea, 'infinity', '24:00:00', '23:59:59.999999+14', '-infinity', '2024-02-29 12:00:00.000001+00',
		  '-1 year 2 mons 3 days 04:05:06.789', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"b":1,  "a":[1.50]}', '{"b":1, "a":[1.50]}',
		  '{1,NULL,3}', '{"x,y","",NULL,"\""}', '::1', '10.0.0.0/8', '08:00:2b:01:02:03', B'1011', '[1,5)', '(1.5,-2)', 'happy', 7,
		  '<a>x</a>', '$1,234.56', 4294967295)`,
		`(2, NULL, NULL, NULL, NULL, -0.000, NULL, '-Infinity', 'NaN', NULL, NULL, NULL, ''::bytea, NULL, NULL, NULL, NULL, NULL,
		  NULL, NULL, 'null', 'null', '{}', '{}', NULL, NULL, NULL, B'', 'empty', NULL, NULL, NULL, NULL, NULL, NULL)`,
	}
	for _, r := range rows {
		if _, err := owner.Exec(ctx, "INSERT INTO types ("+cols+") VALUES "+r); err != nil {
			t.Fatal(err)
		}
	}
	want := projection(t, owner, query)
	waitUntil(t, func() bool { return sortedState(t, l, stream) == want })
}

// TestCaptureResumesAfterUpstreamRestart: the owner's server restarts
// during writes; capture reconnects with backoff and loses nothing.
func TestCaptureResumesAfterUpstreamRestart(t *testing.T) {
	l, _ := open(t)
	src, ctx, exec := recordedEvents(t, "restart_events")
	capture := &capture.Runner{URL: src.URL("postgres"), System: "restart", Log: l, Logger: zerolog.Nop(), Check: 200 * time.Millisecond}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { capture.Run(runCtx); close(done) }()
	defer func() { stop(); <-done }()
	stream := eventlog.Version{Publication: "restart_events", Number: 1}
	exec("INSERT INTO events SELECT g, 'before' FROM generate_series(1, 50) g")
	conn := func() *pgx.Conn {
		c, err := pgx.Connect(ctx, src.URL("postgres"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(context.Background()) })
		return c
	}
	before := conn()
	waitUntil(t, func() bool { return sortedState(t, l, stream) == projection(t, before, "SELECT id, v FROM events") })
	if err := src.Restart(); err != nil {
		t.Fatal(err)
	}
	exec("UPDATE events SET v = 'after' WHERE id <= 25; DELETE FROM events WHERE id > 40")
	owner := conn()
	waitUntil(t, func() bool { return sortedState(t, l, stream) == projection(t, owner, "SELECT id, v FROM events") })
}

// startPublisher runs pub until stop is called, once its slot is active:
// changes from then on are captured. stop reports any error the publisher
// ended with other than being stopped.
func startPublisher(t testing.TB, ctx context.Context, pub *capture.WALReader, owner *pgx.Conn) (stop func()) {
	t.Helper()
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- pub.Run(runCtx) }()
	stop = func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("publisher: %v", err)
		}
	}
	waitUntil(t, func() bool {
		var active bool
		owner.QueryRow(ctx, "SELECT active FROM pg_replication_slots WHERE slot_name = $1", capture.SlotName(pub.System)).Scan(&active)
		return active
	})
	return stop
}

// runPublisher runs pub, once its slot is active, until the test ends.
func runPublisher(t testing.TB, ctx context.Context, pub *capture.WALReader, owner *pgx.Conn) {
	t.Helper()
	t.Cleanup(startPublisher(t, ctx, pub, owner))
}

// TestNewDefinitionFillsAgain: when a version's rows are defined anew (a
// minor adds a column, here in the middle of the query), its state is
// filled again — old rows get the new column — in the recorded column
// order, and changes go on from there.
func TestNewDefinitionFillsAgain(t *testing.T) {
	l, _, srcDB, owner, ctx := ownerAndLog(t)
	if _, err := owner.Exec(ctx, `CREATE TABLE t (id int PRIMARY KEY, v text, n int);
		INSERT INTO t SELECT g, 'v' || g, g * 10 FROM generate_series(1, 20) g`); err != nil {
		t.Fatal(err)
	}
	stream := eventlog.Version{Publication: "redefined", Number: 1}
	system := "redef_" + srcDB
	if err := l.SetReader(ctx, stream, "test/reader", 0); err != nil {
		t.Fatal(err)
	}
	defer owner.Exec(context.Background(), "SELECT pg_drop_replication_slot($1)", capture.SlotName(system))
	run := func(src capture.Source) (stop func()) {
		pub := &capture.WALReader{URL: pg.URL(srcDB), System: system, Log: l,
			Sources: []capture.Source{src}, Logger: zerolog.Nop(), StatusInterval: 100 * time.Millisecond}
		return startPublisher(t, ctx, pub, owner)
	}
	stop := run(source(t, stream, "SELECT id, v FROM t", "id"))
	waitUntil(t, func() bool { return sortedState(t, l, stream) == projection(t, owner, "SELECT id, v FROM t") })
	stop()
	if _, err := owner.Exec(ctx, "UPDATE t SET v = 'while down' WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	src := source(t, stream, "SELECT id, n, v FROM t", "id")
	if err := src.Order([]string{"id", "v", "n"}); err != nil {
		t.Fatal(err)
	}
	stop = run(src)
	defer stop()
	want := func() string { return projection(t, owner, "SELECT id, v, n FROM t") }
	waitUntil(t, func() bool { return sortedState(t, l, stream) == want() })
	if _, err := owner.Exec(ctx, "UPDATE t SET n = -1 WHERE id = 2"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, func() bool { return sortedState(t, l, stream) == want() })
	if truncates := fills(t, l, stream); truncates != 2 {
		t.Fatalf("filled %d times, want 2", truncates)
	}
}

// TestUnreadFirstFillKeepsOnlyState: a first state nobody reads yet is
// kept as compacted state only — positions advance, the change log stays
// empty — and changes after it are logged as usual.
func TestUnreadFirstFillKeepsOnlyState(t *testing.T) {
	l, logDB, srcDB, owner, ctx := ownerAndLog(t)
	if _, err := owner.Exec(ctx, `CREATE TABLE t (id int PRIMARY KEY, v text);
		INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 7000) g`); err != nil {
		t.Fatal(err)
	}
	stream := eventlog.Version{Publication: "unread", Number: 1}
	system := "unread_" + srcDB
	defer owner.Exec(context.Background(), "SELECT pg_drop_replication_slot($1)", capture.SlotName(system))
	pub := &capture.WALReader{URL: pg.URL(srcDB), System: system, Log: l,
		Sources: []capture.Source{source(t, stream, "SELECT id, v FROM t", "id")}, Logger: zerolog.Nop(), StatusInterval: 100 * time.Millisecond}
	runPublisher(t, ctx, pub, owner)
	waitUntil(t, func() bool { return sortedState(t, l, stream) == projection(t, owner, "SELECT id, v FROM t") })
	if head := headOf(t, l, stream); head != 7001 {
		t.Fatalf("head %d", head)
	}
	if recs, _ := l.Changes(ctx, stream, 0, 10); len(recs) != 0 {
		t.Fatalf("%d changes logged for an unread first state", len(recs))
	}
	if _, err := owner.Exec(ctx, "UPDATE t SET v = 'after' WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, func() bool { return headOf(t, l, stream) == 7002 })
	if recs, _ := l.Changes(ctx, stream, 0, 10); len(recs) != 1 || recs[0].Position != 7002 {
		t.Fatalf("changes after the first state: %v", recs)
	}
	// Reading the state folds in what is not compacted yet, and writes
	// nothing; the copied state is keyed by the first compaction with
	// changes to fold in (pruning runs one).
	logConn := pg.Connect(t, logDB)
	var indexed bool
	logConn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_index i JOIN rejot_log.streams s ON i.indrelid = format('rejot_log.state_%s', s.id)::regclass
		WHERE s.publication = 'unread' AND i.indisprimary)`).Scan(&indexed)
	if indexed {
		t.Fatal("the copied first state was indexed before any compaction needed it")
	}
	if got, want := sortedState(t, l, stream), projection(t, owner, "SELECT id, v FROM t"); got != want {
		t.Fatalf("state after the update:\n%s\nwant\n%s", got, want)
	}
	if _, err := l.Prune(ctx, stream); err != nil {
		t.Fatal(err)
	}
	if got, want := sortedState(t, l, stream), projection(t, owner, "SELECT id, v FROM t"); got != want {
		t.Fatalf("state after compaction:\n%s\nwant\n%s", got, want)
	}
	logConn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_index i JOIN rejot_log.streams s ON i.indrelid = format('rejot_log.state_%s', s.id)::regclass
		WHERE s.publication = 'unread' AND i.indisprimary)`).Scan(&indexed)
	if !indexed {
		t.Fatal("the state has no primary key after a compaction")
	}
}

// TestFirstFillInTwoParts: a large table's first state is read in two
// block ranges at once, in one snapshot; with a filter that has an OR, the
// state is exactly the projection — no row twice, none missing.
func TestFirstFillInTwoParts(t *testing.T) {
	l, _, srcDB, owner, ctx := ownerAndLog(t)
	if _, err := owner.Exec(ctx, `CREATE TABLE big (id int PRIMARY KEY, v text);
		INSERT INTO big SELECT g, CASE WHEN g % 7 = 0 THEN 'x' ELSE repeat('p', g % 50) END FROM generate_series(1, 20000) g`); err != nil {
		t.Fatal(err)
	}
	var pages int64
	owner.QueryRow(ctx, "SELECT pg_relation_size('big') / 8192").Scan(&pages)
	stream := eventlog.Version{Publication: "big", Number: 1}
	system := "big_" + srcDB
	defer owner.Exec(context.Background(), "SELECT pg_drop_replication_slot($1)", capture.SlotName(system))
	query := "SELECT id, v FROM big WHERE id % 3 <> 0 OR v = 'x'"
	pub := &capture.WALReader{URL: pg.URL(srcDB), System: system, Log: l, FillSplitPages: pages / 4,
		Sources: []capture.Source{source(t, stream, query, "id")}, Logger: zerolog.Nop(), StatusInterval: 100 * time.Millisecond}
	runPublisher(t, ctx, pub, owner)
	want := projection(t, owner, query)
	waitUntil(t, func() bool { return headOf(t, l, stream) > 0 })
	if got := sortedState(t, l, stream); got != want {
		t.Fatalf("state of %d lines, want %d", strings.Count(got, "\n"), strings.Count(want, "\n"))
	}
}

// TestPaddedKeyDeletes: a character(n) key arrives padded in the WAL and
// trimmed from the projection ((code)::text); deletes and key changes
// name the row the same way, so the state keeps nothing stale.
func TestPaddedKeyDeletes(t *testing.T) {
	l, _, srcDB, owner, ctx := ownerAndLog(t)
	if _, err := owner.Exec(ctx, `CREATE TABLE ck (code char(6) PRIMARY KEY, ok boolean, v text);
		INSERT INTO ck VALUES ('keep', true, 'k'), ('gone', false, 'g')`); err != nil {
		t.Fatal(err)
	}
	stream := eventlog.Version{Publication: "ck", Number: 1}
	system := "ck_" + srcDB
	defer owner.Exec(context.Background(), "SELECT pg_drop_replication_slot($1)", capture.SlotName(system))
	query := "SELECT code, ok, v FROM ck"
	pub := &capture.WALReader{URL: pg.URL(srcDB), System: system, Log: l,
		Sources: []capture.Source{source(t, stream, query, "code")}, Logger: zerolog.Nop(), StatusInterval: 100 * time.Millisecond}
	runPublisher(t, ctx, pub, owner)
	waitUntil(t, func() bool { return headOf(t, l, stream) > 0 })
	for _, q := range []string{"INSERT INTO ck VALUES ('new', NULL, 'n')", "UPDATE ck SET v = 'k2' WHERE code = 'keep'",
		"DELETE FROM ck WHERE code = 'gone'", "UPDATE ck SET code = 'moved' WHERE code = 'new'"} {
		if _, err := owner.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	want := projection(t, owner, query)
	waitUntil(t, func() bool { return sortedState(t, l, stream) == want })
}

// ownerAndLog gives a test an event log (and the name of its database,
// to look at its tables) and an owner's database of its own, and a
// context that ends with the test (at most 60 s).
func ownerAndLog(t *testing.T) (*pglog.Log, string, string, *pgx.Conn, context.Context) {
	t.Helper()
	l, logDB := open(t)
	srcDB := pg.CreateDB(t)
	owner := pg.Connect(t, srcDB)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return l, logDB, srcDB, owner, ctx
}

// TestNoRecordYetIsNothingToCapture: a database the sidecar has not yet
// installed _rejot in has nothing published, which is not an error (the
// capture starts with the sidecar, alongside the install).
func TestNoRecordYetIsNothingToCapture(t *testing.T) {
	conn := pg.Connect(t, pg.CreateDB(t))
	sources, _, err := capture.LoadSources(context.Background(), conn)
	if err != nil || len(sources) != 0 {
		t.Fatalf("got %d sources, %v", len(sources), err)
	}
}

// recordedEvents starts an owner's server of the test's own, whose
// database postgres has a table events (id int PRIMARY KEY, v text) and
// an owner's record, as the sidecar keeps it, that publishes it as
// version 1 of publication; exec runs SQL there as the superuser. The
// context ends with the test (at most 90 s).
func recordedEvents(t *testing.T, publication string) (*pgtest.Cluster, context.Context, func(string)) {
	t.Helper()
	src, err := pgtest.Start(pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(src.Destroy)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	exec := func(q string) {
		t.Helper()
		if err := src.Exec(ctx, "postgres", q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	exec(`CREATE SCHEMA _rejot; CREATE TABLE _rejot.publications (publication text, version int, query text,
		key_columns text[], source text, status text, columns jsonb, caller text, reads jsonb)`)
	exec("CREATE TABLE events (id int PRIMARY KEY, v text)")
	exec(`INSERT INTO _rejot.publications VALUES ('` + publication + `', 1, 'SELECT id, v FROM events', '{id}', '"public"."events"', 'active',
		'[{"name": "id"}, {"name": "v"}]')`)
	return src, ctx, exec
}
