package proxy

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

func proxyAddr(url string) string {
	rest := url[strings.Index(url, "@")+1:]
	return rest[:strings.Index(rest, "/")]
}

// rawStartup connects and completes a trust startup by hand, returning the
// connection positioned after the first ReadyForQuery.
func rawStartup(t *testing.T, url, db string) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", proxyAddr(url))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	msg, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "postgres", "database": db}}).Encode(nil)
	if _, err := conn.Write(msg); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(conn)
	for {
		typ, _ := readMsg(t, conn, r)
		if typ == 'Z' {
			return conn, r
		}
	}
}

func readMsg(t *testing.T, conn net.Conn, r *bufio.Reader) (byte, []byte) {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var h [5]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		t.Fatalf("read: %v", err)
	}
	body := make([]byte, binary.BigEndian.Uint32(h[1:])-4)
	if _, err := io.ReadFull(r, body); err != nil {
		t.Fatalf("read: %v", err)
	}
	return h[0], body
}

// expectFatal reads until a FATAL error with the code, then EOF.
func expectFatal(t *testing.T, conn net.Conn, r *bufio.Reader, code string) {
	t.Helper()
	for {
		typ, body := readMsg(t, conn, r)
		if typ != 'E' {
			continue
		}
		var e pgproto3.ErrorResponse
		e.Decode(body)
		if e.Severity != "FATAL" || e.Code != code {
			t.Fatalf("got %s %s %s, want FATAL %s", e.Severity, e.Code, e.Message, code)
		}
		break
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	// EOF, or a reset when the client's unread bytes were still queued.
	if _, err := r.ReadByte(); err == nil || isDeadline(err) {
		t.Fatalf("connection not closed after FATAL: %v", err)
	}
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// backends counts the upstream backends of a database, other than ours.
func backends(t *testing.T, db string) int {
	t.Helper()
	var n int
	pg.Connect(t, "postgres").QueryRow(context.Background(),
		"SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", db).Scan(&n)
	return n
}

func sleeping(t *testing.T, db string) int {
	t.Helper()
	var n int
	pg.Connect(t, "postgres").QueryRow(context.Background(),
		"SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state = 'active' AND query LIKE '%pg_sleep%'", db).Scan(&n)
	return n
}

// TestNoLeaksWhenClientsVanishMidQuery: clients that drop their socket while
// a query runs leave no session, goroutine or upstream backend behind.
func TestNoLeaksWhenClientsVanishMidQuery(t *testing.T) {
	db := pg.CreateDB(t)
	srv, url := startProxy(t, db)
	warm, _ := rawStartup(t, url, db) // the server and its event loop are up
	warm.Close()
	waitUntil(t, 5*time.Second, "warm-up session closed", func() bool { return srv.Sessions() == 0 })
	before := runtime.NumGoroutine()
	var conns []net.Conn
	for i := range 8 {
		conn, _ := rawStartup(t, url, db)
		conns = append(conns, conn)
		q := "SELECT pg_sleep(60)"
		if i%2 == 1 {
			q = "SELECT rejot.version(); SELECT pg_sleep(60)"
		}
		msg, _ := (&pgproto3.Query{String: q}).Encode(nil)
		conn.Write(msg)
	}
	waitUntil(t, 10*time.Second, "queries running", func() bool { return sleeping(t, db) == 8 })
	for _, c := range conns {
		c.Close()
	}
	waitUntil(t, 10*time.Second, "sessions closed", func() bool { return srv.Sessions() == 0 })
	waitUntil(t, 10*time.Second, "upstream backends gone", func() bool { return backends(t, db) == 0 })
	waitUntil(t, 10*time.Second, "goroutines ended", func() bool { return runtime.NumGoroutine() <= before })
}

// TestStartupTimeout: a client that never finishes connecting is dropped.
func TestStartupTimeout(t *testing.T) {
	db := pg.CreateDB(t)
	srv, url := startProxy(t, db, func(s *Server) { s.StartupTimeout = 300 * time.Millisecond })
	silent, err := net.Dial("tcp", proxyAddr(url))
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	half, err := net.Dial("tcp", proxyAddr(url))
	if err != nil {
		t.Fatal(err)
	}
	defer half.Close()
	half.Write([]byte{0, 0, 0, 40, 0, 3}) // a startup packet cut short
	for _, c := range []net.Conn{silent, half} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("connection not dropped: %v", err)
		}
	}
	waitUntil(t, 5*time.Second, "sessions closed", func() bool { return srv.Sessions() == 0 })
	// Authenticated clients are not subject to the timeout.
	conn, r := rawStartup(t, url, db)
	time.Sleep(600 * time.Millisecond)
	msg, _ := (&pgproto3.Query{String: "SELECT 1"}).Encode(nil)
	conn.Write(msg)
	for typ, _ := readMsg(t, conn, r); typ != 'Z'; typ, _ = readMsg(t, conn, r) {
	}
}

