package proxy

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/jackc/pgx/v5/pgconn"
)

const (
	codeSSLRequest    = 80877103
	codeGSSENCRequest = 80877104
	codeCancelRequest = 80877102
)

// Upstream says how to reach the database a sidecar fronts: the host, port
// and TLS settings of a libpq connection string (user and password in it are
// for the sidecar's own connections, never for relayed clients).
type Upstream struct {
	targets []target
	Dialer  net.Dialer
}

type target struct {
	host    string
	port    uint16
	tls     *tls.Config
	display string
}

// ParseUpstream reads a libpq URL or keyword/value string. sslmode decides
// whether relayed connections use TLS to the database, as it would for libpq.
func ParseUpstream(connString string) (*Upstream, error) {
	cfg, err := pgconn.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("invalid upstream: %w", err)
	}
	u := &Upstream{}
	u.add(cfg.Host, cfg.Port, cfg.TLSConfig)
	for _, fb := range cfg.Fallbacks {
		u.add(fb.Host, fb.Port, fb.TLSConfig)
	}
	return u, nil
}

func (u *Upstream) add(host string, port uint16, tlsConfig *tls.Config) {
	_, addr := pgconn.NetworkAddress(host, port)
	u.targets = append(u.targets, target{host: host, port: port, tls: tlsConfig, display: addr})
}

// Addr names the first address tried, for messages.
func (u *Upstream) Addr() string { return u.targets[0].display }

// Dial opens a connection to the upstream server, negotiating TLS when the
// connection string asks for it, trying fallbacks (sslmode=prefer, several
// hosts) in order.
func (u *Upstream) Dial(ctx context.Context) (net.Conn, error) {
	var errs []error
	for _, t := range u.targets {
		conn, err := u.dialOne(ctx, t)
		if err == nil {
			return conn, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", t.display, err))
	}
	return nil, errors.Join(errs...)
}

func (u *Upstream) dialOne(ctx context.Context, t target) (net.Conn, error) {
	network, addr := pgconn.NetworkAddress(t.host, t.port)
	conn, err := u.Dialer.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	if t.tls == nil {
		return conn, nil
	}
	tlsConn, err := startTLS(ctx, conn, t.tls)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return tlsConn, nil
}

func startTLS(ctx context.Context, conn net.Conn, cfg *tls.Config) (net.Conn, error) {
	req := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 8), codeSSLRequest)
	if _, err := conn.Write(req); err != nil {
		return nil, err
	}
	var answer [1]byte
	if _, err := io.ReadFull(conn, answer[:]); err != nil {
		return nil, err
	}
	if answer[0] != 'S' {
		return nil, errors.New("server refused TLS")
	}
	tlsConn := tls.Client(conn, cfg)
	if err := tlsConn.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	return tlsConn, nil
}

// Cancel delivers a client's CancelRequest packet, unchanged, to the
// upstream server. The sidecar relays BackendKeyData untouched, so the key
// in the packet is the upstream backend's own.
func (u *Upstream) Cancel(ctx context.Context, packet []byte) error {
	conn, err := u.Dial(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	if _, err := conn.Write(packet); err != nil {
		return err
	}
	// The server closes the connection once it has read the request.
	io.Copy(io.Discard, conn)
	return nil
}
