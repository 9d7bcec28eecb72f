package apply

import (
	"context"
	"time"

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
// log's head.
func (w *worker) report(ctx context.Context) managed.SubscriptionReport {
	st := w.status.Load()
	r := managed.SubscriptionReport{Target: w.sub.target, Status: st.Status, CopiedRows: w.copied.Load(),
		Position: st.Position, LastAppliedAt: st.LastAppliedAt, Error: st.Error}
	if st.Position == nil {
		return r
	}
	head, err := w.s.Log.Head(ctx, w.sub.version)
	if err != nil {
		return r
	}
	behind := max(head-*st.Position, 0)
	lag := lagSeconds(st, behind)
	r.LagChanges, r.LagSeconds = &behind, &lag
	metricLagSeconds.WithLabelValues(w.labels()...).Set(lag)
	metricLagChanges.WithLabelValues(w.labels()...).Set(float64(behind))
	return r
}

// lagSeconds is how far the target is behind its source: since the last
// applied source commit while changes wait, else how long that commit
// took to arrive.
func lagSeconds(st *workerStatus, behind int64) float64 {
	switch {
	case st.LastCommit.IsZero():
		return 0
	case behind > 0:
		return time.Since(st.LastCommit).Seconds()
	case st.LastAppliedAt != nil:
		return max(st.LastAppliedAt.Sub(st.LastCommit).Seconds(), 0)
	}
	return 0
}
