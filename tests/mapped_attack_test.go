package tests

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// mappedAttack is mappedPair with an attacker in the consumer's database:
// a role with only LOGIN and a schema of its own, connected through the
// sidecar. The superuser has a table the attacker may not write and a
// mirror subscription of its own (public.victim_copy); att.note(what)
// logs who runs it and, with whatever role that is, tries to make the
// attacker superuser and to write the victim table and _rejot.
type mappedAttack struct {
	owner, consumer *publisher
	pub, attacker   string
	conn            *pgx.Conn // the attacker, through the sidecar
	orders          int       // the owner's last order id
}

func newMappedAttack(t *testing.T) *mappedAttack {
	t.Helper()
	owner, consumer, pub := mappedPair(t)
	a := &mappedAttack{owner: owner, consumer: consumer, pub: pub, attacker: "mk_" + consumer.db, orders: 2}
	consumer.execAll(t, "CREATE ROLE "+a.attacker+" LOGIN", "CREATE SCHEMA att AUTHORIZATION "+a.attacker,
		"CREATE TABLE public.victim (id int PRIMARY KEY, v text)", "INSERT INTO public.victim VALUES (1, 'untouched')")
	dropRolesAtEnd(t, consumer.db, a.attacker)
	if err := consumer.exec(t, "CALL rejot.subscribe($1, 1, 'public.victim_copy')", pub); err != nil {
		t.Fatal(err)
	}
	a.conn = connect(t, consumer.sc.url(consumer.db, a.attacker))
	a.as(t, "CREATE TABLE att.log (what text, who text)",
		fmt.Sprintf(`CREATE FUNCTION att.note(what text) RETURNS boolean LANGUAGE plpgsql AS $f$
		BEGIN
			INSERT INTO att.log VALUES (what, current_user);
			BEGIN EXECUTE 'ALTER ROLE %s SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
			BEGIN UPDATE public.victim SET v = 'owned'; EXCEPTION WHEN OTHERS THEN NULL; END;
			BEGIN UPDATE _rejot.subscriptions SET position = 0; EXCEPTION WHEN OTHERS THEN NULL; END;
			RETURN true;
		END $f$`, a.attacker))
	return a
}

