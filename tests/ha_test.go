package tests

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// pair is two sidecars in front of one database: two instances of one
// system, one active, one standby.
type pair struct {
	db string
	sc [2]*sidecar
}

func startPair(t *testing.T, db string) *pair {
	t.Helper()
	p := &pair{db: db}
	for i := range p.sc {
		p.sc[i] = startSidecar(t, db)
	}
	return p
}

// roles waits until rejot.instances, read through sidecar via, shows the
// system's instances as want (address → role), and no others.
func (p *pair) roles(t *testing.T, via *sidecar, want map[string]string) {
	t.Helper()
	var got map[string]string
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		got = instanceRoles(via, p.db)
		if fmt.Sprint(got) == fmt.Sprint(want) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("rejot.instances of %s: %v, want %v", p.db, got, want)
}

func instanceRoles(via *sidecar, system string) map[string]string {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, via.url(system, "postgres"))
	if err != nil {
		return nil
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT address, role FROM rejot.instances WHERE system = $1", system)
	if err != nil {
		return nil
	}
	got := map[string]string{}
	var addr, role string
	pgx.ForEachRow(rows, []any{&addr, &role}, func() error { got[addr] = role; return nil })
	return got
}

// active waits until one of the pair says, in /readyz, that it runs what
// part names (capture or apply) and the other that it stands by; it
// returns the active one's index.
func (p *pair) active(t *testing.T, part string) int {
	t.Helper()
	found := -1
	waitFor(t, 20*time.Second, func() bool {
		var states [2]string
		for i, sc := range p.sc {
			_, r := readyz(t, sc.httpURL(t))
			states[i] = r.Checks[part]
		}
		switch states {
		case [2]string{"ok", "standby"}:
			found = 0
		case [2]string{"standby", "ok"}:
			found = 1
		}
		return found >= 0
	})
	return found
}

