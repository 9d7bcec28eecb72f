package apply

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/managed"
)

// reportLoop records the subscriptions' status in the catalog every second.
func (s *Subscriber) reportLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		reports := s.Reports(ctx) // also sets the lag metrics
		if len(reports) > 0 && s.Report != nil {
			if err := s.Report(ctx, reports); err != nil && ctx.Err() == nil {
				s.Logger.Debug().Err(err).Msg("cannot report the subscriptions to the catalog")
			}
		}
	}
}

// Reports says how each subscription is doing.
func (s *Subscriber) Reports(ctx context.Context) []managed.SubscriptionReport {
	s.mu.Lock()
	workers := make([]*worker, 0, len(s.workers))
	for _, w := range s.workers {
		workers = append(workers, w)
	}
	s.mu.Unlock()
	var out []managed.SubscriptionReport
	for _, w := range workers {
		out = append(out, w.report(ctx))
	}
	return out
}

// report says how the subscription is doing, with its lag against the
// log's head: streaming (moving, or caught up), or stalled when it is
// behind and has not advanced for StalledAfter, with why.
func (w *worker) report(ctx context.Context) managed.SubscriptionReport {
	st := w.status.Load()
	r := managed.SubscriptionReport{Target: w.sub.target, Status: st.Status, CopiedRows: w.copied.Load(),
		Position: st.Position, LastAppliedAt: st.LastAppliedAt, Error: st.Error}
	if st.Position == nil {
		metricStalled.WithLabelValues(w.labels()...).Set(0)
		return r
	}
	head, oldest, err := w.s.Log.Pending(ctx, w.sub.version, *st.Position)
	if err != nil {
		return r
	}
	now := time.Now()
	behind := max(head-*st.Position, 0)
	lag := lagSeconds(st, behind, oldest, now)
	r.LagChanges, r.LagSeconds = &behind, &lag
	stalled := 0.0
	if st.Status == "streaming" && behind > 0 {
		if why := w.stalled(ctx, behind, now); why != "" {
			r.Status, r.Error, stalled = "stalled", &why, 1
		}
	}
	metricLagSeconds.WithLabelValues(w.labels()...).Set(lag)
	metricLagChanges.WithLabelValues(w.labels()...).Set(float64(behind))
	metricStalled.WithLabelValues(w.labels()...).Set(stalled)
	return r
}

// lagSeconds is how far the target is behind its source at now: 0 when
// it has applied everything the log holds (caught up, however long ago
// the last change was), else how long ago the oldest change it has not
// applied committed at the source.
func lagSeconds(st *workerStatus, behind int64, oldest time.Time, now time.Time) float64 {
	switch {
	case behind == 0:
		return 0
	case !oldest.IsZero():
		return max(now.Sub(oldest).Seconds(), 0)
	case !st.LastCommit.IsZero(): // the oldest is pruned: at least since the last applied
		return max(now.Sub(st.LastCommit).Seconds(), 0)
	}
	return 0
}

// defaultStalledAfter is how long a subscription that is behind may go
// without advancing before it shows as stalled.
const defaultStalledAfter = 5 * time.Second

func (s *Subscriber) stalledAfter() time.Duration {
	if s.StalledAfter > 0 {
		return s.StalledAfter
	}
	return defaultStalledAfter
}

// stalled says why a subscription behind the log by behind changes has
// not advanced for longer than StalledAfter at now ("" when it moves): the
// span it applies makes no progress (a lock held by another session, a
// statement that does not end), or no span is being applied.
func (w *worker) stalled(ctx context.Context, behind int64, now time.Time) string {
	after := w.s.stalledAfter()
	if a := w.applying.Load(); a != nil {
		idle := a.progress.since()
		if idle <= after {
			return ""
		}
		return fmt.Sprintf("applying changes %d to %d has not advanced for %s: %s", a.span.After+1, a.span.Upto,
			idle.Round(time.Second), w.s.waitingFor(ctx, a.pid))
	}
	idle := now.Sub(time.Unix(0, w.movedAt.Load()))
	if idle <= after {
		return ""
	}
	return fmt.Sprintf("%d changes wait in the event log and none was applied for %s: the subscriber cannot read them from the event log",
		behind, idle.Round(time.Second))
}

// waitingFor says what the target's backend pid is waiting for, as
// pg_stat_activity shows it to the sidecar's role: a lock and the
// sessions that hold it, or another wait, or nothing (its statement runs).
func (s *Subscriber) waitingFor(ctx context.Context, pid uint32) string {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := connect(ctx, s.URL)
	if err != nil {
		return "its statement has not ended"
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var waitType, wait string
	var blockers []int32
	err = conn.QueryRow(ctx, `SELECT coalesce(wait_event_type, ''), coalesce(wait_event, ''), pg_catalog.pg_blocking_pids(pid)
		FROM pg_catalog.pg_stat_activity WHERE pid = $1`, int32(pid)).Scan(&waitType, &wait, &blockers)
	if err != nil {
		return "its statement has not ended"
	}
	if len(blockers) == 0 {
		if waitType == "" || waitType == "Client" {
			return "its statement is running"
		}
		return fmt.Sprintf("its statement waits (%s: %s)", waitType, wait)
	}
	rows, err := conn.Query(ctx, `SELECT pid, coalesce(usename::text, ''), coalesce(application_name, ''), coalesce(state, ''),
			coalesce(extract(epoch FROM now() - xact_start), -1)::float8
		FROM pg_catalog.pg_stat_activity WHERE pid = ANY($1) ORDER BY pid`, blockers)
	var held []string
	if err == nil {
		var bpid int32
		var role, app, state string
		var open float64
		_, err = pgx.ForEachRow(rows, []any{&bpid, &role, &app, &state, &open}, func() error {
			d := fmt.Sprintf("PID %d", bpid)
			var what []string
			if role != "" {
				what = append(what, "role "+role)
			}
			if app != "" {
				what = append(what, "application "+app)
			}
			if state != "" {
				what = append(what, state)
			}
			if open >= 0 {
				what = append(what, fmt.Sprintf("its transaction open for %s", (time.Duration(open*float64(time.Second))).Round(time.Second)))
			}
			if len(what) > 0 {
				d += " (" + strings.Join(what, ", ") + ")"
			}
			held = append(held, d)
			return nil
		})
	}
	if len(held) == 0 {
		for _, b := range blockers {
			held = append(held, fmt.Sprintf("PID %d", b))
		}
	}
	return fmt.Sprintf("waiting for a lock (%s: %s) held by %s; end that transaction, or wait for it", waitType, wait, strings.Join(held, ", "))
}
