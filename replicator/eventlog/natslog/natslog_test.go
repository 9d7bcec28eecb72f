package natslog_test

import (
	"context"
	"errors"
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

// TestPositionPastTheHead: a reader whose position this log never gave
// (taken on the Postgres log before a move, docs/scale.md) copies the
// state rather than wait for the head to pass it.
func TestPositionPastTheHead(t *testing.T) {
	l := store(1)(t)()
	ctx := context.Background()
	v := eventlog.Version{Publication: "orders", Number: 1}
	one := "1"
	g := eventlog.Group{Version: v, System: "shop", CommitLSN: 10, Layout: eventlog.Layout{Columns: 1, Key: []int{0}},
		Changes: []eventlog.Change{{Op: eventlog.OpUpsert, Key: []eventlog.Value{&one}, Row: []eventlog.Value{&one}}}}
	if _, err := eventlog.Append(ctx, l, []eventlog.Group{g}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := l.Fetch(ctx, v, 1, 100); err != nil {
		t.Fatalf("fetch at the head: %v", err)
	}
	if _, _, err := l.Fetch(ctx, v, 500, 100); !errors.Is(err, eventlog.ErrPruned) {
		t.Fatalf("fetch past the head: %v, want ErrPruned", err)
	}
}