// takeover kills the pair's active sidecar (kill -9) and waits, at most 10
// s, for the other to run part and for changes to flow again (position,
// the subscription's applied position, moves past where it was); it
// returns how long each took, and starts the killed one again (it comes
// back as standby).
func (p *pair) takeover(t *testing.T, part string, active int, position func() int64) (lease, flowing time.Duration) {
	t.Helper()
	survivor := p.sc[1-active]
	base := survivor.httpURL(t)
	p.sc[active].kill(t)
	killed := time.Now()
	at := position()
	for lease == 0 || flowing == 0 {
		if lease == 0 {
			if _, r := readyz(t, base); r.Checks[part] == "ok" {
				lease = time.Since(killed)
			}
		}
		if flowing == 0 && position() > at {
			flowing = time.Since(killed)
		}
		if time.Since(killed) > 10*time.Second {
			t.Fatalf("the standby did not take over within 10 s (lease after %v, changes flowing after %v)", lease, flowing)
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.sc[active] = startSidecar(t, p.db)
	return lease, flowing
}

// tpcbSetup is a pgbench-like schema: branches, tellers, accounts and a
// history, each account starting with 1000.
const tpcbSetup = `CREATE TABLE branches (bid int PRIMARY KEY, bbalance bigint NOT NULL);
	CREATE TABLE tellers (tid int PRIMARY KEY, bid int NOT NULL REFERENCES branches, tbalance bigint NOT NULL);
	CREATE TABLE accounts (aid int PRIMARY KEY, bid int NOT NULL REFERENCES branches, abalance bigint NOT NULL, filler text);
	CREATE TABLE history (hid bigserial PRIMARY KEY, tid int, bid int, aid int, delta int, mtime timestamptz);
	INSERT INTO branches SELECT g, 0 FROM generate_series(1, 4) g;
	INSERT INTO tellers SELECT g, (g - 1) % 4 + 1, 0 FROM generate_series(1, 40) g;
	INSERT INTO accounts SELECT g, (g - 1) % 4 + 1, 1000, '' FROM generate_series(1, 400) g`

const tpcbAccounts = 400

// tpcbTxn runs one pgbench-like transaction that moves delta from one
// account to another (the total stays): both accounts, the teller and
// the branch updated, a history row inserted.
func tpcbTxn(conn *pgx.Conn, rng *rand.Rand) error {
	a, b := rng.IntN(tpcbAccounts)+1, rng.IntN(tpcbAccounts)+1
	a, b = min(a, b), max(a, b) // one lock order: no deadlocks between writers
	tid, delta := rng.IntN(40)+1, rng.IntN(100)+1
	q := fmt.Sprintf(`BEGIN;
		UPDATE accounts SET abalance = abalance - %[3]d WHERE aid = %[1]d;
		UPDATE accounts SET abalance = abalance + %[3]d WHERE aid = %[2]d;
		UPDATE tellers SET tbalance = tbalance + %[3]d WHERE tid = %[4]d;
		UPDATE branches SET bbalance = bbalance + %[3]d WHERE bid = (SELECT bid FROM tellers WHERE tid = %[4]d);
		INSERT INTO history (tid, bid, aid, delta, mtime) VALUES (%[4]d, (SELECT bid FROM tellers WHERE tid = %[4]d), %[1]d, %[3]d, now());
		COMMIT`, a, b, delta, tid)
	ctx := context.Background()
	_, err := conn.Exec(ctx, q)
	if err != nil {
		conn.Exec(ctx, "ROLLBACK")
	}
	return err
}

// tpcbLoad runs writers through each sidecar of the pair (the one at
// index i, whichever process that is now) until stop; commits[i] counts
// what committed through sidecar i.
func tpcbLoad(p *pair, mu *sync.Mutex, stop chan struct{}) (commits *[2]atomic.Int64, wait func()) {
	commits = &[2]atomic.Int64{}
	var wg sync.WaitGroup
	for w := range 4 {
		i := w % 2
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			var conn *pgx.Conn
			defer func() {
				if conn != nil {
					conn.Close(context.Background())
				}
			}()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if conn == nil {
					mu.Lock()
					url := p.sc[i].url(p.db, "postgres")
					mu.Unlock()
					c, err := pgx.Connect(context.Background(), url)
					if err != nil {
						time.Sleep(50 * time.Millisecond)
						continue
					}
					conn = c
				}
				err := tpcbTxn(conn, rng)
				var pe interface{ SQLState() string }
				switch {
				case err == nil:
					commits[i].Add(1)
				case errors.As(err, &pe):
				default:
					conn.Close(context.Background())
					conn = nil
				}
			}
		})
	}
	return commits, wg.Wait
}

