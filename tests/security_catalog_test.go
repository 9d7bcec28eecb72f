package tests

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestCatalogRelationAttacks: a query over the catalog relations runs in
// the caller's own session, as the caller (docs/security.md, "Catalog
// relations"). An intruder with only LOGIN sends, over the relations and in
// both protocols, what once ran on the catalog server with the sidecar's
// credentials: undoing the reader role and reading a server file, the
// password verifiers, the catalog's and the event log's tables; ending the
// capture's walsender; creating a WAL-retaining slot; a CTE named like a
// table in another scope. Then, as the superuser: no slot is new, the
// walsender is the same process, the catalog is as it was, and nothing the
// intruder got back holds a secret.
func TestCatalogRelationAttacks(t *testing.T) {
	p := newPublisher(t)
	ctx := context.Background()
	intruder, victim := "intruder_"+p.db, "victim_"+p.db
	admin := pg.Connect(t, p.db)
	password := "hunter2-" + p.db
	mustExec(t, admin, fmt.Sprintf(`CREATE ROLE %[1]s LOGIN; CREATE SCHEMA %[1]s AUTHORIZATION %[1]s;
		CREATE ROLE %[2]s LOGIN PASSWORD '%[3]s'`, intruder, victim, password))
	dropRolesAtEnd(t, p.db, intruder, victim)
	secretFile, secret := plantSecret(t, admin, p.db)
	walsender := captureWalsender(t, p, admin)
	catalogDB := pg.Connect(t, "rejot")
	slotsBefore, catalogBefore := slotNames(t, admin), catalogState(t, catalogDB)

	var got strings.Builder // everything the intruder got back: rows and errors
	for name, mode := range map[string]pgx.QueryExecMode{"extended": pgx.QueryExecModeCacheStatement, "simple": pgx.QueryExecModeSimpleProtocol} {
		conn := connectMode(t, p.sc.url(p.db, intruder), mode, nil)
		var who string
		if err := conn.QueryRow(ctx, "SELECT current_user || ' ' || session_user FROM rejot.systems WHERE system = $1", p.db).Scan(&who); err != nil || who != intruder+" "+intruder {
			t.Fatalf("%s: the query ran as %q, %v", name, who, err)
		}
		for _, q := range catalogAttacks(p.db, secretFile, walsender) {
			out, err := queryText(ctx, conn, q)
			fmt.Fprintf(&got, "%s %v\n", out, err)
			if err == nil {
				t.Errorf("%s: %s succeeded: %s", name, q, out)
			}
		}
	}
	t.Logf("the intruder got:\n%s", got.String())

	var uid string // a value only the catalog's own tables hold
	catalogDB.QueryRow(ctx, "SELECT command_uid::text FROM rejot_catalog.applied_commands WHERE system = $1 LIMIT 1", p.db).Scan(&uid)
	for _, leak := range []string{secret, "SCRAM-SHA-256$", uid} {
		if leak == "" {
			continue
		}
		if strings.Contains(got.String(), leak) {
			t.Errorf("the intruder's results hold %q", leak)
		}
	}
	if _, err := os.Stat("/tmp/rejot_pwned_" + p.db); err == nil {
		t.Error("COPY TO PROGRAM ran")
	}
	if after := slotNames(t, admin); after != slotsBefore {
		t.Errorf("replication slots changed: %s, then %s", slotsBefore, after)
	}
	if pid := captureWalsender(t, p, admin); pid != walsender {
		t.Errorf("the capture's walsender was %d, is %d", walsender, pid)
	}
	if after := catalogState(t, catalogDB); after != catalogBefore {
		t.Errorf("the catalog changed:\nbefore %s\nafter  %s", catalogBefore, after)
	}
}

