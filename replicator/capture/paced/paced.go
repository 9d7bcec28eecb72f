// Package paced reads a logical replication stream from a socket in a way
// that keeps the sending walsender cheap (see Reader). The waits on the
// socket's queue and its low-water mark are Linux's (paced_linux.go);
// elsewhere the reader only pauses.
package paced

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"time"
)

// Reader reads the replication stream. The server sends each message
// (a BEGIN, a row, a COMMIT) with a system call of its own as soon as the
// client's receive window has room, so how the client reads decides what
// both sides pay:
//
//   - Live, after a read that found little (less than pacedSmall), it
//     waits pacedPause before reading again, so the messages sent
//     meanwhile come in one system call rather than one each; the pause
//     adds at most pacedPause to a change's latency. While it waits, the
//     socket's low-water mark (SO_RCVLOWAT) is raised: the kernel would
//     otherwise wake the process for each message that arrives (Go's
//     poller, though no one reads), which took a third of the capture's
//     CPU in a catch-up.
//   - Behind — decoding transactions that committed more than pacedBehind
//     ago (the stream says, see Lag) — and when the server is on this
//     host, it waits until pacedFull bytes are queued (or bulkPause), even
//     when some are there already: the server then queues what it sends,
//     cheaply, and sends it in large pieces when the window opens. A
//     client that keeps its window open makes the server send every
//     message on its own, and on loopback the sender also runs the
//     receiver's TCP work: the walsender used up to twice the CPU for the
//     capture that it used for Postgres's own apply worker, which reads
//     slowly. (A reader that took whatever had come while it processed
//     the last piece kept the window open, and so did one that judged
//     "behind" by the size of its last read: a walsender short of CPU
//     sent less, the reads shrank and the window stayed open.) A read
//     that found less than pacedBig is followed by a pacedHold before the
//     wait: the server had sent message by message, each in a packet
//     whose overhead fills the socket's buffer after a few kB, so the
//     next window would fill the same way; held shut, it makes the server
//     queue, and what it queues goes out in large packets. The window
//     is bounded to pacedBuffer so that filling it takes milliseconds
//     (left alone, the kernel grew it to 1.5 MB). A remote server keeps
//     the kernel's sizing: its receiving side runs on this host, not in
//     the walsender, and a small window would cost throughput on a long
//     round trip.
type Reader struct {
	r      io.Reader
	conn   net.Conn
	sock   syscall.RawConn // nil: no low-water mark to raise
	last   int             // bytes the last read returned
	bound  bool            // the receive window is bounded (a server on this host)
	behind atomic.Bool     // the stream is behind (Lag)

	deadline time.Time   // the caller's
	stopped  atomic.Bool // Interrupt was called
}

const (
	pacedSmall  = 16 << 10
	pacedPause  = 500 * time.Microsecond
	pacedBuffer = 64 << 10
	pacedFull   = 32 << 10
	pacedBig    = 64 << 10
	pacedHold   = 2 * time.Millisecond
	pacedBehind = 50 * time.Millisecond
	bulkPause   = 10 * time.Millisecond
)

// New makes a Reader of conn, the replication connection's socket; Wrap
// sets what it reads the stream from.
func New(conn net.Conn) *Reader {
	p := &Reader{conn: conn}
	if s, ok := conn.(syscall.Conn); ok {
		p.sock, _ = s.SyscallConn()
	}
	if tcp, ok := conn.(*net.TCPConn); ok {
		if ip, ok := tcp.RemoteAddr().(*net.TCPAddr); ok && ip.IP.IsLoopback() {
			p.bound = tcp.SetReadBuffer(pacedBuffer) == nil
		}
	}
	return p
}

// SetDeadline bounds the reads; a zero time removes the bound.
func (p *Reader) SetDeadline(t time.Time) error {
	p.deadline = t
	return p.setReadDeadline(t)
}

// setReadDeadline sets the connection's read deadline, unless Interrupt
// was called: then, even if it was called meanwhile, the deadline is now.
func (p *Reader) setReadDeadline(t time.Time) error {
	if p.stopped.Load() {
		return nil
	}
	err := p.conn.SetReadDeadline(t)
	if p.stopped.Load() {
		return p.conn.SetReadDeadline(time.Now())
	}
	return err
}

// Interrupt ends the read in progress, and every later one until Resume,
// at once with a timeout; it may be called from another goroutine.
func (p *Reader) Interrupt() {
	p.stopped.Store(true)
	p.conn.SetReadDeadline(time.Now())
}

// Resume undoes Interrupt and removes the deadline.
func (p *Reader) Resume() {
	p.stopped.Store(false)
	p.deadline = time.Time{}
	p.conn.SetReadDeadline(time.Time{})
}

// Lag tells the reader how long ago the transaction being decoded
// committed; zero when the stream has paused.
func (p *Reader) Lag(d time.Duration) {
	if behind := d > pacedBehind; behind != p.behind.Load() {
		p.behind.Store(behind)
	}
}

func (p *Reader) Read(b []byte) (int, error) {
	if p.bound && p.behind.Load() && !p.stopped.Load() {
		if p.last < pacedBig {
			// The window filled with little: the server sent each
			// message as it came, in a packet of its own, and such
			// packets fill the socket's buffer with overhead. Hold the
			// window shut a moment: what the server sends meanwhile is
			// queued on its side in large pieces, and goes out as such.
			time.Sleep(pacedHold)
		}
		// A read returns whatever is there, whatever the low-water mark,
		// so the wait is on the socket's queue: the kernel wakes the
		// poller once pacedFull bytes are in, and each wake-up checks.
		setLowWater(p.sock, pacedFull)
		p.setReadDeadline(time.Now().Add(bulkPause))
		err := p.sock.Read(func(fd uintptr) bool { return queued(fd) >= pacedFull })
		setLowWater(p.sock, 1)
		p.setReadDeadline(p.deadline)
		if err != nil && !timedOut(err) {
			return 0, err
		}
	} else if p.last < pacedSmall {
		setLowWater(p.sock, pacedSmall)
		time.Sleep(pacedPause)
		setLowWater(p.sock, 1)
	}
	n, err := p.r.Read(b)
	p.last = n
	return n, err
}

// Wrap sets what the stream is read from: the connection as pgx reads it
// (which may be TLS over the socket New was given).
func (p *Reader) Wrap(r io.Reader) { p.r = r }

// timedOut says whether err is a read that reached its deadline.
func timedOut(err error) bool {
	var netErr net.Error
	return errors.As(err, &netErr) && netErr.Timeout()
}
