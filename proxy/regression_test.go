package proxy

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Regressions found by fuzzing: each feeds a raw message stream through the
// sidecar and checks the reply stream, message type by message type.

func encodeAll(msgs ...pgproto3.FrontendMessage) []byte {
	var b []byte
	for _, m := range msgs {
		b, _ = m.Encode(b)
	}
	return b
}

// replyTypes reads replies until n ReadyForQuery messages arrived and
// returns their types ("E:code" for errors).
func replyTypes(t *testing.T, conn net.Conn, r *bufio.Reader, n int) []string {
	t.Helper()
	var out []string
	for n > 0 {
		typ, body := readMsg(t, conn, r)
		s := string(typ)
		if typ == 'E' {
			var e pgproto3.ErrorResponse
			e.Decode(body)
			s = "E:" + e.Code
		}
		if typ == 'Z' {
			n--
		}
		out = append(out, s)
	}
	return out
}

func TestPipelinedQueriesWithFailingCalls(t *testing.T) {
	db := pg.CreateDB(t)
	_, url := startProxy(t, db)
	for range 20 {
		conn, r := rawStartup(t, url, db)
		conn.Write(encodeAll(&pgproto3.Query{String: "CALL rejot.nope()"}, &pgproto3.Query{String: "SELECT 1"},
			&pgproto3.Query{String: "CALL rejot.nope()"}, &pgproto3.Query{String: "SELECT rejot.version()"},
			&pgproto3.Query{String: "SELECT 2"}))
		got := strings.Join(replyTypes(t, conn, r, 5), " ")
		want := "E:42883 Z T D C Z E:42883 Z T D C Z T D C Z"
		if got != want {
			t.Fatalf("replies %s\nwant    %s", got, want)
		}
		conn.Close()
	}
}

