package tests

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rejot-dev/rejot/catalog"
	"github.com/rejot-dev/rejot/sql"
)

// apiSidecar starts a sidecar in front of a new database and waits until
// it has made schema rejot's signposts there.
func apiSidecar(t *testing.T) (*publisher, *pgx.Conn) {
	t.Helper()
	p := newPublisher(t)
	admin := pg.Connect(t, p.db)
	waitFor(t, 20*time.Second, func() bool {
		var ok bool
		admin.QueryRow(context.Background(), "SELECT to_regclass('rejot.instances') IS NOT NULL").Scan(&ok)
		return ok
	})
	return p, admin
}

// apiFunctions are the functions the sidecar answers, as package sql
// declares them.
func apiFunctions() []*sql.Function { return sql.NewExecutor("").Functions() }

// procedure says whether f is a procedure in the database (called with
// CALL); a function of no arguments with one result is a function
// (SELECT rejot.version()).
func procedure(f *sql.Function) bool { return len(f.Params) > 0 || len(f.Returns) != 1 }

// typeNames spells the API's type OIDs as format_type does.
func typeNames(t *testing.T, conn *pgx.Conn) map[uint32]string {
	t.Helper()
	names := map[uint32]string{}
	for _, f := range apiFunctions() {
		for _, p := range append(slices.Clone(f.Params), sql.Param{Type: sql.OIDText}) {
			var n string
			if err := conn.QueryRow(context.Background(), "SELECT format_type($1::oid, NULL)", p.Type).Scan(&n); err != nil {
				t.Fatal(err)
			}
			names[p.Type] = n
		}
	}
	return names
}

// pendingRelations are relations of DESIGN.md's SQL API that the catalog
// may not have yet; the signposts declare them with these columns, checked
// against the catalog's own as soon as catalog.Relations holds them.
var pendingRelations = map[string]string{
	"instances": "system text, address text, role text, version text, started_at timestamp with time zone, last_seen timestamp with time zone",
}

