package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"net"
	"os"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/rejot-dev/rejot/internal/pgerr"
	"github.com/rs/zerolog"
)

// session is one client connection and its upstream connection. Two
// goroutines move messages: the frontend loop (client → upstream, and the
// answers to intercepted calls) and the backend loop (upstream → client).
// The frontend records, for every message that will get a reply, what reply
// ends it (the pending queue); the backend loop pops the queue as replies
// arrive. That is how an intercepted call waits for the replies of all
// messages before it, and how the sidecar's own queries on the upstream
// connection get their replies instead of the client.
type session struct {
	srv       *Server
	client    net.Conn
	up        net.Conn
	cr, ur    *frameReader
	cw, uw    *bufio.Writer
	st        *startup
	intercept bool
	// guarded are the client's prepared statements (by name) that are DDL
	// a published version may depend on: each Bind of one is preceded by
	// the contract guard (see guard.go).
	guarded   map[string]bool
	log       zerolog.Logger
	ctx       context.Context
	cancel    context.CancelFunc
	closeOnce sync.Once

	mu      sync.Mutex // guards the fields below
	pending []expectation
	// skipping: an error ended an extended-protocol batch whose Sync the
	// client has not sent yet, so the server ignores what it is sent until
	// that Sync. Intercepted messages in that stretch are ignored too.
	skipping  bool
	copyIn    bool      // the upstream waits for COPY data: nothing is intercepted
	authed    bool      // the upstream sent its first ReadyForQuery
	txStatus  byte      // from the last ReadyForQuery
	idleSince time.Time // when the last ReadyForQuery said idle
	aborted   bool      // in a failed transaction block, as far as replies show
	drained   chan struct{}
	cancelKey []byte // BackendKeyData body: the upstream backend's pid and secret

	wmu sync.Mutex // guards cw: the backend loop and local replies both write to the client

	// Owned by the frontend loop.
	stmts   map[string]*localStmt
	portals map[string]*localPortal
	leaked  bool // an internal statement may be left on the upstream connection
	types   *pgtype.Map
	upass   int // bytes of an upstream frame the event loop had begun to relay
	// Bytes the event loop had relayed but not yet written, when it handed
	// the session back: the relay's loops send them first.
	pendingUp, pendingClient []byte

	fmu  sync.Mutex // guards fast, and client/up while they are swapped
	fast *fastConn  // set while the event loop relays the session
}

// typeMap encodes and decodes the values of calls; a pgtype.Map caches as
// it goes, so each session has its own.
func (s *session) typeMap() *pgtype.Map {
	if s.types == nil {
		s.types = pgtype.NewMap()
	}
	return s.types
}

// expectation is a message sent upstream that will get replies.
type expectation struct {
	kind byte          // the frontend message type
	sink *internalSink // nil: replies go to the client
	tr   *translation  // set for statements of a translated simple query
}

func newSession(srv *Server, client, up net.Conn, st *startup, log zerolog.Logger) *session {
	max := srv.maxMessage()
	s := &session{
		srv: srv, client: client, up: up, st: st,
		cr:        newFrameReader(client, bufferSize, max),
		ur:        newFrameReader(up, bufferSize, math.MaxInt32-4),
		cw:        bufio.NewWriterSize(client, bufferSize),
		uw:        bufio.NewWriterSize(up, bufferSize),
		intercept: srv.Executor != nil && !st.replication,
		log:       log.With().Str("user", st.user).Str("database", st.database).Logger(),
		stmts:     map[string]*localStmt{},
		portals:   map[string]*localPortal{},
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

// close ends the session from outside (server shutdown).
// quiet says whether the session has been idle for at least d: signed
// in, outside a transaction, no reply outstanding.
func (s *session) quiet(d time.Duration) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.authed && s.txStatus == 'I' && len(s.pending) == 0 && !s.copyIn && !s.idleSince.IsZero() && time.Since(s.idleSince) >= d
}

func (s *session) close() {
	s.closeOnce.Do(func() {
		s.cancel()
		s.fmu.Lock()
		defer s.fmu.Unlock()
		if s.fast != nil {
			s.fast.shutdown()
		}
		s.client.Close()
		s.up.Close()
	})
}

func (s *session) setFast(fc *fastConn) {
	s.fmu.Lock()
	s.fast = fc
	s.fmu.Unlock()
}

// run relays the startup packet and authentication, then hands the session
// to the event loop when it can, and otherwise (or when the loop hands it
// back) relays both directions with a goroutine each until either side
// closes.
func (s *session) run() {
	s.log.Info().Msg("client connected")
	defer s.close()
	if _, err := s.uw.Write(s.st.packet); err != nil {
		return
	}
	if err := s.uw.Flush(); err != nil {
		return
	}
	err := s.authenticate()
	switch {
	case err == nil && s.srv.loop != nil && s.fastEligible():
		if res := s.srv.loop.serve(s); !res.handback {
			s.log.Info().Err(res.err).Msg("client disconnected")
			return
		}
	case err == nil, errors.Is(err, errConcurrentAuth):
	default:
		s.log.Debug().Err(err).Msg("client not connected")
		return
	}
	s.relay()
}

// relay runs the goroutine relay until the session ends.
func (s *session) relay() {
	done := make(chan error, 1)
	go func() {
		err := s.backendLoop()
		// The upstream is gone: wake the frontend wherever it waits.
		s.cancel()
		s.client.Close()
		done <- err
	}()
	err := s.frontendLoop()
	berr := s.finish(err, done)
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		err = berr
	}
	s.log.Info().Err(err).Msg("client disconnected")
}

