package proxy

import (
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestResetClientWithPendingUpstreamBytesDoesNotSpin: a client that pipelines
// more than the upstream takes while it is busy, then resets its socket.
func TestResetClientWithPendingUpstreamBytesDoesNotSpin(t *testing.T) {
	t.Run("eventloop", func(t *testing.T) { resetSpin(t, false) })
	t.Run("goroutines", func(t *testing.T) { resetSpin(t, true) })
}

func resetSpin(t *testing.T, noLoop bool) {
	db := pg.CreateDB(t)
	_, url := startProxy(t, db, func(s *Server) { s.DisableEventLoop = noLoop })
	conn, _ := rawStartup(t, url, db)
	msg, _ := (&pgproto3.Query{String: "SELECT pg_sleep(3)"}).Encode(nil)
	big, _ := (&pgproto3.Query{String: "SELECT 1 -- " + strings.Repeat("x", 100<<10)}).Encode(nil)
	conn.Write(msg)
	// Fill upstream socket buffers and the loop's toUp until writes block.
	for {
		conn.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
		if _, err := conn.Write(big); err != nil {
			break
		}
	}
	conn.(*net.TCPConn).SetLinger(0)
	conn.Close() // RST
	time.Sleep(200 * time.Millisecond)
	before := cpuTime()
	time.Sleep(time.Second)
	used := cpuTime() - before
	t.Logf("process CPU in 1s after the client's reset: %v", used)
	if used > 300*time.Millisecond {
		t.Fatalf("event loop spins: %v CPU in 1s with one idle session", used)
	}
}
