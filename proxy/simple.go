package proxy

import (
	"bytes"
	"encoding/binary"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/rejot-dev/rejot/internal/pgerr"
	"github.com/rejot-dev/rejot/sql"
)

// translation marks replies to an ordinary statement of a simple query that
// the sidecar runs through the extended protocol: their error positions are
// shifted back to the whole query string, and the extended-only replies are
// dropped, so the client sees exactly what a simple query returns.
type translation struct {
	offset int
	// internal marks the sidecar's own statement (the contract guard):
	// only an error of it reaches the client.
	internal bool
}

// onQuery handles a simple Query message.
func (s *session) onQuery(n int) error {
	if n > s.srv.maxIntercepted() {
		return s.onLarge('Q', n)
	}
	body, err := s.cr.body(n)
	if err != nil {
		return err
	}
	// A query string ends at its only NUL; anything else is the server's to refuse.
	if !s.intercept || bytes.IndexByte(body, 0) != len(body)-1 || !s.isAuthed() {
		return s.forwardBody('Q', body)
	}
	rejot, ddl := sql.MentionsRejot(body), s.guarding() && sql.MentionsDDL(body)
	if !rejot && !ddl {
		return s.forwardBody('Q', body)
	}
	query := string(body[:len(body)-1])
	stmts, err := sql.Split(query)
	if err != nil || !anyIntercepted(stmts) && !(ddl && anyGuarded(stmts)) {
		return s.forwardBody('Q', body)
	}
	if done, err := s.ready('Q', body); done {
		return err
	}
	return s.runSimple(query, stmts)
}

func anyIntercepted(stmts []sql.Statement) bool {
	for _, st := range stmts {
		if st.Intercepted() {
			return true
		}
	}
	return false
}

// runSimple runs a query string that calls the API. Its ordinary statements
// go upstream as extended-protocol messages with one Sync at the end, which
// keeps Postgres's semantics for a multi-statement query: one implicit
// transaction, and after an error the rest is skipped and rolled back. The
// calls are answered in between, in order.
func (s *session) runSimple(query string, stmts []sql.Statement) error {
	for _, st := range stmts {
		if st.CopyFromStdin {
			return s.refuseQuery(query, &pgerr.Error{Code: pgerr.FeatureNotSupported,
				Message:  "COPY FROM STDIN cannot be combined with rejot calls in one query string",
				Hint:     "Send the COPY as a query of its own.",
				Position: st.Offset + 1})
		}
	}
	guard := s.guarding()
	for _, st := range stmts {
		if !st.Intercepted() {
			if st.Guarded && guard {
				if err := s.sendGuard(); err != nil {
					return err
				}
			}
			if err := s.sendTranslated(st.Text(query), charOffset(query, st.Offset)); err != nil {
				return err
			}
			continue
		}
		skip, _, err := s.drain()
		if err != nil {
			return err
		}
		if skip {
			break
		}
		ok, err := s.callSimple(query, st)
		if err != nil {
			return err
		}
		if !ok {
			break
		}
	}
	s.expect('S', nil, nil)
	if err := s.send('S', nil); err != nil {
		return err
	}
	return s.uw.Flush()
}

// refuseQuery answers a whole query string with an error and the upstream's
// ReadyForQuery.
func (s *session) refuseQuery(query string, e *pgerr.Error) error {
	if err := s.fail(e, query); err != nil {
		return err
	}
	s.expect('S', nil, nil)
	if err := s.send('S', nil); err != nil {
		return err
	}
	return s.uw.Flush()
}

// callSimple answers one call of a simple query: a row description, the
// rows and the command tag. ok is false when the call failed (the error has
// been reported and the upstream transaction aborted).
func (s *session) callSimple(query string, st sql.Statement) (ok bool, err error) {
	if st.Relations && st.Err == nil {
		return s.relationsSimple(query, st)
	}
	res, callErr := s.execute(st, nil)
	if callErr != nil {
		return false, s.fail(callErr, query)
	}
	out := []byte(nil)
	if len(res.Columns) > 0 {
		out = appendEncoded(out, rowDescription(res.Columns, nil))
	}
	out, encErr := dataRows(out, s.typeMap(), res, nil)
	if encErr != nil {
		return false, s.fail(encErr, query)
	}
	out = appendEncoded(out, &pgproto3.CommandComplete{CommandTag: []byte(res.Tag)})
	return true, s.reply(out)
}

// sendTranslated sends one ordinary statement of a simple query as
// Parse/Bind/Describe/Execute on the unnamed statement and portal, which a
// simple query would have replaced anyway.
func (s *session) sendTranslated(text string, offset int) error {
	tr := &translation{offset: offset}
	parse := append(append([]byte{0}, text...), 0, 0, 0)
	bind := []byte{0, 0, 0, 0, 0, 0, 0, 0}
	msgs := []struct {
		typ  byte
		body []byte
	}{{'P', parse}, {'B', bind}, {'D', []byte{'P', 0}}, {'E', []byte{0, 0, 0, 0, 0}}}
	for _, m := range msgs {
		s.expect(m.typ, nil, tr)
		if err := s.send(m.typ, m.body); err != nil {
			return err
		}
	}
	return nil
}

// relayTranslated relays a reply to a translated statement.
func (s *session) relayTranslated(tr *translation, typ byte, n int) error {
	if tr.internal && typ != 'E' {
		return s.ur.skip(n)
	}
	switch typ {
	case '1', '2', 'n': // ParseComplete, BindComplete, NoData: not in the simple protocol
		return s.ur.skip(n)
	case 'E':
		body, err := s.ur.body(n)
		if err != nil {
			return err
		}
		var e pgproto3.ErrorResponse
		if err := e.Decode(body); err != nil || e.Position == 0 {
			_, err := s.cw.Write(appendMessage(nil, 'E', body))
			return err
		}
		e.Position += int32(tr.offset)
		_, err = s.cw.Write(appendEncoded(nil, &e))
		return err
	}
	return s.ur.copyTo(s.cw, n)
}

// charOffset is the number of characters before byte offset off.
func charOffset(query string, off int) int {
	if utf8.ValidString(query[:off]) {
		return utf8.RuneCountInString(query[:off])
	}
	return off
}

// reply writes the sidecar's own messages to the client, in order with the
// upstream's (callers drain first).
func (s *session) reply(b []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if _, err := s.cw.Write(b); err != nil {
		return err
	}
	return s.cw.Flush()
}

func appendInt16(b []byte, v int16) []byte    { return binary.BigEndian.AppendUint16(b, uint16(v)) }
func appendInt32(b []byte, v int32) []byte    { return binary.BigEndian.AppendUint32(b, uint32(v)) }
func appendCString(b []byte, s string) []byte { return append(append(b, s...), 0) }
