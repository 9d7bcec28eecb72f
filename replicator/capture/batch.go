package capture

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// flush starts projecting and appending the pending transactions while
// decoding goes on; the slot may forget them once the append has
// committed (wait). One append is in flight at a time, so appends keep
// commit order.
func (s *session) flush(ctx context.Context) error {
	if err := s.wait(); err != nil {
		return err
	}
	if len(s.pending) == 0 {
		s.confirmed = max(s.confirmed, s.pendingEnd)
		s.pending, s.pendingEvents, s.pendingBytes, s.pendingSince = nil, 0, 0, time.Time{}
		return nil
	}
	batch, end := s.pending, s.pendingEnd
	s.pending, s.pendingEvents, s.pendingBytes, s.pendingSince = nil, 0, 0, time.Time{}
	done := make(chan error, 1)
	s.inflight, s.inflightEnd = done, end
	go func() { done <- s.append(ctx, batch, end) }()
	return nil
}

// wait waits for the append in flight, if any, and lets the slot forget
// what it appended.
func (s *session) wait() error {
	if s.inflight == nil {
		return nil
	}
	err := <-s.inflight
	if err == nil {
		s.confirmed = max(s.confirmed, s.inflightEnd)
	}
	s.inflight = nil
	return err
}

// done says, without waiting, whether no append is in flight (taking the
// result of one that has finished).
func (s *session) done() (bool, error) {
	if s.inflight == nil {
		return true, nil
	}
	select {
	case err := <-s.inflight:
		if err == nil {
			s.confirmed = max(s.confirmed, s.inflightEnd)
		}
		s.inflight = nil
		return true, err
	default:
		return false, nil
	}
}

// appendIfDone starts appending what is pending, if anything is and no
// append is in flight any more; it never waits.
func (s *session) appendIfDone(ctx context.Context) error {
	done, err := s.done()
	if err == nil && done && len(s.pending) > 0 {
		err = s.flush(ctx)
	}
	return err
}

// drain appends everything pending and waits for it: before the decoder
// uses the owner's connection or changes what the appender reads.
func (s *session) drain(ctx context.Context) error {
	if err := s.flush(ctx); err != nil {
		return err
	}
	return s.wait()
}

// append projects and appends a batch of transactions in one log
// transaction. It runs beside the decoder: it alone uses the owner's
// connection meanwhile, and the relations do not change under it (a
// relation message drains first).
func (s *session) append(ctx context.Context, batch []*transaction, end uint64) error {
	started := time.Now()
	tx, err := s.p.Log.Begin(ctx)
	if err != nil {
		return fmt.Errorf("cannot append to the event log: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if err := s.write(ctx, tx, batch); err != nil {
		return err
	}
	if _, err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("cannot append to the event log: %w", err)
	}
	s.p.Logger.Debug().Str("lsn", pglogrepl.LSN(end).String()).Int("transactions", len(batch)).
		Dur("took", time.Since(started)).Msg("transactions captured")
	return nil
}

// write projects transactions and appends them in tx.
func (s *session) write(ctx context.Context, tx eventlog.Tx, txns []*transaction) error {
	if err := s.fillUnchanged(ctx, tx, txns); err != nil {
		return err
	}
	groups, err := s.groups(ctx, tx, txns)
	if err != nil {
		return err
	}
	if err := tx.Append(ctx, groups); err != nil {
		return fmt.Errorf("cannot append to the event log: %w", err)
	}
	// One metric update per version, not per group: a batch holds
	// thousands of single-row transactions.
	counts := map[eventlog.Version]int{}
	for _, g := range groups {
		counts[g.Version] += len(g.Changes)
	}
	for v, n := range counts {
		metricCaptured.WithLabelValues(versionLabels(v)...).Add(float64(n))
	}
	return nil
}

// part appends what the transaction being decoded did so far, in the log
// transaction that commits with it: a large source transaction never sits
// whole in memory.
func (s *session) part(ctx context.Context) error {
	if err := s.drain(ctx); err != nil { // commit order, and the owner's connection is ours
		return err
	}
	if s.open == nil {
		tx, err := s.p.Log.Begin(ctx)
		if err != nil {
			return fmt.Errorf("cannot append to the event log: %w", err)
		}
		s.open = tx
		s.p.Logger.Info().Str("system", s.p.System).Str("lsn", pglogrepl.LSN(s.txn.commitLSN).String()).
			Msg("large source transaction: appending it in parts")
	}
	if err := s.write(ctx, s.open, []*transaction{s.txn}); err != nil {
		return err
	}
	s.txn.parts++
	s.txn.events, s.txn.bytes = nil, 0
	return nil
}

// groups projects transactions for every source: one group per
// (transaction, version) that changed something. A version that cannot
// be computed is quarantined in tx, and the others go on.
func (s *session) groups(ctx context.Context, tx eventlog.Tx, txns []*transaction) ([]eventlog.Group, error) {
	perTxn := make([][]eventlog.Group, len(txns))
	for i := range s.p.Sources {
		src := &s.p.Sources[i]
		if s.failed[src.Version] {
			continue
		}
		since := s.since[src.Version]
		// The version's first state already has what committed before it.
		skip := func(t *transaction) bool { return t.commitLSN <= since }
		if src.Join != nil {
			err := s.joinAppend(ctx, tx, src, txns, skip)
			if ve, ok := asVersionError(err); ok {
				if err := s.quarantine(ctx, tx, src, ve); err != nil {
					return nil, err
				}
				continue
			}
			if err != nil {
				return nil, err
			}
			continue
		}
		changes, err := changesFor(ctx, s.conn, src, s.rels, txns, skip)
		if ve, ok := asVersionError(err); ok {
			if err := s.quarantine(ctx, tx, src, ve); err != nil {
				return nil, err
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		for ti, c := range changes {
			if len(c) > 0 {
				t := txns[ti]
				perTxn[ti] = append(perTxn[ti], eventlog.Group{Version: src.Version, System: s.p.System,
					CommitLSN: t.commitLSN, CommitTime: t.commitTime, Layout: src.Layout(), Changes: c})
			}
		}
	}
	var groups []eventlog.Group
	for _, g := range perTxn {
		groups = append(groups, g...) // commit order
	}
	return groups, nil
}

// quarantine stops appending a version that cannot be computed: the log
// records, in tx, that its state failed (so that it is filled again once
// it can be computed, after a restart too), and the runner hears why.
func (s *session) quarantine(ctx context.Context, tx eventlog.Tx, src *Source, cause *versionError) error {
	// An error skips the reset queued after the evaluation: what the
	// publisher's code left in the session goes now.
	if err := reset(ctx, s.conn); err != nil {
		return err
	}
	problem := problemText(cause)
	if err := tx.SetFilled(ctx, src.Version, s.p.System, failedMark+problem, s.since[src.Version]); err != nil {
		return fmt.Errorf("cannot record in the event log that a version failed: %w", err)
	}
	if s.failed == nil {
		s.failed = map[eventlog.Version]bool{}
	}
	s.failed[src.Version] = true
	s.p.Logger.Error().Str("system", s.p.System).Str("publication", src.Version.Publication).Int("version", src.Version.Number).
		Str("problem", problem).Msg("publication version failed: its changes are no longer captured, the others go on")
	s.p.fail(src, cause)
	return nil
}
