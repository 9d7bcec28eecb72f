package tests

import (
	"context"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/internal/pgtest"
)

// kill stops a sidecar the hard way.
func (s *sidecar) kill(t *testing.T) {
	t.Helper()
	s.cmd.Process.Signal(syscall.SIGKILL)
	s.cmd.Wait()
}

// TestCommittedCallSurvivesCrashAndCatalogOutage: a publish committed while
// the catalog is down, followed by kill -9 of the sidecar, is in the
// catalog once both are back.
func TestCommittedCallSurvivesCrashAndCatalogOutage(t *testing.T) {
	cat, err := pgtest.Start(pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Destroy()
	ctx := context.Background()
	if err := cat.Exec(ctx, "postgres", "CREATE DATABASE catalog"); err != nil {
		t.Fatal(err)
	}
	db := pg.CreateDB(t)
	catalogURL := cat.URL("catalog")
	sc := startSidecar(t, db, "--catalog", catalogURL)
	conn, err := pgx.Connect(ctx, sc.url(db, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, func() bool {
		var installed bool
		var systems int
		conn.QueryRow(ctx, "SELECT to_regclass('_rejot.commands') IS NOT NULL").Scan(&installed)
		conn.QueryRow(ctx, "SELECT count(*) FROM rejot.systems").Scan(&systems)
		return installed && systems == 1
	})
	if _, err := conn.Exec(ctx, "CREATE TABLE kept (id int PRIMARY KEY, v text)"); err != nil {
		t.Fatal(err)
	}
	if err := cat.Stop(); err != nil {
		t.Fatal(err)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "CALL rejot.publish('kept', 1, 'SELECT id, v FROM kept')"); err != nil {
		t.Fatalf("publish with the catalog down: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	sc.kill(t)
	if err := cat.Start(); err != nil {
		t.Fatal(err)
	}
	sc2 := startSidecar(t, db, "--catalog", catalogURL)
	conn, err = pgx.Connect(ctx, sc2.url(db, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	waitFor(t, 30*time.Second, func() bool {
		var n int
		conn.QueryRow(ctx, "SELECT count(*) FROM rejot.columns WHERE publication = 'kept' AND version = 1").Scan(&n)
		return n == 2
	})
	var applied int
	conn.QueryRow(ctx, "SELECT count(*) FROM _rejot.commands WHERE applied_at IS NOT NULL AND error IS NULL").Scan(&applied)
	if applied != 1 {
		t.Fatalf("%d commands applied", applied)
	}
}

// TestSameNewNameAtOnce: two systems publish the same new name at the same
// moment; exactly one wins, the other gets 42710.
func TestSameNewNameAtOnce(t *testing.T) {
	a, b := newPublisher(t), newPublisher(t)
	name := a.name("race")
	for _, p := range []*publisher{a, b} {
		if err := p.exec(t, "CREATE TABLE r (id int PRIMARY KEY)"); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	start := make(chan struct{})
	for i, p := range []*publisher{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = p.exec(t, "CALL rejot.publish($1, 1, 'SELECT id FROM r')", name)
		}()
	}
	close(start)
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case pgErr(err).Code != "42710":
			t.Fatalf("loser's error: %v", err)
		}
	}
	if won != 1 {
		t.Fatalf("%d winners: %v", won, errs)
	}
}

// TestUnpublishAndDeprecate: the lifecycle of a version.
func TestUnpublishAndDeprecate(t *testing.T) {
	p := newPublisher(t)
	ctx := context.Background()
	name := p.name("life")
	if err := p.exec(t, "CREATE TABLE life (id int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	if err := p.exec(t, "CALL rejot.publish($1, 1, 'SELECT id FROM life')", name); err != nil {
		t.Fatal(err)
	}
	var status, sunset string
	if err := p.conn.QueryRow(ctx, "CALL rejot.deprecate($1, 1, sunset => date '2027-06-01', note => 'use version 2')", name).
		Scan(new(string), new(int), &status, &sunset); err != nil || status != "deprecated" || sunset != "2027-06-01" {
		t.Fatalf("deprecate: %s %s %v", status, sunset, err)
	}
	waitFor(t, 15*time.Second, func() bool {
		var st, note string
		p.conn.QueryRow(ctx, "SELECT status, sunset::text FROM rejot.publications WHERE publication = $1", name).Scan(&st, &note)
		return st == "deprecated" && note == "2027-06-01"
	})
	if err := p.exec(t, "CALL rejot.deprecate($1, 1, sunset => 'not a date')", name); pgErr(err).Code != "22007" {
		t.Fatalf("bad sunset: %v", err)
	}
	if err := p.exec(t, "CALL rejot.unpublish($1, 7)", name); pgErr(err).Code != "42704" {
		t.Fatalf("unknown version: %v", err)
	}
	if err := p.exec(t, "CALL rejot.unpublish($1, 1)", name); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, func() bool {
		var st string
		p.conn.QueryRow(ctx, "SELECT status FROM rejot.publications WHERE publication = $1", name).Scan(&st)
		return st == "retired"
	})
	if err := p.exec(t, "CALL rejot.publish($1, 1, 'SELECT id FROM life')", name); pgErr(err).Code != "55000" {
		t.Fatalf("republish retired: %v", err)
	}
}

// TestHostileArguments: whatever is passed, the answer is a clear error
// and nothing changes.
func TestHostileArguments(t *testing.T) {
	p := newPublisher(t)
	ctx := context.Background()
	if err := p.exec(t, "CREATE TABLE victim (id int PRIMARY KEY, v text); INSERT INTO victim VALUES (1, 'x')"); err != nil {
		t.Fatal(err)
	}
	big := "SELECT id, v FROM victim WHERE v <> '" + strings.Repeat("x", 1<<20) + "'"
	cases := map[string]struct {
		sql  string
		args []any
		code string
	}{
		"quotes in the name":        {"CALL rejot.publish($1, 1, 'SELECT id FROM victim')", []any{"x'); DROP TABLE victim; --"}, "22023"},
		"two statements":            {"CALL rejot.publish('h1', 1, $1)", []any{"SELECT id FROM victim; DROP TABLE victim"}, "42601"},
		"DDL as the query":          {"CALL rejot.publish('h2', 1, $1)", []any{"DROP TABLE victim"}, "0A000"},
		"quote breaking attempt":    {"CALL rejot.publish('h3', 1, $1)", []any{"SELECT id FROM victim') ; DROP TABLE victim; --"}, "42601"},
		"a megabyte query":          {"CALL rejot.publish('h4', 1, $1)", []any{big}, ""},
		"NUL and control chars":     {"CALL rejot.publish($1, 1, 'SELECT id FROM victim')", []any{"a\x01b\tc"}, "22023"},
		"a NUL byte":                {"CALL rejot.publish($1, 1, 'SELECT id FROM victim')", []any{"a\x00b"}, "22023"},
		"version not a number":      {"CALL rejot.publish('h5', 'one', 'SELECT id FROM victim')", nil, "22P02"},
		"version zero":              {"CALL rejot.publish('h6', 0, 'SELECT id FROM victim')", nil, "22023"},
		"NULL query":                {"CALL rejot.publish('h7', 1, NULL)", nil, "22023"},
		"unknown named argument":    {"CALL rejot.publish(name => 'h8', version => 1, query => 'SELECT id FROM victim', owner => 'me')", nil, "42883"},
		"an expression as argument": {"CALL rejot.publish('h9', 1, (SELECT 'x'))", nil, "0A000"},
		"too many arguments":        {"CALL rejot.publish('h10', 1, 'SELECT id FROM victim', 'd', 'extra')", nil, "42883"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := p.conn.Exec(ctx, c.sql, c.args...)
			if c.code != "" && pgErr(err).Code != c.code {
				t.Fatalf("want %s, got %v", c.code, err)
			}
			var n int
			if err := p.conn.QueryRow(ctx, "SELECT count(*) FROM victim").Scan(&n); err != nil || n != 1 {
				t.Fatalf("victim table harmed: %d, %v", n, err)
			}
		})
	}
	// Only the one valid call (the megabyte query) recorded anything.
	var n int
	p.conn.QueryRow(ctx, "SELECT count(*) FROM _rejot.commands").Scan(&n)
	if n != 1 {
		t.Fatalf("%d commands recorded", n)
	}
}