// relationColumns lists each view of schema rejot in db as
// "name type, ...".
func relationColumns(t *testing.T, conn *pgx.Conn) map[string]string {
	t.Helper()
	rows, err := conn.Query(context.Background(), `SELECT c.relname::text,
			string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
		FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
		WHERE c.relnamespace = 'rejot'::regnamespace AND c.relkind = 'v' GROUP BY c.relname`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	var rel, cols string
	pgx.ForEachRow(rows, []any{&rel, &cols}, func() error { out[rel] = cols; return nil })
	return out
}

// TestAPISignposts: schema rejot in a managed database declares exactly
// the API the sidecar answers — every function of package sql with its
// arguments in order, their types and the defaults the sidecar applies,
// and every catalog relation with the catalog's columns — each with a
// comment, as its caller, with a fixed search_path. The test fails when
// managed/api.sql drifts from package sql or from the catalog.
func TestAPISignposts(t *testing.T) {
	_, admin := apiSidecar(t)
	ctx := context.Background()
	types := typeNames(t, admin)
	rows, err := admin.Query(ctx, `SELECT p.proname::text, p.prokind::text, p.prosecdef, coalesce(p.proconfig, '{}'),
			coalesce(p.proargnames, '{}'),
			ARRAY(SELECT format_type(u.t, NULL) FROM unnest(p.proargtypes) WITH ORDINALITY AS u(t, i) ORDER BY u.i),
			ARRAY(SELECT coalesce(pg_get_function_arg_default(p.oid, i), '') FROM generate_series(1, p.pronargs) AS i),
			format_type(p.prorettype, NULL), coalesce(obj_description(p.oid, 'pg_proc'), ''), pg_get_userbyid(p.proowner)::text
		FROM pg_proc p WHERE p.pronamespace = 'rejot'::regnamespace`)
	if err != nil {
		t.Fatal(err)
	}
	type routine struct {
		kind                   string
		definer                bool
		config, names, types   []string
		defaults               []string
		returns, comment, role string
	}
	got := map[string]routine{}
	var name string
	var r routine
	if _, err := pgx.ForEachRow(rows, []any{&name, &r.kind, &r.definer, &r.config, &r.names, &r.types, &r.defaults, &r.returns, &r.comment, &r.role},
		func() error { got[name] = r; return nil }); err != nil {
		t.Fatal(err)
	}
	for _, f := range apiFunctions() {
		r, ok := got[f.Name]
		if !ok {
			t.Errorf("rejot.%s: no signpost in the database (add it to managed/api.sql)", f.Name)
			continue
		}
		delete(got, f.Name)
		var names, typs, defaults []string
		for _, p := range f.Params {
			names, typs = append(names, p.Name), append(typs, types[p.Type])
			def := ""
			if p.Optional {
				def = p.Default
				if def == "" {
					def = "NULL::" + types[p.Type]
				}
			}
			defaults = append(defaults, def)
		}
		wantKind := "p"
		if !procedure(f) {
			wantKind = "f"
			if r.returns != types[f.Returns[0].TypeOID] {
				t.Errorf("rejot.%s returns %s, the sidecar %s", f.Name, r.returns, types[f.Returns[0].TypeOID])
			}
		}
		if r.kind != wantKind || !slices.Equal(r.names, names) || !slices.Equal(r.types, typs) || !slices.Equal(r.defaults, defaults) {
			t.Errorf("rejot.%s: %s (%v %v %v) in the database; the sidecar takes %s (%v %v %v)",
				f.Name, r.kind, r.names, r.types, r.defaults, wantKind, names, typs, defaults)
		}
		if r.definer || !slices.Equal(r.config, []string{"search_path=pg_catalog, pg_temp"}) || r.comment == "" || r.role != "postgres" {
			t.Errorf("rejot.%s: definer %v, config %v, comment %q, owner %s", f.Name, r.definer, r.config, r.comment, r.role)
		}
	}
	for name := range got {
		t.Errorf("rejot.%s is in the database, not in the sidecar's API", name)
	}

	stubs := relationColumns(t, admin)
	want := relationColumns(t, pg.Connect(t, "rejot")) // the catalog's own views
	for rel, cols := range pendingRelations {
		if !catalog.IsRelation(rel) {
			want[rel] = cols
		}
	}
	for _, rel := range catalog.Relations {
		if _, ok := want[rel]; !ok {
			t.Errorf("the catalog has no view rejot.%s", rel)
		}
	}
	for rel, cols := range want {
		if stubs[rel] != cols {
			t.Errorf("rejot.%s:\n  signpost %s\n  catalog  %s", rel, stubs[rel], cols)
		}
		delete(stubs, rel)
		var comment string
		admin.QueryRow(ctx, "SELECT coalesce(obj_description(to_regclass('rejot.'||$1), 'pg_class'), '')", rel).Scan(&comment)
		if comment == "" {
			t.Errorf("rejot.%s has no comment", rel)
		}
	}
	for rel := range stubs {
		t.Errorf("rejot.%s is in the database, not in the catalog", rel)
	}
	var other string
	admin.QueryRow(ctx, `SELECT string_agg(relname || ' ' || relkind, ', ') FROM pg_class
		WHERE relnamespace = 'rejot'::regnamespace AND relkind <> 'v'`).Scan(&other)
	if other != "" {
		t.Errorf("schema rejot holds more than views: %s", other)
	}
}

// TestPsqlSeesTheAPI: through the sidecar, psql's \df, \d and \sf show
// the API's routines and relations, and tab completion completes their
// names (psql's catalog queries mention 'rejot' only as strings, which
// the sidecar relays); the calls and queries themselves are still
// answered by the sidecar.
func TestPsqlSeesTheAPI(t *testing.T) {
	p, admin := apiSidecar(t)
	types := typeNames(t, admin)
	out := psql(t, p.sc.url(p.db, "postgres"), `\df rejot.*
\d rejot.publications
\sf rejot.publish
SELECT rejot.version() AS answered;
SELECT count(*) AS publications FROM rejot.publications WHERE publication = 'none';
`)
	for _, f := range apiFunctions() {
		var args []string
		for _, p := range f.Params {
			a := p.Name + " " + types[p.Type]
			if procedure(f) {
				a = "IN " + a
			}
			if p.Optional && p.Default != "" {
				a += " DEFAULT " + p.Default
			} else if p.Optional {
				a += " DEFAULT NULL::" + types[p.Type]
			}
			args = append(args, a)
		}
		kind := "proc"
		if !procedure(f) {
			kind = "func"
		}
		line := fmt.Sprintf(" rejot  | %-11s |", f.Name)
		i := strings.Index(out, line)
		if i < 0 {
			t.Errorf("\\df rejot.* lacks rejot.%s:\n%s", f.Name, out)
			continue
		}
		row, _, _ := strings.Cut(out[i:], "\n")
		if !strings.Contains(row, "| "+strings.Join(args, ", ")+" ") || !strings.HasSuffix(row, "| "+kind) {
			t.Errorf("\\df rejot.*: %s\nwant arguments %s, type %s", row, strings.Join(args, ", "), kind)
		}
	}
	for _, must := range []string{
		`View "rejot.publications"`,
		" publication | text                     |",
		" key_columns | text[]                   |",
		" created_at  | timestamp with time zone |",
		"CREATE OR REPLACE PROCEDURE rejot.publish(IN name text, IN version integer, IN query text, IN description text DEFAULT NULL::text)",
		" answered  \n-----------\n 0.1.0-dev",
		" publications \n--------------\n            0",
	} {
		if !strings.Contains(out, must) {
			t.Errorf("psql through the sidecar lacks %q:\n%s", must, out)
		}
	}

	if _, err := exec.LookPath("script"); err != nil {
		t.Skip("no script(1) to give psql a terminal: tab completion not checked")
	}
	// psql completes on a terminal only; the completed call reaches the
	// sidecar, which answers it.
	typed := "CALL rejot.unpub\t('none', 1);\nSELECT count(*) FROM rejot.publica\tWHERE publication = 'none';\n\\q\n"
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "script", "-qec", "stty cols 1000; "+psqlBin+" -X '"+p.sc.url(p.db, "postgres")+"'", "/dev/null")
	cmd.Stdin = strings.NewReader(typed)
	cmd.Env = append(cmd.Environ(), "TERM=dumb", "PAGER=", "PGCLIENTENCODING=UTF8")
	got, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("psql on a terminal: %v\n%s", err, got)
	}
	for _, must := range []string{"# CALL rejot.unpublish ('none', 1);", "ERROR:  publication none version 1 does not exist in this system",
		"# SELECT count(*) FROM rejot.publications WHERE publication = 'none';", " count \r\n-------\r\n     0"} {
		if !strings.Contains(string(got), must) {
			t.Errorf("tab completion through the sidecar: output lacks %q:\n%s", must, got)
		}
	}
}

