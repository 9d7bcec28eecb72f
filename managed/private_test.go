package managed_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rejot-dev/rejot/internal/pgerr"
	"github.com/rejot-dev/rejot/managed"
)

// private is a database with _rejot installed by the superuser, a victim
// role's publication of public.secrets and subscription into
// public.target recorded through the functions, and an intruder role with
// only LOGIN and a schema of its own.
type private struct {
	db, victim, intruder string
	admin, attacker      *pgx.Conn
}

func newPrivate(t *testing.T) *private {
	t.Helper()
	ctx := context.Background()
	p := &private{db: pg.CreateDB(t)}
	p.victim, p.intruder = "victim_"+p.db, "intruder_"+p.db
	p.admin = pg.Connect(t, p.db)
	if err := managed.Install(ctx, p.admin); err != nil {
		t.Fatal(err)
	}
	exec(t, p.admin, fmt.Sprintf(`CREATE ROLE %[1]s NOLOGIN; CREATE ROLE %[2]s LOGIN;
		CREATE SCHEMA %[2]s AUTHORIZATION %[2]s;
		CREATE TABLE public.secrets (id int PRIMARY KEY, s text); INSERT INTO public.secrets VALUES (1, 'secret');
		CREATE TABLE public.target (id bigint PRIMARY KEY, v text); INSERT INTO public.target VALUES (1, 'mine');
		ALTER TABLE public.secrets OWNER TO %[1]s; ALTER TABLE public.target OWNER TO %[1]s`, p.victim, p.intruder))
	t.Cleanup(func() {
		c, err := pgx.Connect(ctx, pg.URL(p.db))
		if err == nil {
			c.Exec(ctx, fmt.Sprintf("DROP OWNED BY %s, %s CASCADE; DROP ROLE %[1]s; DROP ROLE %[2]s", p.victim, p.intruder))
			c.Close(ctx)
		}
	})
	// The victim's calls, as the sidecar makes them in its session.
	exec(t, p.admin, "SET ROLE "+p.victim)
	if _, err := p.admin.Exec(ctx, managed.RecordPublished, "secrets", "1", "0", "SELECT id, s FROM secrets", `"public"."secrets"`,
		"{id}", `[{"name": "id"}, {"name": "s"}]`, "", "shop", "shop"); err != nil {
		t.Fatal(err)
	}
	cols := `[{"name": "id", "type": "bigint", "key": true, "index": 0}, {"name": "v", "type": "text", "key": false, "index": 1}]`
	if _, err := p.admin.Exec(ctx, managed.InsertSubscription, "public.target", "public", "target", "orders", "1", cols, "true"); err != nil {
		t.Fatal(err)
	}
	exec(t, p.admin, "RESET ROLE")
	cfg, err := pgx.ParseConfig(pg.URL(p.db))
	if err != nil {
		t.Fatal(err)
	}
	cfg.User = p.intruder
	if p.attacker, err = pgx.ConnectConfig(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.attacker.Close(ctx) })
	return p
}

