package proxy

import (
	"encoding/binary"

	"github.com/rejot-dev/rejot/sql"
)

// handback: the goroutine relay takes the session from here.
var handback = fastResult{handback: true}

// readClient reads and relays client frames. Anything the loop does not
// relay plainly — a statement that mentions rejot, a large query, a
// Terminate, a malformed frame, the end of input — stops the loop's work on
// the session at that frame's start, for the goroutine relay to handle.
func (l *eventLoop) readClient(fc *fastConn) (int, fastResult, bool) {
	n, err := readFD(fc.cfd, &fc.cin, 5)
	if err != nil {
		if fc.cpass > 0 {
			return 0, fastResult{err: err}, true // gone in the middle of a message
		}
		return 0, handback, true
	}
	if n == 0 {
		return 0, fastResult{}, false
	}
	res, stop := fc.relayClient()
	return n, res, stop
}

func (fc *fastConn) relayClient() (fastResult, bool) {
	s := fc.s
	in := fc.cin
	for {
		if fc.cpass > 0 {
			take := min(fc.cpass, len(in))
			fc.toUp = append(fc.toUp, in[:take]...)
			in, fc.cpass = in[take:], fc.cpass-take
			if fc.cpass > 0 {
				break
			}
		}
		if len(in) < 5 {
			break
		}
		typ, n := in[0], int(int32(binary.BigEndian.Uint32(in[1:5])))-4
		if n < 0 || n > s.srv.maxMessage() || typ == 'X' {
			fc.cin = fc.cin[:copy(fc.cin, in)]
			return handback, true
		}
		if typ == 'Q' || typ == 'P' {
			if n+5 > fastInlineMax {
				fc.cin = fc.cin[:copy(fc.cin, in)]
				return handback, true
			}
			if len(in) < n+5 {
				break
			}
			if s.intercept && sql.MentionsRejot(in[5:n+5]) {
				fc.cin = fc.cin[:copy(fc.cin, in)]
				return handback, true
			}
		}
		s.expect(typ, nil, nil)
		whole := min(n+5, len(in))
		fc.toUp = append(fc.toUp, in[:whole]...)
		in, fc.cpass = in[whole:], n+5-whole
	}
	fc.cin = fc.cin[:copy(fc.cin, in)]
	return fastResult{}, false
}

// readUpstream reads and relays upstream frames, keeping the session's
// reply queue and transaction state as the goroutine relay does.
func (l *eventLoop) readUpstream(fc *fastConn) (int, fastResult, bool) {
	n, err := readFD(fc.ufd, &fc.uin, 5)
	if err != nil {
		return 0, handback, true
	}
	if n == 0 {
		return 0, fastResult{}, false
	}
	return n, fastResult{}, fc.relayUpstream()
}

func (fc *fastConn) relayUpstream() (stop bool) {
	s := fc.s
	in := fc.uin
	for {
		if fc.upass > 0 {
			take := min(fc.upass, len(in))
			fc.toClient = append(fc.toClient, in[:take]...)
			in, fc.upass = in[take:], fc.upass-take
			if fc.upass > 0 {
				break
			}
		}
		if len(in) < 5 {
			break
		}
		typ, n := in[0], int(int32(binary.BigEndian.Uint32(in[1:5])))-4
		if n < 0 {
			fc.uin = fc.uin[:copy(fc.uin, in)]
			return true
		}
		peek := 0
		if typ == 'Z' || typ == 'C' {
			peek = min(n, 16)
		}
		if len(in) < 5+peek {
			break
		}
		s.mu.Lock()
		s.observe(typ, in[5:5+peek])
		if len(s.pending) > 0 {
			s.advance(typ)
		}
		s.mu.Unlock()
		whole := min(n+5, len(in))
		fc.toClient = append(fc.toClient, in[:whole]...)
		in, fc.upass = in[whole:], n+5-whole
	}
	fc.uin = fc.uin[:copy(fc.uin, in)]
	return false
}