// TestAPIDirectlyOnPostgres: sent to the database itself, not through the
// sidecar, every routine and every relation of the API fails with 0A000
// and the hint to connect to the sidecar — for a role with nothing but
// LOGIN too — instead of 'schema "rejot" does not exist'.
func TestAPIDirectlyOnPostgres(t *testing.T) {
	p, admin := apiSidecar(t)
	ctx := context.Background()
	nobody := "nobody_" + p.db
	mustExec(t, admin, "CREATE ROLE "+nobody+" LOGIN")
	dropRolesAtEnd(t, p.db, nobody)

	out := psql(t, directURL(p.db, nobody), `CALL rejot.publish(name => 'orders', version => 1, query => 'SELECT id FROM public.orders');
SELECT * FROM rejot.publications;
`)
	for _, must := range []string{
		"ERROR:  rejot.publish() is answered by the ReJot sidecar, not by the database\nHINT:  Connect to the sidecar (its host and port, by default 6432) instead of to the database",
		"ERROR:  rejot.publications is answered by the ReJot sidecar, not by the database\nHINT:  Connect to the sidecar",
	} {
		if !strings.Contains(out, must) {
			t.Errorf("psql straight to Postgres lacks %q:\n%s", must, out)
		}
	}

	conn := connectAs(t, directURL(p.db, nobody))
	literal := map[uint32]string{sql.OIDText: "'x'", sql.OIDInt4: "1", sql.OIDBool: "true", sql.OIDDate: "date '2027-06-01'"}
	var stmts []string
	for _, f := range apiFunctions() {
		var args []string
		for _, p := range f.Params {
			args = append(args, literal[p.Type])
		}
		form := "CALL"
		if !procedure(f) {
			form = "SELECT"
		}
		stmts = append(stmts, fmt.Sprintf("%s rejot.%s(%s)", form, f.Name, strings.Join(args, ", ")))
	}
	for rel := range relationColumns(t, admin) {
		stmts = append(stmts, "SELECT * FROM rejot."+rel, "SELECT count(*) FROM rejot."+rel)
	}
	for _, s := range stmts {
		_, err := conn.Exec(ctx, s)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "0A000" || !strings.Contains(pe.Message, "answered by the ReJot sidecar") ||
			!strings.HasPrefix(pe.Hint, "Connect to the sidecar") {
			t.Errorf("%s, directly: %v; want 0A000 with the hint to connect to the sidecar", s, err)
		}
	}
}

