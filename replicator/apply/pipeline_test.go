package apply

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/rejot-dev/rejot/managed"
	"github.com/rejot-dev/rejot/replicator/eventlog"
	"github.com/rs/zerolog"
)

// TestApplyRefusedWhenMoved: a span commits in the round trip that sends
// it, so the check that the subscription is still where the span starts
// is the server's (managed.LockAt, for a span read as it is applied too):
// a span after another position is refused with errSubscriptionMoved,
// writes nothing, leaves the position as it was and the connection
// usable; the span at the position applies.
func TestApplyRefusedWhenMoved(t *testing.T) {
	ctx := context.Background()
	db, conn, _ := subscribedTable(t)
	if err := managed.StartStreaming(ctx, conn, "public.t", 1, 5); err != nil {
		t.Fatal(err)
	}
	var cols []managed.SubscribedColumn
	if err := conn.QueryRow(ctx, "SELECT columns FROM _rejot.subscriptions WHERE target = 'public.t'").Scan(&cols); err != nil {
		t.Fatal(err)
	}
	w := &worker{s: &Subscriber{URL: pg.URL(db), Logger: zerolog.Nop()},
		sub: subscription{target: "public.t", schema: "public", table: "t", version: orders, columns: cols, generation: 1}}
	applyConn, err := connect(ctx, pg.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	defer applyConn.Close(ctx)
	tg, err := w.prepare(ctx, applyConn)
	if err != nil {
		t.Fatal(err)
	}
	stmts, err := spanStatements(tg, []eventlog.Entry{{Position: 6, Change: eventlog.Change{Op: eventlog.OpUpsert, Key: values("1"), Row: values("1", "one")}}})
	if err != nil {
		t.Fatal(err)
	}
	state := func() (rows int, position int64) {
		t.Helper()
		if err := conn.QueryRow(ctx, "SELECT (SELECT count(*) FROM public.t), position FROM _rejot.subscriptions WHERE target = 'public.t'").Scan(&rows, &position); err != nil {
			t.Fatal(err)
		}
		return rows, position
	}
	for _, c := range []struct {
		name       string
		after      int64
		generation int
	}{{"another position", 4, 1}, {"another generation", 5, 2}} {
		w.sub.generation = c.generation
		// Pipelined (read ahead), and read as it is applied (nil: the
		// refusal comes before anything is read from the log).
		for _, read := range [][]statement{stmts, nil} {
			err := w.apply(ctx, applyConn, tg, eventlog.Span{After: c.after, Upto: 6, Groups: 1, LastCommit: time.Now()}, read, false, nil)
			if !errors.Is(err, errSubscriptionMoved) {
				t.Fatalf("%s: apply: %v, want errSubscriptionMoved", c.name, err)
			}
			if tx := applyConn.PgConn().TxStatus(); tx != 'I' {
				t.Fatalf("%s: the connection is left in transaction state %q", c.name, tx)
			}
			if rows, position := state(); rows != 0 || position != 5 {
				t.Fatalf("%s: %d rows at position %d after a refused span, want 0 at 5", c.name, rows, position)
			}
		}
	}
	w.sub.generation = 1
	if err := w.apply(ctx, applyConn, tg, eventlog.Span{After: 5, Upto: 6, Groups: 1, LastCommit: time.Now()}, stmts, false, nil); err != nil {
		t.Fatal(err)
	}
	if rows, position := state(); rows != 1 || position != 6 {
		t.Fatalf("%d rows at position %d after the span, want 1 at 6", rows, position)
	}
	var v string
	if err := conn.QueryRow(ctx, "SELECT v FROM public.t WHERE id = 1").Scan(&v); err != nil || v != "one" {
		t.Fatalf("row 1: %q, %v", v, err)
	}
}
