package proxy

import (
	"net"
	"sync"
)

// fastConn is a session while the event loop relays it.
type fastConn struct {
	s        *session
	cfd, ufd int
	cin, uin []byte // read, not yet relayed (a partial frame); usually empty
	toUp     []byte // relayed, not yet written
	toClient []byte
	cpass    int // bytes of a large client frame still to pass through
	upass    int
	cmask    uint32 // current epoll interest
	umask    uint32
	done     chan fastResult

	finished bool // removed from the loop

	mu     sync.Mutex // guards closed against session.close from other goroutines
	closed bool
}

type fastResult struct {
	handback bool  // the goroutine relay takes the session over
	err      error // why the session ended
}

const (
	fastInlineMax = 256 << 10 // Query/Parse bodies the loop inspects itself
	fastReadSize  = 64 << 10
)

// fastEligible: both sides are plain sockets (TLS needs Go's crypto/tls).
func (s *session) fastEligible() bool {
	plain := func(c net.Conn) bool {
		switch c.(type) {
		case *net.TCPConn, *net.UnixConn:
			return true
		}
		return false
	}
	return plain(s.client) && plain(s.up)
}
