package catalog

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rejot-dev/rejot/internal/pgerr"
	"github.com/rejot-dev/rejot/managed"
)

// TestRelationRowsAreBounded: relations whose rows are larger than the
// budget are refused with 54000 once the budget is read, whether they come
// in one value or several; the catalog answers after.
func TestRelationRowsAreBounded(t *testing.T) {
	c := open(t)
	ctx := context.Background()
	c.MaxResultBytes = 4 << 20
	if err := c.RegisterSystem(ctx, System{Name: "shop", Database: "shop_db"}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		apply(t, c, "shop", int64(i+1), "publish", managed.Published{Publication: "p" + string(rune('a'+i)), Version: 1,
			Owner: "shop", Database: "shop_db", Query: "SELECT id FROM orders", Source: "public.orders", KeyColumns: []string{"id"},
			Description: strings.Repeat("x", 3<<20), Columns: []Column{{Name: "id", Type: "bigint", TypeOID: 20, TypeMod: -1, IsKey: true}}})
	}
	for _, rels := range [][]string{{"publications"}, {"systems", "publications"}} {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err := c.RelationRows(ctx, rels)
		runtime.ReadMemStats(&after)
		var e *pgerr.Error
		if !errors.As(err, &e) || e.Code != pgerr.ProgramLimitExceeded || e.Message != "the result of a catalog query is larger than 4 MB; select fewer rows or columns" {
			t.Fatalf("%v: got %v, want 54000", rels, err)
		}
		if grown := after.TotalAlloc - before.TotalAlloc; grown > 3*4<<20 {
			t.Errorf("%v: %d MB allocated for rows bounded at 4 MB", rels, grown>>20)
		}
	}
	if rows, err := c.RelationRows(ctx, []string{"systems"}); err != nil || !strings.Contains(rows[0], "shop_db") {
		t.Fatalf("after the refusals: %v, %v", rows, err)
	}
}

// TestRelationRowsTimeOut: a read that cannot finish (here: the table is
// locked) is ended by the catalog's statement_timeout, with 57014.
func TestRelationRowsTimeOut(t *testing.T) {
	c := open(t)
	c.QueryTimeout = 500 * time.Millisecond
	unlock := lockTable(t, c, "systems")
	defer unlock()
	_, err := c.RelationRows(context.Background(), []string{"systems"})
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != pgerr.QueryCanceled {
		t.Fatalf("got %v, want 57014", err)
	}
}

// lockTable holds an exclusive lock on a catalog table until unlock.
func lockTable(t *testing.T, c *Catalog, table string) (unlock func()) {
	t.Helper()
	ctx := context.Background()
	tx, err := c.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE rejot_catalog."+table+" IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	return func() { tx.Rollback(ctx) }
}

// TestSlowReadsLeaveTheSidecarAlone: reads for users' queries holding every
// connection they may have do not hold up the sidecar's own work on the
// catalog — registering, heartbeats, applying a publish.
func TestSlowReadsLeaveTheSidecarAlone(t *testing.T) {
	c := open(t)
	ctx := context.Background()
	if err := c.RegisterSystem(ctx, System{Name: "shop", Database: "shop_db"}); err != nil {
		t.Fatal(err)
	}
	c.QueryTimeout = 4 * time.Second
	unlock := lockTable(t, c, "publications")
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.RelationRows(ctx, []string{"publications"})
		}()
	}
	defer wg.Wait()
	time.Sleep(500 * time.Millisecond) // the reads have their connections, and wait
	started := time.Now()
	if err := c.Heartbeat(ctx, "shop", ""); err != nil {
		t.Fatal(err)
	}
	if err := c.RegisterSystem(ctx, System{Name: "shop2", Database: "shop2_db"}); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(started); took > 2*time.Second {
		t.Fatalf("the sidecar's own work waited %v behind users' reads", took)
	}
	unlock()
	apply(t, c, "shop", 1, "publish", managed.Published{Publication: "orders", Version: 1, Owner: "shop", Database: "shop_db",
		Query: "SELECT id FROM orders", Source: "public.orders", KeyColumns: []string{"id"},
		Columns: []Column{{Name: "id", Type: "bigint", TypeOID: 20, TypeMod: -1, IsKey: true}}})
	if took := time.Since(started); took > 2*time.Second {
		t.Fatalf("the sidecar's own work waited %v behind users' reads", took)
	}
}
