package tests

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestUnpublishedLastVersionKeepsNoWAL (issue 14, class 6): once the
// database's last version is unpublished through the sidecar, its slot
// and Postgres publication go, and 64 MB of WAL later the server keeps
// less than 16 MB for the capture.
func TestUnpublishedLastVersionKeepsNoWAL(t *testing.T) {
	p := newPublisher(t)
	ctx := context.Background()
	name := p.name("gone")
	slot := "rejot_" + p.db
	if err := p.exec(t, "CREATE TABLE gone (id int PRIMARY KEY, v text)"); err != nil {
		t.Fatal(err)
	}
	if err := p.exec(t, "CALL rejot.publish($1, 1, 'SELECT id, v FROM gone')", name); err != nil {
		t.Fatal(err)
	}
	owner := pg.Connect(t, p.db)
	waitFor(t, 30*time.Second, func() bool {
		var active bool
		owner.QueryRow(ctx, "SELECT active FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&active)
		return active
	})
	if err := p.exec(t, "CALL rejot.unpublish($1, 1)", name); err != nil {
		t.Fatal(err)
	}
	// The WAL written from when the capture stops reading the slot (or
	// the slot is gone) is what an abandoned slot would keep.
	waitFor(t, 30*time.Second, func() bool {
		var active bool
		owner.QueryRow(ctx, "SELECT coalesce((SELECT active FROM pg_replication_slots WHERE slot_name = $1), false)", slot).Scan(&active)
		return !active
	})
	var start string
	if err := owner.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&start); err != nil {
		t.Fatal(err)
	}
	if _, err := owner.Exec(ctx, "CREATE TABLE noise (id serial PRIMARY KEY, pad text)"); err != nil {
		t.Fatal(err)
	}
	for written := int64(0); written < 64<<20; {
		if _, err := owner.Exec(ctx, "INSERT INTO noise (pad) SELECT repeat('x', 1000) FROM generate_series(1, 8000)"); err != nil {
			t.Fatal(err)
		}
		if err := owner.QueryRow(ctx, "SELECT (pg_current_wal_lsn() - $1::pg_lsn)::int8", start).Scan(&written); err != nil {
			t.Fatal(err)
		}
	}
	var retained int64
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := owner.QueryRow(ctx, `SELECT coalesce((SELECT (pg_current_wal_lsn() - restart_lsn)::int8
			FROM pg_replication_slots WHERE slot_name = $1), 0)`, slot).Scan(&retained); err != nil {
			t.Fatal(err)
		}
		if retained < 16<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("64 MB after the last version was unpublished, slot %s retains %d MB", slot, retained>>20)
		}
		time.Sleep(100 * time.Millisecond)
	}
	waitFor(t, 15*time.Second, func() bool {
		var slots, pubs int
		owner.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1),
			(SELECT count(*) FROM pg_publication WHERE pubname = $1)`, slot).Scan(&slots, &pubs)
		return slots == 0 && pubs == 0
	})
	if logs := p.sc.logs(); !strings.Contains(logs, "replication slot dropped") {
		t.Fatalf("the drop was not logged:\n%s", logs)
	}
}
