// Package natstest starts NATS servers with JetStream in-process, on free
// ports, for tests: a single node or a three-node cluster, each with its
// store in a temporary directory, stopped when the test (or TestMain)
// ends. A real JetStream as cheap to get as a mock.
package natstest

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Cluster is a running set of JetStream servers.
type Cluster struct {
	Servers []*server.Server
	dir     string
	opts    []*server.Options
}

// URL is what --log takes to reach every node: nats://a,b,c.
func (c *Cluster) URL() string {
	urls := make([]string, 0, len(c.Servers))
	for _, s := range c.Servers {
		if s.Running() {
			urls = append(urls, strings.TrimPrefix(s.ClientURL(), "nats://"))
		}
	}
	return "nats://" + strings.Join(urls, ",")
}

// Start runs n servers (1, or 3 for a cluster) with JetStream, their
// stores under dir.
func Start(n int, dir string) (*Cluster, error) {
	c := &Cluster{dir: dir}
	var routes []*url.URL
	clusterPorts := make([]int, n)
	if n > 1 {
		for i := range clusterPorts {
			p, err := freePort()
			if err != nil {
				return nil, err
			}
			clusterPorts[i] = p
			routes = append(routes, &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", p)})
		}
	}
	for i := range n {
		o := &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			Port:       server.RANDOM_PORT,
			JetStream:  true,
			StoreDir:   filepath.Join(dir, fmt.Sprintf("n%d", i+1)),
			NoLog:      true,
			NoSigs:     true,
		}
		if n > 1 {
			o.Cluster = server.ClusterOpts{Name: "rejot", Host: "127.0.0.1", Port: clusterPorts[i]}
			o.Routes = routes
		}
		c.opts = append(c.opts, o)
	}
	for _, o := range c.opts {
		s, err := run(o)
		if err != nil {
			c.Shutdown()
			return nil, err
		}
		c.Servers = append(c.Servers, s)
		o.Port = s.Addr().(*net.TCPAddr).Port // a restart keeps it
	}
	if err := c.waitReady(30 * time.Second); err != nil {
		c.Shutdown()
		return nil, err
	}
	return c, nil
}

func run(o *server.Options) (*server.Server, error) {
	s, err := server.NewServer(o)
	if err != nil {
		return nil, err
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("NATS server %s did not start", o.ServerName)
	}
	return s, nil
}

// waitReady waits until JetStream has a meta leader (a cluster has
// elected one).
func (c *Cluster) waitReady(d time.Duration) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		for _, s := range c.Servers {
			if len(c.Servers) == 1 && s.JetStreamEnabled() {
				return nil
			}
			if s.Running() && s.JetStreamIsLeader() && len(s.JetStreamClusterPeers()) >= len(c.Servers) {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("JetStream elected no leader in %s", d)
}

// Kill stops node i at once (its store stays, for Restart).
func (c *Cluster) Kill(i int) { c.Servers[i].Shutdown(); c.Servers[i].WaitForShutdown() }

// Restart starts node i again, on the same ports and store.
func (c *Cluster) Restart(i int) error {
	s, err := run(c.opts[i].Clone())
	if err != nil {
		return err
	}
	c.Servers[i] = s
	return nil
}

// Shutdown stops every server.
func (c *Cluster) Shutdown() {
	for _, s := range c.Servers {
		s.Shutdown()
		s.WaitForShutdown()
	}
}

// Run starts n servers for one test.
func Run(t testing.TB, n int) *Cluster {
	t.Helper()
	c, err := Start(n, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Shutdown)
	return c
}

// StartTemp starts n servers with their stores in a new temporary
// directory, for TestMain; stop removes it.
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

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
