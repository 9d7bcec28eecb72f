package capture_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rejot-dev/rejot/internal/pgtest"
	"github.com/rejot-dev/rejot/replicator/capture"
	"github.com/rejot-dev/rejot/replicator/eventlog"
	"github.com/rejot-dev/rejot/replicator/eventlog/pglog"
	"github.com/rs/zerolog"
)

// Slot lifecycle: a slot nobody reads keeps the server's WAL. Each test
// has an owner's server of its own (recordedEvents), so the WAL it writes
// and the slots it looks at are its own.

// TestRetiredLastVersionKeepsNoWAL: once the last version is retired (as
// rejot.unpublish records it), 64 MB of WAL later the slot keeps less than
// 16 MB (it is dropped, with its Postgres publication and its metric).
func TestRetiredLastVersionKeepsNoWAL(t *testing.T) {
	abandoned(t, "retire_events", "UPDATE _rejot.publications SET status = 'retired'")
}

// TestDroppedTableKeepsNoWAL: the same when the last version's table is
// dropped instead.
func TestDroppedTableKeepsNoWAL(t *testing.T) {
	abandoned(t, "dropped_events", "DROP TABLE events")
}

// abandoned captures the one version recordedEvents records, runs leave
// (which leaves nothing to capture), writes 64 MB of WAL and asserts the
// slot keeps less than 16 MB of it, and is gone with its publication.
func abandoned(t *testing.T, publication, leave string) {
	l, _ := open(t)
	src, ctx, exec := recordedEvents(t, publication)
	owner := connect(t, ctx, src)
	system := publication
	slot := capture.SlotName(system)
	runner(t, ctx, src, system, l)
	exec("INSERT INTO events VALUES (1, 'a')")
	waitUntil(t, func() bool { return headHas(t, l, eventlog.Version{Publication: publication, Number: 1}, 1) })
	waitUntil(t, func() bool { return slotSeries(t, slot) })
	exec(leave)
	// The WAL written from when the capture stops reading the slot (or
	// the slot is gone) is what an abandoned slot would keep.
	waitUntil(t, func() bool {
		var active bool
		owner.QueryRow(ctx, "SELECT coalesce((SELECT active FROM pg_replication_slots WHERE slot_name = $1), false)", slot).Scan(&active)
		return !active
	})
	writeWAL(t, ctx, owner, exec, 64<<20)
	waitRetainedBelow(t, ctx, owner, slot, 16<<20)
	waitUntil(t, func() bool { return !slotExists(t, ctx, owner, slot) && !publicationExists(t, ctx, owner, slot) })
	if slotSeries(t, slot) {
		t.Fatal("rejot_capture_slot_retained_wal_bytes still reports the dropped slot")
	}
}

// TestActiveVersionBesideGoneOnesFlows: with one version retired and
// another's table dropped, the version left keeps flowing, the Postgres
// publication names only its table, and the slot keeps confirming.
func TestActiveVersionBesideGoneOnesFlows(t *testing.T) {
	l, _ := open(t)
	src, ctx, exec := recordedEvents(t, "keep_events")
	owner := connect(t, ctx, src)
	exec(`CREATE TABLE old (id int PRIMARY KEY, v text); CREATE TABLE doomed (id int PRIMARY KEY, v text);
		INSERT INTO _rejot.publications VALUES
		('old_events', 1, 'SELECT id, v FROM old', '{id}', '"public"."old"', 'active', '[{"name": "id"}, {"name": "v"}]'),
		('doomed_events', 1, 'SELECT id, v FROM doomed', '{id}', '"public"."doomed"', 'active', '[{"name": "id"}, {"name": "v"}]')`)
	system := "keep"
	slot := capture.SlotName(system)
	runner(t, ctx, src, system, l)
	keep := eventlog.Version{Publication: "keep_events", Number: 1}
	exec("INSERT INTO events VALUES (1, 'a'); INSERT INTO old VALUES (1, 'a'); INSERT INTO doomed VALUES (1, 'a')")
	for _, p := range []string{"keep_events", "old_events", "doomed_events"} {
		waitUntil(t, func() bool { return headHas(t, l, eventlog.Version{Publication: p, Number: 1}, 1) })
	}
	exec("UPDATE _rejot.publications SET status = 'retired' WHERE publication = 'old_events'")
	exec("DROP TABLE doomed")
	waitUntil(t, func() bool { return slices.Equal(publishedTables(t, ctx, owner, slot), []string{"public.events"}) })
	exec("INSERT INTO events VALUES (2, 'b')")
	waitUntil(t, func() bool { return headHas(t, l, keep, 2) })
	writeWAL(t, ctx, owner, exec, 64<<20)
	exec("INSERT INTO events VALUES (3, 'c')")
	waitUntil(t, func() bool { return headHas(t, l, keep, 3) })
	waitRetainedBelow(t, ctx, owner, slot, 16<<20)
	if !slotExists(t, ctx, owner, slot) {
		t.Fatal("the slot of a version still captured was dropped")
	}
}

