package tests

import (
	"bytes"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rejot-dev/rejot/internal/pgtest"
)

// sidecar is a running `rejot serve` process.
type sidecar struct {
	cmd  *exec.Cmd
	addr string
	mu   sync.Mutex
	out  bytes.Buffer
}

func (s *sidecar) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.Write(p)
}

func (s *sidecar) logs() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String()
}

// startSidecar runs the built binary in front of database db; it is stopped
// when the test ends and its log printed if the test failed.
func startSidecar(t *testing.T, db string, extra ...string) *sidecar {
	t.Helper()
	return startSidecarUpstream(t, pg.URL(db), extra...)
}

// startSidecarUpstream runs the built binary in front of any upstream URL
// and waits until it listens.
func startSidecarUpstream(t *testing.T, upstream string, extra ...string) *sidecar {
	t.Helper()
	return waitListening(t, launchSidecar(t, upstream, extra...))
}

// waitListening waits until a launched sidecar listens.
func waitListening(t *testing.T, s *sidecar) *sidecar {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", s.addr); err == nil {
			c.Close()
			return s
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("sidecar did not start listening; log:\n%s", s.logs())
	return nil
}

// launchSidecar starts the built binary in front of upstream, without
// waiting for it to listen.
func launchSidecar(t *testing.T, upstream string, extra ...string) *sidecar {
	t.Helper()
	return launchCommand(t, []string{rejotBin}, upstream, extra...)
}

// launchCommand starts `command serve` in front of upstream, where
// command is the binary and what runs it (the image test runs it in the
// image's filesystem), stopped when the test ends.
func launchCommand(t *testing.T, command []string, upstream string, extra ...string) *sidecar {
	t.Helper()
	port, err := pgtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	s := &sidecar{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	args := []string{"serve", "--upstream", upstream, "--listen", s.addr, "--log-level", "debug"}
	if !slices.Contains(extra, "--http") {
		args = append(args, "--http", "127.0.0.1:0") // many sidecars share this machine
	}
	args = append(args, logArgs(t, extra)...)
	s.cmd = exec.Command(command[0], append(command[1:], args...)...)
	s.cmd.Stdout, s.cmd.Stderr = s, s
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { s.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			s.cmd.Process.Kill()
			<-done
		}
		if strings.Contains(s.logs(), "WARNING: DATA RACE") {
			t.Errorf("the sidecar has a data race (REJOT_TEST_RACE builds it with -race)")
		}
		if t.Failed() {
			t.Logf("sidecar log:\n%s", s.logs())
		}
	})
	return s
}

// url is a connection URL through the sidecar.
func (s *sidecar) url(db, user string) string {
	return fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable", user, s.addr, db)
}

// directURL is a connection URL straight to Postgres.
func directURL(db, user string) string {
	return fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable", user, pg.Addr(), db)
}
