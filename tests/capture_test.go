package tests

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/tests/pgtest"
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
		logDB.QueryRow(ctx, `SELECT string_agg(st.row::text, ' ' ORDER BY st.key::text)
			FROM rejot_log.state st JOIN rejot_log.streams s ON s.id = st.stream
			WHERE s.publication = $1 AND s.version = 1`, name).Scan(&rows)
		return rows == `["1", "uno"] ["2", "two"]`
	})
}

// TestPublishRefusedWithoutLogicalWAL: on a server whose wal_level is not
// logical, publishing says why and how to fix it; the sidecar keeps
// relaying everything else.
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
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatal(err)
	}
}
