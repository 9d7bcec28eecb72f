package replicator

import (
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// tcpPair is a connected pair of loopback TCP connections.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func lowWater(t *testing.T, c net.Conn) int {
	t.Helper()
	raw, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	raw.Control(func(fd uintptr) { n, err = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVLOWAT) })
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestPacedReaderWaitsOnlyBriefly: after a small read the reader pauses
// with the socket's low-water mark raised, then lowers it again, so a
// lone small message that comes later is read at once rather than when
// pacedSmall bytes have gathered.
func TestPacedReaderWaitsOnlyBriefly(t *testing.T) {
	client, server := tcpPair(t)
	p := newPacedReader(client)
	if p.sock == nil {
		t.Fatal("no socket to set the low-water mark on")
	}
	p.r = client
	buf := make([]byte, 64<<10)
	server.Write([]byte("first"))
	if n, err := p.Read(buf); err != nil || string(buf[:n]) != "first" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	// The next read pauses first; what the server sends meanwhile, and
	// after, arrives whole.
	go func() {
		time.Sleep(2 * time.Millisecond)
		server.Write([]byte("second"))
	}()
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	got, err := io.ReadAtLeast(p, buf, len("second"))
	if err != nil || string(buf[:got]) != "second" {
		t.Fatalf("read %q, %v", buf[:got], err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("a lone small message took %v", d)
	}
	if n := lowWater(t, client); n != 1 {
		t.Fatalf("low-water mark left at %d", n)
	}
}