// TestBadMessagesCloseOnlyThatConnection: malformed and oversized messages
// get a FATAL 08P01 and the connection closed; other clients carry on.
func TestBadMessagesCloseOnlyThatConnection(t *testing.T) {
	db := pg.CreateDB(t)
	_, url := startProxy(t, db, func(s *Server) { s.MaxMessageSize = 1 << 20 })
	bystander, br := rawStartup(t, url, db)
	cases := map[string][]byte{
		"length below 4":    {'Q', 0, 0, 0, 3},
		"negative length":   {'Q', 0xff, 0xff, 0xff, 0xff},
		"oversized query":   append([]byte{'Q', 0, 0x20, 0, 4}, make([]byte, 100)...),
		"oversized copy":    {'d', 0x7f, 0xff, 0xff, 0xff},
		"startup too large": nil,
	}
	for name, msg := range cases {
		t.Run(name, func(t *testing.T) {
			if msg == nil {
				conn, err := net.Dial("tcp", proxyAddr(url))
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				conn.Write([]byte{0, 1, 0, 0, 0, 3, 0, 0})
				expectFatal(t, conn, bufio.NewReader(conn), "08P01")
				return
			}
			conn, r := rawStartup(t, url, db)
			conn.Write(msg)
			expectFatal(t, conn, r, "08P01")
		})
	}
	q, _ := (&pgproto3.Query{String: "SELECT rejot.version()"}).Encode(nil)
	bystander.Write(q)
	var got string
	for typ, body := readMsg(t, bystander, br); typ != 'Z'; typ, body = readMsg(t, bystander, br) {
		if typ == 'D' {
			got = string(body[6:])
		}
	}
	if got != "test-version" {
		t.Fatalf("bystander got %q", got)
	}
}

// TestServerCloseEndsSessions: Close disconnects clients and returns.
func TestServerCloseEndsSessions(t *testing.T) {
	db := pg.CreateDB(t)
	srv, url := startProxy(t, db)
	conn, r := rawStartup(t, url, db)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Close(ctx); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.ReadByte(); err == nil {
		t.Fatal("client still connected after Close")
	}
	if _, err := net.Dial("tcp", proxyAddr(url)); err == nil {
		t.Fatal("still accepting after Close")
	}
}

func isDeadline(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestStartupNegotiation: GSSENCRequest and SSLRequest (without TLS
// configured) are declined, and a protocol 3.2 startup with a protocol
// option is negotiated by the upstream itself.
func TestStartupNegotiation(t *testing.T) {
	db := pg.CreateDB(t)
	_, url := startProxy(t, db)
	conn, err := net.Dial("tcp", proxyAddr(url))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, code := range []uint32{codeGSSENCRequest, codeSSLRequest} {
		conn.Write(binary.BigEndian.AppendUint32([]byte{0, 0, 0, 8}, code))
		answer := make([]byte, 1)
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(conn, answer); err != nil || answer[0] != 'N' {
			t.Fatalf("request %d: answer %q, %v", code, answer, err)
		}
	}
	msg, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "postgres", "database": db, "_pq_.future_option": "x"}}).Encode(nil)
	binary.BigEndian.PutUint32(msg[4:], 3<<16|9) // protocol 3.9: newer than any server
	conn.Write(msg)
	r := bufio.NewReader(conn)
	var negotiated bool
	for {
		typ, body := readMsg(t, conn, r)
		if typ == 'v' {
			var v pgproto3.NegotiateProtocolVersion
			if err := v.Decode(body); err != nil || v.NewestMinorProtocol&0xffff >= 9 || len(v.UnrecognizedOptions) != 1 {
				t.Fatalf("negotiation: %+v, %v", v, err)
			}
			negotiated = true
		}
		if typ == 'E' {
			t.Fatalf("startup failed: %q", body)
		}
		if typ == 'Z' {
			break
		}
	}
	if !negotiated {
		t.Fatal("no NegotiateProtocolVersion relayed")
	}
}
