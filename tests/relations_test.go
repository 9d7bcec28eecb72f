package tests

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestCatalogRelations: the sidecar registers its system in the catalog
// (by default the database rejot on the upstream's server, created on
// start), and any SELECT over the rejot relations is answered with the
// catalog's rows in every query mode.
func TestCatalogRelations(t *testing.T) {
	db := pg.CreateDB(t)
	sc := startSidecar(t, db)
	for name, mode := range execModes {
		t.Run(name, func(t *testing.T) {
			conn := connectMode(t, sc.url(db, "postgres"), mode, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var system, database string
			var seen time.Time
			deadline := time.Now().Add(15 * time.Second)
			for {
				err := conn.QueryRow(ctx, "SELECT system, database, last_seen FROM rejot.systems WHERE system = $1", db).Scan(&system, &database, &seen)
				if err == nil {
					break
				}
				if !errors.Is(err, pgx.ErrNoRows) && !strings.Contains(err.Error(), "catalog") || time.Now().After(deadline) {
					t.Fatalf("system not registered: %v\n%s", err, sc.logs())
				}
				time.Sleep(100 * time.Millisecond)
			}
			if database != db || time.Since(seen) > time.Minute {
				t.Fatalf("system row: %s %s %v", system, database, seen)
			}
			var n int64
			err := conn.QueryRow(ctx, `SELECT count(*) FROM rejot.publications p
				JOIN rejot.columns c USING (publication, version) WHERE p.status = 'active' AND p.owner = $1`, db).Scan(&n)
			if err != nil || n != 0 {
				t.Fatalf("join: %d, %v", n, err)
			}
			for q, code := range map[string]string{
				"SELECT * FROM rejot.systems FOR UPDATE OF rejot.systems": "0A000",
				"SELECT * FROM rejot.nothing":                             "42P01",
				"DELETE FROM rejot.systems":                               "0A000",
				"SELECT nocolumn FROM rejot.systems":                      "42703",
			} {
				_, err := conn.Exec(ctx, q)
				var pe *pgconn.PgError
				if !errors.As(err, &pe) || pe.Code != code {
					t.Errorf("%s: want %s, got %v", q, code, err)
				}
			}
		})
	}
}

// TestCatalogRelationsInPsql: errors keep their positions in multi-statement
// strings, and results print like any query's. The query runs in the
// caller's own session, so current_database() is the caller's.
func TestCatalogRelationsInPsql(t *testing.T) {
	db := pg.CreateDB(t)
	sc := startSidecar(t, db)
	waitFor(t, 15*time.Second, func() bool {
		return strings.Contains(psql(t, sc.url(db, "postgres"), "SELECT count(*) FROM rejot.systems WHERE system = '"+db+"';\n"), " 1\n")
	})
	out := psql(t, sc.url(db, "postgres"), `SELECT system = current_database() AS mine FROM rejot.systems WHERE system = '`+db+`';
SELECT 1 \; SELECT nocolumn FROM rejot.systems;
`)
	for _, must := range []string{" mine \n------\n t", "ERROR:  column \"nocolumn\" does not exist\nLINE 1: SELECT 1 ; SELECT nocolumn FROM rejot.systems;\n                          ^"} {
		if !strings.Contains(out, must) {
			t.Errorf("output lacks %q:\n%s", must, out)
		}
	}
}

// TestCatalogRelationValues: the rows come through the rewrite exactly as
// the catalog has them — every column of every relation, timestamps to the
// microsecond, arrays, NULLs, text outside Latin-1 in a session whose
// client_encoding is LATIN1 — and print in the caller's own TimeZone.
func TestCatalogRelationValues(t *testing.T) {
	p := newPublisher(t)
	ctx := context.Background()
	name := p.name("values")
	if err := p.exec(t, "CREATE TABLE public.vals (id int, k text, v text, PRIMARY KEY (id, k))"); err != nil {
		t.Fatal(err)
	}
	if err := p.exec(t, "CALL rejot.publish($1, 1, 'SELECT id, k, v FROM public.vals', 'naïve 🦆 \"quoted\" \\ back')", name); err != nil {
		t.Fatal(err)
	}
	p.catalogMinor(t, name, 1, 0)
	catalogDB := pg.Connect(t, "rejot")
	mustExec(t, catalogDB, "SET TimeZone = 'UTC'")
	if err := p.exec(t, "SET TimeZone = 'UTC'"); err != nil {
		t.Fatal(err)
	}
	for _, rel := range []string{"publications", "columns", "systems"} {
		q := "SELECT to_jsonb(r)::text FROM rejot." + rel + " r WHERE " + map[string]string{
			"publications": "publication = $1", "columns": "publication = $1", "systems": "system = $2"}[rel] + " AND $1 || $2 <> '' ORDER BY 1"
		var direct, through string
		if err := catalogDB.QueryRow(ctx, "SELECT string_agg(j, ',') FROM ("+q+") x(j)", name, p.db).Scan(&direct); err != nil {
			t.Fatal(err)
		}
		if err := p.conn.QueryRow(ctx, "SELECT string_agg(j, ',') FROM ("+q+") x(j)", name, p.db).Scan(&through); err != nil {
			t.Fatal(err)
		}
		if direct == "" || through != direct {
			t.Errorf("rejot.%s:\ncatalog %s\nsidecar %s", rel, direct, through)
		}
	}

	var seen time.Time
	if err := catalogDB.QueryRow(ctx, "SELECT created_at FROM rejot.publications WHERE publication = $1", name).Scan(&seen); err != nil {
		t.Fatal(err)
	}
	var local string
	var same bool
	if err := p.exec(t, "SET TimeZone = 'Asia/Tokyo'; SET client_encoding = 'LATIN1'"); err != nil {
		t.Fatal(err)
	}
	err := p.conn.QueryRow(ctx, `SELECT created_at::text, created_at = $2 FROM rejot.publications WHERE publication = $1
		AND description = U&'na\00EFve \+01F986 "quoted" \005C back' AND sunset IS NULL AND key_columns = '{id,k}'`, name, seen).Scan(&local, &same)
	p.exec(t, "RESET client_encoding")
	if err != nil || !strings.HasSuffix(local, "+09") || !same {
		t.Fatalf("in Tokyo: %q %v, %v", local, same, err)
	}
}