// TestRepublishAfterRelease: after the slot went with the last version, a
// new version gets the slot and publication again, its first state is
// its table's rows (written while there was no slot too), and its changes
// flow.
func TestRepublishAfterRelease(t *testing.T) {
	l, _ := open(t)
	src, ctx, exec := recordedEvents(t, "again_events")
	owner := connect(t, ctx, src)
	system := "again"
	slot := capture.SlotName(system)
	r := runner(t, ctx, src, system, l)
	exec("INSERT INTO events VALUES (1, 'a')")
	waitUntil(t, func() bool { return headHas(t, l, eventlog.Version{Publication: "again_events", Number: 1}, 1) })
	exec("UPDATE _rejot.publications SET status = 'retired'")
	waitUntil(t, func() bool { return !slotExists(t, ctx, owner, slot) })
	exec("INSERT INTO events SELECT g, 'while none' FROM generate_series(2, 5) g")
	exec(`INSERT INTO _rejot.publications VALUES ('again_events', 2, 'SELECT id, v FROM events', '{id}', '"public"."events"', 'active',
		'[{"name": "id"}, {"name": "v"}]')`)
	r.Wake()
	v2 := eventlog.Version{Publication: "again_events", Number: 2}
	query := "SELECT id, v FROM events"
	waitUntil(t, func() bool { return sortedState(t, l, v2) == projection(t, owner, query) })
	exec("UPDATE events SET v = 'after' WHERE id = 1; INSERT INTO events VALUES (6, 'f')")
	waitUntil(t, func() bool { return sortedState(t, l, v2) == projection(t, owner, query) })
	if !publicationExists(t, ctx, owner, slot) {
		t.Fatal("no Postgres publication for the new version")
	}
}

// TestRecreatedTableFillsAgain: a version whose table was dropped (and
// its slot with it) and made again is captured again from a new slot,
// which has not seen what happened before it: its state is filled again,
// the old table's rows gone and the new table's there, and changes flow.
func TestRecreatedTableFillsAgain(t *testing.T) {
	l, _ := open(t)
	src, ctx, exec := recordedEvents(t, "back_events")
	owner := connect(t, ctx, src)
	system := "back"
	slot := capture.SlotName(system)
	runner(t, ctx, src, system, l)
	v := eventlog.Version{Publication: "back_events", Number: 1}
	exec("INSERT INTO events VALUES (1, 'a'), (2, 'b')")
	waitUntil(t, func() bool { return headHas(t, l, v, 2) })
	exec("DROP TABLE events")
	waitUntil(t, func() bool { return !slotExists(t, ctx, owner, slot) })
	// One transaction: the capture sees the table only with its row.
	exec("CREATE TABLE events (id int PRIMARY KEY, v text); INSERT INTO events VALUES (3, 'c')")
	query := "SELECT id, v FROM events"
	waitUntil(t, func() bool { return sortedState(t, l, v) == projection(t, owner, query) })
	exec("INSERT INTO events VALUES (4, 'd')")
	waitUntil(t, func() bool { return sortedState(t, l, v) == projection(t, owner, query) })
}

// runner runs a Runner for the owner's server until the test ends.
func runner(t *testing.T, ctx context.Context, src *pgtest.Cluster, system string, l *pglog.Log) *capture.Runner {
	t.Helper()
	r := &capture.Runner{URL: src.URL("postgres"), System: system, Log: l, Logger: zerolog.Nop(), Check: 100 * time.Millisecond}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { r.Run(runCtx); close(done) }()
	t.Cleanup(func() { stop(); <-done })
	return r
}

