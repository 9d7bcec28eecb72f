package managed_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/managed"
)

// apiOID is schema rejot's oid (0: none) and the digest _rejot.api
// recorded.
func apiOID(t *testing.T, conn *pgx.Conn) (oid uint32, digest string) {
	t.Helper()
	conn.QueryRow(context.Background(), `SELECT coalesce((SELECT oid FROM pg_namespace WHERE nspname = 'rejot'), 0),
		coalesce((SELECT digest FROM _rejot.api), '')`).Scan(&oid, &digest)
	return oid, digest
}

// TestInstallAPI: the signposts are made once, left as they are while
// they are current, rebuilt when the API's text changes and made again
// when an administrator dropped them.
func TestInstallAPI(t *testing.T) {
	ctx := context.Background()
	conn := pg.Connect(t, pg.CreateDB(t))
	if err := managed.Install(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if err := managed.InstallAPI(ctx, conn); err != nil {
		t.Fatal(err)
	}
	first, digest := apiOID(t, conn)
	if first == 0 || digest == "" {
		t.Fatalf("no schema rejot after InstallAPI: %d %q", first, digest)
	}
	if err := managed.InstallAPI(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if again, _ := apiOID(t, conn); again != first {
		t.Errorf("a current schema rejot was rebuilt: %d, then %d", first, again)
	}
	// Another release's signposts.
	if _, err := conn.Exec(ctx, "UPDATE _rejot.api SET digest = 'older'; DROP VIEW rejot.instances"); err != nil {
		t.Fatal(err)
	}
	if err := managed.InstallAPI(ctx, conn); err != nil {
		t.Fatal(err)
	}
	rebuilt, d := apiOID(t, conn)
	var ok bool
	conn.QueryRow(ctx, "SELECT to_regclass('rejot.instances') IS NOT NULL").Scan(&ok)
	if rebuilt == first || d != digest || !ok {
		t.Errorf("an older schema rejot was not rebuilt: oid %d (was %d), digest %q, instances %v", rebuilt, first, d, ok)
	}
	if _, err := conn.Exec(ctx, "DROP SCHEMA rejot CASCADE"); err != nil {
		t.Fatal(err)
	}
	if err := managed.InstallAPI(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if made, _ := apiOID(t, conn); made == 0 {
		t.Error("a dropped schema rejot was not made again")
	}
}

// TestInstallAPIForeign: a schema rejot the sidecar did not make (one a
// user made, or one with the same name made after the sidecar's was
// dropped), and one of the sidecar's that now holds another role's
// object, are left exactly as they are, with a *ForeignAPIError.
func TestInstallAPIForeign(t *testing.T) {
	ctx := context.Background()
	db := pg.CreateDB(t)
	conn := pg.Connect(t, db)
	role := "someone_" + db
	if _, err := conn.Exec(ctx, "CREATE ROLE "+role+"; CREATE SCHEMA rejot AUTHORIZATION "+role+
		"; CREATE TABLE rejot.publications (mine text)"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		pg.Exec(context.Background(), db, "DROP SCHEMA IF EXISTS rejot CASCADE; DROP ROLE IF EXISTS "+role)
	})
	if err := managed.Install(ctx, conn); err != nil {
		t.Fatal(err)
	}
	var foreign *managed.ForeignAPIError
	for range 2 {
		if err := managed.InstallAPI(ctx, conn); !errors.As(err, &foreign) || foreign.Made || foreign.Owner != role {
			t.Fatalf("InstallAPI over a user's schema rejot: %v; want a ForeignAPIError", err)
		}
	}
	var n int
	conn.QueryRow(ctx, "SELECT count(*) FROM pg_proc WHERE pronamespace = 'rejot'::regnamespace").Scan(&n)
	if oid, _ := apiOID(t, conn); oid == 0 || n != 0 {
		t.Fatalf("the user's schema rejot changed: oid %d, %d routines", oid, n)
	}

	// The sidecar's own schema, holding another role's table: not dropped.
	if _, err := conn.Exec(ctx, "DROP SCHEMA rejot CASCADE"); err != nil {
		t.Fatal(err)
	}
	if err := managed.InstallAPI(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE rejot.kept (id int); ALTER TABLE rejot.kept OWNER TO "+role+
		"; UPDATE _rejot.api SET digest = 'older'"); err != nil {
		t.Fatal(err)
	}
	if err := managed.InstallAPI(ctx, conn); !errors.As(err, &foreign) || !foreign.Made || foreign.Object != "table rejot.kept" {
		t.Fatalf("InstallAPI over a schema rejot holding another role's table: %v; want a ForeignAPIError", err)
	}
	var kept bool
	conn.QueryRow(ctx, "SELECT to_regclass('rejot.kept') IS NOT NULL").Scan(&kept)
	if !kept {
		t.Fatal("another role's table in schema rejot was dropped")
	}
}

// TestInstallAPICatalogHere: in a database that holds the catalog, schema
// rejot is the catalog's to make.
func TestInstallAPICatalogHere(t *testing.T) {
	ctx := context.Background()
	conn := pg.Connect(t, pg.CreateDB(t))
	if _, err := conn.Exec(ctx, "CREATE SCHEMA rejot_catalog"); err != nil {
		t.Fatal(err)
	}
	if err := managed.Install(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if err := managed.InstallAPI(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if oid, _ := apiOID(t, conn); oid != 0 {
		t.Error("schema rejot made in the catalog's database")
	}
}
