package catalog

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rejot-dev/rejot/internal/pgerr"
	"github.com/rejot-dev/rejot/managed"
)

// TestUserQueryResultIsBounded: a user's query whose result is larger than
// the budget fails with 54000 once the budget is read — the rest is never
// held — whether it is many rows or one value; the catalog answers after.
func TestUserQueryResultIsBounded(t *testing.T) {
	c := open(t)
	ctx := context.Background()
	for _, q := range []string{
		"SELECT repeat('x', 1048576) FROM generate_series(1, 300)", // 300 MB in rows of 1 MB
		"SELECT repeat('x', 100 * 1048576)",                        // one value of 100 MB
	} {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		started := time.Now()
		_, err := c.Query(ctx, q, nil, nil, nil, nil)
		runtime.ReadMemStats(&after)
		if !pgerr.Is(err, pgerr.ProgramLimitExceeded) {
			t.Fatalf("%s: got %v, want 54000", q, err)
		}
		var e *pgerr.Error
		if errors.As(err, &e) && e.Message != "the result of a catalog query is larger than 64 MB; select fewer rows or columns" {
			t.Errorf("message: %q", e.Message)
		}
		if grown := after.TotalAlloc - before.TotalAlloc; grown > 3*DefaultMaxResultBytes {
			t.Errorf("%s: %d MB allocated for a result bounded at 64 MB", q, grown>>20)
		}
		t.Logf("%s: refused in %v", q, time.Since(started))
	}
	res, err := c.Query(ctx, "SELECT count(*) FROM rejot.publications", nil, nil, nil, nil)
	if err != nil || len(res.Rows) != 1 {
		t.Fatalf("after the refusals: %+v, %v", res, err)
	}
}

// TestUserQueryTimesOut: a slow user query is ended by the catalog's
// statement_timeout, with Postgres's own 57014.
func TestUserQueryTimesOut(t *testing.T) {
	c := open(t)
	c.QueryTimeout = 500 * time.Millisecond
	_, err := c.Query(context.Background(), "SELECT pg_sleep(5)", nil, nil, nil, nil)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != pgerr.QueryCanceled {
		t.Fatalf("got %v, want 57014", err)
	}
}

// TestSlowUserQueriesLeaveTheSidecarAlone: users' queries holding every
// connection they may have do not hold up the sidecar's own work on the
// catalog — registering, heartbeats, applying a publish.
func TestSlowUserQueriesLeaveTheSidecarAlone(t *testing.T) {
	c := open(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Query(ctx, "SELECT pg_sleep(4)", nil, nil, nil, nil)
		}()
	}
	defer wg.Wait()
	time.Sleep(500 * time.Millisecond) // the sleeps have their connections
	started := time.Now()
	if err := c.RegisterSystem(ctx, System{Name: "shop", Database: "shop_db"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Heartbeat(ctx, "shop", ""); err != nil {
		t.Fatal(err)
	}
	apply(t, c, "shop", 1, "publish", managed.Published{Publication: "orders", Version: 1, Owner: "shop", Database: "shop_db",
		Query: "SELECT id FROM orders", Source: "public.orders", KeyColumns: []string{"id"},
		Columns: []Column{{Name: "id", Type: "bigint", TypeOID: 20, TypeMod: -1, IsKey: true}}})
	if took := time.Since(started); took > 2*time.Second {
		t.Fatalf("the sidecar's own work waited %v behind users' queries", took)
	}
}
