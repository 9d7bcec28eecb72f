package natstest

import (
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// inProcess is a server running in the test's process.
type inProcess struct {
	cfg config
	s   *server.Server
}

func (n *inProcess) hostPort() string { return "127.0.0.1:" + strconv.Itoa(n.cfg.port) }

func (n *inProcess) running() bool { return n.s != nil && n.s.Running() }

func (n *inProcess) options() (*server.Options, error) {
	o := &server.Options{
		ServerName: n.cfg.name,
		Host:       "127.0.0.1",
		Port:       n.cfg.port,
		JetStream:  true,
		StoreDir:   n.cfg.storeDir,
		NoLog:      true,
		NoSigs:     true,
	}
	if n.cfg.clusterPort != 0 {
		o.Cluster = server.ClusterOpts{Name: "rejot", Host: "127.0.0.1", Port: n.cfg.clusterPort}
		for _, r := range n.cfg.routes {
			u, err := url.Parse(r)
			if err != nil {
				return nil, err
			}
			o.Routes = append(o.Routes, u)
		}
	}
	return o, nil
}

func (n *inProcess) start() error {
	o, err := n.options()
	if err != nil {
		return err
	}
	s, err := server.NewServer(o)
	if err != nil {
		return err
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return fmt.Errorf("NATS server %s did not start", o.ServerName)
	}
	n.s = s
	return nil
}

func (n *inProcess) kill() { n.stop() }

func (n *inProcess) stop() {
	if n.s != nil {
		n.s.Shutdown()
		n.s.WaitForShutdown()
	}
}

func (n *inProcess) serves() bool { return true }

func (n *inProcess) ready(peers int) bool {
	if peers == 1 {
		return n.s.JetStreamEnabled()
	}
	return n.s.JetStreamIsLeader() && len(n.s.JetStreamClusterPeers()) >= peers
}
