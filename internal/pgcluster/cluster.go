// Package pgcluster starts throwaway Postgres clusters from the machine's
// own binaries: a temp dir, a free port, wal_level=logical, started as the
// postgres OS user when run as root. The demo runs on them, and so do the
// tests (through pgtest).
package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Options shape a cluster. The zero value is a trust-authenticated cluster
// listening on 127.0.0.1.
type Options struct {
	// HBA lines placed before the default "trust everything" lines, so a
	// test can require md5 or scram-sha-256 for chosen users.
	HBA []string
	// Settings appended to postgresql.conf.
	Settings map[string]string
}

// Cluster is a running throwaway Postgres server.
type Cluster struct {
	Dir  string // data directory
	Port int
	Bin  string // directory of the server binaries

	opts Options
	cred *syscall.Credential
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// BinDir finds the newest Postgres server binaries on this machine, or the
// directory named by REJOT_PG_BIN.
func BinDir() (string, error) {
	if dir := os.Getenv("REJOT_PG_BIN"); dir != "" {
		return dir, nil
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	if len(matches) == 0 {
		if p, err := exec.LookPath("postgres"); err == nil {
			return filepath.Dir(p), nil
		}
		return "", errors.New("no Postgres server binaries found (install postgresql or set REJOT_PG_BIN)")
	}
	sort.Slice(matches, func(i, j int) bool { return versionOf(matches[i]) > versionOf(matches[j]) })
	return filepath.Dir(matches[0]), nil
}

func versionOf(path string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(path))))
	return v
}

// Start initialises and starts a new cluster. Call Stop when done.
func Start(opts Options) (*Cluster, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "rejot-pg-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, Bin: bin, opts: opts}
	if err := c.prepareOwner(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := c.initdb(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		c.Port, err = FreePort()
		if err == nil {
			err = c.writeConfig()
		}
		if err == nil {
			err = c.Start()
		}
		if err == nil || attempt == 3 {
			break
		}
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return c, nil
}

// prepareOwner makes the data directory belong to the postgres OS user when
// running as root, because Postgres refuses to run as root.
func (c *Cluster) prepareOwner() error {
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return fmt.Errorf("running as root needs a postgres OS user: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	return os.Chown(c.Dir, uid, gid)
}

func (c *Cluster) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(c.Bin, name), args...)
	cmd.SysProcAttr = sysProcAttr(c.cred)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.Dir = c.Dir
	return cmd
}

func (c *Cluster) initdb() error {
	out, err := c.command("initdb", "-D", c.dataDir(), "-U", "postgres", "--auth=trust",
		"-E", "UTF8", "--locale=C", "--no-sync").CombinedOutput()
	if err != nil {
		return fmt.Errorf("initdb: %v: %s", err, out)
	}
	return nil
}

func (c *Cluster) dataDir() string { return filepath.Join(c.Dir, "data") }

func (c *Cluster) writeConfig() error {
	settings := map[string]string{
		"port":                            strconv.Itoa(c.Port),
		"listen_addresses":                "'127.0.0.1'",
		"unix_socket_directories":         "'" + c.Dir + "'",
		"wal_level":                       "logical",
		"max_wal_senders":                 "100",
		"max_replication_slots":           "100",
		"max_connections":                 "200",
		"fsync":                           "off",
		"synchronous_commit":              "on", // as in production: WAL reaches walsenders at commit
		"full_page_writes":                "off",
		"shared_buffers":                  "64MB",
		"logging_collector":               "off",
		"log_min_messages":                "warning",
		"password_encryption":             "'scram-sha-256'",
		"max_logical_replication_workers": "8",
	}
	for k, v := range c.opts.Settings {
		settings[k] = v
	}
	var conf strings.Builder
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&conf, "%s = %s\n", k, settings[k])
	}
	if err := os.WriteFile(filepath.Join(c.dataDir(), "postgresql.auto.conf"), []byte(conf.String()), 0o600); err != nil {
		return err
	}
	hba := strings.Join(c.opts.HBA, "\n") + "\n" +
		"local all all trust\nlocal replication all trust\n" +
		"host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n"
	if err := os.WriteFile(filepath.Join(c.dataDir(), "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		return err
	}
	if c.cred != nil {
		for _, f := range []string{"postgresql.auto.conf", "pg_hba.conf"} {
			if err := os.Chown(filepath.Join(c.dataDir(), f), int(c.cred.Uid), int(c.cred.Gid)); err != nil {
				return err
			}
		}
	}
	return nil
}

