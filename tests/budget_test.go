package tests

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestBudgetsAgainstAnyLoginRole: a role with only LOGIN cannot make the
// sidecar hold a huge result of a query over the catalog relations (made in
// its own session) or a huge statement, nor starve the sidecar's catalog
// work with slow queries over the catalog relations; each refusal is a
// clear 54000 and the session goes on.
func TestBudgetsAgainstAnyLoginRole(t *testing.T) {
	p := newPublisher(t)
	ctx := context.Background()
	intruder := "intruder_" + p.db
	admin := pg.Connect(t, "postgres")
	mustExec(t, admin, "CREATE ROLE "+intruder+" LOGIN")
	t.Cleanup(func() { admin.Exec(context.Background(), "DROP ROLE IF EXISTS "+intruder) })
	connect := func() *pgx.Conn {
		c, err := pgx.Connect(ctx, p.sc.url(p.db, intruder))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(context.Background()) })
		return c
	}
	intr := connect()
	alive := func(after string) {
		t.Helper()
		var n int
		if err := intr.QueryRow(ctx, "SELECT count(*) FROM rejot.systems WHERE system = $1", p.db).Scan(&n); err != nil || n != 1 {
			t.Fatalf("after %s: %d, %v", after, n, err)
		}
	}

	// A result of about 1 GB over the catalog relations: stopped at the
	// budget, the statement cancelled rather than read to its end.
	started := time.Now()
	_, err := intr.Exec(ctx, "SELECT repeat(s.system, 1000000) FROM rejot.systems s, generate_series(1, 1000 / length(s.system)) WHERE s.system = $1", p.db)
	if pe := pgErr(err); pe == nil || pe.Code != "54000" || !strings.Contains(pe.Message, "larger than 64 MB") {
		t.Fatalf("a 1 GB catalog result: %v", err)
	}
	t.Logf("a 1 GB catalog result refused after %v", time.Since(started))
	hwm := peakRSS(t, p.sc.cmd.Process.Pid)
	t.Logf("the sidecar's resident memory peaked at %d MB", hwm>>20)
	if hwm > 200<<20 {
		t.Errorf("the sidecar's resident memory peaked at %d MB", hwm>>20)
	}
	alive("a catalog result over the budget")
	// In a transaction block the refusal aborts it, as any failed statement.
	tx, err := intr.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = tx.Exec(ctx, "SELECT repeat(system, 100000000) FROM rejot.systems")
	if pe := pgErr(err); pe == nil || pe.Code != "54000" {
		t.Fatalf("one value of 100 MB: %v", err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); pgErr(err) == nil || pgErr(err).Code != "25P02" {
		t.Fatalf("after the refusal in a transaction: %v", err)
	}
	tx.Rollback(ctx)
	alive("a refusal in a transaction block")

	// A 70 MB call: refused, not parsed.
	_, err = intr.Exec(ctx, "SELECT rejot.version() /* "+strings.Repeat("x", 70<<20)+" */")
	if pe := pgErr(err); pe == nil || pe.Code != "54000" {
		t.Fatalf("a 70 MB call: %v", err)
	}
	alive("a 70 MB call")

	// Slow queries over the catalog relations, more than the connections
	// the catalog reads may use: the owner's publish still reaches the
	// catalog at once.
	var wg sync.WaitGroup
	for range 8 {
		c := connect()
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Exec(ctx, "SELECT pg_sleep(8) FROM rejot.systems WHERE system = $1", p.db)
		}()
	}
	defer wg.Wait()
	time.Sleep(time.Second)
	name := p.name("budget")
	if err := p.exec(t, "CREATE TABLE items (id int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	started = time.Now()
	if err := p.exec(t, "CALL rejot.publish($1, 1, 'SELECT id FROM public.items')", name); err != nil {
		t.Fatal(err)
	}
	catalog := pg.Connect(t, "rejot")
	waitFor(t, 15*time.Second, func() bool {
		var n int
		catalog.QueryRow(ctx, "SELECT count(*) FROM rejot.publications WHERE publication = $1", name).Scan(&n)
		return n == 1
	})
	if took := time.Since(started); took > 4*time.Second {
		t.Errorf("the publish reached the catalog after %v, behind the intruder's sleeps", took)
	}
}

// peakRSS is a process's peak resident memory (VmHWM), in bytes.
func peakRSS(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.Atoi(f[1])
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}