// as runs statements as the attacker, through the sidecar.
func (a *mappedAttack) as(t *testing.T, stmts ...string) {
	t.Helper()
	for _, q := range stmts {
		if _, err := a.conn.Exec(context.Background(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// subscribe makes a mapped subscription as the attacker into att.<table>
// (id int PRIMARY KEY, n int), with upsert and the delete by id.
func (a *mappedAttack) subscribe(t *testing.T, table, upsert string) {
	t.Helper()
	a.as(t, "CREATE TABLE att."+table+" (id int PRIMARY KEY, n int)")
	if _, err := a.conn.Exec(context.Background(), "CALL rejot.subscribe($1, 1, $2, upsert => $3, delete => $4)",
		a.pub, "att."+table, upsert, "DELETE FROM att."+table+" WHERE id = :id"); err != nil {
		t.Fatal(err)
	}
}

// order makes the owner commit one more order.
func (a *mappedAttack) order(t *testing.T) {
	t.Helper()
	a.orders++
	a.owner.execAll(t, fmt.Sprintf("INSERT INTO orders VALUES (%d, 'x', 1, 'paid')", a.orders))
}

// errorOf is the error a subscription keeps, as the superuser reads it.
func (a *mappedAttack) errorOf(t *testing.T, target string) string {
	t.Helper()
	var msg string
	a.consumer.conn.QueryRow(context.Background(), "SELECT coalesce(error, '') FROM _rejot.subscriptions WHERE target = $1", target).Scan(&msg)
	return msg
}

// noHarm asserts, as the superuser, that the attacker is no superuser,
// the victim table and _rejot are as they were, the attacker's code only
// ever ran as the attacker, and the superuser's own subscription still
// applies what the owner commits.
func (a *mappedAttack) noHarm(t *testing.T) {
	t.Helper()
	var super bool
	if err := a.consumer.conn.QueryRow(context.Background(), "SELECT rolsuper FROM pg_roles WHERE rolname = $1", a.attacker).Scan(&super); err != nil || super {
		t.Errorf("%s became superuser (%v)", a.attacker, err)
	}
	if got := tableText(t, a.consumer.conn, "SELECT v FROM public.victim"); got != "(untouched)" {
		t.Errorf("the victim table was written: %s", got)
	}
	if got := tableText(t, a.consumer.conn, "SELECT target FROM _rejot.subscriptions WHERE position = 0"); got != "" {
		t.Errorf("_rejot was written: %s", got)
	}
	if got := tableText(t, a.consumer.conn, "SELECT DISTINCT what, who FROM att.log WHERE who <> '"+a.attacker+"'"); got != "" {
		t.Errorf("the attacker's code ran as another role:\n%s", got)
	}
	a.order(t)
	waitText(t, a.consumer, "SELECT count(*) FROM public.victim_copy WHERE id = "+strconv.Itoa(a.orders), "(1)")
	waitFor(t, 30*time.Second, func() bool { return subscriptionOf(t, a.consumer, a.pub, "public.victim_copy").status == "streaming" })
}

// TestMappedAttackAtCommit: deferred trigger events fire at COMMIT as
// the current user then, which is the sidecar's role, whoever queued
// them. The attacker's table has a deferrable constraint trigger that
// calls att.note; its mapped statement inserts into the table, inside the
// function that runs it as the attacker. The sidecar refuses to commit
// while such a trigger exists (the subscription fails, naming it), so it
// never fires; made NOT DEFERRABLE, it fires at the end of the statement,
// as the attacker, and the rows arrive. Without check_mapped_commit the
// attacker is superuser after the first span. A deferrable exclusion
// constraint is refused the same way.
func TestMappedAttackAtCommit(t *testing.T) {
	a := newMappedAttack(t)
	trigger := func(deferrable string) string {
		return `CREATE CONSTRAINT TRIGGER late AFTER INSERT OR UPDATE ON att.t ` + deferrable +
			` FOR EACH ROW EXECUTE FUNCTION att.fire()`
	}
	a.as(t, "CREATE TABLE att.t (id int PRIMARY KEY, n int)",
		`CREATE FUNCTION att.fire() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN PERFORM att.note(TG_NAME); RETURN NULL; END $f$`,
		trigger("DEFERRABLE INITIALLY DEFERRED"))
	if _, err := a.conn.Exec(context.Background(), "CALL rejot.subscribe($1, 1, 'att.t', upsert => $2, delete => $3)", a.pub,
		"INSERT INTO att.t VALUES (:id, 1) ON CONFLICT (id) DO UPDATE SET n = att.t.n + 1", "DELETE FROM att.t WHERE id = :id"); err != nil {
		t.Fatal(err)
	}
	refused := func() bool {
		msg := a.errorOf(t, "att.t")
		return strings.Contains(msg, "will not commit") && strings.Contains(msg, "constraint trigger late on att.t")
	}
	waitFor(t, 30*time.Second, func() bool {
		return refused() || tableText(t, a.consumer.conn, "SELECT count(*) > 0 FROM att.log") == "(t)"
	})
	a.noHarm(t)
	if !refused() {
		t.Errorf("the subscription was not refused: %q", a.errorOf(t, "att.t"))
	}
	if got := tableText(t, a.consumer.conn, "SELECT count(*) FROM att.t"); got != "(0)" {
		t.Errorf("the refused spans were committed: %s rows", got)
	}
	// Not deferrable, it is the attacker's own business.
	a.as(t, "DROP TRIGGER late ON att.t", trigger("NOT DEFERRABLE"))
	waitText(t, a.consumer, "SELECT count(*) FROM att.t", "("+strconv.Itoa(a.orders)+")")
	waitText(t, a.consumer, "SELECT DISTINCT who FROM att.log", "("+a.attacker+")")
	a.noHarm(t)
	// A deferrable exclusion constraint's recheck at commit evaluates its
	// expressions, as the sidecar: refused alike, wherever it is.
	a.as(t, `CREATE FUNCTION att.k(i int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $f$ BEGIN RETURN i; END $f$`,
		"CREATE TABLE att.x (id int, CONSTRAINT apart EXCLUDE USING btree ((att.k(id)) WITH =) DEFERRABLE INITIALLY DEFERRED)")
	a.order(t)
	waitFor(t, 30*time.Second, func() bool { return strings.Contains(a.errorOf(t, "att.t"), "exclusion constraint apart on att.x") })
	a.as(t, "DROP TABLE att.x")
	waitText(t, a.consumer, "SELECT count(*) FROM att.t", "("+strconv.Itoa(a.orders)+")")
}

// TestMappedAttackTheCall: the sidecar's own statement, which calls the
// function that runs the subscriber's statement, must not run the
// subscriber's code. Two ways it did, each by a domain att.text whose
// CHECK calls att.note, which ran in the sidecar's statement, as the
// sidecar, where text was coerced to it:
//
//   - att.t1: the attacker subscribed with search_path att, pg_catalog, in
//     which the function's "text" arguments were att.text (the sidecar
//     now writes pg_catalog.text; its rows arrive);
//   - att.t2: the attacker's statement drops the function that runs it and
//     makes one of the same name, its own and SECURITY DEFINER, taking
//     att.text (check_mapped now refuses any other signature than the one
//     the sidecar made; the worker makes its functions again).
//
// And what held already: a cursor WITH HOLD over att.note, which Postgres
// would run to its end at COMMIT, as the sidecar, is closed before
// (att.t3).
func TestMappedAttackTheCall(t *testing.T) {
	a := newMappedAttack(t)
	a.as(t, "CREATE DOMAIN att.text AS pg_catalog.text CHECK (att.note('domain check'))",
		`CREATE FUNCTION att.swap() RETURNS int LANGUAGE plpgsql AS $f$
		DECLARE fn text;
		BEGIN
			FOR fn IN SELECT p.proname FROM pg_catalog.pg_proc p
					WHERE p.pronamespace = pg_catalog.pg_my_temp_schema() AND p.prosrc LIKE '%att.swap%' LOOP
				EXECUTE pg_catalog.format('DROP FUNCTION pg_temp.%I(pg_catalog.text)', fn);
				EXECUTE pg_catalog.format('CREATE FUNCTION pg_temp.%I(att.text) RETURNS void LANGUAGE sql SECURITY DEFINER AS %L', fn, 'SELECT NULL');
				PERFORM att.note('swapped');
			END LOOP;
			RETURN 1;
		END $f$`,
		`CREATE FUNCTION att.hold() RETURNS int LANGUAGE plpgsql AS $f$
		BEGIN
			IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_cursors WHERE name = 'held') THEN
				EXECUTE 'DECLARE held CURSOR WITH HOLD FOR SELECT att.note(''held cursor'') FROM generate_series(1, 2)';
			END IF;
			RETURN 1;
		END $f$`,
		"SET search_path = att, pg_catalog")
	a.subscribe(t, "t1", "INSERT INTO att.t1 VALUES (:id, 1) ON CONFLICT (id) DO NOTHING")
	a.as(t, "RESET search_path")
	a.subscribe(t, "t2", "INSERT INTO att.t2 VALUES (:id, att.swap()) ON CONFLICT (id) DO UPDATE SET n = att.t2.n + 1")
	a.subscribe(t, "t3", "INSERT INTO att.t3 VALUES (:id, att.hold()) ON CONFLICT (id) DO UPDATE SET n = att.t3.n + 1")
	// Harm first (it would stop the applies), then the rows.
	for range 3 {
		a.order(t)
		a.eventually(t, "SELECT count(*) FROM att.t1 WHERE id = "+strconv.Itoa(a.orders), "(1)")
		a.eventually(t, "SELECT count(*) FROM att.t3 WHERE id = "+strconv.Itoa(a.orders), "(1)")
	}
	a.eventually(t, "SELECT count(*) > 0 FROM att.log WHERE what = 'swapped'", "(t)")
	a.noHarm(t)
	all := "(" + strconv.Itoa(a.orders-1) + ")" // noHarm's order may not be there yet
	for _, q := range []string{"SELECT count(*) FROM att.t1 WHERE id < $", "SELECT count(*) FROM att.t3 WHERE id < $"} {
		waitText(t, a.consumer, strings.ReplaceAll(q, "$", strconv.Itoa(a.orders)), all)
	}
}

// eventually waits a while for a query of the consumer to render as
// want, and says whether it did (without failing the test).
func (a *mappedAttack) eventually(t *testing.T, query, want string) bool {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if tableText(t, a.consumer.conn, query) == want {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// TestMappedAttackSizes: what a subscriber's code sends the sidecar is
// bounded. A notice of 2 MB ends the apply connection (the subscription
// fails, and retries); an error of 200 kB is kept and reported cut to
// 4 kB.
func TestMappedAttackSizes(t *testing.T) {
	a := newMappedAttack(t)
	a.as(t, `CREATE FUNCTION att.loud(n int) RETURNS int LANGUAGE plpgsql AS $f$
		BEGIN RAISE NOTICE '%', pg_catalog.repeat('x', n); RETURN 1; END $f$`,
		`CREATE FUNCTION att.fail(n int) RETURNS int LANGUAGE plpgsql AS $f$
		BEGIN RAISE EXCEPTION '%', pg_catalog.repeat('y', n); END $f$`)
	a.subscribe(t, "loud", "INSERT INTO att.loud VALUES (:id, att.loud(2 << 20)) ON CONFLICT (id) DO NOTHING")
	a.subscribe(t, "fail", "INSERT INTO att.fail VALUES (:id, att.fail(200000)) ON CONFLICT (id) DO NOTHING")
	waitFor(t, 30*time.Second, func() bool { return strings.Contains(a.errorOf(t, "att.loud"), "expected at most") })
	waitFor(t, 30*time.Second, func() bool { return strings.Contains(a.errorOf(t, "att.fail"), "yyyy") })
	if n := len(a.errorOf(t, "att.fail")); n > 4<<10 {
		t.Errorf("the error kept is %d bytes long", n)
	}
	if got := tableText(t, a.consumer.conn, "SELECT count(*) FROM att.loud"); got != "(0)" {
		t.Errorf("the loud subscription applied: %s", got)
	}
	a.noHarm(t)
}

// TestMappedAttackNeverReturns: a statement that never returns, and
// catches the cancel (query_canceled) to go on, holds only its own
// subscription: the superuser's goes on. When the sidecar stops, it
// cancels it, and, since that does not end it, ends its backend: no
// session of the sidecar's is left running the subscriber's code, with
// its locks and its snapshot, with nobody to read it.
func TestMappedAttackNeverReturns(t *testing.T) {
	a := newMappedAttack(t)
	a.as(t, `CREATE FUNCTION att.forever() RETURNS int LANGUAGE plpgsql AS $f$
		BEGIN
			LOOP
				BEGIN PERFORM pg_catalog.pg_sleep(0.2); EXCEPTION WHEN query_canceled THEN NULL; END;
			END LOOP;
		END $f$`)
	a.subscribe(t, "t", "INSERT INTO att.t VALUES (:id, att.forever()) ON CONFLICT (id) DO NOTHING")
	admin := pg.Connect(t, a.consumer.db)
	running := "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE '%rejot_map_%' AND pid <> pg_backend_pid()"
	t.Cleanup(func() { // left running, it would hold off dropping the attacker's tables
		admin.Exec(context.Background(), strings.Replace(running, "count(*)", "pg_terminate_backend(pid)", 1))
	})
	waitText(t, a.consumer, running, "(1)")
	a.noHarm(t)
	sc := a.consumer.sc
	sc.cmd.Process.Signal(syscall.SIGTERM)
	stopped := make(chan struct{})
	go func() { sc.cmd.Wait(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(45 * time.Second):
		sc.cmd.Process.Kill()
		<-stopped
		t.Errorf("the sidecar did not stop")
	}
	deadline := time.Now().Add(20 * time.Second)
	for tableText(t, admin, running) != "(0)" {
		if time.Now().After(deadline) {
			t.Fatalf("the apply's backend still runs the subscriber's statement after the sidecar stopped")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
