package natstest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// process is a server running as an OS process of its own.
type process struct {
	cfg  config
	bin  string
	dir  string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
}

func (p *process) hostPort() string { return "127.0.0.1:" + strconv.Itoa(p.cfg.port) }

func (p *process) running() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// configFile writes the server's configuration: its ports, its store,
// the cluster's routes, a log file beside the store.
func (p *process) configFile() (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "server_name: %q\nlisten: %q\n", p.cfg.name, p.hostPort())
	fmt.Fprintf(&b, "jetstream { store_dir: %q }\n", p.cfg.storeDir)
	fmt.Fprintf(&b, "log_file: %q\n", filepath.Join(p.dir, p.cfg.name+".log"))
	if p.cfg.clusterPort != 0 {
		routes := make([]string, len(p.cfg.routes))
		for i, r := range p.cfg.routes {
			routes[i] = strconv.Quote(r)
		}
		fmt.Fprintf(&b, "cluster { name: \"rejot\", listen: \"127.0.0.1:%d\", routes: [%s] }\n",
			p.cfg.clusterPort, strings.Join(routes, ", "))
	}
	path := filepath.Join(p.dir, p.cfg.name+".conf")
	return path, os.WriteFile(path, []byte(b.String()), 0o600)
}

// start runs the server and waits until it takes connections.
func (p *process) start() error {
	conf, err := p.configFile()
	if err != nil {
		return err
	}
	cmd := exec.Command(p.bin, "-c", conf)
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("cannot start NATS server %s: %w", p.cfg.name, err)
	}
	p.cmd, p.done = cmd, make(chan struct{})
	done := p.done
	go func() { cmd.Wait(); close(done) }()
	deadline := time.Now().Add(30 * time.Second)
	for !p.connects() {
		if !p.running() || time.Now().After(deadline) {
			p.kill()
			return fmt.Errorf("NATS server %s did not start (see %s)", p.cfg.name, filepath.Join(p.dir, p.cfg.name+".log"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

func (p *process) connects() bool {
	nc, err := nats.Connect("nats://"+p.hostPort(), nats.Timeout(time.Second), nats.NoReconnect())
	if err == nil {
		nc.Close()
	}
	return err == nil
}

// answers: a client connected to this server gets JetStream's account
// information, which needs a meta leader.
func (p *process) answers() bool {
	nc, err := nats.Connect("nats://"+p.hostPort(), nats.Timeout(time.Second), nats.NoReconnect())
	if err != nil {
		return false
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = js.AccountInfo(ctx)
	return err == nil
}

// kill sends SIGKILL: no shutdown, no flush of the store.
func (p *process) kill() {
	if p.running() {
		p.cmd.Process.Signal(syscall.SIGKILL)
	}
	p.wait()
}

// stop asks the server to shut down, and kills it if it has not within
// ten seconds.
func (p *process) stop() {
	if !p.running() {
		p.wait()
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.kill()
	}
}

func (p *process) wait() {
	if p.done != nil {
		<-p.done
	}
}

func (p *process) ready(int) bool { return p.answers() }

func (p *process) serves() bool { return p.answers() }

var built struct {
	once sync.Once
	bin  string
	err  error
}

// serverBinary builds the nats-server command of the version in this
// module's go.mod, once per test binary (Go's build cache makes it quick
// after the first time), to one path in the temporary directory that
// every build replaces: nothing piles up.
func serverBinary() (string, error) {
	built.once.Do(func() { built.bin, built.err = buildServer() })
	return built.bin, built.err
}

const serverModule = "github.com/nats-io/nats-server/v2"

func buildServer() (string, error) {
	dir := filepath.Join(os.TempDir(), "rejot-natstest")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(dir, "build-")
	if err != nil {
		return "", err
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	out, err := exec.Command("go", "build", "-o", tmp.Name(), serverModule).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("cannot build %s: %w: %s", serverModule, err, out)
	}
	// A rename: a server that another test binary runs from this path
	// keeps its file, and a start finds the file whole.
	bin := filepath.Join(dir, "nats-server")
	return bin, os.Rename(tmp.Name(), bin)
}
