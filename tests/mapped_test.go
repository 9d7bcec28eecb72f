package tests

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// mappedPair is an owner publishing orders and a consumer with a table of
// its own shape, each behind its sidecar.
func mappedPair(t *testing.T) (owner, consumer *publisher, pub string) {
	t.Helper()
	owner, consumer = newPublisher(t), newPublisher(t)
	pub = owner.name("orders")
	owner.execAll(t, `CREATE TABLE orders (id int PRIMARY KEY, customer_name text, total_cents bigint, status text)`,
		`INSERT INTO orders VALUES (1, 'ada', 100, 'paid'), (2, 'bob', 250, 'draft')`)
	if err := owner.exec(t, "CALL rejot.publish($1, 1, $$SELECT id, customer_name, total_cents, status FROM orders$$)", pub); err != nil {
		t.Fatal(err)
	}
	owner.catalogMinor(t, pub, 1, 0)
	consumer.execAll(t, "CREATE SCHEMA billing",
		"CREATE TABLE billing.order_view (order_id int PRIMARY KEY, who text, changes int NOT NULL DEFAULT 0)")
	return owner, consumer, pub
}

const (
	mappedUpsert = `INSERT INTO billing.order_view(order_id, who, changes) VALUES (:id, upper(:customer_name), 1)
		ON CONFLICT (order_id) DO UPDATE SET who = EXCLUDED.who, changes = billing.order_view.changes + 1`
	mappedDelete = `DELETE FROM billing.order_view WHERE order_id = :id`
)

// TestMappedSubscription: the DESIGN's example. The consumer's statements
// fill its own table (the copy first, then every change), the catalog
// shows the subscription mapped, and unsubscribe keeps the table.
func TestMappedSubscription(t *testing.T) {
	owner, consumer, pub := mappedPair(t)
	ctx := context.Background()
	if err := consumer.exec(t, `CALL rejot.subscribe(publication => $1, version => 1, target => 'billing.order_view',
		upsert => $2, delete => $3)`, pub, mappedUpsert, mappedDelete); err != nil {
		t.Fatal(err)
	}
	view := "SELECT order_id, who, changes FROM billing.order_view ORDER BY order_id"
	waitText(t, consumer, view, "(1,ADA,1)\n(2,BOB,1)")
	owner.execAll(t, "UPDATE orders SET customer_name = 'ada l' WHERE id = 1", "DELETE FROM orders WHERE id = 2",
		"INSERT INTO orders VALUES (3, 'cy', 5, 'paid')",
		"BEGIN", "UPDATE orders SET total_cents = 1 WHERE id = 3", "UPDATE orders SET total_cents = 2 WHERE id = 3", "COMMIT")
	// per change, not collapsed per key: 3 was written three times
	waitText(t, consumer, view, "(1,\"ADA L\",2)\n(3,CY,3)")
	waitFor(t, 20*time.Second, func() bool {
		var mapped bool
		var status string
		err := consumer.conn.QueryRow(ctx, "SELECT mapped, status FROM rejot.subscriptions WHERE target = 'billing.order_view' AND system = $1",
			consumer.db).Scan(&mapped, &status)
		return err == nil && mapped && status == "streaming"
	})
	// Its columns are its statements' parameters: a direct call that adds
	// columns to it is refused, and nothing changes.
	sub := "SELECT columns, generation FROM _rejot.subscriptions WHERE target = 'billing.order_view'"
	before := tableText(t, consumer.conn, sub)
	_, err := consumer.conn.Exec(ctx, `SELECT _rejot.add_subscribed_columns(current_user, 'billing.order_view', '[{"name": "x", "type": "text", "key": false, "index": 9}]')`)
	wantRefused(t, "adding columns to a mapped subscription", err, "42710", "mapped subscription")
	if got := tableText(t, consumer.conn, sub); got != before {
		t.Errorf("the mapped subscription changed: %s, was %s", got, before)
	}
	err = consumer.exec(t, "CALL rejot.unsubscribe('billing.order_view', drop_table => true)")
	wantRefused(t, "unsubscribe dropping a mapped subscription's table", err, "0A000", "unsubscribe keeps it")
	consumer.execAll(t, "CALL rejot.unsubscribe('billing.order_view')")
	owner.execAll(t, "INSERT INTO orders VALUES (4, 'dee', 1, 'paid')")
	time.Sleep(time.Second)
	if got := tableText(t, consumer.conn, view); got != "(1,\"ADA L\",2)\n(3,CY,3)" {
		t.Errorf("after unsubscribe the table changed or went: %q", got)
	}
}

