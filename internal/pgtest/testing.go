// Package pgtest gives each test package a throwaway Postgres cluster (see
// Main) and each test its own database (see Cluster.CreateDB), on clusters
// from pgcluster.
package pgtest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/internal/pgcluster"
)

// Options shape a cluster (see pgcluster.Options).
type Options = pgcluster.Options

// Cluster is a running throwaway Postgres server with test helpers.
type Cluster struct {
	*pgcluster.Cluster
	mu  sync.Mutex
	dbs int
}

// Start initialises and starts a new cluster. Call Destroy when done.
func Start(opts Options) (*Cluster, error) {
	c, err := pgcluster.Start(opts)
	if err != nil {
		return nil, err
	}
	return &Cluster{Cluster: c}, nil
}

// BinDir finds the Postgres server binaries (see pgcluster.BinDir).
func BinDir() (string, error) { return pgcluster.BinDir() }

// FreePort asks the kernel for a free TCP port on the loopback interface.
func FreePort() (int, error) { return pgcluster.FreePort() }

// Main starts one cluster for a test package, runs the tests and always
// stops the cluster. Use it from TestMain:
//
//	var pg *pgtest.Cluster
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &pg, pgtest.Options{})) }
func Main(m *testing.M, into **Cluster, opts Options) int {
	c, err := Start(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgtest:", err)
		return 1
	}
	defer c.Destroy()
	*into = c
	return m.Run()
}

// CreateDB creates a fresh database for one test and drops it when the test
// ends. It returns the database's name.
func (c *Cluster) CreateDB(t testing.TB) string {
	t.Helper()
	c.mu.Lock()
	c.dbs++
	n := c.dbs
	c.mu.Unlock()
	name := fmt.Sprintf("t%d_%s", n, sanitize(t.Name()))
	if len(name) > 60 {
		name = name[:60]
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Exec(ctx, "postgres", "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c.Exec(ctx, "postgres", "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	})
	return name
}

// Connect opens a superuser connection to db, closed when the test ends.
func (c *Cluster) Connect(t testing.TB, db string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.URL(db))
	if err != nil {
		t.Fatalf("connect to %s: %v", db, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func sanitize(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}
