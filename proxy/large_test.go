package proxy

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/rejot-dev/rejot/internal/pgerr"
)

// message frames a body, built in one allocation so that what the test
// measures is the proxy's.
func message(typ byte, parts ...string) []byte {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	b := make([]byte, 5, 5+n)
	b[0] = typ
	binary.BigEndian.PutUint32(b[1:], uint32(4+n))
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// until reads replies up to ReadyForQuery, returning the error codes and
// the first value of the last data row. Postgres takes its time over a
// 70 MB statement on a busy machine.
func until(t *testing.T, conn net.Conn, r *bufio.Reader) (codes []string, value string) {
	t.Helper()
	for {
		conn.SetReadDeadline(time.Now().Add(90 * time.Second))
		var h [5]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			t.Fatalf("read: %v", err)
		}
		typ, body := h[0], make([]byte, binary.BigEndian.Uint32(h[1:])-4)
		if _, err := io.ReadFull(r, body); err != nil {
			t.Fatalf("read: %v", err)
		}
		switch typ {
		case 'E':
			var e pgproto3.ErrorResponse
			e.Decode(body)
			codes = append(codes, e.Code)
			t.Logf("%s %s: %.200s", e.Severity, e.Code, e.Message)
		case 'D':
			var d pgproto3.DataRow
			d.Decode(body)
			value = string(d.Values[0])
		case 'Z':
			return codes, value
		}
	}
}

// allocated is how many bytes the test's process allocates while f runs.
func allocated(f func()) uint64 {
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestLargeMessagesBoundedButRelayed: a 70 MB message that mentions rejot
// is refused with 54000, in the simple and the extended protocol, and the
// session goes on; a 70 MB ordinary query is relayed and answered as
// Postgres answers it. The proxy holds neither.
func TestLargeMessagesBoundedButRelayed(t *testing.T) {
	db := pg.CreateDB(t)
	_, url := startProxy(t, db, testFunctions)
	conn, r := rawStartup(t, url, db)
	pad := strings.Repeat("x", 70<<20)
	send := func(b []byte) {
		if _, err := conn.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	sync := message('S')

	call := message('Q', "SELECT rejot.version() /* ", pad, " */\x00")
	grown := allocated(func() {
		send(call)
		if codes, _ := until(t, conn, r); len(codes) != 1 || codes[0] != pgerr.ProgramLimitExceeded {
			t.Fatalf("a 70 MB call: errors %v, want 54000", codes)
		}
	})
	if grown > 16<<20 {
		t.Errorf("the proxy allocated %d MB for a refused 70 MB message", grown>>20)
	}
	parse := message('P', "\x00SELECT rejot.version() /* ", pad, " */\x00\x00\x00")
	send(append(parse, sync...))
	if codes, _ := until(t, conn, r); len(codes) != 1 || codes[0] != pgerr.ProgramLimitExceeded {
		t.Fatalf("a 70 MB Parse of a call: errors %v, want 54000", codes)
	}
	send(message('Q', "SELECT rejot.version()\x00"))
	if codes, v := until(t, conn, r); len(codes) != 0 || v != "test-version" {
		t.Fatalf("after the refusals: %v %q", codes, v)
	}

	ordinary := message('Q', "SELECT length('", pad, "')\x00")
	grown = allocated(func() {
		send(ordinary)
		if codes, v := until(t, conn, r); len(codes) != 0 || v != strconv.Itoa(len(pad)) {
			t.Fatalf("a 70 MB ordinary query: errors %v, value %q", codes, v)
		}
	})
	if grown > 16<<20 {
		t.Errorf("the proxy allocated %d MB to relay a 70 MB query", grown>>20)
	}
	parse = message('P', "\x00SELECT length('", pad, "')\x00\x00\x00")
	send(append(append(parse, message('B', "\x00\x00\x00\x00\x00\x00\x00\x00")...), append(message('E', "\x00\x00\x00\x00\x00"), sync...)...))
	if codes, v := until(t, conn, r); len(codes) != 0 || v != strconv.Itoa(len(pad)) {
		t.Fatalf("a 70 MB ordinary Parse: errors %v, value %q", codes, v)
	}
}

// TestLargeMessageMentioningRejotLate: a large message whose mention of
// rejot comes after what the proxy relayed before seeing it ends the
// session with a FATAL 54000; nothing of it runs.
func TestLargeMessageMentioningRejotLate(t *testing.T) {
	db := pg.CreateDB(t)
	_, url := startProxy(t, db, testFunctions, func(s *Server) { s.MaxInterceptedSize = 1 << 20 })
	conn, r := rawStartup(t, url, db)
	q := message('Q', "CREATE TABLE late (id int); SELECT length('", strings.Repeat("x", 3<<20), "'); SELECT rejot.version()\x00")
	go conn.Write(q)
	expectFatal(t, conn, r, pgerr.ProgramLimitExceeded)
	if tableExists(t, db, "late") {
		t.Fatal("part of a refused message ran")
	}
}

// TestLargeBindOfACallRefused: a Bind of the sidecar's own statement over
// the bound is refused; the session goes on.
func TestLargeBindOfACallRefused(t *testing.T) {
	db := pg.CreateDB(t)
	_, url := startProxy(t, db, testFunctions, func(s *Server) { s.MaxInterceptedSize = 1 << 20 })
	conn, r := rawStartup(t, url, db)
	send := func(b []byte) {
		if _, err := conn.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	sync := message('S')
	send(append(message('P', "s\x00CALL rejot.echo($1, $2)\x00\x00\x00"), sync...))
	if codes, _ := until(t, conn, r); len(codes) != 0 {
		t.Fatalf("parse: %v", codes)
	}
	label := strings.Repeat("y", 2<<20)
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(label)))
	bind := message('B', "\x00s\x00\x00\x00\x00\x02\x00\x00\x00\x017", string(n[:]), label, "\x00\x00")
	send(append(append(bind, message('E', "\x00\x00\x00\x00\x00")...), sync...))
	if codes, _ := until(t, conn, r); len(codes) != 1 || codes[0] != pgerr.ProgramLimitExceeded {
		t.Fatalf("a 2 MB Bind of a call: errors %v, want 54000", codes)
	}
	send(append(append(message('B', "\x00s\x00\x00\x00\x00\x02\x00\x00\x00\x017\x00\x00\x00\x01z\x00\x00"), message('E', "\x00\x00\x00\x00\x00")...), sync...))
	if codes, v := until(t, conn, r); len(codes) != 0 || v != "7" {
		t.Fatalf("a small Bind after: %v %q", codes, v)
	}
}