// resume takes a session back from the event loop: its sockets return to
// Go's netpoller, with the bytes the loop had read but not relayed in front
// of what the sockets deliver next, and the bytes it had relayed but not
// written sent first.
func (s *session) resume(fc *fastConn) error {
	fc.mu.Lock()
	client, cerr := fileConn(fc.cfd)
	up, uerr := fileConn(fc.ufd)
	fc.closed = true
	fc.mu.Unlock()
	s.fmu.Lock()
	s.fast = nil
	if client != nil {
		s.client = client
	}
	if up != nil {
		s.up = up
	}
	s.fmu.Unlock()
	if s.ctx.Err() != nil {
		s.client.Close()
		s.up.Close()
		return s.ctx.Err()
	}
	if cerr != nil || uerr != nil {
		return errors.Join(cerr, uerr)
	}
	max := s.srv.maxMessage()
	s.cr = newFrameReader(io.MultiReader(bytes.NewReader(fc.cin), client), bufferSize, max)
	s.ur = newFrameReader(io.MultiReader(bytes.NewReader(fc.uin), up), bufferSize, math.MaxInt32-4)
	s.cw = bufio.NewWriterSize(client, bufferSize)
	s.uw = bufio.NewWriterSize(up, bufferSize)
	s.upass = fc.upass
	// Written by the relay's two loops once both run: writing here, with
	// nobody reading the upstream's replies, could wait forever.
	s.pendingUp, s.pendingClient = fc.toUp, fc.toClient
	return nil
}

// fileConn turns a raw socket back into a net.Conn; fd is closed.
func fileConn(fd int) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), "socket")
	defer f.Close()
	return net.FileConn(f)
}

// closeGrace is how long replies still in flight may take to reach a client
// that has stopped sending (Terminate, or a half-closed socket).
const closeGrace = 2 * time.Second

// finish ends a session whose frontend loop has returned. A client that
// said Terminate or half-closed its socket still gets the replies in
// flight: the upstream is told it gets no more input and has a moment to
// answer. Whatever is still running then is cancelled.
func (s *session) finish(frontErr error, done chan error) error {
	var pe *ProtocolError
	if !errors.As(frontErr, &pe) && s.ctx.Err() == nil {
		if cw, ok := s.up.(interface{ CloseWrite() error }); ok && frontErr != nil {
			cw.CloseWrite()
		}
		select {
		case err := <-done:
			s.close()
			return err
		case <-time.After(closeGrace):
		}
	}
	s.close()
	berr := <-done
	s.cancelAbandoned()
	return berr
}

// frontendLoop reads client messages until the client leaves.
func (s *session) frontendLoop() error {
	if len(s.pendingUp) > 0 {
		if _, err := s.uw.Write(s.pendingUp); err != nil {
			return err
		}
		s.pendingUp = nil
	}
	for {
		if s.cr.r.Buffered() < 5 {
			if err := s.uw.Flush(); err != nil {
				return err
			}
		}
		typ, n, err := s.cr.header()
		if err != nil {
			s.protocolFailure(err)
			return err
		}
		switch typ {
		case 'Q':
			err = s.onQuery(n)
		case 'P':
			err = s.onParse(n)
		case 'B', 'D', 'E', 'C':
			switch {
			case len(s.stmts) == 0 && len(s.portals) == 0 && len(s.guarded) == 0:
				err = s.forward(typ, n)
			case n > s.srv.maxIntercepted():
				err = s.onLarge(typ, n)
			default:
				err = s.onPortalMessage(typ, n)
			}
		case 'X':
			s.forward(typ, n)
			s.uw.Flush()
			return nil
		default:
			err = s.forward(typ, n)
		}
		if err != nil {
			s.protocolFailure(err)
			return err
		}
	}
}

