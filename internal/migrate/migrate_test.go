package migrate_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/internal/migrate"
	"github.com/rejot-dev/rejot/internal/pgtest"
)

var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &pg, pgtest.Options{})) }

// files is a set whose every file notes that it ran, in a table that is
// not the set's own, so a file run twice shows.
var files = fstest.MapFS{
	"m/001_first.sql":  {Data: []byte("CREATE TABLE app.ran (name text); INSERT INTO app.ran VALUES ('001')")},
	"m/002_second.sql": {Data: []byte("SELECT pg_sleep(0.2); INSERT INTO app.ran VALUES ('002')")},
	"m/003_third.sql":  {Data: []byte("INSERT INTO app.ran VALUES ('003')")},
}

// TestConcurrentRuns: processes starting at once apply each file once, in
// order, together or each on its own.
func TestConcurrentRuns(t *testing.T) {
	for _, together := range []bool{false, true} {
		t.Run(fmt.Sprintf("together=%v", together), func(t *testing.T) {
			db := pg.CreateDB(t)
			set := migrate.Set{Files: files, Dir: "m", Table: "app.schema_migrations", Together: together}
			var wg sync.WaitGroup
			errs := make([]error, 4)
			for i := range errs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs[i] = run(set, pg.URL(db))
				}()
			}
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Fatalf("run %d: %v", i, err)
				}
			}
			var ran string
			pg.Connect(t, db).QueryRow(context.Background(), "SELECT string_agg(name, ',' ORDER BY name) FROM app.ran").Scan(&ran)
			if ran != "001,002,003" {
				t.Fatalf("files ran %q; want each once: 001,002,003", ran)
			}
		})
	}
}

func run(set migrate.Set, url string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return set.Run(ctx, conn)
}

// TestForeignTable: a migrations table (or its schema) made first by a
// role the sidecar does not trust is refused before anything is written
// to it, so that role's trigger never runs with the sidecar's privileges.
func TestForeignTable(t *testing.T) {
	ctx := context.Background()
	for _, premade := range []string{"schema", "table"} {
		t.Run(premade, func(t *testing.T) {
			db := pg.CreateDB(t)
			admin := pg.Connect(t, db)
			role := "squatter_" + db
			mustExec(t, admin, fmt.Sprintf("CREATE ROLE %[1]s LOGIN; GRANT CREATE ON DATABASE %[2]s TO %[1]s; GRANT CREATE ON SCHEMA public TO %[1]s",
				role, pgx.Identifier{db}.Sanitize()))
			t.Cleanup(func() {
				pg.Exec(ctx, db, "DROP OWNED BY "+role+" CASCADE")
				pg.Exec(ctx, "postgres", "DROP ROLE IF EXISTS "+role)
			})
			squatter, err := pgx.Connect(ctx, strings.Replace(pg.URL(db), "postgres@", role+"@", 1))
			if err != nil {
				t.Fatal(err)
			}
			defer squatter.Close(ctx)
			table := "app.schema_migrations"
			if premade == "table" {
				table = "public.app_migrations"
			} else {
				mustExec(t, squatter, "CREATE SCHEMA app")
			}
			// The trigger would make its owner superuser when the sidecar
			// (a superuser here) records a file.
			mustExec(t, squatter, fmt.Sprintf(`CREATE TABLE %[1]s (version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
				CREATE FUNCTION public.elevate() RETURNS trigger LANGUAGE plpgsql AS $$
				BEGIN EXECUTE 'ALTER ROLE %[2]s SUPERUSER'; RETURN NEW; END $$;
				CREATE TRIGGER elevate BEFORE INSERT ON %[1]s FOR EACH ROW EXECUTE FUNCTION public.elevate()`, table, role))
			err = run(migrate.Set{Files: files, Dir: "m", Table: table}, pg.URL(db))
			var foreign *migrate.ForeignError
			if !errors.As(err, &foreign) || foreign.Owner != role {
				t.Fatalf("Run over %s made by %s: %v; want a ForeignError naming it", premade, role, err)
			}
			var super bool
			var applied int
			admin.QueryRow(ctx, "SELECT rolsuper FROM pg_roles WHERE rolname = $1", role).Scan(&super)
			admin.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&applied)
			if super || applied != 0 {
				t.Fatalf("after the refusal: %s superuser=%v, %d files recorded; want neither", role, super, applied)
			}
		})
	}
}

// TestDatabaseOwnerTrusted: several sidecars with roles of their own share
// the schemas the first one made in a database it owns (docs/guide.md).
func TestDatabaseOwnerTrusted(t *testing.T) {
	ctx := context.Background()
	db := pg.CreateDB(t)
	admin := pg.Connect(t, db)
	first, second := "first_"+db, "second_"+db
	mustExec(t, admin, fmt.Sprintf("CREATE ROLE %[1]s LOGIN; CREATE ROLE %[2]s LOGIN; ALTER DATABASE %[3]s OWNER TO %[1]s",
		first, second, pgx.Identifier{db}.Sanitize()))
	t.Cleanup(func() {
		pg.Exec(ctx, "postgres", fmt.Sprintf("ALTER DATABASE %s OWNER TO postgres", pgx.Identifier{db}.Sanitize()))
		pg.Exec(ctx, db, "DROP OWNED BY "+first+", "+second+" CASCADE")
		pg.Exec(ctx, "postgres", "DROP ROLE IF EXISTS "+first+", "+second)
	})
	set := migrate.Set{Files: files, Dir: "m", Table: "app.schema_migrations"}
	if err := run(set, strings.Replace(pg.URL(db), "postgres@", first+"@", 1)); err != nil {
		t.Fatalf("first sidecar: %v", err)
	}
	mustExec(t, admin, "GRANT USAGE ON SCHEMA app TO "+second+"; GRANT SELECT, INSERT ON app.schema_migrations TO "+second)
	if err := run(set, strings.Replace(pg.URL(db), "postgres@", second+"@", 1)); err != nil {
		t.Fatalf("second sidecar, over what the database's owner made: %v", err)
	}
}

func mustExec(t *testing.T, conn *pgx.Conn, sql string) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}
