package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/internal/pgtest"
)

// sidecar is a `rejot serve` process that can be stopped and started again
// on the same address, its log appended to one file.
type sidecar struct {
	name     string // the system's name
	bin      string
	upstream string
	catalog  string
	log      string // --log, when not the catalog
	addr     string
	logPath  string
	profiles string // directory for CPU profiles, or ""
	starts   int
	cmd      *exec.Cmd
	exited   chan struct{}
	used     time.Duration // CPU time of the processes that ended
}

func newSidecar(bin, dir, profiles, name, upstream, catalog string) (*sidecar, error) {
	port, err := pgtest.FreePort()
	if err != nil {
		return nil, err
	}
	return &sidecar{name: name, bin: bin, upstream: upstream, catalog: catalog, profiles: profiles,
		addr:    net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		logPath: filepath.Join(dir, name+".log")}, nil
}

// start launches the process and returns at once; ready waits for it.
func (s *sidecar) start() error {
	if s.cmd != nil {
		return errors.New("sidecar " + s.name + " already running")
	}
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	// Another process may have taken the port while this one was stopped
	// (tests beside the benchmark): the sidecar would exit at once, and
	// the benchmark wait for it in vain.
	if err := s.claimAddr(); err != nil {
		logf.Close()
		return err
	}
	s.starts++
	cmd := exec.Command(s.bin, "serve", "--upstream", s.upstream, "--listen", s.addr,
		"--catalog", s.catalog, "--name", s.name, "--http", "off", "--log-level", logLevel())
	if s.log != "" {
		cmd.Args = append(cmd.Args, "--log", s.log)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = os.Environ()
	if s.profiles != "" {
		path := filepath.Join(s.profiles, fmt.Sprintf("%s-%d.prof", s.name, s.starts))
		cmd.Env = append(cmd.Env, "REJOT_CPUPROFILE="+path)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	s.cmd, s.exited = cmd, make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(s.exited) }()
	return nil
}

// claimAddr keeps the sidecar's address if it is still free, else moves
// it to a free port.
func (s *sidecar) claimAddr() error {
	if l, err := net.Listen("tcp", s.addr); err == nil {
		return l.Close()
	}
	port, err := pgtest.FreePort()
	if err != nil {
		return err
	}
	s.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	return nil
}

// ready waits until the sidecar accepts connections and has registered its
// system in the catalog.
func (s *sidecar) ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		select {
		case <-s.exited:
			return fmt.Errorf("sidecar %s exited; log %s:\n%s", s.name, s.logPath, tail(s.logPath, 30))
		default:
		}
		if s.registered(ctx) {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("sidecar %s did not become ready; log %s:\n%s", s.name, s.logPath, tail(s.logPath, 30))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *sidecar) registered(ctx context.Context) bool {
	conn, err := pgx.Connect(ctx, s.url())
	if err != nil {
		return false
	}
	defer conn.Close(context.Background())
	var n int
	var installed bool
	if conn.QueryRow(ctx, "SELECT count(*) FROM rejot.systems WHERE system = $1", s.name).Scan(&n) != nil {
		return false
	}
	if conn.QueryRow(ctx, "SELECT to_regclass('_rejot.subscriptions') IS NOT NULL").Scan(&installed) != nil {
		return false
	}
	return n == 1 && installed
}

// stop ends the process with SIGTERM (so a CPU profile is written), then
// SIGKILL if it lingers.
func (s *sidecar) stop() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
	s.used += s.cmd.ProcessState.UserTime() + s.cmd.ProcessState.SystemTime()
	s.cmd = nil
}

// cpu is the CPU time the sidecar's processes used so far.
func (s *sidecar) cpu() time.Duration {
	if s.cmd == nil {
		return s.used
	}
	_, used, _ := procStat(s.cmd.Process.Pid, false)
	return s.used + used
}

// logLevel is the sidecars' log level: BENCH_LOG_LEVEL, default info.
func logLevel() string {
	if l := os.Getenv("BENCH_LOG_LEVEL"); l != "" {
		return l
	}
	return "info"
}

// url connects through the sidecar to its upstream's database.
func (s *sidecar) url() string {
	u, err := pgx.ParseConfig(s.upstream)
	if err != nil {
		return ""
	}
	return fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable", s.addr, u.Database)
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return lastLines(string(b), n)
}
