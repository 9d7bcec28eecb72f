package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/rejot-dev/rejot/sql"
)

// Bounds on the work of one fuzz input, so that the seed corpus runs in
// seconds and a hang shows up as a failure rather than a stuck worker.
const (
	fuzzIODeadline   = 2 * time.Second       // writing the input and reading the answers
	fuzzIdle         = 50 * time.Millisecond // a lingering client's patience
	fuzzSessionLimit = 5 * time.Second       // for sessions to end after the client leaves
)

// Both fuzz targets take the bytes a client sends and how it leaves: at
// once (linger false: it half-closes after writing, so the sidecar sees the
// end of its input mid-conversation) or after the answers stop (linger true:
// it reads until the sidecar is idle, then closes).

// FuzzStartup sends arbitrary bytes as the very first bytes of a client
// connection: startup packets, encryption and cancel requests, and whatever
// follows them. The sidecar must answer or hang up, never show the client its
// own internal statements, end the session when the client leaves, and go on
// serving others.
func FuzzStartup(f *testing.F) {
	db := pg.CreateDB(f)
	srv, connURL := startProxy(f, db, registerFuzzEcho)
	addr := fuzzProxyAddr(f, connURL)
	for _, seed := range fuzzStartupSeeds(db) {
		f.Add(seed, false)
		f.Add(seed, true)
	}
	f.Fuzz(func(t *testing.T, data []byte, linger bool) {
		conn := fuzzDial(t, addr)
		out := fuzzExchange(conn, bufio.NewReader(conn), data, linger)
		conn.Close()
		if err := checkNoInternalNames(data, out); err != nil {
			t.Errorf("answer to %q: %v", data, err)
		}
		checkStillServing(t, srv, connURL)
	})
}

// FuzzFrontendMessages sends arbitrary bytes as frontend messages on an
// authenticated session: well-formed and malformed messages, rejot calls in
// both protocols, lying lengths. Whatever the sidecar answers must be framed
// backend messages, and the guarantees of FuzzStartup hold.
func FuzzFrontendMessages(f *testing.F) {
	db := pg.CreateDB(f)
	srv, connURL := startProxy(f, db, registerFuzzEcho)
	addr := fuzzProxyAddr(f, connURL)
	for _, seed := range fuzzFrontendSeeds() {
		f.Add(seed, false)
		f.Add(seed, true)
	}
	f.Fuzz(func(t *testing.T, data []byte, linger bool) {
		conn := fuzzDial(t, addr)
		r := bufio.NewReader(conn)
		fuzzStartSession(t, conn, r, db)
		out := fuzzExchange(conn, r, data, linger)
		conn.Close()
		if err := checkBackendFraming(out); err != nil {
			t.Errorf("answer to %q: %v", data, err)
		}
		if err := checkNoInternalNames(data, out); err != nil {
			t.Errorf("answer to %q: %v", data, err)
		}
		checkStillServing(t, srv, connURL)
	})
}

// registerFuzzEcho adds an API function with parameters of every type the
// API uses, which runs a query on the caller's session, so that fuzzing
// reaches parameter binding and the sidecar's own upstream queries.
func registerFuzzEcho(s *Server) {
	s.Executor.Register(&sql.Function{
		Name: "fuzz_echo",
		Params: []sql.Param{
			{Name: "t", Type: sql.OIDText},
			{Name: "n", Type: sql.OIDInt4, Optional: true},
			{Name: "b", Type: sql.OIDBool, Optional: true},
			{Name: "d", Type: sql.OIDDate, Optional: true},
			{Name: "big", Type: sql.OIDInt8, Optional: true},
		},
		Returns: []sql.Column{{Name: "t", TypeOID: sql.OIDText}, {Name: "n", TypeOID: sql.OIDInt8}},
		Run: func(ctx context.Context, env *sql.Env, args sql.Args) ([][]any, error) {
			n, _, err := args.Int("n")
			if err != nil {
				return nil, err
			}
			rows, err := env.Session.Query(ctx, "SELECT $1::text || coalesce($2::date::text, '')", args["t"], args["d"])
			if err != nil {
				return nil, err
			}
			if len(rows.Values) != 1 || len(rows.Values[0]) != 1 {
				return nil, errors.New("fuzz_echo: unexpected result shape")
			}
			var t any
			if v := rows.Values[0][0]; v != nil {
				t = *v
			}
			return [][]any{{t, n}}, nil
		},
	})
}

