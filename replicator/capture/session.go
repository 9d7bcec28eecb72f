package capture

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/rejot-dev/rejot/replicator/capture/paced"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// session is one replication session.
type session struct {
	p         *WALReader
	conn      *pgx.Conn
	repl      *pgconn.PgConn
	paced     *paced.Reader // repl's reader
	rels      map[uint32]*relation
	txn       *transaction
	confirmed uint64 // what the slot may forget
	received  uint64 // the server's WAL end, when nothing is in flight
	serverEnd uint64 // the server's WAL end, last heard
	since     map[eventlog.Version]uint64
	// Committed transactions not yet appended: projecting and appending
	// many together is what makes a backlog fast.
	pending       []*transaction
	pendingEvents int
	pendingBytes  int // of the pending transactions' values
	pendingEnd    uint64
	pendingSince  time.Time  // when the oldest pending transaction arrived
	inflight      chan error // the append in flight, nil when none
	inflightEnd   uint64     // the end of its last transaction
	// open is the log transaction of a large source transaction being
	// appended in parts.
	open eventlog.Tx
	// failed are the versions quarantined in this session (see
	// failure.go): their changes are not appended. Used by the appender.
	failed map[eventlog.Version]bool
}

// Memory bounds: a backlog is appended in batches of at most maxPending
// transactions, maxPendingEvents row changes or maxPendingBytes of values,
// and a source transaction larger than partEvents changes or partBytes of
// values is projected and appended in parts as it is decoded, into one log
// transaction that commits with it. The byte bounds are what hold when rows
// are wide: a few hundred changes of a megabyte each count as few rows.
const (
	pauseWait        = 2 * time.Millisecond   // a pause this long appends what is pending
	maxPendingWait   = 5 * time.Millisecond   // what is pending waits no longer than this
	appendPoll       = 500 * time.Microsecond // how often a due batch looks whether the append before it is done
	maxPending       = 5000
	maxPendingEvents = 50_000
	partEvents       = 10_000
	maxPendingBytes  = 64 << 20
	partBytes        = 32 << 20
)