// TestTwoSidecarsPerDatabase: two sidecars in front of the owner's
// database and two in front of the subscriber's. In each pair one is
// active (it captures, or applies) and the other stands by, as /readyz and
// rejot.instances say; both relay a pgbench-like load. The owner's active
// sidecar is killed (kill -9), then the subscriber's: each time the other
// takes over within 10 s and the killed one comes back as standby. A
// reader of the target never sees part of a source transaction (the total
// of the balances stays), the target converges to exactly the source, the
// subscription is at the log's head, and the log holds each source
// transaction once.
func TestTwoSidecarsPerDatabase(t *testing.T) {
	ownerDB, targetDB := pg.CreateDB(t), pg.CreateDB(t)
	owner, target := startPair(t, ownerDB), startPair(t, targetDB)
	ctx := context.Background()
	pub := "ha_accounts_" + strings.TrimPrefix(ownerDB, "t")
	execRetry(t, owner.sc[0].url(ownerDB, "postgres"), tpcbSetup)
	execRetry(t, owner.sc[1].url(ownerDB, "postgres"), "CALL rejot.publish($1, 1, 'SELECT aid AS id, abalance AS balance FROM accounts')", pub)
	execRetry(t, target.sc[0].url(targetDB, "postgres"), "CREATE SCHEMA billing")
	execRetry(t, target.sc[1].url(targetDB, "postgres"), "CALL rejot.subscribe($1, 1, 'billing.acct')", pub)
	const total = tpcbAccounts * 1000
	ownerConn, targetConn := pg.Connect(t, ownerDB), pg.Connect(t, targetDB)
	targetConverges(t, 30*time.Second, ownerConn, "SELECT aid, abalance FROM accounts", targetConn, "billing.acct")

	a := owner.active(t, "capture")
	if c := target.active(t, "apply"); c < 0 {
		t.Fatal("no active subscriber")
	}
	owner.roles(t, owner.sc[1-a], map[string]string{owner.sc[a].addr: "active", owner.sc[1-a].addr: "standby"})
	if n := strings.Count(owner.sc[1-a].logs(), "is active for PID"); n > 0 {
		t.Fatalf("the standby tried to take the slot (%d times)", n)
	}

	var mu sync.Mutex // p.sc[i] changes under the writers
	stop := make(chan struct{})
	ownerLoad := &pair{db: ownerDB}
	ownerLoad.sc = owner.sc
	commits, waitLoad := tpcbLoad(ownerLoad, &mu, stop)
	watched := watchSum(t, pg.URL(targetDB), total, stop)
	waitFor(t, 20*time.Second, func() bool { return commits[0].Load() > 20 && commits[1].Load() > 20 })

	position := func() int64 {
		var at int64
		targetConn.QueryRow(ctx, "SELECT position FROM _rejot.subscriptions WHERE target = 'billing.acct'").Scan(&at)
		return at
	}
	before := [2]int64{commits[0].Load(), commits[1].Load()}
	lease, flowing := owner.takeover(t, "capture", a, position)
	mu.Lock()
	ownerLoad.sc = owner.sc
	mu.Unlock()
	t.Logf("kill -9 of the owner's active sidecar: the standby runs the capture after %v, the target moves again after %v",
		lease.Round(time.Millisecond), flowing.Round(time.Millisecond))
	// The survivor relayed throughout: its writers went on.
	if commits[1-a].Load() <= before[1-a] {
		t.Errorf("nothing committed through the surviving sidecar during the takeover")
	}
	owner.active(t, "capture") // the restarted one stands by

	c := target.active(t, "apply")
	time.Sleep(time.Second)
	lease, flowing = target.takeover(t, "apply", c, position)
	t.Logf("kill -9 of the subscriber's active sidecar: the standby runs the apply after %v, the target moves again after %v",
		lease.Round(time.Millisecond), flowing.Round(time.Millisecond))
	waitFor(t, 20*time.Second, func() bool { return commits[0].Load() > before[0]+20 && commits[1].Load() > before[1]+20 })
	time.Sleep(time.Second)
	close(stop)
	waitLoad()
	bad := watched()
	t.Logf("committed through each owner sidecar: %d and %d", commits[0].Load(), commits[1].Load())

	var sum int64
	if err := ownerConn.QueryRow(ctx, "SELECT sum(abalance) FROM accounts").Scan(&sum); err != nil || sum != total {
		t.Fatalf("the load itself broke the total: %d (%v)", sum, err)
	}
	targetConverges(t, 60*time.Second, ownerConn, "SELECT aid, abalance FROM accounts", targetConn, "billing.acct")
	if len(bad) > 0 {
		t.Errorf("the target was seen in the middle of a source transaction: %v", bad)
	}
	logDB := pg.Connect(t, "rejot")
	waitFor(t, 30*time.Second, func() bool {
		var head, position int64
		logDB.QueryRow(ctx, "SELECT head FROM rejot_log.streams WHERE publication = $1", pub).Scan(&head)
		targetConn.QueryRow(ctx, "SELECT position FROM _rejot.subscriptions WHERE target = 'billing.acct'").Scan(&position)
		return head > 0 && head == position
	})
	var twice int
	if err := logDB.QueryRow(ctx, `SELECT count(*) FROM (SELECT commit_lsn FROM rejot_log.changes
		WHERE stream = (SELECT id FROM rejot_log.streams WHERE publication = $1) AND last
		GROUP BY commit_lsn HAVING count(*) > 1) d`, pub).Scan(&twice); err != nil || twice > 0 {
		t.Fatalf("%d source transactions are in the log twice (%v)", twice, err)
	}
	// rejot.instances tells them apart: the survivors active, the
	// restarted ones standby, the killed processes gone.
	a, c = owner.active(t, "capture"), target.active(t, "apply")
	owner.roles(t, owner.sc[a], map[string]string{owner.sc[a].addr: "active", owner.sc[1-a].addr: "standby"})
	target.roles(t, target.sc[c], map[string]string{target.sc[c].addr: "active", target.sc[1-c].addr: "standby"})
	var address string
	if err := logDB.QueryRow(ctx, "SELECT address FROM rejot.systems WHERE system = $1", ownerDB).Scan(&address); err != nil || address != owner.sc[a].addr {
		t.Errorf("rejot.systems' address %q, want the active instance's %s (%v)", address, owner.sc[a].addr, err)
	}
}

