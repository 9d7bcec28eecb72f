package tests

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// captureAttack is a managed database with a victim role owning
// public.secrets (holding secret) and an attacker with only LOGIN and a
// schema of its own holding a table of its own, att.mine.
type captureAttack struct {
	*publisher
	admin                    *pgx.Conn
	victim, attacker, secret string
	direct                   *pgx.Conn // the attacker, straight to Postgres
	through                  *pgx.Conn // the attacker, through the sidecar
}

func newCaptureAttack(t *testing.T) *captureAttack {
	t.Helper()
	p := newPublisher(t)
	a := &captureAttack{publisher: p, admin: pg.Connect(t, p.db), victim: "victim_" + p.db, attacker: "att_" + p.db,
		secret: "TOPSECRET_" + p.db}
	mustExec(t, a.admin, fmt.Sprintf(`CREATE ROLE %[1]s NOLOGIN; CREATE ROLE %[2]s LOGIN;
		CREATE SCHEMA %[2]s AUTHORIZATION %[2]s;
		CREATE TABLE public.secrets (id int PRIMARY KEY, s text); INSERT INTO public.secrets VALUES (1, '%[3]s');
		ALTER TABLE public.secrets OWNER TO %[1]s`, a.victim, a.attacker, a.secret))
	dropRolesAtEnd(t, p.db, a.victim, a.attacker)
	a.direct = connectAs(t, directURL(p.db, a.attacker))
	a.through = connectAs(t, p.sc.url(p.db, a.attacker))
	mustExec(t, a.direct, fmt.Sprintf(`CREATE TABLE %[1]s.mine (id int PRIMARY KEY, v text);
		INSERT INTO %[1]s.mine VALUES (1, 'one'), (2, 'two');
		CREATE TABLE %[1]s.written (n int)`, a.attacker))
	return a
}

// noSecret fails the test if the secret is anywhere in the event log, or
// in a table of the managed database but public.secrets, as the
// superuser reads them.
func (a *captureAttack) noSecret(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	for _, db := range []*pgx.Conn{pg.Connect(t, "rejot"), a.admin} {
		rows, err := db.Query(ctx, `SELECT format('%I.%I', schemaname, tablename) FROM pg_tables
			WHERE schemaname NOT IN ('pg_catalog', 'information_schema') AND (schemaname, tablename) <> ('public', 'secrets')`)
		if err != nil {
			t.Fatal(err)
		}
		tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		for _, table := range tables {
			var n int
			if err := db.QueryRow(ctx, "SELECT count(*) FROM "+table+" x WHERE x::text LIKE '%' || $1 || '%'", a.secret).Scan(&n); err != nil {
				t.Fatalf("%s: %v", table, err)
			}
			if n > 0 {
				t.Errorf("the secret is in %s (%d rows)", table, n)
			}
		}
	}
}

// versionState is a version's state in the event log, as the superuser reads
// it ("" when the log has none).
func versionState(t *testing.T, name string) string {
	t.Helper()
	var state string
	pg.Connect(t, "rejot").QueryRow(context.Background(), `SELECT coalesce(string_agg(to_jsonb(r)::text, ' ' ORDER BY r[1]::int), '')
		FROM rejot_log.state_rows($1, 1) AS r`, name).Scan(&state)
	return state
}

// TestCaptureRunsAsPublisher: a function the attacker declared IMMUTABLE,
// which reads public.secrets (after trying to RESET ROLE to the sidecar's
// role) and writes a table (through a volatile function of its own), is published in a projection of the
// attacker's own table. The first fill and the capture evaluate it as the
// attacker: the superuser finds no secret in the event log or anywhere
// else, and nothing written.
func TestCaptureRunsAsPublisher(t *testing.T) {
	a := newCaptureAttack(t)
	ctx := context.Background()
	mustExec(t, a.direct, fmt.Sprintf(`CREATE FUNCTION %[1]s.write_it(int) RETURNS void LANGUAGE sql AS $$ INSERT INTO %[1]s.written VALUES ($1) $$;
		CREATE FUNCTION %[1]s.peek(int) RETURNS text IMMUTABLE LANGUAGE plpgsql AS $$
		DECLARE r text := '';
		BEGIN
			BEGIN PERFORM pg_catalog.set_config('role', 'none', false); EXCEPTION WHEN OTHERS THEN r := 'no reset;'; END;
			BEGIN SELECT r || s INTO r FROM public.secrets LIMIT 1; EXCEPTION WHEN OTHERS THEN r := r || 'no read;'; END;
			BEGIN PERFORM %[1]s.write_it($1); EXCEPTION WHEN OTHERS THEN r := r || 'no write'; END;
			RETURN r;
		END $$`, a.attacker))
	name := a.name("peek")
	if _, err := a.through.Exec(ctx, fmt.Sprintf("CALL rejot.publish('%s', 1, 'SELECT id, %s.peek(id) AS p FROM %s.mine')", name, a.attacker, a.attacker)); err != nil {
		t.Fatal(err)
	}
	mustExec(t, a.direct, "INSERT INTO "+a.attacker+".mine VALUES (3, 'three')") // captured from the WAL
	waitFor(t, 30*time.Second, func() bool { return strings.Count(versionState(t, name), "no reset;no read;no write") == 3 })
	a.noSecret(t)
	var written int
	a.admin.QueryRow(ctx, "SELECT count(*) FROM "+a.attacker+".written").Scan(&written)
	if written != 0 {
		t.Fatalf("the projection wrote %d rows", written)
	}
}

