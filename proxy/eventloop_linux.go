//go:build linux

package proxy

import (
	"errors"
	"net"
	"os"
	"runtime"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// eventLoop relays authenticated plain-TCP sessions on one OS thread with
// its own epoll set and raw system calls, the way PgBouncer does, because
// Go's netpoller costs about twice PgBouncer's CPU per round trip on a small
// machine (see BENCHMARKS.md): every wake-up goes through the scheduler,
// and every read is followed by one that only says "nothing yet". The loop
// relays frames and keeps the session's reply queue exactly as the
// goroutine relay does; a session whose traffic needs more than relaying
// (a statement that mentions rejot, a huge query, a Terminate, end of
// input) is handed back to the goroutine relay for the rest of its life.
//
// The loop holds one P while it waits in epoll, so it runs only when
// GOMAXPROCS is at least 2.
type eventLoop struct {
	epfd   int
	wakefd int

	mu      sync.Mutex
	queue   []*fastConn // sessions to adopt
	closing bool
	stopped chan struct{}
	conns   map[int32]*fastConn

	scratch []byte
	events  []unix.EpollEvent
}

func newEventLoop() (*eventLoop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, err
	}
	l := &eventLoop{epfd: epfd, wakefd: wakefd, conns: map[int32]*fastConn{}, stopped: make(chan struct{}),
		scratch: make([]byte, fastReadSize), events: make([]unix.EpollEvent, 128)}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wakefd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, err
	}
	go l.run()
	return l, nil
}

// rawFD takes a connection's socket out of Go's netpoller: it returns a
// non-blocking duplicate and closes the original.
func rawFD(c net.Conn) (int, error) {
	fc, ok := c.(interface{ File() (*os.File, error) })
	if !ok {
		return -1, errors.New("not a socket")
	}
	f, err := fc.File()
	if err != nil {
		return -1, err
	}
	fd, err := unix.Dup(int(f.Fd()))
	f.Close()
	if err != nil {
		return -1, err
	}
	unix.CloseOnExec(fd)
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, err
	}
	c.Close()
	return fd, nil
}

// serve relays s on the loop until it ends or needs the goroutine relay.
func (l *eventLoop) serve(s *session) fastResult {
	if s.cr.r.Buffered() > 0 || s.ur.r.Buffered() > 0 {
		return fastResult{handback: true} // the client pipelined past authentication
	}
	cfd, err := rawFD(s.client)
	if err != nil {
		return fastResult{err: err}
	}
	ufd, err := rawFD(s.up)
	if err != nil {
		unix.Close(cfd)
		return fastResult{err: err}
	}
	fc := &fastConn{s: s, cfd: cfd, ufd: ufd, done: make(chan fastResult, 1)}
	s.setFast(fc)
	if s.ctx.Err() != nil {
		fc.shutdown() // closed meanwhile: the loop will see both ends gone
	}
	l.mu.Lock()
	if l.closing {
		l.mu.Unlock()
		fc.shutdown()
		if err := s.resume(fc); err != nil {
			return fastResult{err: err}
		}
		return fastResult{handback: true}
	}
	l.queue = append(l.queue, fc)
	l.wake()
	l.mu.Unlock()
	res := <-fc.done
	if res.handback {
		if err := s.resume(fc); err != nil {
			return fastResult{err: err}
		}
	}
	return res
}

func (l *eventLoop) wake() {
	var one [8]byte
	one[0] = 1
	unix.Write(l.wakefd, one[:])
}

// close stops the loop once its sessions are gone; the server closes
// them first.
func (l *eventLoop) close() {
	l.mu.Lock()
	l.closing = true
	l.mu.Unlock()
	l.wake()
	<-l.stopped
}

func (l *eventLoop) run() {
	runtime.LockOSThread()
	// Unlock on the way out: a goroutine that exits locked takes its thread
	// with it, and a child process started with Pdeathsig from that thread
	// would be killed.
	defer runtime.UnlockOSThread()
	defer func() {
		unix.Close(l.epfd)
		unix.Close(l.wakefd)
		close(l.stopped)
	}()
	for {
		n := l.wait()
		for i := 0; i < n; i++ {
			ev := l.events[i]
			if int(ev.Fd) == l.wakefd {
				if l.adopt() {
					return
				}
				continue
			}
			if fc := l.conns[ev.Fd]; fc != nil {
				l.handle(fc, ev)
			}
		}
	}
}

// wait blocks in epoll_pwait without telling the scheduler: this thread is
// the loop's alone, and a signal (preemption) interrupts the wait.
func (l *eventLoop) wait() int {
	r, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(l.epfd),
		uintptr(unsafe.Pointer(&l.events[0])), uintptr(len(l.events)), ^uintptr(0), 0, 0)
	if errno != 0 {
		return 0
	}
	return int(r)
}