// waitText waits until a query of p's database renders as want.
func waitText(t *testing.T, p *publisher, query, want string) {
	t.Helper()
	var got string
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if got = tableText(t, p.conn, query); got == want {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s:\n got %q\nwant %q", query, got, want)
}

// TestMappedSubscriptionRefusals: what subscribe refuses, with the
// SQLSTATE and the position inside the argument.
func TestMappedSubscriptionRefusals(t *testing.T) {
	_, consumer, pub := mappedPair(t)
	ctx := context.Background()
	// A caller with only LOGIN that owns billing.order_view; another role
	// owns public.theirs.
	caller, other := "mc_"+consumer.db, "mo_"+consumer.db
	consumer.execAll(t, "CREATE ROLE "+caller+" LOGIN", "CREATE ROLE "+other+" NOLOGIN",
		"GRANT USAGE ON SCHEMA billing TO "+caller, "ALTER TABLE billing.order_view OWNER TO "+caller,
		"CREATE TABLE public.theirs (id int PRIMARY KEY)", "ALTER TABLE public.theirs OWNER TO "+other,
		"GRANT INSERT, SELECT, DELETE ON public.theirs TO "+caller)
	conn := connect(t, consumer.sc.url(consumer.db, caller))
	call := func(target, upsert, del string) error {
		_, err := conn.Exec(ctx, `CALL rejot.subscribe($1, 1, $2, upsert => $3, delete => $4)`, pub, target, upsert, del)
		return err
	}
	cases := []struct {
		name, target, upsert, del, code, mention string
	}{
		{"unknown parameter", "billing.order_view", "INSERT INTO billing.order_view(order_id) VALUES (:idd)", mappedDelete, "42703", `no column "idd"`},
		{"two statements", "billing.order_view", mappedUpsert + "; DELETE FROM billing.order_view", mappedDelete, "42601", "one statement"},
		{"not DML", "billing.order_view", "SELECT :id", mappedDelete, "0A000", "not SELECT"},
		{"transaction control", "billing.order_view", "COMMIT", mappedDelete, "0A000", "transaction control"},
		{"SET ROLE", "billing.order_view", "SET ROLE postgres", mappedDelete, "0A000", "SET"},
		{"DO", "billing.order_view", "DO $$BEGIN END$$", mappedDelete, "0A000", "DO"},
		{"COPY", "billing.order_view", "COPY billing.order_view FROM STDIN", mappedDelete, "0A000", "COPY"},
		{"CALL", "billing.order_view", "CALL pg_catalog.pg_sleep(0)", mappedDelete, "0A000", "CALL"},
		{"delete by a column not the key", "billing.order_view", mappedUpsert, "DELETE FROM billing.order_view WHERE who = :customer_name", "42P10", "only the key"},
		{"not the owner of the target", "public.theirs", "INSERT INTO public.theirs VALUES (:id)", "DELETE FROM public.theirs WHERE id = :id", "42501", other},
		{"writes a table of another", "billing.order_view", "INSERT INTO public.theirs VALUES (:id)", mappedDelete, "42501", other},
		{"writes _rejot", "billing.order_view", "UPDATE _rejot.subscriptions SET position = 0", mappedDelete, "42501", ""},
		{"an unknown column of the table", "billing.order_view", "INSERT INTO billing.order_view(nope) VALUES (:id)", mappedDelete, "42703", "nope"},
		{"$n parameter", "billing.order_view", "INSERT INTO billing.order_view(order_id) VALUES ($1)", mappedDelete, "42601", ":column"},
		{"target missing", "billing.nope", mappedUpsert, mappedDelete, "42P01", "Create the table"},
		{"too long", "billing.order_view", mappedUpsert + strings.Repeat(" ", 70000), mappedDelete, "54000", "at most"},
	}
	for _, c := range cases {
		err := call(c.target, c.upsert, c.del)
		wantRefused(t, c.name, err, c.code, c.mention)
	}
	// The position of an unknown parameter is where it is in the call.
	q := `CALL rejot.subscribe('` + pub + `', 1, 'billing.order_view', upsert => $$INSERT INTO billing.order_view(order_id) VALUES (:idd)$$, delete => $$` + mappedDelete + `$$)`
	_, err := conn.Exec(ctx, q)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "42703" || int(pe.Position) != strings.Index(q, ":idd")+1 {
		t.Errorf("unknown parameter: want 42703 at %d, got %v", strings.Index(q, ":idd")+1, err)
	}
	// Nothing was recorded.
	var n int
	if err := consumer.conn.QueryRow(ctx, "SELECT count(*) FROM _rejot.subscriptions").Scan(&n); err != nil || n != 0 {
		t.Errorf("%d subscriptions recorded (%v)", n, err)
	}
}

// TestMappedSubscriptionTruncate: a source TRUNCATE runs the truncate
// statement; without one the subscription fails, saying how to fix it,
// and nothing after the truncate is applied (never skipped); subscribed
// again with one, it copies the state through it. A resync without one
// fails the same way.
func TestMappedSubscriptionTruncate(t *testing.T) {
	owner, consumer, pub := mappedPair(t)
	view := "SELECT order_id, who FROM billing.order_view ORDER BY order_id"
	subscribe := func(truncate string) {
		t.Helper()
		q := `CALL rejot.subscribe($1, 1, 'billing.order_view', upsert => $2, delete => $3`
		args := []any{pub, mappedUpsert, mappedDelete}
		if truncate != "" {
			q += ", truncate => $4"
			args = append(args, truncate)
		}
		if err := consumer.exec(t, q+")", args...); err != nil {
			t.Fatal(err)
		}
	}
	subscribe("")
	waitText(t, consumer, view, "(1,ADA)\n(2,BOB)")
	owner.execAll(t, "TRUNCATE orders", "INSERT INTO orders VALUES (7, 'gus', 1, 'paid')")
	waitFor(t, 30*time.Second, func() bool {
		s := subscriptionOf(t, consumer, pub, "billing.order_view")
		return s.status == "failed" && strings.Contains(s.err, "truncate =>") && strings.Contains(s.err, "truncated at the source")
	})
	if got := tableText(t, consumer.conn, view); got != "(1,ADA)\n(2,BOB)" {
		t.Errorf("a change after the truncate was applied: %q", got)
	}
	consumer.execAll(t, "CALL rejot.unsubscribe('billing.order_view')")
	subscribe("DELETE FROM billing.order_view")
	waitText(t, consumer, view, "(7,GUS)")
	owner.execAll(t, "TRUNCATE orders", "INSERT INTO orders VALUES (8, 'hal', 1, 'paid')")
	waitText(t, consumer, view, "(8,HAL)")

	// A resync copies again: without a truncate statement it cannot.
	consumer.execAll(t, "CALL rejot.unsubscribe('billing.order_view')")
	subscribe("")
	waitFor(t, 30*time.Second, func() bool { return subscriptionOf(t, consumer, pub, "billing.order_view").status == "streaming" })
	consumer.execAll(t, "CALL rejot.resync('billing.order_view')")
	waitFor(t, 30*time.Second, func() bool {
		s := subscriptionOf(t, consumer, pub, "billing.order_view")
		return s.status == "failed" && strings.Contains(s.err, "copies the state again") && strings.Contains(s.err, "truncate =>")
	})
}

// TestMappedSubscriptionSecurity: a role with only LOGIN makes a mapped
// subscription whose statements call a function of its own that tries,
// from inside the sidecar's apply session, everything that would give it
// the sidecar's powers: change role, write a table and _rejot it may not
// write, make rejot calls as the sidecar's role, leave settings, prepared
// statements and advisory locks behind, and turn the sidecar's function
// for its statement into SECURITY INVOKER (so that the next call would
// run as the sidecar). As the superuser afterwards: none of it did harm.
func TestMappedSubscriptionSecurity(t *testing.T) {
	owner, consumer, pub := mappedPair(t)
	ctx := context.Background()
	attacker := "ma_" + consumer.db
	consumer.execAll(t, "CREATE ROLE "+attacker+" LOGIN", "CREATE SCHEMA att AUTHORIZATION "+attacker,
		"CREATE TABLE public.victim (id int PRIMARY KEY, v text)", "INSERT INTO public.victim VALUES (1, 'untouched')")
	// the sidecar's own subscription the attacker would remove
	if err := consumer.exec(t, "CALL rejot.subscribe($1, 1, 'public.victim_copy')", pub); err != nil {
		t.Fatal(err)
	}
	conn := connect(t, consumer.sc.url(consumer.db, attacker))
	for _, q := range []string{
		"CREATE TABLE att.t (id int PRIMARY KEY, n int)",
		"CREATE TABLE att.log (at timestamptz DEFAULT clock_timestamp(), what text, outcome text)",
		`CREATE FUNCTION att.try(what text, q text) RETURNS void LANGUAGE plpgsql AS $f$
		BEGIN
			EXECUTE q;
			INSERT INTO att.log (what, outcome) VALUES (what, 'DONE as ' || current_user);
		EXCEPTION WHEN OTHERS THEN
			INSERT INTO att.log (what, outcome) VALUES (what, 'refused: ' || SQLERRM);
		END $f$`,
		`CREATE FUNCTION att.evil() RETURNS int LANGUAGE plpgsql AS $f$
		DECLARE fn text;
		BEGIN
			INSERT INTO att.log (what, outcome) VALUES ('ran', current_user || ' in a session of ' || session_user);
			PERFORM att.try('reset role', 'RESET ROLE');
			PERFORM att.try('set role', 'SET ROLE postgres');
			PERFORM att.try('set session authorization', 'SET SESSION AUTHORIZATION postgres');
			PERFORM att.try('write victim', 'UPDATE public.victim SET v = ''owned''');
			PERFORM att.try('write _rejot', 'UPDATE _rejot.subscriptions SET position = 0');
			PERFORM att.try('unsubscribe as the sidecar', 'SELECT _rejot.delete_subscription(''postgres'', ''public.victim_copy'')');
			PERFORM att.try('prepare', 'PREPARE att_p AS SELECT 1');
			PERFORM pg_catalog.set_config('search_path', 'att', false);
			PERFORM pg_catalog.set_config('statement_timeout', '1', false);
			PERFORM pg_catalog.pg_advisory_lock(4242);
			FOR fn IN SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p
					WHERE p.pronamespace = pg_catalog.pg_my_temp_schema() AND p.proname LIKE 'rejot_map_%' LOOP
				PERFORM att.try('make it SECURITY INVOKER', 'ALTER FUNCTION ' || fn || ' SECURITY INVOKER');
			END LOOP;
			RETURN 1;
		END $f$`,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if _, err := conn.Exec(ctx, `CALL rejot.subscribe($1, 1, 'att.t', upsert => 'INSERT INTO att.t VALUES (:id, att.evil()) ON CONFLICT (id) DO UPDATE SET n = att.t.n + att.evil()',
		delete => 'DELETE FROM att.t WHERE id = :id')`, pub); err != nil {
		t.Fatal(err)
	}
	waitText(t, consumer, "SELECT id FROM att.t ORDER BY id", "(1)\n(2)")
	// More transactions, each a call after the function was turned.
	for i := 3; i <= 6; i++ {
		owner.execAll(t, fmt.Sprintf("INSERT INTO orders VALUES (%d, 'x', 1, 'paid')", i))
		waitText(t, consumer, "SELECT count(*) FROM att.t WHERE id = "+strconv.Itoa(i), "(1)")
	}
	waitText(t, consumer, "SELECT count(*) FROM public.victim_copy", "(6)") // the sidecar's subscription still works
	// No harm: as the superuser.
	if got := tableText(t, consumer.conn, "SELECT v FROM public.victim"); got != "(untouched)" {
		t.Errorf("the victim table was written: %s", got)
	}
	if got := tableText(t, consumer.conn, "SELECT target FROM _rejot.subscriptions WHERE position = 0 OR position IS NULL"); got != "" {
		t.Errorf("_rejot was written: %s", got)
	}
	if got := tableText(t, consumer.conn, "SELECT DISTINCT what, outcome FROM att.log WHERE outcome LIKE 'DONE%' AND what NOT IN ('make it SECURITY INVOKER', 'prepare')"); got != "" {
		t.Errorf("the attack did something:\n%s", got)
	}
	if got := tableText(t, consumer.conn, "SELECT DISTINCT outcome FROM att.log WHERE what = 'ran'"); got != "(\""+attacker+" in a session of postgres\")" {
		t.Errorf("the statements ran as %s", got)
	}
	var turned, runs int
	consumer.conn.QueryRow(ctx, "SELECT count(*) FILTER (WHERE what = 'make it SECURITY INVOKER' AND outcome LIKE 'DONE%'), count(*) FILTER (WHERE what = 'ran') FROM att.log").Scan(&turned, &runs)
	if turned == 0 || runs < 6 {
		t.Errorf("the attack did not run as meant: the function turned %d times, %d runs", turned, runs)
	}
	if got := tableText(t, consumer.conn, "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242"); got != "" {
		t.Errorf("an advisory lock was left behind by %s", got)
	}
	if s := subscriptionOf(t, consumer, pub, "public.victim_copy"); s.status != "streaming" {
		t.Errorf("the sidecar's own subscription is %s: %s", s.status, s.err)
	}
}

// TestMappedSubscriptionExactlyOnce: under a random workload on the owner
// (inserts, updates, deletes, multi-row transactions, rollbacks) while
// the consumer's sidecar is killed with -9 twice, the consumer's table
// ends equal to its mapping of the projection, and a counter the upsert
// statement increments equals, for every key, the number of changes the
// source made to it (v counts them at the source): each change ran once.
func TestMappedSubscriptionExactlyOnce(t *testing.T) {
	s := startServers(t)
	ctx := context.Background()
	ownerURL, targetURL := s.ownerSC.url("shop", "postgres"), s.targetSC.url("billing", "postgres")
	execRetry(t, ownerURL, `CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, note text)`)
	execRetry(t, ownerURL, `CALL rejot.publish('mapped_items', 1, 'SELECT id, v, note FROM items')`)
	execRetry(t, targetURL, `CREATE TABLE public.seen (item int PRIMARY KEY, loud text, v int, n int NOT NULL)`)
	execRetry(t, targetURL, `CALL rejot.subscribe('mapped_items', 1, 'public.seen',
		upsert => $$INSERT INTO public.seen VALUES (:id, upper(:note), :v, 1)
			ON CONFLICT (item) DO UPDATE SET loud = EXCLUDED.loud, v = EXCLUDED.v, n = public.seen.n + 1$$,
		delete => $$DELETE FROM public.seen WHERE item = :id$$)`)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			untilStopped(s.owner.URL("shop"), stop, func(conn *pgx.Conn) bool {
				if _, err := conn.Exec(ctx, countedChange(rng)); err != nil { // a deadlock: it rolls back
					conn.Exec(ctx, "ROLLBACK")
				}
				return !conn.IsClosed()
			})
		}()
	}
	for range 2 {
		time.Sleep(time.Duration(700+rand.IntN(600)) * time.Millisecond)
		t.Log("kill -9 the subscriber's sidecar")
		s.targetSC.kill(t)
		s.targetSC = s.startTarget(t)
	}
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	owner := connect(t, s.owner.URL("shop"))
	target := connect(t, s.target.URL("billing"))
	targetConverges(t, 60*time.Second, owner, "SELECT id, upper(note), v, v FROM items", target, "public.seen")
	var n int
	owner.QueryRow(ctx, "SELECT count(*) FROM items").Scan(&n)
	t.Logf("%d rows at the end", n)
	if n < 10 {
		t.Fatalf("only %d rows: the workload did not run", n)
	}
}

// countedChange is a random transaction on items that counts, in v, the
// changes it makes to each row (an insert makes it 1).
func countedChange(rng *rand.Rand) string {
	id := func() int { return 1 + rng.IntN(60) }
	one := func() string {
		switch rng.IntN(6) {
		case 0, 1:
			return fmt.Sprintf("INSERT INTO items VALUES (%d, 1, 'n%d') ON CONFLICT (id) DO NOTHING", id(), rng.IntN(9))
		case 2, 3:
			return fmt.Sprintf("UPDATE items SET v = v + 1, note = 'u%d' WHERE id = %d", rng.IntN(9), id())
		case 4:
			a := id()
			return fmt.Sprintf("UPDATE items SET v = v + 1 WHERE id BETWEEN %d AND %d", a, a+5)
		default:
			return fmt.Sprintf("DELETE FROM items WHERE id = %d", id())
		}
	}
	var parts []string
	for range 1 + rng.IntN(4) {
		parts = append(parts, one())
	}
	end := "COMMIT"
	if rng.IntN(6) == 0 {
		end = "ROLLBACK"
	}
	return "BEGIN; " + strings.Join(parts, "; ") + "; " + end
}
