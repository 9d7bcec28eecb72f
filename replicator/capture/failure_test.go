package capture_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/rejot-dev/rejot/replicator/capture"
	"github.com/rejot-dev/rejot/replicator/eventlog"
	"github.com/rs/zerolog"
)

// TestFailingProjectionFailsAlone: a version whose projection raises an
// error on a row fails alone — its problem is known, the log records its
// state as failed, its changes are no longer appended — while the other
// version of the same table flows and the slot keeps confirming. When the
// row that made it fail is gone, it is tried again after its backoff and
// filled again from a snapshot, exactly.
func TestFailingProjectionFailsAlone(t *testing.T) {
	l, _ := open(t)
	src, ctx, exec := recordedEvents(t, "fine_events")
	owner := connect(t, ctx, src)
	exec(`CREATE FUNCTION public.shout(v text) RETURNS text IMMUTABLE LANGUAGE plpgsql AS $$
		BEGIN IF v = 'boom' THEN RAISE EXCEPTION 'cannot shout %', v; END IF; RETURN upper(v); END $$;
		INSERT INTO _rejot.publications VALUES ('loud_events', 1, 'SELECT id, public.shout(v) AS v FROM public.events', '{id}',
			'"public"."events"', 'active', '[{"name": "id"}, {"name": "v"}]')`)
	system := "loud"
	r := &capture.Runner{URL: src.URL("postgres"), System: system, Log: l, Logger: zerolog.Nop(), Check: 100 * time.Millisecond,
		RetryFailed: 500 * time.Millisecond}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { r.Run(runCtx); close(done) }()
	t.Cleanup(func() { stop(); <-done })
	fine, loud := eventlog.Version{Publication: "fine_events", Number: 1}, eventlog.Version{Publication: "loud_events", Number: 1}

	exec("INSERT INTO events VALUES (1, 'a')")
	waitUntil(t, func() bool { return headHas(t, l, fine, 1) && headHas(t, l, loud, 1) })
	exec("INSERT INTO events VALUES (2, 'boom')")
	waitUntil(t, func() bool {
		f := r.FailedVersions()
		return len(f) == 1 && f[0].Version == loud && strings.Contains(f[0].Problem, "cannot shout boom")
	})
	// The mark is written with the batch that skips the version's
	// changes, which may commit a moment after the failure is known.
	waitUntil(t, func() bool {
		_, definition, _, err := l.Filled(ctx, loud, system)
		return err == nil && strings.HasPrefix(definition, "failed: ")
	})
	exec("INSERT INTO events VALUES (3, 'c')")
	waitUntil(t, func() bool { return headHas(t, l, fine, 2) && headHas(t, l, fine, 3) })
	writeWAL(t, ctx, owner, exec, 64<<20)
	waitRetainedBelow(t, ctx, owner, capture.SlotName(system), 16<<20)
	if headHas(t, l, loud, 2) || headHas(t, l, loud, 3) || len(r.FailedVersions()) != 1 {
		t.Fatalf("the failed version was appended to, or mended, while it cannot be computed: %v", r.FailedVersions())
	}

	exec("UPDATE events SET v = 'calm' WHERE id = 2")
	waitUntil(t, func() bool { return len(r.FailedVersions()) == 0 })
	query := "SELECT id, upper(v) AS v FROM events"
	waitUntil(t, func() bool { return sortedState(t, l, loud) == projection(t, owner, query) })
	exec("INSERT INTO events VALUES (4, 'd')")
	waitUntil(t, func() bool { return sortedState(t, l, loud) == projection(t, owner, query) })
	waitUntil(t, func() bool { return sortedState(t, l, fine) == projection(t, owner, "SELECT id, v FROM events") })
}

// TestFailureSeenInPassingClears: a version the runner heard failed (a
// check that read the owner's record a moment before a migration changed
// its table and re-published it) but whose changes were never skipped
// verifies again at the next check, is captured again, and shows as
// active once its reader has begun: it must not stay failed while it
// flows.
func TestFailureSeenInPassingClears(t *testing.T) {
	l, _ := open(t)
	src, ctx, exec := recordedEvents(t, "passing_events")
	system := "passing"
	r := &capture.Runner{URL: src.URL("postgres"), System: system, Log: l, Logger: zerolog.Nop(), Check: 100 * time.Millisecond,
		RetryFailed: 500 * time.Millisecond}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { r.Run(runCtx); close(done) }()
	t.Cleanup(func() { stop(); <-done })
	v := eventlog.Version{Publication: "passing_events", Number: 1}

	exec("INSERT INTO events VALUES (1, 'a')")
	waitUntil(t, func() bool { return headHas(t, l, v, 1) && r.FailedVersions() != nil })
	capture.RecordFailure(r, capture.VersionProblem{Version: v, Problem: "column v does not exist", Schema: true})
	if f := r.FailedVersions(); len(f) != 1 || f[0].Version != v {
		t.Fatalf("the failure was not recorded: %v", f)
	}
	waitUntil(t, func() bool { return len(r.FailedVersions()) == 0 })
	exec("INSERT INTO events VALUES (2, 'b')")
	waitUntil(t, func() bool { return headHas(t, l, v, 2) })
	if f := r.FailedVersions(); len(f) != 0 {
		t.Fatalf("a version that flows shows as failed: %v", f)
	}
}
