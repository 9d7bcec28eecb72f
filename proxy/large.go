package proxy

import (
	"bytes"
	"fmt"
	"io"

	"github.com/rejot-dev/rejot/internal/pgerr"
	"github.com/rejot-dev/rejot/sql"
)

// A message the sidecar answers itself is held whole and parsed, so any
// login role could make the sidecar hold a gigabyte per session with one.
// Such messages are bounded (Server.MaxInterceptedSize); ordinary ones of
// any size Postgres takes are still relayed, but a message over the bound
// is never held: the sidecar reads a prefix to decide whose it is, then
// streams it upstream or discards it.
//
// For a Query or Parse the test is the one that keeps ordinary traffic away
// from the parser, a mention of rejot, which only parsing could refine. A
// mention in the prefix refuses the message with an ERROR, and the session
// goes on; a mention found while streaming comes too late to take back what
// was relayed, so the connection is closed with a FATAL error of the same
// code (the upstream discards the incomplete message).
const largePrefix = 1 << 20

// onLarge handles a client message larger than the intercept bound.
func (s *session) onLarge(typ byte, n int) error {
	if _, err := s.cr.r.Discard(5); err != nil {
		return err
	}
	head := make([]byte, min(n, largePrefix))
	if _, err := io.ReadFull(s.cr.r, head); err != nil {
		return err
	}
	watch := s.intercept && s.isAuthed() && (typ == 'Q' || typ == 'P')
	if s.intercept && s.isAuthed() && s.isLocal(typ, head) {
		return s.refuseLarge(typ, n, head)
	}
	// As for a small message: the upstream's statement or portal of this
	// name replaces the sidecar's.
	name, _, _ := cstring(head)
	switch typ {
	case 'P':
		delete(s.stmts, name)
	case 'B':
		delete(s.portals, name)
	}
	return s.relayLarge(typ, n, head, watch)
}

// isLocal says whether the start of a large message shows it is the
// sidecar's to answer.
func (s *session) isLocal(typ byte, head []byte) bool {
	switch typ {
	case 'Q':
		return sql.MentionsRejot(head)
	case 'P':
		if i := bytes.IndexByte(head, 0); i >= 0 {
			head = head[i+1:] // the statement's name is not its text
		}
		return sql.MentionsRejot(head)
	case 'B':
		_, rest, _ := cstring(head)
		stmt, _, ok := cstring(rest)
		_, local := s.stmts[stmt]
		return ok && local
	case 'D', 'C':
		name, _, ok := cstring(head[1:])
		_, _, local := s.lookup(head[0], name)
		return ok && local
	case 'E':
		name, _, ok := cstring(head)
		_, local := s.portals[name]
		return ok && local
	}
	return false
}

// refuseLarge answers a large message of the sidecar's with 54000, after
// discarding the rest of it unread; it is ignored as Postgres would when
// the server skips to Sync, and relayed when the server waits for COPY
// data (the server judges it then).
func (s *session) refuseLarge(typ byte, n int, head []byte) error {
	skip, copying, err := s.drain()
	switch {
	case err != nil:
		return err
	case copying:
		return s.relayLarge(typ, n, head, false)
	}
	if _, err := io.CopyN(io.Discard, s.cr.r, int64(n-len(head))); err != nil {
		return err
	}
	if skip {
		return nil
	}
	e := &pgerr.Error{Code: pgerr.ProgramLimitExceeded, Message: s.tooLarge(n),
		Hint: "Send rejot calls as statements of their own, with their values in a message smaller than that."}
	if typ == 'Q' {
		return s.refuseQuery("", e)
	}
	return s.fail(e, "")
}

func (s *session) tooLarge(n int) string {
	return fmt.Sprintf("a message the sidecar answers itself (a rejot call, or a statement that mentions rejot) may be at most %d MB; this one is %d bytes",
		s.srv.maxIntercepted()>>20, n)
}

// relayLarge relays a large message whose first bytes (head) were read,
// streaming the rest; watch closes the session if the rest mentions rejot.
func (s *session) relayLarge(typ byte, n int, head []byte, watch bool) error {
	s.expect(typ, nil, nil)
	var h [5]byte
	h[0] = typ
	putUint32(h[1:], uint32(n+4))
	if _, err := s.uw.Write(h[:]); err != nil {
		return err
	}
	if _, err := s.uw.Write(head); err != nil {
		return err
	}
	var w io.Writer = s.uw
	if watch {
		g := &mentionGuard{w: s.uw, s: s, n: n}
		g.keep(head)
		w = g
	}
	_, err := io.CopyN(w, s.cr.r, int64(n-len(head)))
	return err
}

// mentionGuard passes bytes on until they mention rejot, across the
// boundaries of writes.
type mentionGuard struct {
	w    io.Writer
	s    *session
	n    int
	tail []byte // the last bytes written, for a mention split across writes
}

func (g *mentionGuard) Write(p []byte) (int, error) {
	edge := append(g.tail, p[:min(len(p), 4)]...)
	if sql.MentionsRejot(edge) || sql.MentionsRejot(p) {
		return 0, &ProtocolError{Code: pgerr.ProgramLimitExceeded, Msg: g.s.tooLarge(g.n)}
	}
	g.keep(p)
	return g.w.Write(p)
}

func (g *mentionGuard) keep(p []byte) {
	g.tail = append(g.tail[:0], p[max(0, len(p)-4):]...)
}
