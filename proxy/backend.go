package proxy

import (
	"bytes"
	"encoding/binary"
	"io"
	"strings"
	"time"
)

// backendLoop relays upstream messages to the client (or to the sidecar's
// own queries) until the upstream closes. It holds the client writer while
// upstream data is buffered and flushes before it would block, so a burst
// of replies costs one write.
func (s *session) backendLoop() error {
	locked := false
	defer func() {
		if locked {
			s.cw.Flush()
			s.wmu.Unlock()
		}
	}()
	if len(s.pendingClient) > 0 || s.upass > 0 {
		s.wmu.Lock()
		locked = true
	}
	if len(s.pendingClient) > 0 {
		if _, err := s.cw.Write(s.pendingClient); err != nil {
			return err
		}
		s.pendingClient = nil
	}
	if s.upass > 0 {
		// The rest of a message the event loop had begun to relay.
		if _, err := io.CopyN(s.cw, s.ur.r, int64(s.upass)); err != nil {
			return err
		}
		s.upass = 0
	}
	for {
		if locked && s.ur.r.Buffered() < 5 {
			err := s.cw.Flush()
			s.wmu.Unlock()
			locked = false
			if err != nil {
				return err
			}
		}
		typ, n, err := s.ur.header()
		if err != nil {
			return err
		}
		if !locked {
			s.wmu.Lock()
			locked = true
		}
		if err := s.dispatch(typ, n); err != nil {
			return err
		}
	}
}

// dispatch routes one upstream message and advances the pending queue.
func (s *session) dispatch(typ byte, n int) error {
	var peeked []byte
	if typ == 'Z' || typ == 'C' || (typ == 'R' && n >= 4) || (typ == 'K' && n <= 256) {
		b, err := s.ur.r.Peek(5 + min(n, 256))
		if err != nil {
			return err
		}
		peeked = b[5:]
	}
	s.mu.Lock()
	var head expectation
	has := len(s.pending) > 0
	if has {
		head = s.pending[0]
	}
	authed := s.authed
	s.observe(typ, peeked)
	if has {
		s.advance(typ)
	}
	s.mu.Unlock()

	switch {
	case typ == 'A' || (typ == 'S' && authed):
		return s.ur.copyTo(s.cw, n) // asynchronous: always the client's
	case !authed && typ == 'R' && n >= 4 && binary.BigEndian.Uint32(peeked) == 10:
		return s.relaySASLMechanisms(n)
	case has && head.sink != nil:
		return head.sink.receive(s, typ, n)
	case has && head.tr != nil:
		return s.relayTranslated(head.tr, typ, n)
	default:
		return s.ur.copyTo(s.cw, n)
	}
}

// observe tracks the session state that replies reveal.
func (s *session) observe(typ byte, peeked []byte) {
	switch typ {
	case 'Z':
		if len(peeked) > 0 {
			s.txStatus = peeked[0]
		}
		if s.txStatus == 'I' {
			s.idleSince = time.Now()
		}
		s.copyIn = false
		s.aborted = s.txStatus == 'E'
		s.markAuthed()
	case 'K':
		s.cancelKey = append([]byte(nil), peeked...)
	case 'G':
		// COPY FROM STDIN: the server now reads only COPY messages; wake a
		// drain waiting for replies that will not come until the data does.
		s.copyIn = true
		s.wake()
	case 'C':
		if s.copyIn {
			s.copyIn = false
		}
		// Only ROLLBACK (or COMMIT, which reports ROLLBACK) ends an aborted block.
		if s.aborted && bytes.HasPrefix(peeked, []byte("ROLLBACK")) {
			s.aborted = false
		}
	}
}

// advance pops the expectations that typ completes.
func (s *session) advance(typ byte) {
	head := s.pending[0]
	switch {
	case typ == 'E' && extended(head.kind):
		// The server now skips every message up to the next Sync.
		i := 1
		for i < len(s.pending) && s.pending[i].kind != 'S' {
			i++
		}
		// Without a Sync queued, what the client sends next is skipped too.
		s.skipping = i == len(s.pending)
		s.popN(i)
		s.copyIn = false
	case completes(head.kind, typ):
		s.popN(1)
	}
	if len(s.pending) == 0 {
		s.wake()
	}
}

// wake releases a drain waiting for replies.
func (s *session) wake() {
	if s.drained != nil {
		close(s.drained)
		s.drained = nil
	}
}

func (s *session) popN(n int) {
	copy(s.pending, s.pending[n:])
	for i := len(s.pending) - n; i < len(s.pending); i++ {
		s.pending[i] = expectation{}
	}
	s.pending = s.pending[:len(s.pending)-n]
}

func extended(kind byte) bool { return kind != 'Q' && kind != 'F' && kind != 'S' }

// completes reports whether reply typ is the last reply to a message of kind.
func completes(kind, typ byte) bool {
	switch kind {
	case 'Q', 'F', 'S':
		return typ == 'Z'
	case 'P':
		return typ == '1'
	case 'B':
		return typ == '2'
	case 'C':
		return typ == '3'
	case 'D':
		return typ == 'T' || typ == 'n'
	case 'E':
		return typ == 'C' || typ == 'I' || typ == 's'
	}
	return false
}

// relaySASLMechanisms relays AuthenticationSASL without the channel-binding
// mechanisms: the client's TLS session ends at the sidecar, so a binding to
// it could never match the upstream's.
func (s *session) relaySASLMechanisms(n int) error {
	body, err := s.ur.body(n)
	if err != nil {
		return err
	}
	out := append([]byte(nil), body[:4]...)
	for _, mech := range bytes.Split(body[4:], []byte{0}) {
		if len(mech) == 0 || strings.HasSuffix(string(mech), "-PLUS") {
			continue
		}
		out = append(append(out, mech...), 0)
	}
	out = append(out, 0)
	_, err = s.cw.Write(appendMessage(nil, 'R', out))
	return err
}