func exec(t *testing.T, conn *pgx.Conn, sql string) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// state is everything _rejot holds, and the victim's tables, as the
// superuser reads them.
func (p *private) state(t *testing.T) string {
	t.Helper()
	var s string
	err := p.admin.QueryRow(context.Background(), `SELECT concat_ws(E'\n',
		(SELECT jsonb_agg(to_jsonb(c) ORDER BY id) FROM _rejot.commands c),
		(SELECT jsonb_agg(to_jsonb(x) ORDER BY publication, version) FROM _rejot.publications x),
		(SELECT jsonb_agg(to_jsonb(x) ORDER BY target) FROM _rejot.subscriptions x),
		(SELECT last_value FROM _rejot.commands_id_seq),
		(SELECT jsonb_agg(to_jsonb(x) ORDER BY id) FROM public.secrets x),
		(SELECT jsonb_agg(to_jsonb(x) ORDER BY id) FROM public.target x),
		(SELECT rolsuper FROM pg_roles WHERE rolname = $1))`, p.intruder).Scan(&s)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// refused runs sql as the intruder and wants SQLSTATE code.
func (p *private) refused(t *testing.T, code, sql string) {
	t.Helper()
	_, err := p.attacker.Exec(context.Background(), sql)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != code {
		t.Errorf("%s: %v; want SQLSTATE %s", sql, err, code)
	}
}

// TestPrivateTables: a role with only LOGIN can neither read nor write
// any table or sequence of _rejot, nor lock a row of one.
func TestPrivateTables(t *testing.T) {
	p := newPrivate(t)
	before := p.state(t)
	const exploit = `x;commit;alter/**/role/**/intruder/**/superuser`
	for _, sql := range []string{
		"INSERT INTO _rejot.subscriptions (target, target_schema, target_table, publication, version, columns) VALUES ('" + exploit + "', 'public', 'x', 'p', 1, '[]')",
		"UPDATE _rejot.subscriptions SET target = '" + exploit + "'",
		"DELETE FROM _rejot.subscriptions",
		"SELECT * FROM _rejot.subscriptions FOR UPDATE",
		"SELECT * FROM _rejot.subscriptions",
		`INSERT INTO _rejot.publications (publication, version, query, source, key_columns, columns) VALUES ('stolen', 1, 'SELECT id, s FROM secrets', '"public"."secrets"', '{id}', '[]')`,
		"UPDATE _rejot.publications SET status = 'retired'",
		"DELETE FROM _rejot.publications",
		"SELECT * FROM _rejot.publications FOR UPDATE",
		`INSERT INTO _rejot.commands (kind, payload) VALUES ('unpublish', '{"publication": "secrets", "version": 1, "status": "retired"}')`,
		"UPDATE _rejot.commands SET applied_at = now()",
		"DELETE FROM _rejot.commands",
		"SELECT * FROM _rejot.commands FOR UPDATE",
		"SELECT * FROM _rejot.schema_migrations FOR UPDATE",
		"DELETE FROM _rejot.schema_migrations",
		"SELECT nextval('_rejot.commands_id_seq')",
		"INSERT INTO _rejot.call_locks VALUES ('version', 'secrets/1')",
		"SELECT * FROM _rejot.call_locks FOR UPDATE",
	} {
		p.refused(t, pgerr.InsufficientPrivilege, sql)
	}
	if after := p.state(t); after != before {
		t.Fatalf("_rejot changed:\nbefore %s\nafter  %s", before, after)
	}
}

// TestFunctionsRefuse: called directly with forged arguments, the
// functions refuse a role the session cannot become, what the caller does
// not own, and their helpers are nobody's to call.
func TestFunctionsRefuse(t *testing.T) {
	p := newPrivate(t)
	before := p.state(t)
	v := "'" + p.victim + "'"
	cols := `'[{"name": "id", "type": "bigint", "key": true, "index": 0}]'`
	for _, c := range []struct{ code, sql string }{
		// claiming the victim's role
		{pgerr.InsufficientPrivilege, "SELECT * FROM _rejot.lock_published(" + v + ", 'secrets', 1)"},
		{pgerr.InsufficientPrivilege, "SELECT _rejot.set_lifecycle(" + v + ", 'secrets', 1, 'retired', NULL, '')"},
		{pgerr.InsufficientPrivilege, "SELECT _rejot.delete_subscription(" + v + ", 'public.target')"},
		{pgerr.InsufficientPrivilege, "SELECT _rejot.insert_subscription('postgres', 'public.target', 'public', 'target', 'p', 1, " + cols + ", true)"},
		{pgerr.InsufficientPrivilege, "SELECT _rejot.lock_subscription('no_such_role', 'public.target')"},
		{pgerr.InsufficientPrivilege, "SELECT _rejot.lock_version(" + v + `, 'secrets', 1, '"public"."secrets"')`},
		{pgerr.InsufficientPrivilege, "SELECT _rejot.lock_target(" + v + ", 'public', 'secrets')"},
		// as itself, on what it does not own
		{pgerr.InsufficientPrivilege, "SELECT * FROM _rejot.lock_published(current_user, 'secrets', 1)"},
		{pgerr.InsufficientPrivilege, "SELECT * FROM _rejot.lock_published_status(current_user, 'secrets', 1)"},
		{pgerr.InsufficientPrivilege, "SELECT _rejot.set_lifecycle(current_user, 'secrets', 1, 'retired', NULL, '')"},
		{pgerr.InsufficientPrivilege, "SELECT _rejot.set_lifecycle(current_user, 'secrets', 1, 'deprecated', NULL, '')"},
		{pgerr.InsufficientPrivilege, `SELECT _rejot.record_published(current_user, 'secrets', 1, 1, 'SELECT id FROM secrets', '"public"."secrets"', '{id}', '[]', '', 'x', 'x')`},
		{pgerr.InsufficientPrivilege, `SELECT _rejot.record_published(current_user, 'stolen', 1, 0, 'SELECT id, s FROM secrets', 'public.secrets', '{id}', '[]', '', 'x', 'x')`},
		{pgerr.InsufficientPrivilege, "SELECT * FROM _rejot.lock_subscription(current_user, 'public.target')"},
		{pgerr.InsufficientPrivilege, "SELECT _rejot.delete_subscription(current_user, 'public.target')"},
		{pgerr.InsufficientPrivilege, "SELECT _rejot.resync_subscription(current_user, 'public.target')"},
		{pgerr.InsufficientPrivilege, `SELECT _rejot.add_subscribed_columns(current_user, 'public.target', '[{"name": "x", "type": "text", "key": false, "index": 2}]')`},
		{pgerr.InsufficientPrivilege, "SELECT _rejot.add_subscribed_columns(" + v + `, 'public.target', '[{"name": "x", "type": "text", "key": false, "index": 2}]')`},
		{pgerr.InsufficientPrivilege, "SELECT _rejot.insert_subscription(current_user, 'public.secrets', 'public', 'secrets', 'p', 1, " + cols + ", true)"},
		// the locks of calls it may not make
		{pgerr.InsufficientPrivilege, `SELECT _rejot.lock_version(current_user, 'secrets', 1, '"public"."secrets"')`},
		{pgerr.InsufficientPrivilege, "SELECT _rejot.lock_target(current_user, 'public', 'secrets')"},
		{pgerr.InsufficientPrivilege, "SELECT _rejot.lock_target(current_user, 'public', 'not_there_yet')"},
		{pgerr.InsufficientPrivilege, "SELECT _rejot.lock_call('version', 'secrets/1')"},
		// into a table that is not there, or under another name
		{pgerr.UndefinedTable, "SELECT _rejot.insert_subscription(current_user, 'x;commit;alter/**/role/**/intruder/**/superuser', 'x;commit', 'alter', 'p', 1, " + cols + ", true)"},
		// the helpers
		{pgerr.InsufficientPrivilege, `SELECT _rejot.command('unpublish', '{"publication": "secrets", "version": 1}', current_user)`},
		{pgerr.InsufficientPrivilege, "SELECT _rejot.subscription_command('unsubscribe', 'public.target', 'orders', 1, current_user)"},
		{pgerr.InsufficientPrivilege, "SELECT _rejot.claim(current_user)"},
		{pgerr.InsufficientPrivilege, "SELECT _rejot.lock_at('public.target', 1, 0)"},
	} {
		p.refused(t, c.code, c.sql)
	}
	// Its own table, named otherwise than Postgres names it, or with
	// columns it does not have.
	exec(t, p.attacker, "CREATE TABLE "+p.intruder+".mine (id bigint PRIMARY KEY)")
	p.refused(t, pgerr.InvalidParameterValue, "SELECT _rejot.insert_subscription(current_user, 'x;commit;alter/**/role/**/intruder/**/superuser', '"+
		p.intruder+"', 'mine', 'p', 1, "+cols+", true)")
	p.refused(t, pgerr.InvalidParameterValue, "SELECT _rejot.insert_subscription(current_user, '"+p.intruder+".mine', '"+
		p.intruder+`', 'mine', 'p', 1, '[{"name": "id;drop", "type": "bigint", "key": true, "index": 0}]', true)`)
	if after := p.state(t); after != before {
		t.Fatalf("_rejot changed:\nbefore %s\nafter  %s", before, after)
	}
}

// TestIntentRecordsCaller: calls record the role that made them, in the
// rows and in the commands' payloads, which are made of what was recorded
// (the database is the one recorded in, whatever the caller passed).
func TestIntentRecordsCaller(t *testing.T) {
	p := newPrivate(t)
	ctx := context.Background()
	var caller, payload string
	if err := p.admin.QueryRow(ctx, "SELECT caller, payload::text FROM _rejot.commands WHERE kind = 'publish'").Scan(&caller, &payload); err != nil {
		t.Fatal(err)
	}
	var pub managed.Published
	if err := json.Unmarshal([]byte(payload), &pub); err != nil {
		t.Fatal(err)
	}
	if caller != p.victim || pub.Caller != p.victim || pub.Publication != "secrets" || pub.Version != 1 || pub.Source != `"public"."secrets"` ||
		len(pub.KeyColumns) != 1 || len(pub.Columns) != 2 || pub.Owner != "shop" || pub.Database != p.db {
		t.Fatalf("publish command by %s: %+v", caller, pub)
	}
	var recorded string
	p.admin.QueryRow(ctx, "SELECT p.caller || ' ' || s.caller FROM _rejot.publications p, _rejot.subscriptions s").Scan(&recorded)
	if recorded != p.victim+" "+p.victim {
		t.Fatalf("recorded callers: %q", recorded)
	}
	// A member of the victim's role may act for it (SET ROLE); its
	// deprecate is recorded with the sunset Postgres normalised.
	exec(t, p.admin, "SET ROLE "+p.victim)
	var sunset string
	if err := p.admin.QueryRow(ctx, managed.SetLifecycle, "secrets", "1", "deprecated", "2030-01-02", "move").Scan(&sunset); err != nil {
		t.Fatal(err)
	}
	exec(t, p.admin, "RESET ROLE")
	p.admin.QueryRow(ctx, "SELECT payload::text FROM _rejot.commands WHERE kind = 'deprecate'").Scan(&payload)
	var l managed.Lifecycle
	json.Unmarshal([]byte(payload), &l)
	if l.Sunset != sunset || !strings.HasPrefix(sunset, "2030") || l.Note != "move" || l.Status != "deprecated" || l.Caller != p.victim {
		t.Fatalf("deprecate: %+v (sunset %q)", l, sunset)
	}
}

// TestForeignSchemaRefused: a _rejot made by another role (one with CREATE
// on the database, before the sidecar first started), or holding another
// role's object, is not adopted, and Install leaves it as it was.
func TestForeignSchemaRefused(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct{ name, setup string }{
		{"schema", `CREATE SCHEMA _rejot AUTHORIZATION %[1]s; SET ROLE %[1]s;
			CREATE TABLE _rejot.publications (publication text, version int, query text, source text, status text);
			CREATE FUNCTION _rejot.lock_published(name, text, int) RETURNS int LANGUAGE sql AS 'SELECT 1';
			RESET ROLE`},
		{"function", `CREATE SCHEMA _rejot; GRANT CREATE, USAGE ON SCHEMA _rejot TO %[1]s; SET ROLE %[1]s;
			CREATE FUNCTION _rejot.lock_published(name, text, int) RETURNS int LANGUAGE sql AS 'SELECT 1';
			RESET ROLE`},
	} {
		t.Run(c.name, func(t *testing.T) {
			db := pg.CreateDB(t)
			squatter := "squatter_" + db
			admin := pg.Connect(t, db)
			exec(t, admin, fmt.Sprintf("CREATE ROLE %[1]s LOGIN; GRANT CREATE ON DATABASE %[2]s TO %[1]s", squatter, db))
			t.Cleanup(func() {
				if c, err := pgx.Connect(ctx, pg.URL(db)); err == nil {
					c.Exec(ctx, fmt.Sprintf("DROP OWNED BY %[1]s CASCADE; DROP ROLE %[1]s", squatter))
					c.Close(ctx)
				}
			})
			exec(t, admin, fmt.Sprintf(c.setup, squatter))
			objects := func() string {
				var s string
				admin.QueryRow(ctx, `SELECT concat_ws(' ', (SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = '_rejot'),
					(SELECT string_agg(relname || ':' || pg_get_userbyid(relowner), ',' ORDER BY relname) FROM pg_class WHERE relnamespace = '_rejot'::regnamespace),
					(SELECT string_agg(proname || ':' || pg_get_userbyid(proowner), ',' ORDER BY proname) FROM pg_proc WHERE pronamespace = '_rejot'::regnamespace))`).Scan(&s)
				return s
			}
			before := objects()
			err := managed.Install(ctx, admin) // as a superuser, which pg_has_role would let adopt anything
			var foreign *managed.ForeignError
			if !errors.As(err, &foreign) || foreign.Owner != squatter || !strings.Contains(err.Error(), "DROP SCHEMA _rejot CASCADE") {
				t.Fatalf("Install over %s's _rejot: %v", squatter, err)
			}
			if _, err := managed.LoadSubscriptions(ctx, admin); !errors.As(err, &foreign) {
				t.Fatalf("LoadSubscriptions over a foreign _rejot: %v", err)
			}
			if after := objects(); after != before {
				t.Fatalf("_rejot changed:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}
