// Package natstest starts NATS servers with JetStream on free ports, for
// tests: a single node or a three-node cluster, each with its store in a
// temporary directory, stopped when the test (or TestMain) ends. A real
// JetStream as cheap to get as a mock. The servers run in the test's
// process (Start), or each as an OS process of its own (StartProcesses)
// for a test that kills one with SIGKILL.
package natstest

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Cluster is a running set of JetStream servers.
type Cluster struct {
	nodes []node
}

// node is one JetStream server, in-process or an OS process, on fixed
// ports and a fixed store, so that it can stop and start again as itself.
type node interface {
	// hostPort is where clients reach it.
	hostPort() string
	running() bool
	start() error
	// kill stops it at once; its store stays.
	kill()
	// stop shuts it down in order.
	stop()
	// ready: JetStream has a meta leader and, in a cluster, knows every
	// peer (as far as this node can tell).
	ready(peers int) bool
	// serves: JetStream requests sent to this node are answered (a
	// restarted process has found the cluster's meta leader again).
	serves() bool
}

// config is what a node is started with.
type config struct {
	name              string
	port, clusterPort int // clusterPort 0: a single node
	routes            []string
	storeDir          string
}

// URL is what --log takes to reach every node: nats://a,b,c.
func (c *Cluster) URL() string {
	urls := make([]string, 0, len(c.nodes))
	for _, n := range c.nodes {
		if n.running() {
			urls = append(urls, n.hostPort())
		}
	}
	return "nats://" + strings.Join(urls, ",")
}

// Start runs n servers (1, or 3 for a cluster) with JetStream in this
// process, their stores under dir.
func Start(n int, dir string) (*Cluster, error) {
	return start(n, dir, func(cfg config) node { return &inProcess{cfg: cfg} })
}

// StartProcesses runs n servers (1, or 3 for a cluster) with JetStream,
// each an OS process of its own (the nats-server of this module's
// go.mod, built once per test binary), their stores under dir: Kill is
// then a SIGKILL.
func StartProcesses(n int, dir string) (*Cluster, error) {
	bin, err := serverBinary()
	if err != nil {
		return nil, err
	}
	return start(n, dir, func(cfg config) node { return &process{cfg: cfg, bin: bin, dir: dir} })
}

func start(n int, dir string, newNode func(config) node) (*Cluster, error) {
	ports, err := freePorts(2 * n)
	if err != nil {
		return nil, err
	}
	var routes []string
	if n > 1 {
		for i := range n {
			routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", ports[n+i]))
		}
	}
	c := &Cluster{}
	for i := range n {
		cfg := config{name: fmt.Sprintf("n%d", i+1), port: ports[i], routes: routes,
			storeDir: filepath.Join(dir, fmt.Sprintf("n%d", i+1))}
		if n > 1 {
			cfg.clusterPort = ports[n+i]
		}
		c.nodes = append(c.nodes, newNode(cfg))
	}
	for _, nd := range c.nodes {
		if err := nd.start(); err != nil {
			c.Shutdown()
			return nil, err
		}
	}
	if err := c.waitReady(30 * time.Second); err != nil {
		c.Shutdown()
		return nil, err
	}
	return c, nil
}

// waitReady waits until JetStream has a meta leader (a cluster has
// elected one) that knows every node.
func (c *Cluster) waitReady(d time.Duration) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		for _, n := range c.nodes {
			if n.running() && n.ready(len(c.nodes)) {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("JetStream elected no leader in %s", d)
}

// Kill stops node i at once: an in-process server shuts down without
// warning its clients, a process gets SIGKILL. Its store stays, for
// Restart.
func (c *Cluster) Kill(i int) { c.nodes[i].kill() }

// Restart starts node i again, on the same ports and store.
func (c *Cluster) Restart(i int) error {
	if err := c.nodes[i].start(); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for !c.nodes[i].serves() {
		if time.Now().After(deadline) {
			return fmt.Errorf("NATS server %d does not answer JetStream requests 30 s after its restart", i+1)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// Shutdown stops every server.
func (c *Cluster) Shutdown() {
	for _, n := range c.nodes {
		n.stop()
	}
}

// Run starts n in-process servers for one test.
func Run(t testing.TB, n int) *Cluster {
	t.Helper()
	c, err := Start(n, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Shutdown)
	return c
}

// RunProcesses starts n servers as OS processes for one test.
func RunProcesses(t testing.TB, n int) *Cluster {
	t.Helper()
	c, err := StartProcesses(n, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Shutdown)
	return c
}

// StartTemp starts n in-process servers with their stores in a new
// temporary directory, for TestMain; stop removes it.
func StartTemp(n int) (c *Cluster, stop func(), err error) {
	dir, err := os.MkdirTemp("", "rejot-nats-")
	if err != nil {
		return nil, nil, err
	}
	c, err = Start(n, dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	return c, func() { c.Shutdown(); os.RemoveAll(dir) }, nil
}

// freePorts finds n distinct free ports (held open together, so no two
// are the same).
func freePorts(n int) ([]int, error) {
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports, nil
}