// Start starts a stopped cluster and waits until it accepts connections.
func (c *Cluster) Start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd != nil {
		return errors.New("cluster already running")
	}
	logf, err := os.OpenFile(filepath.Join(c.Dir, "postgres.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := c.command("postgres", "-D", c.dataDir())
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start postgres: %w", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	c.cmd, c.done = cmd, done
	return c.waitReady(done)
}

func (c *Cluster) waitReady(done chan struct{}) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			c.cmd = nil
			return fmt.Errorf("postgres exited during start-up; log:\n%s", c.Log())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn, err := pgx.Connect(ctx, c.URL("postgres"))
		cancel()
		if err == nil {
			conn.Close(context.Background())
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("postgres did not become ready; log:\n%s", c.Log())
}

// Log returns the server log so far.
func (c *Cluster) Log() string {
	b, _ := os.ReadFile(filepath.Join(c.Dir, "postgres.log"))
	return string(b)
}

// Stop shuts the server down (fast mode) and waits for it.
func (c *Cluster) Stop() error { return c.signal(syscall.SIGINT) }

// Kill kills the postmaster with SIGKILL, like a machine crash of the server
// process; Start recovers it.
func (c *Cluster) Kill() error { return c.signal(syscall.SIGKILL) }

func (c *Cluster) signal(sig syscall.Signal) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd == nil {
		return nil
	}
	if sig == syscall.SIGKILL {
		// The backends too, like a crash of the machine: they may have
		// left the postmaster's process group, so find them by parent.
		pid := c.cmd.Process.Pid
		children := childrenOf(pid)
		syscall.Kill(-pid, syscall.SIGKILL)
		syscall.Kill(pid, syscall.SIGKILL)
		for _, child := range children {
			syscall.Kill(child, syscall.SIGKILL)
		}
		// Wait until they are gone: a new postmaster refuses to start
		// while the old shared memory is still attached.
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			alive := false
			for _, child := range children {
				if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(child))); err == nil {
					alive = true
				}
			}
			if !alive {
				break
			}
		}
	} else {
		c.cmd.Process.Signal(sig)
	}
	select {
	case <-c.done:
	case <-time.After(60 * time.Second):
		syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		<-c.done
	}
	c.cmd = nil
	return nil
}

// childrenOf lists the processes whose parent is pid (Linux /proc).
func childrenOf(pid int) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
		i := strings.LastIndexByte(string(stat), ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(string(stat[i+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			out = append(out, child)
		}
	}
	return out
}

// Restart stops and starts the server.
func (c *Cluster) Restart() error {
	if err := c.Stop(); err != nil {
		return err
	}
	return c.Start()
}

// Destroy stops the server and removes its files.
func (c *Cluster) Destroy() {
	c.Stop()
	os.RemoveAll(c.Dir)
}

// Addr is host:port of the server's TCP listener.
func (c *Cluster) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(c.Port)) }

// URL is a connection URL for the database as the superuser postgres.
func (c *Cluster) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable", c.Addr(), db)
}

// Exec runs SQL as the superuser in the given database.
func (c *Cluster) Exec(ctx context.Context, db string, sql string, args ...any) error {
	conn, err := pgx.Connect(ctx, c.URL(db))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql, args...)
	return err
}

// FreePort asks the kernel for a free TCP port on the loopback interface.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