func (s *session) loop(ctx context.Context) error {
	interval := s.p.StatusInterval
	if interval <= 0 {
		interval = time.Second
	}
	next := time.Now().Add(interval)
	// Waits for the next message are bounded by a read deadline on the
	// connection, set only when it changes, rather than a context per
	// message (a context with a deadline, and pgx watching it, cost a
	// sixth of the capture's CPU at 50k transactions a second).
	conn := s.paced
	stopWaiting := context.AfterFunc(ctx, conn.Interrupt)
	defer stopWaiting()
	defer conn.Resume()
	var readDeadline time.Time
	for {
		// One clock reading per message: at 300,000 messages in a
		// catch-up, reading it three times cost a tenth of the capture.
		now := time.Now()
		if s.txn != nil {
			conn.Lag(now.Sub(s.txn.commitTime))
		}
		if now.After(next) {
			// Asking for a reply makes the server say how far it has
			// decoded, which an idle source may confirm at once.
			if err := s.flush(ctx); err != nil {
				return err
			}
			if err := s.status(ctx, s.txn == nil); err != nil {
				return err
			}
			next = time.Now().Add(interval)
		}
		if len(s.pending) > 0 && !s.pendingSince.IsZero() && now.Sub(s.pendingSince) >= maxPendingWait {
			// Due under a steady stream: appended as soon as the append
			// before it is done, checked at every message.
			if err := s.appendIfDone(ctx); err != nil {
				return err
			}
		}
		if deadline := s.deadline(now, next); !deadline.Equal(readDeadline) {
			if err := conn.SetDeadline(deadline); err != nil {
				return err
			}
			readDeadline = deadline
		}
		msg, err := s.repl.ReceiveMessage(context.Background())
		if ctx.Err() != nil {
			conn.Resume()
			s.stop(ctx)
			return ctx.Err()
		}
		if timedOut(err) {
			conn.Lag(0) // a pause: whatever comes next is new
			// Append what is pending once the append before it is done;
			// until then decoding goes on (the batch grows, up to
			// maxPending, where commit waits).
			if err := s.appendIfDone(ctx); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		if err := s.handle(ctx, msg); err != nil {
			return err
		}
	}
}

// deadline is how long the next read may wait: until the next status
// update, or, with something pending, until it is due for appending —
// as soon as the stream pauses, and under a steady stream at least every
// maxPendingWait.
func (s *session) deadline(now, next time.Time) time.Time {
	if s.pendingEnd <= s.confirmed {
		return next
	}
	if s.pendingSince.IsZero() {
		s.pendingSince = now
	}
	deadline := now.Add(pauseWait)
	if limit := s.pendingSince.Add(maxPendingWait); limit.Before(deadline) {
		deadline = limit
	}
	if s.inflight != nil && !deadline.After(now) {
		// Due, but the append before is still running: decode on, and
		// look again shortly.
		deadline = now.Add(appendPoll)
	}
	// To a quarter of a millisecond: the deadline moves with every
	// message otherwise.
	return deadline.Truncate(250 * time.Microsecond).Add(250 * time.Microsecond)
}

// timedOut says whether err is a read that reached its deadline: the
// connection is still good.
func timedOut(err error) bool {
	var netErr net.Error
	return errors.As(err, &netErr) && netErr.Timeout()
}

// stop ends the session at a clean point: what is pending is appended and
// confirmed (a large transaction being appended in parts is left to be
// replayed).
func (s *session) stop(ctx context.Context) {
	fin, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := s.drain(fin); err != nil {
		s.p.Logger.Warn().Err(err).Msg("capture stopped without appending what was pending; it is replayed at the next start")
		return
	}
	if err := s.status(fin, false); err == nil {
		s.p.Logger.Info().Str("system", s.p.System).Str("confirmed", pglogrepl.LSN(s.confirmed).String()).Msg("capture stopped")
	}
}

func (s *session) handle(ctx context.Context, msg pgproto3.BackendMessage) error {
	switch m := msg.(type) {
	case *pgproto3.ErrorResponse:
		return pgconn.ErrorResponseToPgError(m)
	case *pgproto3.CopyData:
		switch m.Data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(m.Data[1:])
			if err != nil {
				return err
			}
			s.serverEnd = max(s.serverEnd, uint64(ka.ServerWALEnd))
			if s.txn == nil && s.pendingEnd <= s.confirmed {
				s.received = max(s.received, uint64(ka.ServerWALEnd))
			}
			if ka.ReplyRequested {
				return s.status(ctx, false)
			}
		case pglogrepl.XLogDataByteID:
			xld, err := pglogrepl.ParseXLogData(m.Data[1:])
			if err != nil {
				return err
			}
			s.serverEnd = max(s.serverEnd, uint64(xld.ServerWALEnd))
			return s.decode(ctx, xld.WALData)
		}
	}
	return nil
}

// status tells the slot how far it may forget: the end of the last
// transaction appended, or — with nothing in flight — the server's WAL
// end, so an idle source never makes the server keep WAL.
func (s *session) status(ctx context.Context, reply bool) error {
	pos := pglogrepl.LSN(max(s.confirmed, s.received))
	slot := SlotName(s.p.System)
	metricCaptureLagBytes.WithLabelValues(slot).Set(float64(max(s.serverEnd, uint64(pos)) - uint64(pos)))
	lag := 0.0
	if len(s.pending) > 0 {
		lag = time.Since(s.pending[0].commitTime).Seconds()
	} else if s.txn != nil && s.txn.parts > 0 {
		lag = time.Since(s.txn.commitTime).Seconds()
	}
	metricCaptureLagSeconds.WithLabelValues(slot).Set(lag)
	return pglogrepl.SendStandbyStatusUpdate(ctx, s.repl, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: pos, WALFlushPosition: pos, WALApplyPosition: pos, ReplyRequested: reply})
}
