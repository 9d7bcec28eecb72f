//go:build linux

package proxy

import (
	"encoding/binary"
	"unsafe"

	"github.com/rejot-dev/rejot/sql"
	"golang.org/x/sys/unix"
)

// handback: the goroutine relay takes the session from here.
var handback = fastResult{handback: true}

// readClient reads and relays client frames. Anything the loop does not
// relay plainly — a statement that mentions rejot, a large query, a
// Terminate, a malformed frame, the end of input — stops the loop's work on
// the session at that frame's start, for the goroutine relay to handle.
func (l *eventLoop) readClient(fc *fastConn) (fastResult, bool) {
	in, err := l.fill(fc.cfd, fc.cin)
	if err != nil {
		if fc.cpass > 0 {
			return fastResult{err: err}, true // gone in the middle of a message
		}
		return handback, true
	}
	if in == nil {
		return fastResult{}, false
	}
	rest, stop := fc.relayClient(in)
	fc.cin = keep(fc.cin, rest)
	if stop {
		return handback, true
	}
	return fastResult{}, false
}

// relayClient relays the whole frames of in and returns what is left: a
// partial frame, or the frame the goroutine relay must handle (stop).
func (fc *fastConn) relayClient(in []byte) (rest []byte, stop bool) {
	s := fc.s
	for {
		if fc.cpass > 0 {
			take := min(fc.cpass, len(in))
			fc.toUp = append(fc.toUp, in[:take]...)
			in, fc.cpass = in[take:], fc.cpass-take
			if fc.cpass > 0 {
				return in, false
			}
		}
		if len(in) < 5 {
			return in, false
		}
		typ, n := in[0], int(int32(binary.BigEndian.Uint32(in[1:5])))-4
		if n < 0 || n > s.srv.maxMessage() || typ == 'X' {
			return in, true
		}
		if typ == 'Q' || typ == 'P' {
			if n+5 > fastInlineMax {
				return in, true
			}
			if len(in) < n+5 {
				return in, false
			}
			if s.intercept && (sql.MentionsRejot(in[5:n+5]) || s.guarding() && sql.MentionsDDL(in[5:n+5])) {
				return in, true
			}
		}
		s.expect(typ, nil, nil)
		whole := min(n+5, len(in))
		fc.toUp = append(fc.toUp, in[:whole]...)
		in, fc.cpass = in[whole:], n+5-whole
	}
}

// readUpstream reads and relays upstream frames, keeping the session's
// reply queue and transaction state as the goroutine relay does.
func (l *eventLoop) readUpstream(fc *fastConn) (fastResult, bool) {
	in, err := l.fill(fc.ufd, fc.uin)
	if err != nil {
		return handback, true
	}
	if in == nil {
		return fastResult{}, false
	}
	rest, bad := fc.relayUpstream(in)
	fc.uin = keep(fc.uin, rest)
	if bad {
		return fastResult{err: &ProtocolError{Msg: "invalid message length from the upstream"}}, true
	}
	return fastResult{}, false
}

func (fc *fastConn) relayUpstream(in []byte) (rest []byte, bad bool) {
	s := fc.s
	for {
		if fc.upass > 0 {
			take := min(fc.upass, len(in))
			fc.toClient = append(fc.toClient, in[:take]...)
			in, fc.upass = in[take:], fc.upass-take
			if fc.upass > 0 {
				return in, false
			}
		}
		if len(in) < 5 {
			return in, false
		}
		typ, n := in[0], int(int32(binary.BigEndian.Uint32(in[1:5])))-4
		if n < 0 {
			return in, true
		}
		peek := 0
		if typ == 'Z' || typ == 'C' {
			peek = min(n, 16)
		}
		if len(in) < 5+peek {
			return in, false
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
}

// fill reads what fd has. With nothing pending it reads into the loop's
// scratch buffer, so sessions whose frames arrive whole hold no input
// memory; otherwise it appends to what is pending. nil, nil: nothing came.
func (l *eventLoop) fill(fd int, pending []byte) ([]byte, error) {
	dst := l.scratch[:0]
	if len(pending) > 0 {
		dst = pending
		if cap(dst)-len(dst) < 4096 {
			grown := make([]byte, len(dst), max(2*cap(dst), len(dst)+fastReadSize))
			copy(grown, dst)
			dst = grown
		}
	}
	spare := dst[len(dst):cap(dst)]
	r, _, errno := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&spare[0])), uintptr(len(spare)))
	switch {
	case errno == unix.EAGAIN || errno == unix.EINTR:
		return nil, nil
	case errno != 0:
		return nil, errno
	case r == 0:
		return nil, errEOF
	}
	return dst[:len(dst)+int(r)], nil
}

// keep stores the unrelayed rest of the input as the session's pending
// bytes (rest may alias the scratch buffer or pending itself).
func keep(pending, rest []byte) []byte {
	if len(rest) == 0 {
		if cap(pending) > fastReadSize {
			return nil
		}
		return pending[:0]
	}
	return append(pending[:0], rest...)
}
