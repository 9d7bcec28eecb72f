package pglog

import (
	"context"
	"testing"

	"github.com/rejot-dev/rejot/replicator/eventlog"
	"github.com/rejot-dev/rejot/replicator/eventlog/eventlogtest"
)

// TestContract holds the Postgres log to the engines' contract, the one
// the NATS log is held to.
func TestContract(t *testing.T) {
	eventlogtest.Run(t, func(t testing.TB) func() eventlog.Log {
		db := pg.CreateDB(t)
		return func() eventlog.Log {
			l, err := Open(context.Background(), pg.URL(db))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(l.Close)
			return l
		}
	})
}