// TestAPISignpostsHarmless: a role with nothing but LOGIN can neither
// change the signposts nor use them to act as anyone else: they belong to
// the sidecar's role, run as their caller, and every attempt to replace,
// alter, drop or add to them is refused, directly and through the sidecar.
func TestAPISignpostsHarmless(t *testing.T) {
	p, admin := apiSidecar(t)
	ctx := context.Background()
	intruder := "intruder_" + p.db
	mustExec(t, admin, "CREATE ROLE "+intruder+" LOGIN")
	dropRolesAtEnd(t, p.db, intruder)
	before := signpostState(t, admin)
	attacks := []string{
		"CREATE OR REPLACE PROCEDURE rejot.publish(name text, version integer, query text, description text DEFAULT NULL) LANGUAGE sql AS 'SELECT 1'",
		"CREATE OR REPLACE FUNCTION rejot.version() RETURNS text LANGUAGE sql AS 'SELECT 1::text'",
		"CREATE OR REPLACE FUNCTION _rejot.api_unavailable(relation text) RETURNS boolean LANGUAGE sql AS 'SELECT true'",
		"CREATE OR REPLACE VIEW rejot.publications AS SELECT 1 AS publication",
		"ALTER PROCEDURE rejot.publish(text, integer, text, text) SECURITY DEFINER",
		"ALTER PROCEDURE rejot.subscribe(text, integer, text, text, boolean, text, text, text) SET search_path = public",
		"ALTER FUNCTION rejot.version() OWNER TO " + intruder,
		"ALTER VIEW rejot.publications OWNER TO " + intruder,
		"ALTER VIEW rejot.systems RENAME TO mine",
		"ALTER SCHEMA rejot RENAME TO mine",
		"ALTER SCHEMA rejot OWNER TO " + intruder,
		"DROP PROCEDURE rejot.grant(text, integer, text)",
		"DROP VIEW rejot.columns",
		"DROP SCHEMA rejot CASCADE",
		"CREATE FUNCTION rejot.publish(name text, version integer, query text) RETURNS int LANGUAGE sql AS 'SELECT 1'",
		"CREATE TABLE rejot.mine (id int)",
		"COMMENT ON VIEW rejot.publications IS 'mine'",
		"COMMENT ON SCHEMA rejot IS 'mine'",
	}
	for _, via := range []struct{ name, url string }{{"direct", directURL(p.db, intruder)}, {"sidecar", p.sc.url(p.db, intruder)}} {
		conn := connectAs(t, via.url)
		for _, s := range attacks {
			_, err := conn.Exec(ctx, s)
			var pe *pgconn.PgError
			// The sidecar refuses a statement that writes a catalog
			// relation itself (0A000); the database refuses the rest.
			if !errors.As(err, &pe) || pe.Code != "42501" && !(via.name == "sidecar" && pe.Code == "0A000") {
				t.Errorf("%s: %s: %v; want 42501", via.name, s, err)
			}
		}
	}
	if after := signpostState(t, admin); after != before {
		t.Fatalf("the signposts changed:\nbefore %s\nafter  %s", before, after)
	}
	// Nothing in them runs as anyone but its caller, and PUBLIC may only
	// use them.
	var definers, grants string
	admin.QueryRow(ctx, `SELECT coalesce(string_agg(proname, ', '), '') FROM pg_proc
		WHERE (pronamespace = 'rejot'::regnamespace OR oid = '_rejot.api_unavailable(text)'::regprocedure)
		AND (prosecdef OR proconfig IS DISTINCT FROM '{"search_path=pg_catalog, pg_temp"}')`).Scan(&definers)
	admin.QueryRow(ctx, `SELECT coalesce(string_agg(DISTINCT a.privilege_type, ', '), '') FROM (
			SELECT (aclexplode(proacl)).* FROM pg_proc WHERE pronamespace = 'rejot'::regnamespace
			UNION ALL SELECT (aclexplode(relacl)).* FROM pg_class WHERE relnamespace = 'rejot'::regnamespace
			UNION ALL SELECT (aclexplode(nspacl)).* FROM pg_namespace WHERE nspname = 'rejot') AS a
		WHERE a.grantee = 0 AND a.privilege_type NOT IN ('USAGE', 'EXECUTE', 'SELECT')`).Scan(&grants)
	if definers != "" || grants != "" {
		t.Errorf("definer or unfixed search_path: %q; PUBLIC may also: %q", definers, grants)
	}
}

