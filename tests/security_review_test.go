package tests

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// applyAttack is an owner publishing public.items (open to every system)
// and a subscriber's database with an attacker that has only LOGIN and a
// schema of its own, subscribed through its sidecar into att.mirror,
// which rejot.subscribe created and the attacker therefore owns.
type applyAttack struct {
	owner, consumer *publisher
	admin           *pgx.Conn // the consumer's superuser
	attacker        string
	direct          *pgx.Conn // the attacker, straight to Postgres
	through         *pgx.Conn // the attacker, through the consumer's sidecar
	name            string
}

func newApplyAttack(t *testing.T) *applyAttack {
	t.Helper()
	owner, consumer := newPublisher(t), newPublisher(t)
	a := &applyAttack{owner: owner, consumer: consumer, admin: pg.Connect(t, consumer.db),
		attacker: "att_" + consumer.db, name: owner.name("applied")}
	owner.execAll(t, "CREATE TABLE items (id int PRIMARY KEY, v text)", "INSERT INTO items VALUES (1, 'one')")
	if err := owner.exec(t, "CALL rejot.publish($1, 1, 'SELECT id, v FROM items')", a.name); err != nil {
		t.Fatal(err)
	}
	owner.catalogMinor(t, a.name, 1, 0)
	mustExec(t, a.admin, fmt.Sprintf("CREATE ROLE %[1]s LOGIN; CREATE SCHEMA %[1]s AUTHORIZATION %[1]s", a.attacker))
	dropRolesAtEnd(t, consumer.db, a.attacker)
	a.direct = connectAs(t, directURL(consumer.db, a.attacker))
	a.through = connectAs(t, consumer.sc.url(consumer.db, a.attacker))
	if _, err := a.through.Exec(context.Background(), "CALL rejot.subscribe($1, 1, $2)", a.name, a.attacker+".mirror"); err != nil {
		t.Fatal(err)
	}
	return a
}

// notEscalated fails the test unless the attacker, as the superuser reads
// pg_roles, is still not superuser, and every call of its code logged in
// att.seen (its own DDL runs some) ran as itself.
func (a *applyAttack) notEscalated(t *testing.T) {
	t.Helper()
	var super bool
	if err := a.admin.QueryRow(context.Background(), "SELECT rolsuper FROM pg_roles WHERE rolname = $1", a.attacker).Scan(&super); err != nil {
		t.Fatal(err)
	}
	if super {
		t.Errorf("%s became superuser", a.attacker)
	}
	seen := tableText(t, a.admin, "SELECT DISTINCT who FROM "+a.attacker+".seen")
	if seen != "" && seen != "("+a.attacker+")" {
		t.Errorf("the attacker's code ran as %q, want only %q", seen, a.attacker)
	}
}

// refusedFor waits until the subscription into target is failed with the
// sidecar's refusal to run its owner's code, naming what.
func (a *applyAttack) refusedFor(t *testing.T, target, what string) {
	t.Helper()
	var msg *string
	waitFor(t, 30*time.Second, func() bool {
		a.admin.QueryRow(context.Background(), "SELECT error FROM _rejot.subscriptions WHERE target = $1", target).Scan(&msg)
		return msg != nil && strings.Contains(*msg, "will not write") && strings.Contains(*msg, what)
	})
}

