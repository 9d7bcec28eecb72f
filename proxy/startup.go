package proxy

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/rejot-dev/rejot/internal/pgerr"
)

// startup is what the client asked for in its StartupMessage.
type startup struct {
	packet      []byte // the whole packet, relayed unchanged
	user        string
	database    string
	replication bool
}

// handle serves one client connection from accept to close.
func (s *Server) handle(conn net.Conn) {
	s.total.Add(1)
	metricConnectionsTotal.Inc()
	metricConnections.Inc()
	defer metricConnections.Dec()
	defer conn.Close()
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	deadline := time.Now().Add(s.startupTimeout())
	conn.SetDeadline(deadline)
	log := s.Logger.With().Str("client", conn.RemoteAddr().String()).Logger()

	client, packet, err := s.negotiate(conn)
	if err != nil {
		var pe *ProtocolError
		if errors.As(err, &pe) {
			writeFatal(client, pgerr.ProtocolViolation, pe.Msg)
		}
		log.Debug().Err(err).Msg("startup failed")
		return
	}
	if code := binary.BigEndian.Uint32(packet[4:8]); code == codeCancelRequest {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Upstream.Cancel(ctx, packet); err != nil {
			log.Warn().Err(err).Msg("cannot deliver cancel request")
		}
		return
	}
	st, err := parseStartup(packet)
	if err != nil {
		code, msg := startupFailure(err)
		writeFatal(client, code, msg)
		return
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	up, err := s.Upstream.Dial(ctx)
	cancel()
	if err != nil {
		metricUpstreamErrors.Inc()
		log.Warn().Err(err).Msg("cannot reach upstream")
		writeFatal(client, pgerr.ConnectionFailure, fmt.Sprintf("rejot: cannot connect to the upstream database at %s: %v", s.Upstream.Addr(), err))
		return
	}
	defer up.Close()
	up.SetDeadline(deadline)
	sess := newSession(s, client, up, st, log)
	if !s.track(sess) {
		writeFatal(client, pgerr.AdminShutdown, "rejot: the sidecar is shutting down")
		return
	}
	defer s.untrack(sess)
	sess.run()
}

// negotiate reads startup packets until one that is not an encryption
// request, answering SSLRequest (TLS when configured) and GSSENCRequest.
// It returns the connection to use from then on (TLS or not).
func (s *Server) negotiate(conn net.Conn) (net.Conn, []byte, error) {
	tlsDone := false
	for range 3 {
		packet, err := readStartupPacket(conn)
		if err != nil {
			return conn, nil, err
		}
		switch binary.BigEndian.Uint32(packet[4:8]) {
		case codeSSLRequest:
			if s.TLSConfig == nil || tlsDone {
				if _, err := conn.Write([]byte{'N'}); err != nil {
					return conn, nil, err
				}
				continue
			}
			if _, err := conn.Write([]byte{'S'}); err != nil {
				return conn, nil, err
			}
			tc := tls.Server(conn, s.TLSConfig)
			if err := tc.Handshake(); err != nil {
				return conn, nil, fmt.Errorf("TLS handshake: %w", err)
			}
			conn, tlsDone = tc, true
		case codeGSSENCRequest:
			if _, err := conn.Write([]byte{'N'}); err != nil {
				return conn, nil, err
			}
		default:
			return conn, packet, nil
		}
	}
	return conn, nil, &ProtocolError{Msg: "too many encryption requests during startup"}
}

// readStartupPacket reads one untyped startup packet, exactly, so that no
// byte meant for a TLS handshake is taken by a buffer.
func readStartupPacket(conn net.Conn) ([]byte, error) {
	var head [4]byte
	if _, err := io.ReadFull(conn, head[:]); err != nil {
		return nil, err
	}
	n := int(int32(binary.BigEndian.Uint32(head[:])))
	if n < 8 || n > maxStartupPacket {
		return nil, &ProtocolError{Msg: fmt.Sprintf("invalid length of startup packet: %d", n)}
	}
	packet := make([]byte, n)
	copy(packet, head[:])
	if _, err := io.ReadFull(conn, packet[4:]); err != nil {
		return nil, err
	}
	return packet, nil
}

// startupFailure is the SQLSTATE and message a refused startup packet gets:
// a malformed one is a protocol violation.
func startupFailure(err error) (code, msg string) {
	var e *pgerr.Error
	if errors.As(err, &e) {
		return e.Code, e.Message
	}
	return pgerr.ProtocolViolation, err.Error()
}

// parseStartup reads the parameters of a StartupMessage; any 3.x protocol is
// relayed for the upstream to negotiate.
func parseStartup(packet []byte) (*startup, error) {
	version := binary.BigEndian.Uint32(packet[4:8])
	if version>>16 != 3 {
		return nil, pgerr.Errorf(pgerr.FeatureNotSupported, "unsupported frontend protocol %d.%d: server supports 3.0 to 3.2", version>>16, version&0xffff)
	}
	st := &startup{packet: packet}
	rest := packet[8:]
	for len(rest) > 1 {
		key, r, ok := cstring(rest)
		if !ok {
			return nil, &ProtocolError{Msg: "invalid startup packet layout: expected terminator as last byte"}
		}
		value, r, ok := cstring(r)
		if !ok {
			return nil, &ProtocolError{Msg: "invalid startup packet layout: expected terminator as last byte"}
		}
		rest = r
		switch key {
		case "user":
			st.user = value
		case "database":
			st.database = value
		case "replication":
			v := strings.ToLower(value)
			st.replication = v != "false" && v != "off" && v != "no" && v != "0"
		}
	}
	if len(rest) != 1 || rest[0] != 0 {
		return nil, &ProtocolError{Msg: "invalid startup packet layout: expected terminator as last byte"}
	}
	if st.user == "" {
		return nil, pgerr.Errorf(pgerr.InvalidAuthorizationSpecification, "no PostgreSQL user name specified in startup packet")
	}
	return st, nil
}

// writeFatal sends a FATAL ErrorResponse, best effort.
func writeFatal(conn net.Conn, code, msg string) {
	if conn == nil {
		return
	}
	b, _ := (&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: msg}).Encode(nil)
	conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	conn.Write(b)
}
