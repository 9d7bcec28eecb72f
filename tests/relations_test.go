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
// start), and any SELECT naming only the rejot relations is answered from
// the catalog in every query mode.
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
				"SELECT * FROM rejot.systems s JOIN pg_class c ON true": "0A000",
				"SELECT * FROM rejot.nothing":                           "42P01",
				"DELETE FROM rejot.systems":                             "0A000",
				"SELECT nocolumn FROM rejot.systems":                    "42703",
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
// strings, and results print like any query's.
func TestCatalogRelationsInPsql(t *testing.T) {
	db := pg.CreateDB(t)
	sc := startSidecar(t, db)
	waitFor(t, 15*time.Second, func() bool {
		return strings.Contains(psql(t, sc.url(db, "postgres"), "SELECT count(*) FROM rejot.systems WHERE system = '"+db+"';\n"), " 1\n")
	})
	out := psql(t, sc.url(db, "postgres"), `SELECT system = current_database() AS mine FROM rejot.systems WHERE system = '`+db+`';
SELECT 1 \; SELECT nocolumn FROM rejot.systems;
`)
	for _, must := range []string{" mine \n------\n f", "ERROR:  column \"nocolumn\" does not exist\nLINE 1: SELECT 1 ; SELECT nocolumn FROM rejot.systems;\n                          ^"} {
		if !strings.Contains(out, must) {
			t.Errorf("output lacks %q:\n%s", must, out)
		}
	}
}