// TestApplyRefusesTargetCode (finding 1): the attacker attaches code to
// the target its subscription made — a trigger that notes current_user and
// makes the attacker superuser when it can, a rule, a default of a column
// the apply does not write, a CHECK, an index expression, a child table
// with that trigger — each of which ran as the sidecar's role (superuser)
// when the sidecar wrote the table. The apply refuses to write the table
// while it carries any of them, saying why; once it carries none the rows
// arrive. As the superuser: the attacker is not superuser and its code
// never ran as anyone but itself.
func TestApplyRefusesTargetCode(t *testing.T) {
	a := newApplyAttack(t)
	target := a.attacker + ".mirror"
	targetConverges(t, 30*time.Second, a.owner.conn, "SELECT id, v FROM items", a.admin, target)
	mustExec(t, a.direct, fmt.Sprintf(`CREATE TABLE %[1]s.seen (who text);
		CREATE FUNCTION %[1]s.pwn() RETURNS boolean LANGUAGE plpgsql AS $$
		BEGIN
			INSERT INTO %[1]s.seen VALUES (current_user);
			BEGIN PERFORM pg_catalog.set_config('role', 'none', false); EXCEPTION WHEN OTHERS THEN NULL; END;
			BEGIN EXECUTE 'ALTER ROLE %[1]s SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
			RETURN true;
		END $$;
		CREATE FUNCTION %[1]s.pwn_trigger() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM %[1]s.pwn(); RETURN NULL; END $$;
		CREATE FUNCTION %[1]s.pure(int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN PERFORM %[1]s.pwn(); RETURN $1; END $$`, a.attacker))
	m := target
	for i, attack := range []struct{ add, what, undo string }{
		{"CREATE TRIGGER pwn AFTER INSERT OR UPDATE OR DELETE ON " + m + " FOR EACH ROW EXECUTE FUNCTION " + a.attacker + ".pwn_trigger()",
			"trigger pwn", "DROP TRIGGER pwn ON " + m},
		{"CREATE RULE pwn AS ON DELETE TO " + m + " DO ALSO SELECT " + a.attacker + ".pwn()", "rule pwn", "DROP RULE pwn ON " + m},
		{"ALTER TABLE " + m + " ADD COLUMN extra boolean DEFAULT " + a.attacker + ".pwn()", "column extra", "ALTER TABLE " + m + " DROP COLUMN extra"},
		{"ALTER TABLE " + m + " ADD CONSTRAINT pwn CHECK (" + a.attacker + ".pwn())", "constraint pwn", "ALTER TABLE " + m + " DROP CONSTRAINT pwn"},
		{"CREATE INDEX pwn ON " + m + " (" + a.attacker + ".pure(id))", "has expressions", "DROP INDEX " + a.attacker + ".pwn"},
		{"CREATE TABLE " + a.attacker + ".child () INHERITS (" + m + "); CREATE TRIGGER pwn AFTER DELETE ON " + a.attacker +
			".child FOR EACH ROW EXECUTE FUNCTION " + a.attacker + ".pwn_trigger(); INSERT INTO " + a.attacker + ".child VALUES (100, 'c')",
			"inheritance children", "DROP TABLE " + a.attacker + ".child"},
	} {
		mustExec(t, a.direct, attack.add)
		a.owner.execAll(t, fmt.Sprintf("INSERT INTO items VALUES (%d, 'new')", 10+i), fmt.Sprintf("DELETE FROM items WHERE id = %d", 10+i))
		a.refusedFor(t, target, attack.what)
		a.notEscalated(t)
		mustExec(t, a.direct, attack.undo)
		targetConverges(t, 60*time.Second, a.owner.conn, "SELECT id, v FROM items", a.admin, target)
	}
	// A resync copies again (clearing the table first): refused the same.
	mustExec(t, a.direct, "CREATE TRIGGER pwn AFTER INSERT OR DELETE ON "+m+" FOR EACH ROW EXECUTE FUNCTION "+a.attacker+".pwn_trigger()")
	if _, err := a.through.Exec(context.Background(), "CALL rejot.resync($1)", target); err != nil {
		t.Fatal(err)
	}
	a.refusedFor(t, target, "trigger pwn")
	a.notEscalated(t)
}

// TestCaptureSessionKeepsItsSettings (finding 2, not fixed): a projection's
// code runs inside the capture's read-only SECURITY DEFINER evaluator, but
// an ordinary set_config(..., false) there outlives the function (Postgres
// restores only what the function's own SET clauses and SET LOCAL
// changed). Tried on Postgres 15: after the evaluator returns, the
// session's search_path is the attacker's ('att, pg_catalog') and the
// transaction is read-write again, so the capture's next statement on that
// connection with an unqualified operator (e.g. `oid = oid`) runs an
// operator the attacker made in its schema, as the sidecar's role.
func TestCaptureSessionKeepsItsSettings(t *testing.T) {
	t.Skip("finding 2: reset search_path (SET search_path = pg_catalog, pg_temp, a utility statement no operator can hijack) after every evaluator call, before the capture's own statements, and qualify their operators (OPERATOR(pg_catalog.=))")
}
