package tests

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/internal/pgtest"
)

// TestPublishedTableIsCaptured: once a version is published through the
// sidecar, changes to its table reach the event log's compacted state as
// the projection of the table (the log defaults to the catalog database).
func TestPublishedTableIsCaptured(t *testing.T) {
	p := newPublisher(t)
	ctx := context.Background()
	name := p.name("captured")
	if err := p.exec(t, "CREATE TABLE cap (id int PRIMARY KEY, v text, hidden text)"); err != nil {
		t.Fatal(err)
	}
	if err := p.exec(t, "CALL rejot.publish($1, 1, 'SELECT id, v FROM cap WHERE v IS NOT NULL')", name); err != nil {
		t.Fatal(err)
	}
	logDB := pg.Connect(t, "rejot")
	// Wait for the capture to be running: its slot is active.
	waitFor(t, 30*time.Second, func() bool {
		var active bool
		p.conn.QueryRow(ctx, "SELECT active FROM pg_replication_slots WHERE slot_name = $1", "rejot_"+p.db).Scan(&active)
		return active
	})
	for _, q := range []string{
		"INSERT INTO cap VALUES (1, 'one', 'x'), (2, NULL, 'y'), (3, 'three', 'z')",
		"UPDATE cap SET v = 'uno' WHERE id = 1",
		"UPDATE cap SET v = 'two' WHERE id = 2",
		"DELETE FROM cap WHERE id = 3",
	} {
		if err := p.exec(t, q); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 30*time.Second, func() bool {
		var rows string
		logDB.QueryRow(ctx, `SELECT string_agg(to_jsonb(r)::text, ' ' ORDER BY r[1])
			FROM rejot_log.state_rows($1, 1) AS r`, name).Scan(&rows)
		return rows == `["1", "uno"] ["2", "two"]`
	})
}

// TestPublishRefusedWithoutLogicalWAL: on a server whose wal_level is not
// logical, publishing says why and how to fix it, and so do
// rejot.systems and /readyz's capture check; the sidecar stays ready and
// keeps relaying everything else.
func TestPublishRefusedWithoutLogicalWAL(t *testing.T) {
	replica, err := pgtest.Start(pgtest.Options{Settings: map[string]string{"wal_level": "replica"}})
	if err != nil {
		t.Fatal(err)
	}
	defer replica.Destroy()
	ctx := context.Background()
	if err := replica.Exec(ctx, "postgres", "CREATE DATABASE shop"); err != nil {
		t.Fatal(err)
	}
	sc := startSidecarUpstream(t, replica.URL("shop"))
	conn, err := pgx.Connect(ctx, sc.url("shop", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE TABLE t (id int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	var last error
	waitFor(t, 20*time.Second, func() bool {
		_, last = conn.Exec(ctx, "CALL rejot.publish('walless', 1, 'SELECT id FROM t')")
		pe := pgErr(last)
		return pe.Code == "55000" && strings.Contains(pe.Message, "wal_level = replica") && strings.Contains(pe.Hint, "wal_level = logical")
	})
	// rejot.systems says so too.
	waitFor(t, 20*time.Second, func() bool {
		var problem *string
		conn.QueryRow(ctx, "SELECT problem FROM rejot.systems WHERE database = 'shop'").Scan(&problem)
		return problem != nil && strings.Contains(*problem, "wal_level = replica")
	})
	// /readyz: capture is not ok, and says why; the sidecar stays ready.
	base := sc.httpURL(t)
	waitFor(t, 10*time.Second, func() bool {
		code, r := readyz(t, base)
		return code == 200 && r.Ready && strings.Contains(r.Checks["capture"], "wal_level = replica")
	})
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatal(err)
	}
}

// TestCaptureSurvivesKill: the owner's sidecar is killed (kill -9) twice
// while a writer changes the published table; after restarts the log's
// state equals the projection of the table, and no source transaction was
// appended twice.
func TestCaptureSurvivesKill(t *testing.T) {
	p := newPublisher(t)
	ctx := context.Background()
	name := p.name("killed")
	if err := p.exec(t, "CREATE TABLE acct (id int PRIMARY KEY, balance int NOT NULL, note text)"); err != nil {
		t.Fatal(err)
	}
	if err := p.exec(t, "INSERT INTO acct SELECT g, 100, 'n' || g FROM generate_series(1, 200) g"); err != nil {
		t.Fatal(err)
	}
	if err := p.exec(t, "CALL rejot.publish($1, 1, 'SELECT id, balance FROM acct WHERE balance >= 0')", name); err != nil {
		t.Fatal(err)
	}
	slotActive := func() bool {
		var active bool
		pg.Connect(t, p.db).QueryRow(ctx, "SELECT active FROM pg_replication_slots WHERE slot_name = $1", "rejot_"+p.db).Scan(&active)
		return active
	}
	waitFor(t, 30*time.Second, slotActive)
	// A reader at 0 keeps the capture's pruning from dropping what the
	// checks below count.
	waitFirstStates(t, pg.Connect(t, "rejot"), []string{name})
	holdLog(t, pg.Connect(t, "rejot"), []string{name})
	// The writer goes straight to Postgres: the sidecar being killed must
	// not stop the owner's application.
	writer := pg.Connect(t, p.db)
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		i := 0
		for {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			i++
			var err error
			switch i % 4 {
			case 0:
				_, err = writer.Exec(ctx, "UPDATE acct SET balance = balance - 1 WHERE id = $1", i%200+1)
			case 1:
				_, err = writer.Exec(ctx, "INSERT INTO acct VALUES ($1, $2, 'x') ON CONFLICT (id) DO UPDATE SET balance = -1", 1000+i%300, i)
			case 2:
				_, err = writer.Exec(ctx, "DELETE FROM acct WHERE id = $1", 1000+(i*7)%300)
			case 3:
				_, err = writer.Exec(ctx, "BEGIN; UPDATE acct SET balance = balance + 1 WHERE id = 1; UPDATE acct SET balance = balance - 1 WHERE id = 2; COMMIT")
			}
			if err != nil {
				done <- err
				return
			}
		}
	}()
	sc := p.sc
	for range 2 {
		time.Sleep(700 * time.Millisecond)
		sc.kill(t)
		time.Sleep(200 * time.Millisecond)
		sc = startSidecar(t, p.db)
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	owner := pg.Connect(t, p.db)
	logDB := pg.Connect(t, "rejot")
	var want string
	owner.QueryRow(ctx, `SELECT coalesce(string_agg(format('["%s", "%s"]', id, balance), ' ' ORDER BY id::text), '')
		FROM acct WHERE balance >= 0`).Scan(&want)
	waitFor(t, 60*time.Second, func() bool {
		var got string
		logDB.QueryRow(ctx, `SELECT coalesce(string_agg(to_jsonb(r)::text, ' ' ORDER BY r[1]), '')
			FROM rejot_log.state_rows($1, 1) AS r`, name).Scan(&got)
		return got == want
	})
	// Every group's changes are in the log once — but the first state's,
	// which nobody read then (the log kept only the compacted state).
	var changes, grouped int64
	logDB.QueryRow(ctx, `SELECT (SELECT count(*) FROM rejot_log.changes c WHERE c.stream = s.id),
			(SELECT sum(last_position - first_position + 1) FROM rejot_log.change_groups g WHERE g.stream = s.id AND g.first_position > 1)
		FROM rejot_log.streams s WHERE s.publication = $1 AND s.version = 1`, name).Scan(&changes, &grouped)
	if changes == 0 || changes != grouped {
		t.Fatalf("%d changes, %d in groups", changes, grouped)
	}
	_ = sc
}
