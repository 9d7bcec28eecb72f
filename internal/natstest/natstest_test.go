package natstest

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestProcessKilledAndRestartedKeepsItsStore: a three-node cluster of OS
// processes; a node killed with SIGKILL is gone at once (its process has
// exited, nothing of it answers), the others go on taking writes, and it
// starts again on its store and serves the stream with every message.
func TestProcessKilledAndRestartedKeepsItsStore(t *testing.T) {
	c := RunProcesses(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	js := connect(t, "nats://"+c.nodes[0].hostPort()+","+c.nodes[1].hostPort())
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t"}, Replicas: 3, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	publish := func(n int) {
		t.Helper()
		for range n {
			for {
				if _, err := js.Publish(ctx, "t", []byte("x")); err == nil {
					break
				} else if ctx.Err() != nil {
					t.Fatal(err)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	publish(10)
	p := c.nodes[2].(*process)
	pid := p.cmd.Process.Pid
	c.Kill(2)
	if c.nodes[2].running() || p.cmd.ProcessState == nil {
		t.Fatal("node 3 still runs after Kill")
	}
	if ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("node 3 ended with %s, want SIGKILL", p.cmd.ProcessState)
	}
	if _, err := nats.Connect("nats://"+p.hostPort(), nats.Timeout(time.Second)); err == nil {
		t.Fatal("node 3 answers after Kill")
	}
	publish(5)
	if err := c.Restart(2); err != nil {
		t.Fatal(err)
	}
	if p.cmd.Process.Pid == pid {
		t.Fatal("the restart did not start a new process")
	}
	// The restarted node alone: it has the stream, caught up.
	only := connect(t, "nats://"+p.hostPort())
	deadline := time.Now().Add(30 * time.Second)
	for {
		s, err := only.Stream(ctx, "T")
		if err == nil {
			if info, err := s.Info(ctx); err == nil && info.State.Msgs == 15 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the restarted node does not serve the stream's 15 messages: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func connect(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}