// catalogAttacks are the intruder's queries; each must fail.
func catalogAttacks(db, secretFile string, walsender int) []string {
	return []string{
		// What was found live against the catalog server.
		"SELECT set_config('role', 'none', true), query_to_xml('SELECT pg_read_file(''" + secretFile + "'')', true, false, '') FROM rejot.systems",
		"SELECT query_to_xml('SELECT rolname, rolpassword FROM pg_authid', true, false, '') FROM rejot.systems",
		"SELECT rolname, rolpassword FROM rejot.systems, pg_authid",
		"SELECT * FROM rejot.systems, rejot_catalog.applied_commands",
		"SELECT query_to_xml('SELECT * FROM rejot_catalog.rejot_catalog_migrations', true, false, '') FROM rejot.systems",
		"SELECT query_to_xml('SELECT * FROM rejot_log.streams', true, false, '') FROM rejot.publications",
		fmt.Sprintf("SELECT pg_terminate_backend(%d) FROM rejot.systems WHERE system = '%s'", walsender, db),
		"SELECT pg_terminate_backend(pid) FROM pg_stat_replication, rejot.systems",
		"SELECT pg_create_logical_replication_slot('evil_" + db + "', 'pgoutput') FROM rejot.systems",
		"SELECT * FROM rejot.systems, pg_create_physical_replication_slot('evil2_" + db + "', true)",
		// A CTE in one scope once let its name through in another.
		"SELECT * FROM rejot.systems, (WITH pg_authid AS (SELECT 1) SELECT 1) x, pg_authid",
		// Without dblink: server files, large objects, programs, writes.
		"SELECT pg_ls_dir('.') FROM rejot.systems",
		"SELECT lo_import('" + secretFile + "') FROM rejot.systems",
		"COPY (SELECT * FROM rejot.systems) TO PROGRAM 'touch /tmp/rejot_pwned_" + db + "'",
		"WITH d AS (DELETE FROM rejot.systems RETURNING *) SELECT * FROM d",
		"SELECT * FROM rejot.systems FOR UPDATE OF rejot.systems",
		"SELECT * INTO " + "intruder_" + db + ".copy FROM rejot.systems",
	}
}

// queryText runs q and returns its rows as text.
func queryText(ctx context.Context, conn *pgx.Conn, q string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rows, err := conn.Query(ctx, q)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for rows.Next() {
		vals, _ := rows.Values()
		fmt.Fprintln(&b, vals...)
	}
	return b.String(), rows.Err()
}

// plantSecret writes a file with a secret in the data directory, where
// pg_read_file looks.
func plantSecret(t *testing.T, admin *pgx.Conn, db string) (name, secret string) {
	t.Helper()
	var dir string
	if err := admin.QueryRow(context.Background(), "SHOW data_directory").Scan(&dir); err != nil {
		t.Fatal(err)
	}
	name, secret = "rejot_secret_"+db, "the-secret-of-"+db
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(path) })
	return name, secret
}

