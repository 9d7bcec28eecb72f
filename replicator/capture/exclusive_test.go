package capture_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rejot-dev/rejot/replicator/capture"
	"github.com/rejot-dev/rejot/replicator/eventlog"
	"github.com/rs/zerolog"
)

// TestExclusiveRunnerEndsFormerHolder: a runner that holds the system's
// lease (Exclusive) finds the slot held by a session that streams but
// never answers (a former holder, hung or cut off, whose walsender would
// keep the slot for wal_sender_timeout, 60 s): it ends that session and
// captures from where the slot was confirmed.
func TestExclusiveRunnerEndsFormerHolder(t *testing.T) {
	l, _ := open(t)
	src, ctx, exec := recordedEvents(t, "held_events")
	system := "held"
	slot := capture.SlotName(system)
	v := eventlog.Version{Publication: "held_events", Number: 1}
	first, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	r := &capture.Runner{URL: src.URL("postgres"), System: system, Log: l, Logger: zerolog.Nop(), Check: 100 * time.Millisecond}
	go func() { r.Run(first); close(done) }()
	exec("INSERT INTO events VALUES (1, 'a')")
	waitUntil(t, func() bool { return headHas(t, l, v, 1) })
	stop()
	<-done
	// The former holder: it takes the slot and then never reads.
	owner := connect(t, ctx, src)
	var held *pgconn.PgConn
	waitUntil(t, func() bool {
		c, err := pgconn.Connect(ctx, src.URL("postgres")+"&replication=database")
		if err != nil {
			return false
		}
		err = pglogrepl.StartReplication(ctx, c, slot, 0, pglogrepl.StartReplicationOptions{
			PluginArgs: []string{"proto_version '1'", "publication_names '" + slot + "'"}})
		if err != nil {
			c.Close(ctx)
			return false // the first runner's walsender still ending
		}
		held = c
		return true
	})
	defer held.Close(context.Background())
	var holder int32
	if err := owner.QueryRow(ctx, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&holder); err != nil {
		t.Fatal(err)
	}
	exec("INSERT INTO events VALUES (2, 'b')")
	r2 := &capture.Runner{URL: src.URL("postgres"), System: system, Log: l, Logger: zerolog.Nop(), Check: 100 * time.Millisecond, Exclusive: true}
	second, stop2 := context.WithCancel(ctx)
	done2 := make(chan struct{})
	go func() { r2.Run(second); close(done2) }()
	defer func() { stop2(); <-done2 }()
	waitUntil(t, func() bool { return headHas(t, l, v, 2) })
	var now int32
	owner.QueryRow(ctx, "SELECT coalesce(active_pid, 0) FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&now)
	if now == holder {
		t.Fatal("the former holder still has the slot")
	}
}