func connect(t *testing.T, ctx context.Context, src *pgtest.Cluster) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(ctx, src.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// writeWAL writes at least n bytes of WAL into a table of its own, and
// checks it did.
func writeWAL(t *testing.T, ctx context.Context, owner *pgx.Conn, exec func(string), n int64) {
	t.Helper()
	var start string
	if err := owner.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&start); err != nil {
		t.Fatal(err)
	}
	exec("CREATE TABLE IF NOT EXISTS noise (id serial PRIMARY KEY, pad text)")
	for written := int64(0); written < n; {
		exec("INSERT INTO noise (pad) SELECT repeat('x', 1000) FROM generate_series(1, 8000)")
		if err := owner.QueryRow(ctx, "SELECT (pg_current_wal_lsn() - $1::pg_lsn)::int8", start).Scan(&written); err != nil {
			t.Fatal(err)
		}
	}
	// A checkpoint logs the running transactions, from which a slot that
	// is read moves its restart position on.
	exec("CHECKPOINT")
}

// retained is the WAL the server keeps for the slot (0 without one).
func retained(t *testing.T, ctx context.Context, owner *pgx.Conn, slot string) int64 {
	t.Helper()
	var n int64
	if err := owner.QueryRow(ctx, `SELECT coalesce((SELECT (pg_current_wal_lsn() - restart_lsn)::int8
		FROM pg_catalog.pg_replication_slots WHERE slot_name = $1), 0)`, slot).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// waitRetainedBelow waits (at most 45 s: a slot that is read moves its
// restart position on at the running transactions the server logs every
// 15 s) until the slot keeps less than limit bytes of WAL.
func waitRetainedBelow(t *testing.T, ctx context.Context, owner *pgx.Conn, slot string, limit int64) {
	t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	for {
		n := retained(t, ctx, owner, slot)
		if n < limit {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot %s still retains %d MB of WAL", slot, n>>20)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func slotExists(t *testing.T, ctx context.Context, owner *pgx.Conn, slot string) bool {
	t.Helper()
	var ok bool
	if err := owner.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1)", slot).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return ok
}

func publicationExists(t *testing.T, ctx context.Context, owner *pgx.Conn, name string) bool {
	t.Helper()
	var ok bool
	if err := owner.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1)", name).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return ok
}

// publishedTables are the tables the Postgres publication names, sorted.
func publishedTables(t *testing.T, ctx context.Context, owner *pgx.Conn, name string) []string {
	t.Helper()
	rows, _ := owner.Query(ctx, "SELECT schemaname || '.' || tablename FROM pg_catalog.pg_publication_tables WHERE pubname = $1 ORDER BY 1", name)
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return tables
}

// slotSeries says whether rejot_capture_slot_retained_wal_bytes has a
// series for the slot.
func slotSeries(t *testing.T, slot string) bool {
	t.Helper()
	families, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "rejot_capture_slot_retained_wal_bytes" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, label := range m.GetLabel() {
				if label.GetName() == "slot" && label.GetValue() == slot {
					return true
				}
			}
		}
	}
	return false
}

// TestInvalidatedSlotIsMadeAnew: a slot the server invalidated (it kept
// more than max_slot_wal_keep_size while the capture was down) can never
// be read again; the capture makes it anew and fills the version again,
// with what changed while it was down, and changes flow.
func TestInvalidatedSlotIsMadeAnew(t *testing.T) {
	l, _ := open(t)
	src, ctx, exec := recordedEvents(t, "lost_events")
	owner := connect(t, ctx, src)
	exec("ALTER SYSTEM SET max_slot_wal_keep_size = '16MB'")
	exec("SELECT pg_reload_conf()")
	system := "lost"
	slot := capture.SlotName(system)
	v := eventlog.Version{Publication: "lost_events", Number: 1}
	r := &capture.Runner{URL: src.URL("postgres"), System: system, Log: l, Logger: zerolog.Nop(), Check: 100 * time.Millisecond}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { r.Run(runCtx); close(done) }()
	exec("INSERT INTO events VALUES (1, 'a')")
	waitUntil(t, func() bool { return headHas(t, l, v, 1) })
	stop()
	<-done
	exec("INSERT INTO events VALUES (2, 'while down')")
	writeWAL(t, ctx, owner, exec, 64<<20)
	waitUntil(t, func() bool {
		var status string
		owner.QueryRow(ctx, "SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&status)
		if status != "lost" {
			exec("CHECKPOINT")
		}
		return status == "lost"
	})
	runner(t, ctx, src, system, l)
	query := "SELECT id, v FROM events"
	waitUntil(t, func() bool { return sortedState(t, l, v) == projection(t, owner, query) })
	exec("INSERT INTO events VALUES (3, 'c')")
	waitUntil(t, func() bool { return sortedState(t, l, v) == projection(t, owner, query) })
}