// adopt takes in queued sessions; it reports whether the loop should stop.
func (l *eventLoop) adopt() (stop bool) {
	var buf [8]byte
	unix.Read(l.wakefd, buf[:])
	l.mu.Lock()
	queue, closing := l.queue, l.closing
	l.queue = nil
	l.mu.Unlock()
	if closing {
		for _, fc := range queue {
			l.finish(fc, fastResult{err: ErrServerClosed})
		}
		for _, fc := range l.conns {
			l.finish(fc, fastResult{err: ErrServerClosed})
		}
		return true
	}
	for _, fc := range queue {
		l.conns[int32(fc.cfd)] = fc
		l.conns[int32(fc.ufd)] = fc
		fc.cmask, fc.umask = unix.EPOLLIN, unix.EPOLLIN
		ce := unix.EpollEvent{Events: fc.cmask, Fd: int32(fc.cfd)}
		ue := unix.EpollEvent{Events: fc.umask, Fd: int32(fc.ufd)}
		if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fc.cfd, &ce); err != nil {
			l.finish(fc, fastResult{err: err})
			continue
		}
		if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fc.ufd, &ue); err != nil {
			l.finish(fc, fastResult{err: err})
		}
	}
	return false
}

// handle acts on one epoll event: writes what the socket can now take,
// or reads what arrived — once: with level-triggered epoll, what is left
// is reported again — and relays it straight on.
func (l *eventLoop) handle(fc *fastConn, ev unix.EpollEvent) {
	res, stop := l.step(fc, int(ev.Fd) == fc.cfd, ev.Events)
	if stop {
		l.finish(fc, res)
		return
	}
	l.interest(fc)
}

func (l *eventLoop) step(fc *fastConn, client bool, events uint32) (fastResult, bool) {
	in, out, outFD := &fc.toClient, &fc.toUp, fc.ufd
	if !client {
		in, out, outFD = &fc.toUp, &fc.toClient, fc.cfd
	}
	fd := fc.ufd
	if client {
		fd = fc.cfd
	}
	if events&unix.EPOLLOUT != 0 {
		if err := flushFD(fd, in); err != nil {
			return fastResult{err: err}, true
		}
	}
	// A hang-up or error is reported whatever the interest mask: act on it
	// (the read sees the end) rather than be woken for it again and again.
	gone := events&(unix.EPOLLHUP|unix.EPOLLERR) != 0
	if !gone && (events&unix.EPOLLIN == 0 || len(*out) > 0) {
		return fastResult{}, false
	}
	var res fastResult
	var stop bool
	if client {
		res, stop = l.readClient(fc)
	} else {
		res, stop = l.readUpstream(fc)
	}
	if err := flushFD(outFD, out); err != nil && !stop {
		return fastResult{err: err}, true
	}
	return res, stop
}

// interest asks epoll for what the session waits on: writability where
// output is pending, and input only where its output has drained.
func (l *eventLoop) interest(fc *fastConn) {
	cmask, umask := uint32(0), uint32(0)
	if len(fc.toClient) > 0 {
		cmask |= unix.EPOLLOUT
	} else {
		umask |= unix.EPOLLIN
	}
	if len(fc.toUp) > 0 {
		umask |= unix.EPOLLOUT
	} else {
		cmask |= unix.EPOLLIN
	}
	if cmask != fc.cmask {
		fc.cmask = cmask
		unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, fc.cfd, &unix.EpollEvent{Events: cmask, Fd: int32(fc.cfd)})
	}
	if umask != fc.umask {
		fc.umask = umask
		unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, fc.ufd, &unix.EpollEvent{Events: umask, Fd: int32(fc.ufd)})
	}
}

// finish removes a session from the loop and tells its goroutine.
func (l *eventLoop) finish(fc *fastConn, res fastResult) {
	if fc.finished {
		return
	}
	fc.finished = true
	delete(l.conns, int32(fc.cfd))
	delete(l.conns, int32(fc.ufd))
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fc.cfd, nil)
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fc.ufd, nil)
	if !res.handback {
		fc.closeFDs()
	}
	fc.done <- res
}

func (fc *fastConn) closeFDs() {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if !fc.closed {
		fc.closed = true
		unix.Close(fc.cfd)
		unix.Close(fc.ufd)
	}
}

// shutdown makes the loop see both sockets end (from any goroutine).
func (fc *fastConn) shutdown() {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if !fc.closed {
		unix.Shutdown(fc.cfd, unix.SHUT_RDWR)
		unix.Shutdown(fc.ufd, unix.SHUT_RDWR)
	}
}

var errEOF = errors.New("end of stream")

// flushFD writes as much of *out as the socket takes, keeping the rest at
// the front of the buffer.
func flushFD(fd int, out *[]byte) error {
	b := *out
	done := 0
	for done < len(b) {
		// sendto with MSG_NOSIGNAL: a peer that left gives EPIPE, not SIGPIPE.
		r, _, errno := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[done])),
			uintptr(len(b)-done), unix.MSG_NOSIGNAL, 0, 0)
		if errno == unix.EAGAIN {
			break
		}
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return errno
		}
		done += int(r)
	}
	if done == len(b) && cap(b) > 4*fastReadSize {
		*out = nil // a burst is over: give its memory back
		return nil
	}
	*out = b[:copy(b, b[done:])]
	return nil
}