// TestCaptureIgnoresShadowing: functions the attacker puts in public and
// in its own schema, named as the built-in a victim's projection calls
// and matching its argument's type more closely, do not change what the
// capture evaluates (it resolves names in pg_catalog only, and the stored
// query is qualified).
func TestCaptureIgnoresShadowing(t *testing.T) {
	a := newCaptureAttack(t)
	ctx := context.Background()
	mustExec(t, a.admin, fmt.Sprintf(`CREATE TABLE public.people (id int PRIMARY KEY, name varchar(20));
		ALTER TABLE public.people OWNER TO %[1]s; INSERT INTO public.people VALUES (1, 'ann');
		GRANT CREATE ON SCHEMA public TO %[2]s`, a.victim, a.attacker))
	name := a.name("people")
	if err := a.exec(t, "SET ROLE "+a.victim+"; CALL rejot.publish('"+name+"', 1, 'SELECT id, upper(name) AS u FROM people'); RESET ROLE"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() bool { return strings.Contains(versionState(t, name), `"ANN"`) })
	for _, schema := range []string{"public", a.attacker} {
		mustExec(t, a.direct, "CREATE FUNCTION "+schema+".upper(varchar) RETURNS text IMMUTABLE LANGUAGE sql AS $$ SELECT 'shadowed' $$")
	}
	mustExec(t, a.admin, "INSERT INTO public.people VALUES (2, 'bob')")
	waitFor(t, 30*time.Second, func() bool { return strings.Contains(versionState(t, name), `"BOB"`) })
	if state := versionState(t, name); strings.Contains(state, "shadowed") {
		t.Fatalf("the capture called the attacker's upper: %s", state)
	}
	var stored string
	a.admin.QueryRow(ctx, "SELECT query FROM _rejot.publications WHERE publication = $1", name).Scan(&stored)
	if !strings.Contains(stored, "public.people") {
		t.Fatalf("stored query %q does not name its table by schema", stored)
	}
}

