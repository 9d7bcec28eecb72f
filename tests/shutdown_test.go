package tests

import (
	"context"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestGracefulShutdown: on SIGTERM the sidecar stops taking clients,
// closes idle sessions, lets an open transaction commit, then exits 0;
// capture and apply stop cleanly and resume after a restart with nothing
// lost.
func TestGracefulShutdown(t *testing.T) {
	owner, consumer, _ := replicated(t, "graceful", "CREATE TABLE t (id int PRIMARY KEY, v text)", "SELECT id, v FROM t", "copy")
	ctx := context.Background()
	if err := owner.exec(t, "INSERT INTO t SELECT g, 'before' FROM generate_series(1, 50) g"); err != nil {
		t.Fatal(err)
	}
	targetConverges(t, 30*time.Second, owner.conn, "SELECT id, v FROM t", consumer.conn, "copy")

	sc := owner.sc
	inTx, err := pgx.Connect(ctx, sc.url(owner.db, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer inTx.Close(ctx)
	idle, err := pgx.Connect(ctx, sc.url(owner.db, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close(ctx)
	tx, err := inTx.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO t VALUES (100, 'in flight')"); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	sc.cmd.Process.Signal(syscall.SIGTERM)
	go func() { exited <- sc.cmd.Wait() }()
	// No new clients.
	waitFor(t, 5*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", sc.addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	// The idle session is closed (asking it too often would keep it busy).
	closed := false
	for range 10 {
		time.Sleep(400 * time.Millisecond)
		var one int
		if idle.QueryRow(ctx, "SELECT 1").Scan(&one) != nil {
			closed = true
			break
		}
	}
	if !closed {
		t.Fatal("the idle session stayed open")
	}
	// The open transaction goes on and commits.
	time.Sleep(300 * time.Millisecond)
	select {
	case err := <-exited:
		t.Fatalf("the sidecar exited with a transaction open: %v", err)
	default:
	}
	if _, err := tx.Exec(ctx, "INSERT INTO t VALUES (101, 'in flight too')"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("COMMIT during shutdown: %v", err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("the sidecar exited with %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the sidecar did not exit after its last transaction")
	}
	if !strings.Contains(sc.logs(), "shutdown complete") || !strings.Contains(sc.logs(), "capture stopped") {
		t.Fatalf("no clean stop in the log:\n%s", sc.logs())
	}
	// Writes while it is down are captured after a restart.
	if err := owner.exec(t, "UPDATE t SET v = 'while down' WHERE id <= 10"); err == nil {
		t.Fatal("the old connection still works through a stopped sidecar")
	}
	direct := pg.Connect(t, owner.db)
	if _, err := direct.Exec(ctx, "UPDATE t SET v = 'while down' WHERE id <= 10"); err != nil {
		t.Fatal(err)
	}
	owner.sc = startSidecar(t, owner.db)
	targetConverges(t, 30*time.Second, direct, "SELECT id, v FROM t", consumer.conn, "copy")
}
