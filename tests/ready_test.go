package tests

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/internal/pgtest"
)

// TestPublishAsTheSidecarStarts: a migration job started with the
// sidecar connects the moment it listens and publishes at once: the call
// waits for _rejot to be installed and the catalog to be reached, then
// succeeds (it used to fail with 42P01, schema _rejot missing).
func TestPublishAsTheSidecarStarts(t *testing.T) {
	db := pg.CreateDB(t)
	ctx := context.Background()
	direct := pg.Connect(t, db)
	if _, err := direct.Exec(ctx, "CREATE TABLE items (id int PRIMARY KEY, label text)"); err != nil {
		t.Fatal(err)
	}
	name := "starting_" + strings.TrimPrefix(db, "t")
	sc := launchSidecar(t, pg.URL(db))
	// Poll-connect from before the sidecar listens, without a pause.
	var conn *pgx.Conn
	for deadline := time.Now().Add(30 * time.Second); conn == nil; {
		c, err := pgx.Connect(ctx, sc.url(db, "postgres"))
		if err == nil {
			conn = c
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sidecar never accepted a connection: %v", err)
		}
	}
	defer conn.Close(ctx)
	var pub string
	if err := conn.QueryRow(ctx, "CALL rejot.publish($1, 1, 'SELECT id, label FROM public.items')", name).Scan(&pub, new(int), new(int), new(string)); err != nil {
		t.Fatalf("publish at start: %v", err)
	}
	if pub != name {
		t.Fatalf("publish returned %q", pub)
	}
	// And a catalog relation query at once answers too.
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM rejot.systems WHERE system = $1", db).Scan(&n); err != nil {
		t.Fatalf("catalog relation at start: %v", err)
	}
	waitFor(t, 30*time.Second, func() bool {
		conn.QueryRow(ctx, "SELECT count(*) FROM rejot.publications WHERE publication = $1", name).Scan(&n)
		return n == 1
	})
}

// TestCallWaitsForTheCatalog: a subscribe while the catalog's server is
// down waits (--call-wait) and fails with 57P03 saying so; one made while
// the server comes back succeeds; relayed traffic never waits.
func TestCallWaitsForTheCatalog(t *testing.T) {
	cat, err := pgtest.Start(pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Destroy()
	db := pg.CreateDB(t)
	ctx := context.Background()
	sc := startSidecar(t, db, "--catalog", cat.URL("rejot"), "--call-wait", "15s")
	conn := connect(t, sc.url(db, "postgres"))
	name := "waits_" + strings.TrimPrefix(db, "t")
	mustExec(t, conn, "CREATE TABLE items (id int PRIMARY KEY, label text)")
	if _, err := conn.Exec(ctx, "CALL rejot.publish($1, 1, 'SELECT id, label FROM public.items')", name); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() bool {
		var n int
		conn.QueryRow(ctx, "SELECT count(*) FROM rejot.publications WHERE publication = $1", name).Scan(&n)
		return n == 1
	})
	if err := cat.Stop(); err != nil {
		t.Fatal(err)
	}
	// Relayed traffic is served at once.
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("relayed query while the catalog is down: %v", err)
	}
	_, err = conn.Exec(ctx, "CALL rejot.subscribe($1, 1, 'public.copy1')", name)
	if pe := pgErr(err); pe == nil || pe.Code != "57P03" || !strings.Contains(pe.Message, "catalog") {
		t.Fatalf("subscribe with the catalog down: want 57P03 about the catalog, got %v", err)
	}
	// A call that is waiting when the catalog comes back is served.
	done := make(chan error, 1)
	go func() {
		c, err := pgx.Connect(ctx, sc.url(db, "postgres"))
		if err != nil {
			done <- err
			return
		}
		defer c.Close(ctx)
		_, err = c.Exec(ctx, "CALL rejot.subscribe($1, 1, 'public.copy2')", name)
		done <- err
	}()
	if err := cat.Start(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("subscribe while the catalog comes back: %v", err)
	}
	targetConverges(t, 30*time.Second, conn, "SELECT id, label FROM items", conn, "public.copy2")
}

// readyz reads /readyz.
func readyz(t *testing.T, base string) (code int, r readyBody) {
	t.Helper()
	code, body, err := get(base + "/readyz")
	if err != nil {
		return 0, r
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("readyz body %q: %v", body, err)
	}
	return code, r
}

type readyBody struct {
	Ready    bool              `json:"ready"`
	Checks   map[string]string `json:"checks"`
	Degraded map[string]string `json:"degraded"`
}

// TestReadyzShowsADegradedCapture: a version the capture leaves out (its
// publishing role is gone) shows in /readyz's degraded details and in
// rejot_capture_degraded, while /readyz stays 200 and ready: the proxy
// stays in service.
func TestReadyzShowsADegradedCapture(t *testing.T) {
	p := newPublisher(t)
	base := p.sc.httpURL(t)
	role := "gone_" + strings.TrimPrefix(p.db, "t")
	name := p.name("degraded")
	dropRolesAtEnd(t, p.db, role)
	for _, s := range []string{"CREATE ROLE " + role, "CREATE TABLE items (id int PRIMARY KEY)", "ALTER TABLE items OWNER TO " + role} {
		mustExec(t, p.conn, s)
	}
	var last readyBody
	waitFor(t, 30*time.Second, func() bool {
		code, r := readyz(t, base)
		last = r
		return code == 200 && r.Ready && r.Checks["schema"] == "ok" && len(r.Degraded) == 0
	})
	mustExec(t, p.conn, "SET ROLE "+role)
	if err := p.exec(t, "CALL rejot.publish($1, 1, 'SELECT id FROM public.items')", name); err != nil {
		t.Fatal(err)
	}
	mustExec(t, p.conn, "RESET ROLE")
	p.catalogMinor(t, name, 1, 0)
	for _, s := range []string{"REASSIGN OWNED BY " + role + " TO postgres", "DROP OWNED BY " + role, "DROP ROLE " + role} {
		mustExec(t, p.conn, s)
	}
	defer func() {
		if t.Failed() {
			t.Logf("last readyz: %+v", last)
		}
	}()
	waitFor(t, 30*time.Second, func() bool {
		code, r := readyz(t, base)
		last = r
		return code == 200 && r.Ready && strings.Contains(r.Degraded["capture_versions"], name)
	})
	waitFor(t, 10*time.Second, func() bool {
		return metric(t, base, "rejot_capture_degraded", `kind="capture_versions"`) == 1
	})
	if v := metric(t, base, "rejot_capture_degraded", `kind="capture_slot"`); v != 0 {
		t.Fatalf("capture_slot degraded: %v", v)
	}
	// Retiring the version mends it.
	if err := p.exec(t, "CALL rejot.unpublish($1, 1, force => true)", name); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() bool {
		_, r := readyz(t, base)
		last = r
		return r.Ready && r.Degraded["capture_versions"] == ""
	})
}