func fuzzProxyAddr(tb testing.TB, connURL string) string {
	tb.Helper()
	u, err := url.Parse(connURL)
	if err != nil {
		tb.Fatal(err)
	}
	return u.Host
}

func fuzzDial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, fuzzIODeadline)
	if err != nil {
		t.Fatalf("cannot connect to the sidecar: %v", err)
	}
	return conn.(*net.TCPConn)
}

// fuzzStartSession authenticates as postgres on db and reads up to the first
// ReadyForQuery.
func fuzzStartSession(t *testing.T, conn net.Conn, r *bufio.Reader, db string) {
	t.Helper()
	conn.SetDeadline(time.Now().Add(fuzzSessionLimit))
	defer conn.SetDeadline(time.Time{})
	if _, err := conn.Write(fuzzStartupMessage("postgres", db)); err != nil {
		t.Fatalf("cannot send startup message: %v", err)
	}
	for {
		typ, body, err := fuzzReadMessage(r)
		if err != nil {
			t.Fatalf("startup: %v", err)
		}
		switch typ {
		case 'E':
			t.Fatalf("startup refused: %q", body)
		case 'Z':
			return
		}
	}
}

func fuzzReadMessage(r *bufio.Reader) (byte, []byte, error) {
	var h [5]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	n := int(binary.BigEndian.Uint32(h[1:])) - 4
	if n < 0 || n > 1<<20 {
		return 0, nil, errors.New("bad message length")
	}
	body := make([]byte, n)
	_, err := io.ReadFull(r, body)
	return h[0], body, err
}

// fuzzExchange writes data and returns what the sidecar sent until it hung
// up, went idle (when lingering) or the deadline passed. Writing runs beside
// reading so that neither side can block the other on full buffers.
func fuzzExchange(conn *net.TCPConn, r *bufio.Reader, data []byte, linger bool) []byte {
	deadline := time.Now().Add(fuzzIODeadline)
	conn.SetDeadline(deadline)
	written := make(chan struct{})
	go func() {
		defer close(written)
		// The sidecar may hang up first, on a malformed message: write
		// errors are expected.
		if _, err := conn.Write(data); err == nil && !linger {
			conn.CloseWrite()
		}
	}()
	var out bytes.Buffer
	buf := make([]byte, 32<<10)
	for {
		if linger {
			idle := time.Now().Add(fuzzIdle)
			if idle.After(deadline) {
				idle = deadline
			}
			conn.SetReadDeadline(idle)
		}
		n, err := r.Read(buf)
		out.Write(buf[:n])
		if err == nil || (n > 0 && isTimeout(err)) {
			continue
		}
		if isTimeout(err) && !isClosed(written) && time.Now().Before(deadline) {
			continue // the sidecar is still reading the input
		}
		break // end of stream, reset, deadline or idle
	}
	<-written
	return out.Bytes()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// checkStillServing asserts that no session outlives its client and that a
// normal client still gets answers.
func checkStillServing(t *testing.T, srv *Server, connURL string) {
	t.Helper()
	waitNoSessions(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), fuzzSessionLimit)
	defer cancel()
	conn, err := pgx.Connect(ctx, connURL)
	if err != nil {
		t.Fatalf("the sidecar no longer accepts clients: %v", err)
	}
	var one int
	var version string
	err = conn.QueryRow(ctx, "SELECT 1").Scan(&one)
	if err == nil {
		err = conn.QueryRow(ctx, "SELECT rejot.version()").Scan(&version)
	}
	conn.Close(context.Background())
	if err != nil || one != 1 || version != "test-version" {
		t.Fatalf("the sidecar no longer answers queries: %v (got %d, %q)", err, one, version)
	}
	waitNoSessions(t, srv)
}