// TestStandbyHoldsNothing: a second sidecar in front of a database whose
// first one captures stands by: /readyz says capture and apply "standby"
// and stays ready, rejot_instance_active is 0, it never tries the slot,
// and rejot.instances shows it; stopped cleanly (SIGTERM), the active one
// hands over, and the standby captures.
func TestStandbyHoldsNothing(t *testing.T) {
	p := newPublisher(t)
	name := p.name("standby")
	if err := p.exec(t, "CREATE TABLE items (id int PRIMARY KEY, label text); INSERT INTO items VALUES (1, 'one')"); err != nil {
		t.Fatal(err)
	}
	if err := p.exec(t, "CALL rejot.publish($1, 1, 'SELECT id, label FROM items')", name); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, func() bool { return strings.Contains(p.sc.logs(), "capture started") })
	standby := startSidecar(t, p.db)
	base := standby.httpURL(t)
	waitFor(t, 20*time.Second, func() bool {
		code, r := readyz(t, base)
		return code == 200 && r.Ready && r.Checks["capture"] == "standby" && r.Checks["apply"] == "standby"
	})
	if v := metric(t, base, "rejot_instance_active"); v != 0 {
		t.Errorf("rejot_instance_active of the standby: %v", v)
	}
	if v := metric(t, p.sc.httpURL(t), "rejot_instance_active"); v != 1 {
		t.Errorf("rejot_instance_active of the active one: %v", v)
	}
	pr := &pair{db: p.db, sc: [2]*sidecar{p.sc, standby}}
	pr.roles(t, standby, map[string]string{p.sc.addr: "active", standby.addr: "standby"})
	// The catalog page lists both.
	waitFor(t, 10*time.Second, func() bool {
		_, page, err := get(base + "/")
		return err == nil && strings.Contains(page, p.sc.addr+" active") && strings.Contains(page, standby.addr+" standby")
	})
	// It relays and answers calls.
	conn := connect(t, standby.url(p.db, "postgres"))
	if _, err := conn.Exec(context.Background(), "INSERT INTO items VALUES (2, 'two')"); err != nil {
		t.Fatal(err)
	}
	var version string
	if err := conn.QueryRow(context.Background(), "SELECT rejot.version()").Scan(&version); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // a standby that tried the slot would have by now
	for _, s := range []string{"capture started", "is active for PID"} {
		if strings.Contains(standby.logs(), s) {
			t.Fatalf("the standby's log says %q: it went for the slot", s)
		}
	}
	// A clean stop of the active one hands over.
	p.sc.cmd.Process.Signal(syscall.SIGTERM)
	p.sc.cmd.Wait()
	waitFor(t, 20*time.Second, func() bool {
		_, r := readyz(t, base)
		return r.Checks["capture"] == "ok" && strings.Contains(standby.logs(), "capture started")
	})
	pr.roles(t, standby, map[string]string{standby.addr: "active"})
}