// captureWalsender waits for the capture's slot to be active and returns
// the pid of the walsender reading it.
func captureWalsender(t *testing.T, p *publisher, admin *pgx.Conn) int {
	t.Helper()
	ctx := context.Background()
	if err := p.exec(t, "CREATE TABLE IF NOT EXISTS public.watched (id int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	name := p.name("watched")
	var n int
	p.conn.QueryRow(ctx, "SELECT count(*) FROM rejot.publications WHERE publication = $1", name).Scan(&n)
	if n == 0 {
		if err := p.exec(t, "CALL rejot.publish($1, 1, 'SELECT id FROM public.watched')", name); err != nil {
			t.Fatal(err)
		}
	}
	var pid int
	waitFor(t, 30*time.Second, func() bool {
		return admin.QueryRow(ctx, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active", "rejot_"+p.db).Scan(&pid) == nil
	})
	return pid
}

func slotNames(t *testing.T, admin *pgx.Conn) string {
	t.Helper()
	var s string
	if err := admin.QueryRow(context.Background(), "SELECT coalesce(string_agg(slot_name, ',' ORDER BY slot_name), '') FROM pg_replication_slots").Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// catalogState is the catalog's content that only calls change (not the
// heartbeats' last_seen, nor the subscriptions' progress reports).
func catalogState(t *testing.T, catalog *pgx.Conn) string {
	t.Helper()
	var s string
	err := catalog.QueryRow(context.Background(), `SELECT concat_ws(' | ',
		(SELECT string_agg(system || '/' || database, ',' ORDER BY system) FROM rejot_catalog.systems),
		(SELECT string_agg(publication || '/' || version || '/' || minor || '/' || status, ',' ORDER BY 1) FROM rejot_catalog.publications),
		(SELECT count(*) FROM rejot_catalog.columns),
		(SELECT string_agg(system || '/' || target || '/' || publication, ',' ORDER BY 1) FROM rejot_catalog.subscriptions),
		(SELECT count(*) FROM rejot_catalog.applied_commands))`).Scan(&s)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestCatalogRelationsWithOwnTables: the query runs in the caller's own
// database, so it may join the catalog with the caller's tables; in the
// extended protocol its parameters are the caller's alone.
func TestCatalogRelationsWithOwnTables(t *testing.T) {
	p := newPublisher(t)
	ctx := context.Background()
	if err := p.exec(t, "CREATE TABLE public.mine (system text, note text); INSERT INTO public.mine VALUES ('"+p.db+"', 'ours')"); err != nil {
		t.Fatal(err)
	}
	for name, mode := range execModes {
		t.Run(name, func(t *testing.T) {
			conn := connectMode(t, p.sc.url(p.db, "postgres"), mode, nil)
			var note, database string
			err := conn.QueryRow(ctx, `SELECT m.note, s.database FROM public.mine m JOIN rejot.systems s USING (system)
				WHERE s.system = $1 AND m.note LIKE $2`, p.db, "o%").Scan(&note, &database)
			if err != nil || note != "ours" || database != p.db {
				t.Fatalf("join: %q %q, %v", note, database, err)
			}
		})
	}
	// An error's position is in the caller's text, in either protocol.
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheDescribe, pgx.QueryExecModeSimpleProtocol} {
		conn := connectMode(t, p.sc.url(p.db, "postgres"), mode, nil)
		q := "SELECT m.note FROM rejot.systems s, public.mine m WHERE s.nocolumn = $1"
		_, err := conn.Exec(ctx, q, p.db)
		if pe, want := pgErr(err), strings.Index(q, "s.nocolumn")+1; pe == nil || pe.Code != "42703" || int(pe.Position) != want {
			t.Errorf("mode %v: %+v, want 42703 at %d", mode, pe, want)
		}
		// In a failed transaction block: 25P02, as for any statement.
		tx, _ := conn.Begin(ctx)
		tx.Exec(ctx, "SELECT 1/0")
		if _, err := tx.Exec(ctx, "SELECT * FROM rejot.systems"); pgErr(err) == nil || pgErr(err).Code != "25P02" {
			t.Errorf("mode %v: in an aborted transaction: %v", mode, err)
		}
		tx.Rollback(ctx)
	}
	// The example in docs/sql-reference.md.
	if _, err := p.conn.Exec(ctx, `SELECT s.target, s.publication, s.version, s.status, pg_total_relation_size(s.target::regclass) AS bytes
		FROM rejot.subscriptions s JOIN rejot.systems y USING (system) WHERE y.database = current_database()`); err != nil {
		t.Fatal(err)
	}
	sd, err := p.conn.PgConn().Prepare(ctx, "", "SELECT publication, version FROM rejot.publications WHERE version > $1 AND owner = $2", nil)
	if err != nil || len(sd.ParamOIDs) != 2 || sd.ParamOIDs[0] != 23 || sd.ParamOIDs[1] != 25 || len(sd.Fields) != 2 ||
		sd.Fields[0].Name != "publication" || sd.Fields[1].DataTypeOID != 23 || sd.Fields[0].TableOID != 0 {
		t.Fatalf("describe: %+v, %v", sd, err)
	}
}