func waitNoSessions(t *testing.T, srv *Server) {
	t.Helper()
	deadline := time.Now().Add(fuzzSessionLimit)
	for srv.Sessions() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d session(s) still open %v after the client left", srv.Sessions(), fuzzSessionLimit)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// backendTypes are the message types a server sends after startup.
const backendTypes = "123ACDEGHIKNRSTVWZcdnstv"

// checkBackendFraming checks that out is a sequence of backend messages. A
// cut-off last message is allowed: the connection may end in the middle.
func checkBackendFraming(out []byte) error {
	for len(out) >= 5 {
		typ := out[0]
		n := int(int32(binary.BigEndian.Uint32(out[1:5])))
		if !strings.ContainsRune(backendTypes, rune(typ)) || n < 4 {
			return fmt.Errorf("the sidecar sent a malformed message header: type %q, length %d", typ, n)
		}
		if n+1 > len(out) {
			return nil
		}
		out = out[n+1:]
	}
	return nil
}

// checkNoInternalNames asserts that the statements the sidecar makes on the
// client's connection for its own work never show in what the client gets
// (unless the client named them itself).
func checkNoInternalNames(in, out []byte) error {
	for _, name := range []string{internalStmt, abortStmt} {
		if bytes.Contains(out, []byte(name)) && !bytes.Contains(in, []byte(name)) {
			return fmt.Errorf("the sidecar's internal statement %q leaked to the client: %q", name, out)
		}
	}
	return nil
}

func fuzzEncode(msgs ...pgproto3.FrontendMessage) []byte {
	var b []byte
	for _, m := range msgs {
		var err error
		if b, err = m.Encode(b); err != nil {
			panic(err)
		}
	}
	return b
}

func fuzzStartupMessage(user, db string) []byte {
	params := map[string]string{"user": user}
	if db != "" {
		params["database"] = db
	}
	return fuzzEncode(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: params})
}

// fuzzRaw frames a message with any type and any length field.
func fuzzRaw(typ byte, length uint32, body string) []byte {
	return append(binary.BigEndian.AppendUint32([]byte{typ}, length), body...)
}

// fuzzPacket is an untyped startup packet.
func fuzzPacket(code uint32, rest string) []byte {
	return fuzzPacketLen(uint32(8+len(rest)), code, rest)
}

// fuzzPacketLen is an untyped startup packet with any length field.
func fuzzPacketLen(length uint32, code uint32, rest string) []byte {
	b := binary.BigEndian.AppendUint32(nil, length)
	return append(binary.BigEndian.AppendUint32(b, code), rest...)
}

func fuzzStartupSeeds(db string) [][]byte {
	valid := fuzzStartupMessage("postgres", db)
	ssl := fuzzPacket(codeSSLRequest, "")
	gss := fuzzPacket(codeGSSENCRequest, "")
	join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	return [][]byte{
		{},
		valid,
		join(valid, fuzzEncode(&pgproto3.Query{String: "SELECT rejot.version()"}, &pgproto3.Terminate{})),
		join(ssl, valid),
		join(gss, ssl, valid),
		join(ssl, ssl, ssl, valid),
		fuzzPacket(codeCancelRequest, "\x00\x00\x00\x01\x00\x00\x00\x02"),
		fuzzPacket(codeCancelRequest, "\x00\x00\x00\x01"),
		fuzzStartupMessage("postgres", "no_such_database"),
		fuzzStartupMessage("no_such_user", db),
		fuzzStartupMessage("", db),
		fuzzPacket(3<<16, "user\x00postgres"),            // no terminator
		fuzzPacket(3<<16, "user\x00postgres\x00x\x00"),   // key without value
		fuzzPacket(2<<16, "user\x00postgres\x00\x00"),    // protocol 2.0
		fuzzPacket(3<<16|99, "user\x00postgres\x00\x00"), // a newer minor version
		fuzzPacket(3<<16, "user\x00postgres\x00replication\x00database\x00\x00"),
		{0, 0, 0, 4},
		{0, 0, 0, 0},
		{0xff, 0xff, 0xff, 0xff, 0, 3, 0, 0},
		{0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0},
		fuzzPacketLen(10001, 3<<16, "user\x00postgres\x00\x00"),
		fuzzPacketLen(200, 3<<16, "user\x00post"), // truncated
		{0, 0, 0},
		fuzzEncode(&pgproto3.Query{String: "SELECT 1"}), // a typed message first
	}
}

