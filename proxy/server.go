// Package proxy is the sidecar's wire-protocol front: it accepts Postgres
// clients, relays their startup and authentication to the upstream database
// so that Postgres stays the judge of who gets in, forwards ordinary traffic
// decoding nothing but message framing, delivers cancel requests, and answers
// the statements that call the rejot API with replies it writes itself, in
// order with the upstream's, inside the client's own session.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rejot-dev/rejot/sql"
	"github.com/rs/zerolog"
)

// Defaults for Server's fields.
const (
	DefaultStartupTimeout = 60 * time.Second
	DefaultMaxMessageSize = 1<<30 - 1 // Postgres's own limit for a message
	// DefaultMaxInterceptedSize bounds a message the sidecar holds, parses
	// and answers itself: one that mentions rejot, or a Bind of a call.
	DefaultMaxInterceptedSize = 64 << 20
	maxStartupPacket          = 10000 // as Postgres's MAX_STARTUP_PACKET_LENGTH
	bufferSize                = 32 << 10
)

// Server relays clients to the upstream database. Configure it through its
// exported fields, then call Serve; Close stops it.
type Server struct {
	Upstream  *Upstream
	TLSConfig *tls.Config // terminates client TLS; nil answers SSLRequest with 'N'
	// Executor answers rejot API calls; nil relays everything unchanged.
	Executor       *sql.Executor
	StartupTimeout time.Duration
	MaxMessageSize int
	// MaxInterceptedSize bounds the messages the sidecar answers itself
	// (see onLarge); larger ordinary messages are still relayed.
	MaxInterceptedSize int
	Logger             zerolog.Logger
	// DisableEventLoop relays every session with goroutines and Go's
	// netpoller instead of the event loop (see eventLoop).
	DisableEventLoop bool

	loop     *eventLoop
	mu       sync.Mutex
	ln       net.Listener
	sessions map[*session]struct{}
	wg       sync.WaitGroup
	closed   bool
	total    atomic.Int64
}

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("proxy: server closed")

// Serve accepts clients on ln until Close is called.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.ln = ln
	if s.sessions == nil {
		s.sessions = map[*session]struct{}{}
	}
	if s.loop == nil && !s.DisableEventLoop && runtime.GOMAXPROCS(0) >= 2 {
		loop, err := newEventLoop()
		if err != nil {
			s.Logger.Warn().Err(err).Msg("no event loop: relaying with goroutines")
		}
		s.loop = loop
	}
	s.mu.Unlock()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return err
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(conn)
		}()
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Close stops accepting clients and closes every client connection; it
// returns when all sessions have ended or ctx is done.
func (s *Server) Close(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	if s.ln != nil {
		s.ln.Close()
	}
	for sess := range s.sessions {
		sess.close()
	}
	loop := s.loop
	s.mu.Unlock()
	defer func() {
		if loop != nil {
			loop.close()
		}
	}()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Shutdown stops accepting clients and lets sessions finish what they are
// doing: a session is closed once it is idle — outside a transaction,
// nothing in flight — and has stayed so for a moment (so the reply that
// made it idle, a COMMIT's, reaches its client). When ctx ends, the
// sessions left are closed as Close does.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	if s.ln != nil {
		s.ln.Close()
	}
	s.mu.Unlock()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		s.mu.Lock()
		left := 0
		for sess := range s.sessions {
			if sess.quiet(100 * time.Millisecond) {
				go sess.close()
			} else {
				left++
			}
		}
		s.mu.Unlock()
		if left == 0 {
			break
		}
		select {
		case <-ctx.Done():
			s.Logger.Warn().Int("sessions", left).Msg("shutdown timeout: closing sessions still in a transaction")
			closeCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return s.Close(closeCtx)
		case <-t.C:
		}
	}
	return s.Close(ctx)
}

// Sessions is the number of client sessions open now.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// Total is the number of client connections accepted so far.
func (s *Server) Total() int64 { return s.total.Load() }

func (s *Server) track(sess *session) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.sessions[sess] = struct{}{}
	return true
}

func (s *Server) untrack(sess *session) {
	s.mu.Lock()
	delete(s.sessions, sess)
	s.mu.Unlock()
}

func (s *Server) startupTimeout() time.Duration {
	if s.StartupTimeout > 0 {
		return s.StartupTimeout
	}
	return DefaultStartupTimeout
}

func (s *Server) maxIntercepted() int {
	if s.MaxInterceptedSize > 0 {
		return s.MaxInterceptedSize
	}
	return DefaultMaxInterceptedSize
}

func (s *Server) maxMessage() int {
	if s.MaxMessageSize > 0 {
		return s.MaxMessageSize
	}
	return DefaultMaxMessageSize
}