// protocolFailure tells the client why its connection is being closed, when
// the cause is its own malformed message.
func (s *session) protocolFailure(err error) {
	var pe *ProtocolError
	if !errors.As(err, &pe) {
		return
	}
	s.log.Warn().Str("reason", pe.Msg).Msg("closing connection after a protocol violation")
	s.wmu.Lock()
	defer s.wmu.Unlock()
	code := pe.Code
	if code == "" {
		code = pgerr.ProtocolViolation
	}
	writeErrorTo(s.cw, "FATAL", code, pe.Msg)
	s.cw.Flush()
}

// forward relays the current client message upstream.
func (s *session) forward(typ byte, n int) error {
	s.expect(typ, nil, nil)
	return s.cr.copyTo(s.uw, n)
}

// forwardBody relays a message whose body was already read.
func (s *session) forwardBody(typ byte, body []byte) error {
	s.expect(typ, nil, nil)
	return s.send(typ, body)
}

// send writes a message upstream without recording an expectation.
func (s *session) send(typ byte, body []byte) error {
	var h [5]byte
	h[0] = typ
	putUint32(h[1:], uint32(len(body)+4))
	if _, err := s.uw.Write(h[:]); err != nil {
		return err
	}
	_, err := s.uw.Write(body)
	return err
}

// expect records that a message about to be sent upstream will get replies.
func (s *session) expect(typ byte, sink *internalSink, tr *translation) {
	switch typ {
	case 'Q', 'F', 'S', 'P', 'B', 'D', 'E', 'C':
	default:
		return
	}
	s.mu.Lock()
	// After an error the server ignores everything up to Sync.
	if !s.skipping || typ == 'S' {
		s.pending = append(s.pending, expectation{kind: typ, sink: sink, tr: tr})
	}
	if typ == 'S' {
		s.skipping = false
	}
	s.mu.Unlock()
}

// drain waits until every message sent upstream has had its replies, so
// that what the sidecar writes next follows them. skip reports that the
// server is ignoring messages up to the client's next Sync (an earlier
// message of the batch failed), so the intercepted message must be ignored
// too; copying reports that the upstream entered COPY FROM STDIN and waits
// for the client's data, so the message is not the sidecar's to answer.
func (s *session) drain() (skip, copying bool, err error) {
	if err := s.uw.Flush(); err != nil {
		return false, false, err
	}
	s.mu.Lock()
	if len(s.pending) == 0 || s.copyIn {
		skip, copying = s.skipping, s.copyIn
		s.mu.Unlock()
		return skip, copying, nil
	}
	if s.drained == nil {
		s.drained = make(chan struct{})
	}
	ch := s.drained
	s.mu.Unlock()
	// Replies to extended messages are only sent on Flush or Sync.
	if err := s.send('H', nil); err != nil {
		return false, false, err
	}
	if err := s.uw.Flush(); err != nil {
		return false, false, err
	}
	select {
	case <-ch:
	case <-s.ctx.Done():
		return false, false, s.ctx.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.skipping, s.copyIn, nil
}

// cancelAbandoned cancels the statement a departed client left running, so
// its backend notices the closed connection and ends now rather than when
// the statement would have finished.
func (s *session) cancelAbandoned() {
	s.mu.Lock()
	busy, key := len(s.pending) > 0, s.cancelKey
	s.mu.Unlock()
	if !busy || len(key) < 8 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.srv.Upstream.Cancel(ctx, cancelPacket(key)); err != nil {
		s.log.Debug().Err(err).Msg("cannot cancel the departed client's statement")
	}
}

// cancelPacket is the CancelRequest for the backend whose BackendKeyData
// body is key.
func cancelPacket(key []byte) []byte {
	packet := binary.BigEndian.AppendUint32(nil, uint32(8+len(key)))
	packet = binary.BigEndian.AppendUint32(packet, codeCancelRequest)
	return append(packet, key...)
}

func (s *session) isAuthed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.authed
}

func (s *session) markAuthed() {
	if !s.authed {
		s.authed = true
		s.client.SetDeadline(time.Time{})
		s.up.SetDeadline(time.Time{})
	}
}

func putUint32(b []byte, v uint32) {
	b[0], b[1], b[2], b[3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
}
