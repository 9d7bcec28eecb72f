package tests

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Two sessions publish the same new (name, version) with incompatible
// queries; the second blocks on the first's INSERT, then overwrites it with
// no compatibility check. Both are told minor 0.
func TestConcurrentFirstPublish(t *testing.T) {
	p := newPublisher(t)
	ctx := context.Background()
	name := p.name("race")
	if err := p.exec(t, "CREATE TABLE t (id int PRIMARY KEY, a int, b text)"); err != nil {
		t.Fatal(err)
	}
	conn2, err := pgx.Connect(ctx, p.sc.url(p.db, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close(ctx)
	tx, _ := p.conn.Begin(ctx)
	var m1, m2 int
	var c1, c2, pub string
	var v int
	if err := tx.QueryRow(ctx, "CALL rejot.publish($1, 1, 'SELECT id, a FROM t')", name).Scan(&pub, &v, &m1, &c1); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- conn2.QueryRow(ctx, "CALL rejot.publish($1, 1, 'SELECT id, b FROM t')", name).Scan(&pub, &v, &m2, &c2)
	}()
	time.Sleep(500 * time.Millisecond)
	tx.Commit(ctx)
	if err := <-done; err != nil {
		t.Logf("second publish refused (correct): %v", err)
		return
	}
	var cols string
	p.conn.QueryRow(ctx, "SELECT minor || ' ' || columns::text FROM _rejot.publications WHERE publication = $1", name).Scan(&cols)
	t.Fatalf("both succeeded: first minor %d (%s), second minor %d (%s); owner's record now: %s", m1, c1, m2, c2, cols)
}

// A user of the managed database wedges the outbox applier: every later
// call never reaches the catalog.
func TestPoisonCommand(t *testing.T) {
	p := newPublisher(t)
	ctx := context.Background()
	name := p.name("after_poison")
	// No user of the database can write _rejot any more (see
	// security_private_test.go): the superuser writes the bogus command.
	if err := p.exec(t, `INSERT INTO _rejot.commands (kind, payload) VALUES ('bogus', '{}');
		CREATE TABLE t (id int PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	if err := p.exec(t, "CALL rejot.publish($1, 1, 'SELECT id FROM t')", name); err != nil {
		t.Fatal(err)
	}
	time.Sleep(8 * time.Second)
	var n int
	p.conn.QueryRow(ctx, "SELECT count(*) FROM rejot.publications WHERE publication = $1", name).Scan(&n)
	var pending int
	p.conn.QueryRow(ctx, "SELECT count(*) FROM _rejot.commands WHERE applied_at IS NULL").Scan(&pending)
	if n == 0 {
		t.Fatalf("publish committed 8s ago is not in the catalog; %d commands stuck behind the bogus one", pending)
	}
}

// A database that revokes TEMP from PUBLIC (common hardening): plain
// columns publish; a WHERE or an expression needs TEMPORARY for the
// immutability check, and the error says so.
func TestNoTempPrivilege(t *testing.T) {
	p := newPublisher(t)
	ctx := context.Background()
	if err := p.exec(t, `CREATE TABLE t (id int PRIMARY KEY, a int);
		CREATE ROLE owner_role LOGIN; GRANT SELECT ON t TO owner_role; ALTER TABLE t OWNER TO owner_role;
		REVOKE TEMPORARY ON DATABASE `+p.db+` FROM PUBLIC`); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, p.sc.url(p.db, "owner_role"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CALL rejot.publish($1, 1, 'SELECT id, a FROM t')", p.name("plain")); err != nil {
		t.Fatalf("plain: %v", err)
	}
	_, err = conn.Exec(ctx, "CALL rejot.publish($1, 1, 'SELECT id, a FROM t WHERE a > 0')", p.name("filtered"))
	expectTemporaryHint(t, err)
}

func expectTemporaryHint(t *testing.T, err error) {
	t.Helper()
	if pe := pgErr(err); pe.Code != "42501" || !strings.Contains(pe.Hint, "TEMPORARY") {
		t.Fatalf("want 42501 with a hint about TEMPORARY, got %v (hint %q)", err, pe.Hint)
	}
}

func TestTrailingSemicolon(t *testing.T) {
	p := newPublisher(t)
	if err := p.exec(t, "CREATE TABLE t (id int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	err := p.exec(t, "CALL rejot.publish($1, 1, $2)", p.name("semi"), "SELECT id FROM t;")
	if err != nil && strings.Contains(err.Error(), "syntax") {
		t.Fatalf("query with a trailing semicolon: %v", err)
	}
}

// The catalog's idempotency key is (system, outbox id); an outbox whose
// sequence starts again (schema reinstalled, database restored to an
// earlier point) has its new commands skipped as "already applied".
func TestCommandIDReuse(t *testing.T) {
	p := newPublisher(t)
	ctx := context.Background()
	if err := p.exec(t, "CREATE TABLE t (id int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	if err := p.exec(t, "CALL rejot.publish($1, 1, 'SELECT id FROM t')", p.name("first")); err != nil {
		t.Fatal(err)
	}
	p.catalogMinor(t, p.name("first"), 1, 0)
	// Reinstall _rejot (as after restoring the database from a backup taken
	// before the sidecar was set up): the sidecar recreates it on start.
	p.sc.kill(t)
	if err := p.exec(t, "DROP SCHEMA _rejot CASCADE"); err == nil {
		t.Log("dropped _rejot through the dead sidecar?")
	}
	conn, _ := pgx.Connect(ctx, directURL(p.db, "postgres"))
	conn.Exec(ctx, "DROP SCHEMA _rejot CASCADE")
	conn.Close(ctx)
	sc := startSidecar(t, p.db)
	c2, err := pgx.Connect(ctx, sc.url(p.db, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close(ctx)
	waitFor(t, 20*time.Second, func() bool {
		var ok bool
		c2.QueryRow(ctx, "SELECT to_regclass('_rejot.commands') IS NOT NULL").Scan(&ok)
		return ok
	})
	if _, err := c2.Exec(ctx, "CALL rejot.publish($1, 1, 'SELECT id FROM t')", p.name("second")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	var id int
	var applied bool
	c2.QueryRow(ctx, "SELECT id, applied_at IS NOT NULL FROM _rejot.commands").Scan(&id, &applied)
	var n int
	c2.QueryRow(ctx, "SELECT count(*) FROM rejot.publications WHERE publication = $1", p.name("second")).Scan(&n)
	if n == 0 {
		t.Fatalf("command %d marked applied=%v, but publication %s is not in the catalog", id, applied, p.name("second"))
	}
}

func TestColumnPrivileges(t *testing.T) {
	p := newPublisher(t)
	ctx := context.Background()
	if err := p.exec(t, `CREATE TABLE t (id int PRIMARY KEY, a int, secret text);
		CREATE ROLE colrole LOGIN; GRANT SELECT (id, a) ON t TO colrole`); err != nil {
		t.Fatal(err)
	}
	// Publishing takes membership in the table's owner; colrole is one
	// without inheriting its privileges, so its own column grants apply.
	if err := p.exec(t, `CREATE ROLE colrole_owner; ALTER TABLE t OWNER TO colrole_owner;
		ALTER ROLE colrole NOINHERIT; GRANT colrole_owner TO colrole`); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, p.sc.url(p.db, "colrole"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "SELECT id, a FROM t WHERE a > 0"); err != nil {
		t.Fatalf("the role can run the query itself: %v", err)
	}
	if _, err := conn.Exec(ctx, "CALL rejot.publish($1, 1, 'SELECT id, a FROM t')", p.name("plain")); err != nil {
		t.Fatalf("plain: %v", err)
	}
	_, err = conn.Exec(ctx, "CALL rejot.publish($1, 1, 'SELECT id, a FROM t WHERE a > 0')", p.name("filtered"))
	expectTemporaryHint(t, err)
}