func TestExtendedBatchAfterFailedBatch(t *testing.T) {
	db := pg.CreateDB(t)
	_, url := startProxy(t, db)
	conn, r := rawStartup(t, url, db)
	// The first batch fails; its Sync is already sent when the second
	// batch's messages follow, so those must be answered normally.
	conn.Write(encodeAll(
		&pgproto3.Parse{Query: "SELECT 1/0"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: "SELECT rejot.version()"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{},
		&pgproto3.Parse{Query: "SELECT rejot.version()"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: "SELECT 1"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}))
	got := strings.Join(replyTypes(t, conn, r, 2), " ")
	// (1/0 is folded when planning, so Bind fails.)
	if want := "1 E:22012 Z 1 2 D C 1 2 D C Z"; got != want {
		t.Fatalf("replies %s\nwant    %s", got, want)
	}
}

func TestCallDuringCopyFromStdin(t *testing.T) {
	db := pg.CreateDB(t)
	_, url := startProxy(t, db)
	conn, r := rawStartup(t, url, db)
	conn.Write(encodeAll(&pgproto3.Query{String: "CREATE TEMP TABLE t (a int); COPY t FROM STDIN"},
		&pgproto3.Parse{Query: "SELECT rejot.version()"}, &pgproto3.Sync{}))
	// Postgres fails the COPY on the unexpected message and, having lost
	// sync, ends the connection: exactly what it does without the sidecar.
	var got []string
	for {
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		typ, body, err := fuzzReadMessage(r)
		if err != nil {
			break
		}
		s := string(typ)
		if typ == 'E' {
			var e pgproto3.ErrorResponse
			e.Decode(body)
			s = e.Severity + ":" + e.Code
		}
		got = append(got, s)
	}
	if g := strings.Join(got, " "); g != "C G ERROR:08P01 FATAL:08P01" {
		t.Fatalf("replies %s", g)
	}
}

func TestUpstreamGoneWhileCallWaits(t *testing.T) {
	db := pg.CreateDB(t)
	srv, url := startProxy(t, db)
	conn, r := rawStartup(t, url, db)
	conn.Write(encodeAll(&pgproto3.Query{String: "SELECT pg_terminate_backend(pg_backend_pid())"},
		&pgproto3.Query{String: "SELECT rejot.version()"}))
	for {
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := r.ReadByte(); err != nil {
			if isDeadline(err) {
				t.Fatal("client not disconnected after its backend was terminated")
			}
			break
		}
	}
	waitUntil(t, 5*time.Second, "session closed", func() bool { return srv.Sessions() == 0 })
}

func TestHalfClosedClientGetsItsReplies(t *testing.T) {
	db := pg.CreateDB(t)
	_, url := startProxy(t, db)
	conn, r := rawStartup(t, url, db)
	conn.Write(encodeAll(&pgproto3.Query{String: "SELECT 1"}, &pgproto3.Query{String: "SELECT rejot.version()"}))
	conn.(*net.TCPConn).CloseWrite()
	if got := strings.Join(replyTypes(t, conn, r, 2), " "); got != "T D C Z T D C Z" {
		t.Fatalf("replies %s", got)
	}
}

func TestQueryWithEmbeddedNUL(t *testing.T) {
	db := pg.CreateDB(t)
	_, url := startProxy(t, db)
	conn, r := rawStartup(t, url, db)
	conn.Write(encodeAll(&pgproto3.Query{String: "SELECT rejot.version()\x00junk"}))
	// Postgres refuses the malformed message and ends the connection.
	for {
		typ, body := readMsg(t, conn, r)
		if typ == 'E' {
			var e pgproto3.ErrorResponse
			e.Decode(body)
			if e.Code != "08P01" {
				t.Fatalf("got %s %s", e.Code, e.Message)
			}
			return
		}
		if typ == 'D' {
			t.Fatal("the sidecar answered a malformed message")
		}
	}
}

// TestHandbackInTheMiddleOfALargeReply: a client reading a large row slowly
// sends a call while the event loop is in the middle of relaying the row;
// the goroutine relay takes over mid-frame and both replies arrive whole.
func TestHandbackInTheMiddleOfALargeReply(t *testing.T) {
	db := pg.CreateDB(t)
	_, url := startProxy(t, db)
	conn, r := rawStartup(t, url, db)
	const size = 8 << 20
	conn.Write(encodeAll(&pgproto3.Query{String: fmt.Sprintf("SELECT repeat('x', %d)", size)}))
	// Take a little of the reply so the loop is mid-row, then call.
	head := make([]byte, 64<<10)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(r, head); err != nil {
		t.Fatal(err)
	}
	conn.Write(encodeAll(&pgproto3.Query{String: "SELECT rejot.version()"}))
	all := head
	chunk := make([]byte, 256<<10)
	for !strings.HasSuffix(replyTypesOf(t, all), "Z T D C Z") {
		n, err := r.Read(chunk)
		if err != nil {
			t.Fatalf("after %d bytes (%s): %v", len(all), replyTypesOf(t, all), err)
		}
		all = append(all, chunk[:n]...)
	}
	types, row, version := walkReplies(t, all)
	if types != "T D C Z T D C Z" || row != size || version != "test-version" {
		t.Fatalf("replies %q, row of %d bytes, version %q", types, row, version)
	}
}

// walkReplies parses a captured reply stream.
func walkReplies(t *testing.T, b []byte) (types string, firstValue int, lastValue string) {
	t.Helper()
	var seen []string
	first := true
	for len(b) >= 5 {
		n := int(binary.BigEndian.Uint32(b[1:5])) + 1
		if n > len(b) {
			break
		}
		seen = append(seen, string(b[0]))
		if b[0] == 'D' {
			v := b[11:n]
			if first {
				firstValue, first = len(v), false
			} else {
				lastValue = string(v)
			}
		}
		b = b[n:]
	}
	return strings.Join(seen, " "), firstValue, lastValue
}

func replyTypesOf(t *testing.T, b []byte) string {
	types, _, _ := walkReplies(t, b)
	return types
}