// TestRecordedQueryRunsAsCaller: the attacker records, directly through
// _rejot.record_published (which cannot parse SQL, so nothing validates
// the query), versions of its own table whose queries read
// public.secrets: through a function of its own, and through a subquery.
// Neither is captured with the sidecar's powers: seconds later the
// superuser finds no secret anywhere.
func TestRecordedQueryRunsAsCaller(t *testing.T) {
	a := newCaptureAttack(t)
	mustExec(t, a.direct, fmt.Sprintf(`CREATE FUNCTION %[1]s.steal(int) RETURNS text IMMUTABLE LANGUAGE sql AS
		$$ SELECT s FROM public.secrets LIMIT 1 $$`, a.attacker))
	cols := `'[{"name": "id", "type": "integer", "key": true}, {"name": "s", "type": "text"}]'`
	for i, query := range []string{
		"SELECT id, " + a.attacker + ".steal(id) AS s FROM " + a.attacker + ".mine",
		"SELECT id, (SELECT s FROM public.secrets LIMIT 1) AS s FROM " + a.attacker + ".mine",
	} {
		_, err := a.direct.Exec(context.Background(), fmt.Sprintf(`SELECT _rejot.record_published(current_user, '%s', 1, 0, $1, '%s.mine', '{id}', %s, '', 'x', 'x')`,
			a.name(fmt.Sprintf("forged%d", i)), a.attacker, cols), query)
		if err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(6 * time.Second) // the applier and the capture have looked
	a.noSecret(t)
}

// TestRowSecurityIsNotPublished: a table whose row policies apply to the
// publishing role (FORCE ROW LEVEL SECURITY, a tenant policy) is refused:
// the WAL has every tenant's rows. Nothing of it reaches the event log.
func TestRowSecurityIsNotPublished(t *testing.T) {
	a := newCaptureAttack(t)
	ctx := context.Background()
	owner, member := "tenants_"+a.db, "member_"+a.db
	mustExec(t, a.admin, fmt.Sprintf(`CREATE ROLE %[1]s NOLOGIN; CREATE ROLE %[2]s LOGIN; GRANT %[1]s TO %[2]s;
		CREATE TABLE public.accounts (id int PRIMARY KEY, tenant name, v text);
		INSERT INTO public.accounts VALUES (1, '%[2]s', 'mine'), (2, 'other', '%[3]s');
		ALTER TABLE public.accounts OWNER TO %[1]s;
		ALTER TABLE public.accounts ENABLE ROW LEVEL SECURITY; ALTER TABLE public.accounts FORCE ROW LEVEL SECURITY;
		CREATE POLICY tenant ON public.accounts USING (tenant = current_user)`, owner, member, a.secret))
	dropRolesAtEnd(t, a.db, owner, member)
	conn := connectAs(t, a.sc.url(a.db, member))
	name := a.name("accounts")
	_, err := conn.Exec(ctx, "CALL rejot.publish('"+name+"', 1, 'SELECT id, tenant, v FROM public.accounts')")
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "42501" || !strings.Contains(pe.Message, "row-level security") {
		t.Fatalf("publish of a table under row security: %v; want 42501", err)
	}
	time.Sleep(3 * time.Second)
	var recorded, streams int
	a.admin.QueryRow(ctx, "SELECT count(*) FROM _rejot.publications WHERE publication = $1", name).Scan(&recorded)
	pg.Connect(t, "rejot").QueryRow(ctx, "SELECT count(*) FROM rejot_log.streams WHERE publication = $1", name).Scan(&streams)
	if recorded != 0 || streams != 0 {
		t.Fatalf("recorded %d, in the event log %d", recorded, streams)
	}
}

// TestCaptureCastsAreNotTheSidecars: the attacker's table is keyed by a
// type of its own whose cast to text is a function of its own, which
// tries to make the attacker superuser and copy the secret, and holds
// values stored out of line, which the first fill reads with the
// sidecar's role to keep them (the TOAST paths). Those reads take the
// type's output function, never its cast: the superuser finds the
// attacker no superuser, nothing copied, and the version filled.
func TestCaptureCastsAreNotTheSidecars(t *testing.T) {
	a := newCaptureAttack(t)
	ctx := context.Background()
	// A file the server's OS user may write, as only a superuser's COPY
	// can (read-only transactions allow COPY TO).
	dropped := filepath.Join(os.TempDir(), "rejot-cast-"+a.db)
	os.Remove(dropped)
	t.Cleanup(func() { os.Remove(dropped) })
	mustExec(t, a.direct, fmt.Sprintf(`CREATE TYPE %[1]s.k AS (n int);
		CREATE FUNCTION %[1]s.evil(%[1]s.k) RETURNS text LANGUAGE plpgsql AS $$
		DECLARE r text := '';
		BEGIN
			BEGIN EXECUTE 'ALTER ROLE %[1]s SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
			BEGIN INSERT INTO %[1]s.written SELECT length(s) FROM public.secrets; EXCEPTION WHEN OTHERS THEN NULL; END;
			BEGIN EXECUTE 'COPY (SELECT 1) TO ''%[2]s'''; EXCEPTION WHEN OTHERS THEN NULL; END;
			BEGIN SELECT s INTO r FROM public.secrets LIMIT 1; EXCEPTION WHEN OTHERS THEN NULL; END;
			RETURN '(' || ($1).n || ')' || coalesce(r, '');
		END $$;
		CREATE CAST (%[1]s.k AS text) WITH FUNCTION %[1]s.evil(%[1]s.k);
		CREATE TABLE %[1]s.big (id %[1]s.k PRIMARY KEY, big text);
		INSERT INTO %[1]s.big SELECT ROW(g)::%[1]s.k, (SELECT string_agg(md5(g.g::text || i::text || random()::text), '') FROM generate_series(1, 1000) AS i)
			FROM generate_series(1, 3) AS g`, a.attacker, dropped))
	name := a.name("cast")
	if _, err := a.through.Exec(ctx, fmt.Sprintf("CALL rejot.publish('%s', 1, 'SELECT id, big FROM %s.big')", name, a.attacker)); err != nil {
		t.Fatal(err)
	}
	log := pg.Connect(t, "rejot")
	waitFor(t, 30*time.Second, func() bool {
		var filled int
		log.QueryRow(ctx, "SELECT count(*) FROM rejot_log.state_rows($1, 1) AS r WHERE length(r[2]) = 32000", name).Scan(&filled)
		return filled == 3
	})
	var super bool
	var written int
	a.admin.QueryRow(ctx, "SELECT rolsuper FROM pg_roles WHERE rolname = $1", a.attacker).Scan(&super)
	a.admin.QueryRow(ctx, "SELECT count(*) FROM "+a.attacker+".written").Scan(&written)
	_, statErr := os.Stat(dropped)
	if super || written != 0 || statErr == nil {
		t.Fatalf("the attacker's cast ran as the sidecar: superuser=%v, %d rows copied, file written=%v", super, written, statErr == nil)
	}
	a.noSecret(t)
}

// TestCaptureSessionOutlivesNoProjection: the attacker's projection runs
// code that, from inside its evaluator, sets session settings (DateStyle,
// extra_float_digits), takes a session advisory lock, and replaces every
// statement the capture's connection has prepared (pg_prepared_statements
// lists them) with one calling a plain function of the attacker's that
// records who runs it, and otherwise gives what the statement gave. A victim's version of the same system, whose
// filter makes Postgres render its values in that session, reads as it
// should throughout; the superuser finds the attacker's function never
// ran as anyone but the attacker, and no advisory lock held.
func TestCaptureSessionOutlivesNoProjection(t *testing.T) {
	a := newCaptureAttack(t)
	ctx := context.Background()
	mustExec(t, a.direct, fmt.Sprintf(`CREATE TABLE %[1]s.ran (u text); GRANT USAGE ON SCHEMA %[1]s TO PUBLIC; GRANT INSERT ON %[1]s.ran TO PUBLIC;
		CREATE FUNCTION %[1]s.mark() RETURNS int LANGUAGE sql AS $$ INSERT INTO %[1]s.ran VALUES (current_user) RETURNING 1 $$;
		CREATE FUNCTION %[1]s.swap() RETURNS void LANGUAGE plpgsql AS $$
		DECLARE r record;
		BEGIN
			PERFORM pg_catalog.set_config('DateStyle', 'SQL, DMY', false);
			PERFORM pg_catalog.set_config('extra_float_digits', '-15', false);
			PERFORM pg_catalog.pg_advisory_lock(4242);
			FOR r IN SELECT name, statement, coalesce(pg_catalog.array_to_string(parameter_types::text[], ','), '') AS types
					FROM pg_catalog.pg_prepared_statements WHERE NOT from_sql LOOP
				BEGIN
					EXECUTE 'DEALLOCATE ' || pg_catalog.quote_ident(r.name);
					EXECUTE pg_catalog.format('PREPARE %%I(%%s) AS SELECT q.* FROM (%%s) AS q WHERE %[1]s.mark() = 1', r.name, r.types, r.statement);
				EXCEPTION WHEN OTHERS THEN NULL;
				END;
			END LOOP;
		END $$;
		CREATE FUNCTION %[1]s.linger(int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$
		BEGIN
			PERFORM %[1]s.swap();
			RETURN $1;
		END $$`, a.attacker))
	mustExec(t, a.admin, fmt.Sprintf(`CREATE TABLE public.readings (id int PRIMARY KEY, d date, f float8);
		ALTER TABLE public.readings OWNER TO %s`, a.victim))
	attacked, victim := a.name("linger"), a.name("readings")
	if _, err := a.through.Exec(ctx, fmt.Sprintf("CALL rejot.publish('%s', 1, 'SELECT id, %s.linger(id) AS n FROM %s.mine')", attacked, a.attacker, a.attacker)); err != nil {
		t.Fatal(err)
	}
	if err := a.exec(t, "SET ROLE "+a.victim+"; CALL rejot.publish('"+victim+"', 1, 'SELECT id, d, f FROM public.readings WHERE id > 0'); RESET ROLE"); err != nil {
		t.Fatal(err)
	}
	// Rounds of a row of each, in separate transactions: each of the
	// victim's evaluations comes after one of the attacker's.
	for i := 10; i < 16; i++ {
		mustExec(t, a.direct, fmt.Sprintf("INSERT INTO %s.mine VALUES (%d, 'x')", a.attacker, i))
		mustExec(t, a.admin, fmt.Sprintf("INSERT INTO public.readings VALUES (%d, '2026-12-02', 1.23456789)", i))
		time.Sleep(200 * time.Millisecond)
	}
	waitFor(t, 30*time.Second, func() bool {
		return strings.Count(versionState(t, victim), `["1`) == 6 && strings.Contains(versionState(t, attacked), `["15"`)
	})
	if state := versionState(t, victim); strings.Count(state, `"2026-12-02", "1.23456789"`) != 6 {
		t.Errorf("the victim's version reads in the attacker's settings: %s", state)
	}
	var ran, locks int
	a.admin.QueryRow(ctx, "SELECT count(*) FROM "+a.attacker+".ran WHERE u <> $1", a.attacker).Scan(&ran)
	a.admin.QueryRow(ctx, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242").Scan(&locks)
	if ran != 0 || locks != 0 {
		t.Fatalf("the attacker's code ran %d times as another role; %d advisory locks held", ran, locks)
	}
}
