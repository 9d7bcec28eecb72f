package catalog

import (
	"context"
	"encoding/json"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/rejot-dev/rejot/internal/pgtest"
)

var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &pg, pgtest.Options{})) }

func open(t testing.TB) *Catalog {
	t.Helper()
	c, err := Open(context.Background(), pg.URL(pg.CreateDB(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// TestConcurrentMigration: sidecars starting together on a fresh catalog
// all succeed, and each migration is applied once.
func TestConcurrentMigration(t *testing.T) {
	db := pg.CreateDB(t)
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := Open(context.Background(), pg.URL(db))
			if err == nil {
				c.Close()
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	all, _ := catalogMigrations.Names()
	var n int
	pg.Connect(t, db).QueryRow(context.Background(), "SELECT count(*) FROM public.rejot_catalog_migrations").Scan(&n)
	if n != len(all) {
		t.Fatalf("%d migrations recorded, want %d", n, len(all))
	}
}

func TestSystemsAndHeartbeat(t *testing.T) {
	c := open(t)
	ctx := context.Background()
	if err := c.RegisterSystem(ctx, System{Name: "shop", Database: "shop", Address: "127.0.0.1:6432", Version: "v1"}); err != nil {
		t.Fatal(err)
	}
	if err := c.RegisterSystem(ctx, System{Name: "shop", Database: "shop", Address: "127.0.0.1:7432", Version: "v2"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Heartbeat(ctx, "shop", ""); err != nil {
		t.Fatal(err)
	}
	rows, err := c.RelationRows(ctx, []string{"systems"})
	if err != nil {
		t.Fatal(err)
	}
	var systems []struct{ System, Address, Version string }
	if err := json.Unmarshal([]byte(rows[0]), &systems); err != nil {
		t.Fatal(err)
	}
	if len(systems) != 1 || systems[0].Address != "127.0.0.1:7432" || systems[0].Version != "v2" {
		t.Fatalf("systems: %s", rows[0])
	}
}

// TestClaimsAndStaleRelease: a name belongs to its first claimer; a claim
// that never became a publication is released after its time.
func TestClaimsAndStaleRelease(t *testing.T) {
	c := open(t)
	ctx := context.Background()
	for _, s := range []string{"a", "b"} {
		if err := c.RegisterSystem(ctx, System{Name: s, Database: s}); err != nil {
			t.Fatal(err)
		}
	}
	if owner, err := c.Claim(ctx, "n", "a"); err != nil || owner != "a" {
		t.Fatalf("claim: %s, %v", owner, err)
	}
	if owner, _ := c.Claim(ctx, "n", "b"); owner != "a" {
		t.Fatalf("second claimer got %s", owner)
	}
	c.Claim(ctx, "kept", "a")
	if n, err := c.ReleaseStaleClaims(ctx, "a", []string{"kept"}, time.Hour); err != nil || n != 0 {
		t.Fatalf("young claims released: %d, %v", n, err)
	}
	if n, err := c.ReleaseStaleClaims(ctx, "a", []string{"kept"}, 0); err != nil || n != 1 {
		t.Fatalf("stale claims released: %d, %v", n, err)
	}
	if owner, _ := c.Claim(ctx, "n", "b"); owner != "b" {
		t.Fatalf("released name went to %s", owner)
	}
}

func TestDefaultURL(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://app:pw@db:5432/shop?sslmode=require": "postgres://app:pw@db:5432/rejot?sslmode=require",
		"host=db dbname=shop":                            "host=db dbname=shop dbname=rejot",
	} {
		if got, err := DefaultURL(in); err != nil || got != want {
			t.Errorf("DefaultURL(%q) = %q, %v", in, got, err)
		}
	}
}