// signpostState is every signpost's definition, owner and privileges.
func signpostState(t *testing.T, admin *pgx.Conn) string {
	t.Helper()
	var s string
	err := admin.QueryRow(context.Background(), `SELECT concat_ws(E'\n',
		(SELECT string_agg(pg_get_functiondef(oid) || proowner::regrole::text || coalesce(proacl::text, ''), E'\n' ORDER BY proname)
			FROM pg_proc WHERE pronamespace = 'rejot'::regnamespace OR oid = '_rejot.api_unavailable(text)'::regprocedure),
		(SELECT string_agg(relname || pg_get_viewdef(oid) || relowner::regrole::text || coalesce(relacl::text, '')
				|| coalesce(obj_description(oid, 'pg_class'), ''), E'\n' ORDER BY relname)
			FROM pg_class WHERE relnamespace = 'rejot'::regnamespace),
		(SELECT nspowner::regrole::text || coalesce(nspacl::text, '') || coalesce(obj_description(oid, 'pg_namespace'), '')
			FROM pg_namespace WHERE nspname = 'rejot'))`).Scan(&s)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestAPISchemaOfTheUser: a schema rejot that a user made before the
// sidecar first started is left as it is — its owner, its objects, its
// contents — and the sidecar logs why psql shows no API there; calls
// through the sidecar are answered all the same.
func TestAPISchemaOfTheUser(t *testing.T) {
	db := pg.CreateDB(t)
	admin := pg.Connect(t, db)
	ctx := context.Background()
	user := "user_" + db
	mustExec(t, admin, fmt.Sprintf(`CREATE ROLE %[1]s LOGIN; CREATE SCHEMA rejot AUTHORIZATION %[1]s;
		CREATE TABLE rejot.publications (mine text); INSERT INTO rejot.publications VALUES ('kept');
		ALTER TABLE rejot.publications OWNER TO %[1]s`, user))
	dropRolesAtEnd(t, db, user)
	p := publisherOn(t, db)
	waitFor(t, 20*time.Second, func() bool { return strings.Contains(p.sc.logs(), "schema rejot is not installed") })
	if logs := p.sc.logs(); !strings.Contains(logs, "the sidecar did not make it") {
		t.Errorf("the log does not say why:\n%s", logs)
	}
	var owner, rows string
	var routines int
	admin.QueryRow(ctx, "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'rejot'").Scan(&owner)
	admin.QueryRow(ctx, "SELECT string_agg(mine, ',') FROM rejot.publications").Scan(&rows)
	admin.QueryRow(ctx, "SELECT count(*) FROM pg_proc WHERE pronamespace = 'rejot'::regnamespace").Scan(&routines)
	if owner != user || rows != "kept" || routines != 0 {
		t.Errorf("the user's schema rejot changed: owner %s, rows %q, %d routines", owner, rows, routines)
	}
	var version string
	if err := p.conn.QueryRow(ctx, "SELECT rejot.version()").Scan(&version); err != nil || version == "" {
		t.Errorf("rejot.version() through the sidecar: %q, %v", version, err)
	}
}
