package proxy

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/rejot-dev/rejot/internal/pgerr"
	"github.com/rejot-dev/rejot/sql"
)

// Names of what the sidecar creates on a client's upstream connection for
// its own queries; each is closed again straight after use.
const (
	internalStmt = "rejot_internal"
	// abortStmt never exists: describing it makes the server raise an error,
	// which aborts the client's transaction exactly as a failed statement
	// would, without touching anything the client made.
	abortStmt = "rejot call failed; transaction aborted"
)

// internalSink receives the replies to the sidecar's own messages.
type internalSink struct {
	ch chan sinkMsg
	// limit bounds the bytes of DataRows the sink holds (0: none). Past it
	// the rows are dropped as they are read and the collector told once,
	// by a message of type overBudget.
	limit int
	held  int // owned by the backend loop
	over  bool
}

// overBudget is the type of the message that says the sink's rows went
// past its limit; no server message has this type.
const overBudget byte = 0

type sinkMsg struct {
	typ  byte
	body []byte
}

func newSink() *internalSink { return &internalSink{ch: make(chan sinkMsg, 16)} }

// receive takes the upstream's current message, of n bytes: a DataRow past
// the limit is skipped unread.
func (k *internalSink) receive(s *session, typ byte, n int) error {
	if k.limit > 0 && typ == 'D' {
		if k.over || k.held+n > k.limit {
			first := !k.over
			k.over = true
			if err := s.ur.skip(n); err != nil || !first {
				return err
			}
			return k.deliver(s.ctx, overBudget, nil)
		}
		k.held += n
	}
	body, err := s.ur.ownedBody(n)
	if err != nil {
		return err
	}
	return k.deliver(s.ctx, typ, body)
}

// deliver hands a message over; body is the collector's from then on.
func (k *internalSink) deliver(ctx context.Context, typ byte, body []byte) error {
	select {
	case k.ch <- sinkMsg{typ, body}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// collect reads the replies to messages of the given kinds, stopping at
// the last one's completion or at an error (after which the server sends
// nothing more for them).
func (k *internalSink) collect(ctx context.Context, kinds []byte, each func(sinkMsg)) (*pgproto3.ErrorResponse, error) {
	for i := 0; i < len(kinds); {
		var m sinkMsg
		select {
		case m = <-k.ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if m.typ == 'E' {
			var e pgproto3.ErrorResponse
			if err := e.Decode(m.body); err != nil {
				return nil, err
			}
			return &e, nil
		}
		each(m)
		if completes(kinds[i], m.typ) {
			i++
		}
	}
	return nil, nil
}

// sendInternal sends messages whose replies go to sink.
func (s *session) sendInternal(sink *internalSink, msgs ...[]byte) ([]byte, error) {
	kinds := make([]byte, 0, len(msgs))
	for _, m := range msgs {
		s.expect(m[0], sink, nil)
		kinds = append(kinds, m[0])
		if err := s.send(m[0], m[1:]); err != nil {
			return nil, err
		}
	}
	if err := s.send('H', nil); err != nil {
		return nil, err
	}
	return kinds, s.uw.Flush()
}

// fail reports a failed call: it aborts the client's upstream transaction
// (so the failure has the effect of any failed statement: the transaction
// block is aborted, an implicit one rolled back, the rest of the batch
// skipped), then sends the error.
func (s *session) fail(callErr error, query string) error {
	s.mu.Lock()
	aborted := s.skipping // a query of the call's own failed: the server already skips to Sync
	s.mu.Unlock()
	if !aborted {
		sink := newSink()
		kinds, err := s.sendInternal(sink, append([]byte{'D', 'S'}, abortStmt+"\x00"...))
		if err != nil {
			return err
		}
		if _, err := sink.collect(s.ctx, kinds, func(sinkMsg) {}); err != nil {
			return err
		}
	}
	s.log.Info().Err(callErr).Msg("rejot call failed")
	return s.reply(appendEncoded(nil, errorResponse(callErr, query)))
}

// execute runs an intercepted statement.
func (s *session) execute(st sql.Statement, params []*string) (*sql.Result, error) {
	if st.Err != nil {
		return nil, st.Err
	}
	if s.inAbortedTransaction() {
		return nil, errAborted
	}
	res, err := s.srv.Executor.Execute(s.ctx, st.Call, params, upstreamSession{s})
	if err == nil {
		s.log.Info().Str("function", st.Call.Function).Msg("rejot call")
	}
	return res, err
}

var errAborted = &pgerr.Error{Code: pgerr.InFailedSQLTransaction,
	Message: "current transaction is aborted, commands ignored until end of transaction block"}

func (s *session) inAbortedTransaction() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.aborted
}

// upstreamSession runs the sidecar's queries inside the client's own
// upstream session, between the client's messages.
type upstreamSession struct{ s *session }

// Query runs one statement with text parameters and returns text rows. The
// caller has drained the connection first.
func (u upstreamSession) Query(ctx context.Context, query string, params ...*string) (*sql.Rows, error) {
	bind := appendCString(appendCString([]byte{'B'}, internalStmt), internalStmt)
	bind = appendInt16(appendInt16(bind, 0), int16(len(params)))
	for _, p := range params {
		if p == nil {
			bind = appendInt32(bind, -1)
			continue
		}
		bind = append(appendInt32(bind, int32(len(*p))), *p...)
	}
	bind = appendInt16(bind, 0)
	rows := &sql.Rows{}
	err := u.s.runInternal(ctx, newSink(), u.s.executeMsgs(parseMsg(query, nil), bind), func(m sinkMsg) { addRow(rows, m) })
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return nil, pgerr.FromPgError(pe)
	}
	if err != nil {
		return nil, err
	}
	return rows, nil
}

func closeMsg(kind byte, name string) []byte { return appendCString([]byte{'C', kind}, name) }

func addRow(rows *sql.Rows, m sinkMsg) {
	switch m.typ {
	case 'T':
		var rd pgproto3.RowDescription
		if rd.Decode(m.body) == nil {
			for _, f := range rd.Fields {
				rows.Columns = append(rows.Columns, string(f.Name))
				rows.Fields = append(rows.Fields, sql.Field{Name: string(f.Name), TableOID: f.TableOID,
					Column: int16(f.TableAttributeNumber), TypeOID: f.DataTypeOID, TypeMod: f.TypeModifier})
			}
		}
	case 'D':
		var dr pgproto3.DataRow
		if dr.Decode(m.body) == nil {
			row := make([]*string, len(dr.Values))
			for i, v := range dr.Values {
				if v != nil {
					str := string(v)
					row[i] = &str
				}
			}
			rows.Values = append(rows.Values, row)
		}
	}
}
