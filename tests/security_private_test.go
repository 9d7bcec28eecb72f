package tests

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestPrivateSchemaAttacks: _rejot is the sidecar's alone (docs/security.md,
// "The sidecar's private schema"). An intruder with only LOGIN and a schema
// of its own, through the sidecar and directly against the database, forges
// what the sidecar acts on: a subscription whose target smuggles SQL (the
// exploit that made such a role superuser), a publication of a table it
// cannot read with its command, commands marked applied, and the definer
// functions called with forged arguments. Seconds later, as the sidecar's
// loops would have acted, the superuser finds that nothing happened.
func TestPrivateSchemaAttacks(t *testing.T) {
	p := newPublisher(t)
	ctx := context.Background()
	victim, intruder := "victim_"+p.db, "intruder_"+p.db
	admin := pg.Connect(t, p.db)
	mustExec(t, admin, fmt.Sprintf(`CREATE ROLE %[1]s NOLOGIN; CREATE ROLE %[2]s LOGIN;
		CREATE SCHEMA %[2]s AUTHORIZATION %[2]s; GRANT CREATE ON SCHEMA public TO %[1]s;
		CREATE TABLE public.secrets (id int PRIMARY KEY, s text); INSERT INTO public.secrets VALUES (1, 'the secret');
		CREATE TABLE public.orders (id int PRIMARY KEY, v text); INSERT INTO public.orders VALUES (1, 'one'), (2, 'two');
		ALTER TABLE public.secrets OWNER TO %[1]s; ALTER TABLE public.orders OWNER TO %[1]s`, victim, intruder))
	dropRolesAtEnd(t, p.db, victim, intruder)

	// The victim publishes orders and subscribes to it, through the
	// sidecar, as itself.
	name, stolen := p.name("orders"), p.name("stolen")
	if err := p.exec(t, "SET ROLE "+victim+"; CALL rejot.publish('"+name+"', 1, 'SELECT id, v FROM public.orders'); RESET ROLE"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, func() bool {
		return p.exec(t, "SET ROLE "+victim+"; CALL rejot.subscribe('"+name+"', 1, 'public.orders_copy'); RESET ROLE") == nil
	})
	p.exec(t, "RESET ROLE")
	waitFor(t, 30*time.Second, func() bool {
		var status string
		var n int
		admin.QueryRow(ctx, "SELECT status FROM _rejot.subscriptions WHERE target = 'public.orders_copy'").Scan(&status)
		admin.QueryRow(ctx, "SELECT count(*) FROM public.orders_copy").Scan(&n)
		return status == "streaming" && n == 2
	})
	before := privateState(t, admin)
	mustExec(t, admin, fmt.Sprintf("CREATE TABLE %[1]s.mine (id int PRIMARY KEY); ALTER TABLE %[1]s.mine OWNER TO %[1]s", intruder))

	const exploit = "x;commit;alter/**/role/**/" + "%[1]s" + "/**/superuser"
	target := fmt.Sprintf(exploit, intruder)
	cols := `'[{"name": "id", "type": "integer", "key": true, "index": 0}]'`
	attacks := []string{
		// the tables, as they were writable before
		"INSERT INTO _rejot.subscriptions (target, target_schema, target_table, publication, version, columns) VALUES ('" +
			target + "', 'public', 'orders', '" + name + "', 1, " + cols + ")",
		"UPDATE _rejot.subscriptions SET target = '" + target + "'",
		`INSERT INTO _rejot.publications (publication, version, query, source, key_columns, columns)
			VALUES ('` + stolen + `', 1, 'SELECT id, s FROM public.secrets', '"public"."secrets"', '{id}', '[{"name": "id"}, {"name": "s"}]')`,
		`INSERT INTO _rejot.commands (kind, payload) VALUES ('publish', '{"publication": "` + stolen + `", "version": 1}')`,
		`INSERT INTO _rejot.commands (kind, payload) VALUES ('unpublish', '{"publication": "` + name + `", "version": 1, "status": "retired"}')`,
		"UPDATE _rejot.commands SET applied_at = now(), error = 'forged'",
		"DELETE FROM _rejot.subscriptions",
		"SELECT * FROM _rejot.subscriptions FOR UPDATE",
		// the functions, with forged arguments
		"SELECT _rejot.insert_subscription(current_user, '" + target + "', 'public', 'orders', '" + name + "', 1, " + cols + ", true)",
		"SELECT _rejot.insert_subscription(current_user, '" + target + "', '" + intruder + "', 'mine', '" + name + "', 1, " + cols + ", true)",
		"SELECT _rejot.insert_subscription('" + victim + "', 'public.orders', 'public', 'orders', '" + name + "', 1, " + cols + ", true)",
		`SELECT _rejot.record_published(current_user, '` + stolen + `', 1, 0, 'SELECT id, s FROM public.secrets', '"public"."secrets"', '{id}', '[]', '', 'x', 'x')`,
		`SELECT _rejot.record_published('` + victim + `', '` + stolen + `', 1, 0, 'SELECT id, s FROM public.secrets', '"public"."secrets"', '{id}', '[]', '', 'x', 'x')`,
		`SELECT _rejot.record_published(current_user, '` + stolen + `', 1, 0, 'SELECT s.id, o.v FROM public.secrets s JOIN public.orders o ON o.id = s.id', '"public"."secrets"', '{id}', '[]', '', 'x', 'x', '{public.secrets,public.orders}')`,
		"SELECT _rejot.record_reads(current_user, '" + name + "', 1, '{id}')",
		"SELECT _rejot.record_joined_reads(current_user, '" + name + "', 1, '[]')",
		"SELECT _rejot.record_joined_reads('" + victim + "', '" + name + "', 1, '[]')",
		"SELECT _rejot.set_lifecycle(current_user, '" + name + "', 1, 'retired', NULL, '')",
		"SELECT _rejot.set_lifecycle('" + victim + "', '" + name + "', 1, 'retired', NULL, '')",
		"SELECT _rejot.delete_subscription(current_user, 'public.orders_copy')",
		"SELECT _rejot.resync_subscription(current_user, 'public.orders_copy')",
		"SELECT * FROM _rejot.lock_subscription(current_user, 'public.orders_copy')",
		"SELECT _rejot.command('unpublish', '{}', current_user)",
	}
	through := []string{ // the API, through the sidecar only
		"CALL rejot.publish('" + stolen + "', 1, 'SELECT id, s FROM public.secrets')",
		"CALL rejot.unpublish('" + name + "', 1, force => true)",
		"CALL rejot.deprecate('" + name + "', 1)",
		"CALL rejot.unsubscribe('public.orders_copy')",
		"CALL rejot.resync('public.orders_copy')",
		"CALL rejot.subscribe('" + name + "', 1, 'public.secrets')",
	}
	for _, via := range []struct {
		name, url string
		sqls      []string
	}{
		{"direct", directURL(p.db, intruder), attacks},
		{"sidecar", p.sc.url(p.db, intruder), append(attacks, through...)},
	} {
		conn := connectAs(t, via.url)
		for _, sql := range via.sqls {
			_, err := conn.Exec(ctx, sql)
			var pe *pgconn.PgError
			want := "42501"
			if strings.Contains(sql, "'"+intruder+"', 'mine'") {
				want = "22023" // its own table, but not the target it names
			}
			if !errors.As(err, &pe) || pe.Code != want {
				t.Errorf("%s: %s: %v; want %s", via.name, sql, err, want)
			}
		}
	}
	time.Sleep(6 * time.Second) // the applier, the capture and the subscriber have looked

	var super bool
	admin.QueryRow(ctx, "SELECT rolsuper FROM pg_roles WHERE rolname = $1", intruder).Scan(&super)
	if super {
		t.Fatalf("%s became superuser", intruder)
	}
	if after := privateState(t, admin); after != before {
		t.Fatalf("_rejot or the victim's tables changed:\nbefore %s\nafter  %s", before, after)
	}
	var forged int
	admin.QueryRow(ctx, `SELECT (SELECT count(*) FROM _rejot.subscriptions WHERE target LIKE 'x;%' OR caller = $1)
		+ (SELECT count(*) FROM _rejot.publications WHERE publication = $2 OR caller = $1)
		+ (SELECT count(*) FROM _rejot.commands WHERE payload::text LIKE '%' || $2 || '%' OR caller = $1 OR error = 'forged')`,
		intruder, stolen).Scan(&forged)
	if forged != 0 {
		t.Fatalf("%d forged rows in _rejot", forged)
	}
	logDB := pg.Connect(t, "rejot")
	var captured, catalogued int
	logDB.QueryRow(ctx, "SELECT count(*) FROM rejot_log.streams WHERE publication = $1", stolen).Scan(&captured)
	p.conn.QueryRow(ctx, "SELECT count(*) FROM rejot.publications WHERE publication = $1", stolen).Scan(&catalogued)
	if captured != 0 || catalogued != 0 {
		t.Fatalf("public.secrets reached the event log (%d) or the catalog (%d)", captured, catalogued)
	}
	var status string
	p.conn.QueryRow(ctx, "SELECT status FROM rejot.publications WHERE publication = $1 AND version = 1", name).Scan(&status)
	if status != "active" {
		t.Fatalf("the victim's publication is %q", status)
	}
}

// privateState is what the intruder must not change, read as the
// superuser: the rows of _rejot that only calls change (not the moving
// positions and times of a streaming subscription), the victim's tables and
// what its subscription holds.
func privateState(t *testing.T, admin *pgx.Conn) string {
	t.Helper()
	var s string
	err := admin.QueryRow(context.Background(), `SELECT concat_ws(E'\n',
		(SELECT jsonb_agg(jsonb_build_array(id, kind, payload, caller, error) ORDER BY id) FROM _rejot.commands),
		(SELECT jsonb_agg(jsonb_build_array(publication, version, minor, query, source, status, caller) ORDER BY publication, version) FROM _rejot.publications),
		(SELECT jsonb_agg(jsonb_build_array(target, target_schema, target_table, publication, version, generation, caller) ORDER BY target) FROM _rejot.subscriptions),
		(SELECT jsonb_agg(to_jsonb(x) ORDER BY id) FROM public.secrets x),
		(SELECT jsonb_agg(to_jsonb(x) ORDER BY id) FROM public.orders x),
		(SELECT jsonb_agg(to_jsonb(x) ORDER BY id) FROM public.orders_copy x))`).Scan(&s)
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(s) == "" {
		t.Fatal("no state")
	}
	return s
}
