package proxy

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/rejot-dev/rejot/sql"
	"github.com/rs/zerolog"
)

func tcpPair(t *testing.T) (a, b *net.TCPConn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// TestHandbackWithUnwrittenUpstreamBytes: the loop hands a session
// back while bytes for the upstream are still unwritten and the upstream is
// busy sending replies. resume writes those bytes before anyone reads the
// upstream's replies: the upstream (like Postgres) reads its next query only
// after writing the current reply, so both sides block for ever.
func TestHandbackWithUnwrittenUpstreamBytes(t *testing.T) {
	loop, err := newEventLoop()
	if err != nil {
		t.Fatal(err)
	}
	// A running loop holds a P while it waits: never leave one behind.
	defer loop.close()
	srv := &Server{Executor: sql.NewExecutor("x"), Logger: zerolog.Nop(), loop: loop}
	app, clientSide := tcpPair(t)
	upSide, fakeUp := tcpPair(t)
	upSide.SetWriteBuffer(128 << 10)
	fakeUp.SetReadBuffer(128 << 10)
	upSide.SetReadBuffer(256 << 10)
	fakeUp.SetWriteBuffer(256 << 10)

	var got atomic.Int64
	// A Postgres-like upstream: read a query, send a 1 MiB reply, repeat.
	go func() {
		r := bufio.NewReader(fakeUp)
		row, _ := (&pgproto3.DataRow{Values: [][]byte{make([]byte, 64<<10)}}).Encode(nil)
		for {
			var h [5]byte
			if _, err := io.ReadFull(r, h[:]); err != nil {
				return
			}
			if _, err := r.Discard(int(binary.BigEndian.Uint32(h[1:])) - 4); err != nil {
				return
			}
			got.Add(1)
			for range 16 {
				if _, err := fakeUp.Write(row); err != nil {
					return
				}
			}
			z, _ := (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(nil)
			fakeUp.Write(z)
		}
	}()
	go io.Copy(io.Discard, app) // the client reads everything it gets

	s := newSession(srv, clientSide, upSide, &startup{user: "u", database: "d"}, zerolog.Nop())
	s.authed = true
	defer s.close()
	done := make(chan fastResult, 1)
	go func() { done <- loop.serve(s) }()
	time.Sleep(100 * time.Millisecond) // adopted

	var batch []byte
	for range 10 {
		batch, _ = (&pgproto3.Query{String: "SELECT 1 -- " + strings.Repeat("x", 200<<10)}).Encode(batch)
	}
	batch, _ = (&pgproto3.Query{String: "SELECT rejot.version()"}).Encode(batch)
	if _, err := app.Write(batch); err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-done:
		t.Logf("serve returned: %+v", res)
	case <-time.After(5 * time.Second):
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		t.Log(string(buf[:n]))
		t.Fatal("serve did not return within 5s: resume is blocked writing to an upstream that waits for its replies to be read")
	}
}