func fuzzFrontendSeeds() [][]byte {
	q := func(s string) pgproto3.FrontendMessage { return &pgproto3.Query{String: s} }
	sync := &pgproto3.Sync{}
	version := []pgproto3.FrontendMessage{
		&pgproto3.Parse{Query: "SELECT rejot.version()"},
		&pgproto3.Bind{},
		&pgproto3.Describe{ObjectType: 'P'},
		&pgproto3.Execute{},
		sync,
	}
	named := []pgproto3.FrontendMessage{
		&pgproto3.Parse{Name: "s1", Query: "CALL rejot.version()"},
		&pgproto3.Describe{ObjectType: 'S', Name: "s1"},
		&pgproto3.Bind{DestinationPortal: "p1", PreparedStatement: "s1", ResultFormatCodes: []int16{1}},
		&pgproto3.Describe{ObjectType: 'P', Name: "p1"},
		&pgproto3.Execute{Portal: "p1", MaxRows: 1},
		&pgproto3.Close{ObjectType: 'P', Name: "p1"},
		&pgproto3.Close{ObjectType: 'S', Name: "s1"},
		sync,
	}
	echo := []pgproto3.FrontendMessage{
		&pgproto3.Parse{Name: "e", Query: "CALL rejot.fuzz_echo($1, n => $2, d => $3)"},
		&pgproto3.Bind{PreparedStatement: "e", Parameters: [][]byte{[]byte("x"), []byte("42"), []byte("2027-06-01")}},
		&pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "e", ParameterFormatCodes: []int16{0, 1, 1},
			Parameters: [][]byte{nil, {0, 0, 0, 7}, {0, 0, 0x20, 0}}, ResultFormatCodes: []int16{1, 0}},
		&pgproto3.Execute{},
		sync,
	}
	typed := []pgproto3.FrontendMessage{
		&pgproto3.Parse{Query: "SELECT rejot.fuzz_echo($1, b => $2, big => $3)", ParameterOIDs: []uint32{1007, 16, 20}},
		&pgproto3.Bind{ParameterFormatCodes: []int16{1},
			Parameters: [][]byte{{0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 23, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 5}, {1}, {0, 0, 0, 0, 0, 0, 0, 9}}},
		&pgproto3.Execute{},
		sync,
	}
	join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	return [][]byte{
		{},
		fuzzEncode(q("SELECT 1")),
		fuzzEncode(q("SELECT rejot.version()")),
		fuzzEncode(q("SELECT 1; SELECT rejot.version() AS v; SELECT 'x'::int")),
		fuzzEncode(q("BEGIN"), q("SELECT 1/0"), q("SELECT rejot.version()"), q("ROLLBACK")),
		fuzzEncode(q("CALL rejot.fuzz_echo('a', 1, true, '2020-01-01', -5)"), q("CALL rejot.fuzz_echo('a', 'x')")),
		fuzzEncode(q("SELECT 1, rejot.version()"), q("CALL rejot.nope()"), q("CALL rejot.version(1)")),
		fuzzEncode(q("COPY (SELECT 1) TO STDOUT; SELECT rejot.version()")),
		fuzzEncode(version...),
		fuzzEncode(named...),
		fuzzEncode(echo...),
		fuzzEncode(typed...),
		fuzzEncode(&pgproto3.Parse{Query: "SELECT 1, rejot.version()"}, &pgproto3.Bind{}, &pgproto3.Execute{}, sync),
		fuzzEncode(&pgproto3.Parse{Name: "s", Query: "SELECT rejot.version()"}, &pgproto3.Parse{Name: "s", Query: "SELECT rejot.version()"}, sync),
		fuzzEncode(&pgproto3.Parse{Query: "SELECT 1"}, &pgproto3.Bind{}, &pgproto3.Flush{}, &pgproto3.Execute{}, sync),
		join(fuzzEncode(&pgproto3.Parse{Name: "s", Query: "SELECT rejot.version()"}), fuzzRaw('B', 8, "\x00s\x00\x00"), fuzzEncode(sync)),
		join(fuzzEncode(&pgproto3.Parse{Name: "s", Query: "SELECT rejot.version()"}), fuzzRaw('D', 4, ""), fuzzRaw('C', 5, "S"), fuzzEncode(sync)),
		fuzzRaw('Q', 26, "SELECT rejot.version()"), // no terminator
		fuzzRaw('Q', 32, "SELECT rejot.version()\x00junk\x00"),
		fuzzRaw('Q', 3, ""),
		fuzzRaw('Q', 0, ""),
		fuzzRaw('Q', 0xffffffff, ""),
		fuzzRaw('Q', 0x7fffffff, "SELECT 1"),
		fuzzRaw('P', 0x40000000, ""),
		fuzzRaw('Q', 40, "SELECT rejot"), // truncated
		fuzzRaw('z', 4, ""),
		fuzzRaw(0, 8, "\x04\xd2\x16\x2f"), // an SSLRequest after startup
		fuzzRaw('F', 14, "\x00\x00\x05\x13\x00\x00\x00\x00\x00\x00"),
		join(fuzzEncode(&pgproto3.Terminate{}), fuzzEncode(q("SELECT 1"))),
		fuzzEncode(sync, &pgproto3.Flush{}, sync),
	}
}
