package natslog_test

import (
	"context"
	"testing"

	"github.com/rejot-dev/rejot/internal/natstest"
	"github.com/rejot-dev/rejot/replicator/eventlog"
	"github.com/rejot-dev/rejot/replicator/eventlog/eventlogtest"
	"github.com/rejot-dev/rejot/replicator/eventlog/natslog"
)

func store(nodes int) eventlogtest.Store {
	return func(t testing.TB) func() eventlog.Log {
		c := natstest.Run(t, nodes)
		return func() eventlog.Log {
			l, err := natslog.Open(context.Background(), c.URL())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(l.Close)
			return l
		}
	}
}

// TestContractOneNode holds the NATS log to the engines' contract on a
// single JetStream server.
func TestContractOneNode(t *testing.T) { eventlogtest.Run(t, store(1)) }

// TestContractCluster does on a three-node JetStream cluster, every
// stream replicated three times.
func TestContractCluster(t *testing.T) { eventlogtest.Run(t, store(3)) }
