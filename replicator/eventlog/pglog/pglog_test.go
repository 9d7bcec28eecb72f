package pglog

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/internal/pgtest"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &pg, pgtest.Options{})) }

func open(t testing.TB) (*Log, string) {
	t.Helper()
	db := pg.CreateDB(t)
	l, err := Open(context.Background(), pg.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return l, db
}

func v(s string) eventlog.Value { return &s }

func upsert(key string, row ...eventlog.Value) eventlog.Change {
	return eventlog.Change{Op: eventlog.OpUpsert, Key: []eventlog.Value{v(key)}, Row: append([]eventlog.Value{v(key)}, row...)}
}

func del(key string) eventlog.Change {
	return eventlog.Change{Op: eventlog.OpDelete, Key: []eventlog.Value{v(key)}}
}

var orders = eventlog.Version{Publication: "orders", Number: 1}

func group(lsn uint64, changes ...eventlog.Change) eventlog.Group {
	return eventlog.Group{Version: orders, System: "shop", CommitLSN: lsn, CommitTime: time.Unix(1700000000, 0).UTC(),
		Layout: layoutOf(changes), Changes: changes}
}

// layoutOf is the layout of the rows changes upsert (two values unless
// one says otherwise), keyed by the first value, as upsert writes them.
func layoutOf(changes []eventlog.Change) eventlog.Layout {
	for _, c := range changes {
		if c.Op == eventlog.OpUpsert {
			return eventlog.Layout{Columns: len(c.Row), Key: []int{0}}
		}
	}
	return eventlog.Layout{Columns: 2, Key: []int{0}}
}

// state renders a stream's compacted state.
func state(t testing.TB, l *Log, s eventlog.Version) (string, int64) {
	t.Helper()
	var rows []string
	head, err := l.State(context.Background(), s, func(row []eventlog.Value) error {
		rows = append(rows, renderRow(row))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(rows, " | "), head
}

func TestAppendCompactsAndOrders(t *testing.T) {
	l, _ := open(t)
	ctx := context.Background()
	steps := []struct {
		g     eventlog.Group
		state string
		head  int64
	}{
		{group(100, upsert("1", v("a")), upsert("2", v("b"))), `"1","a" | "2","b"`, 2},
		{group(200, upsert("1", v("a2")), del("2"), upsert("3", nil)), `"1","a2" | "3",NULL`, 5},
		{group(300, upsert("4", v("")), upsert("4", v("d")), del("4"), upsert("4", v("last"))), `"1","a2" | "3",NULL | "4","last"`, 9},
		{group(400, upsert("5", v("x")), eventlog.Change{Op: eventlog.OpTruncate}, upsert("6", v("after"))), `"6","after"`, 12},
	}
	for i, st := range steps {
		n, err := l.Append(ctx, []eventlog.Group{st.g})
		if err != nil || n != 1 {
			t.Fatalf("step %d: appended %d, %v", i, n, err)
		}
		got, head := state(t, l, orders)
		if got != st.state || head != st.head {
			t.Fatalf("step %d: state %s at %d, want %s at %d", i, got, head, st.state, st.head)
		}
	}
	recs, err := l.Changes(ctx, orders, 4, 100)
	if err != nil || len(recs) != 8 || recs[0].Position != 5 || recs[0].Op != eventlog.OpUpsert || recs[0].CommitLSN != 200 {
		t.Fatalf("changes after 4: %+v, %v", recs, err)
	}
	if recs[0].Row[1] != nil {
		t.Fatalf("NULL came back as %q", *recs[0].Row[1])
	}
	if recs[3].Op != eventlog.OpDelete || recs[3].Row != nil || *recs[3].Key[0] != "4" || recs[6].Op != eventlog.OpTruncate {
		t.Fatalf("delete and truncate records: %+v", recs)
	}
}

// TestAppendIsIdempotent: replaying a source transaction after a crash
// writes nothing twice.
func TestAppendIsIdempotent(t *testing.T) {
	l, _ := open(t)
	ctx := context.Background()
	g := group(100, upsert("1", v("a")))
	other := eventlog.Group{Version: eventlog.Version{Publication: "orders", Number: 2}, System: "shop", CommitLSN: 100,
		Layout: eventlog.Layout{Columns: 2, Key: []int{0}}, Changes: []eventlog.Change{upsert("1", v("a"))}}
	if n, err := l.Append(ctx, []eventlog.Group{g, other}); err != nil || n != 2 {
		t.Fatalf("first append: %d, %v", n, err)
	}
	if n, err := l.Append(ctx, []eventlog.Group{g, other}); err != nil || n != 0 {
		t.Fatalf("replay: %d, %v", n, err)
	}
	if _, head := state(t, l, orders); head != 1 {
		t.Fatalf("head %d after replay", head)
	}
	// The same LSN from another system is another transaction.
	g.System = "other"
	if n, _ := l.Append(ctx, []eventlog.Group{g}); n != 1 {
		t.Fatal("another system's transaction was taken for a replay")
	}
}

// TestValuesRoundTripExactly: text values come back byte for byte; NULL
// and the empty string stay distinct.
func TestValuesRoundTripExactly(t *testing.T) {
	l, _ := open(t)
	ctx := context.Background()
	values := []eventlog.Value{v(""), nil, v("12.3400"), v("NaN"), v("-Infinity"), v("infinity"),
		v(`\x00ff10`), v(`{"a": [1, 2.50]}`), v(`{1,NULL,"x,y"}`), v("2024-02-29 23:59:59.999999+00"),
		v("ünïcödé ✓ 😀"), v("quote ' double \" backslash \\ tab \t newline \n"), v("\u2028\u2029<>&")}
	if _, err := l.Append(ctx, []eventlog.Group{group(1, eventlog.Change{Op: eventlog.OpUpsert, Key: values[:1], Row: values})}); err != nil {
		t.Fatal(err)
	}
	var got []eventlog.Value
	l.State(ctx, orders, func(row []eventlog.Value) error { got = row; return nil })
	recs, _ := l.Changes(ctx, orders, 0, 1)
	for _, back := range [][]eventlog.Value{got, recs[0].Row} {
		if len(back) != len(values) {
			t.Fatalf("got %d values", len(back))
		}
		for i := range values {
			if (values[i] == nil) != (back[i] == nil) || (values[i] != nil && *values[i] != *back[i]) {
				t.Errorf("value %d: got %v, want %v", i, deref(back[i]), deref(values[i]))
			}
		}
	}
}

func deref(p *string) any {
	if p == nil {
		return nil
	}
	return *p
}

// TestAppendNotifies: listeners learn of an append when it commits.
func TestAppendNotifies(t *testing.T) {
	l, db := open(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "LISTEN "+Channel); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(ctx, []eventlog.Group{group(7, upsert("1", v("a")), upsert("2", v("b")))}); err != nil {
		t.Fatal(err)
	}
	n, err := conn.WaitForNotification(ctx)
	if err != nil || n.Payload != "orders/1/2" {
		t.Fatalf("notification %+v, %v", n, err)
	}
}

// TestConcurrentAppendsKeepPositionsDense: appenders racing on one stream
// get distinct, gap-free positions.
func TestConcurrentAppendsKeepPositionsDense(t *testing.T) {
	l, _ := open(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				lsn := uint64(w*1000 + i + 1)
				g := group(lsn, upsert(fmt.Sprint(lsn), v("x")))
				g.System = fmt.Sprint("shop", w) // each system appends in its own commit order
				if _, err := l.Append(ctx, []eventlog.Group{g}); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	recs, err := l.Changes(ctx, orders, 0, 1000)
	if err != nil || len(recs) != 100 {
		t.Fatalf("%d records, %v", len(recs), err)
	}
	for i, r := range recs {
		if r.Position != int64(i+1) {
			t.Fatalf("position %d at index %d", r.Position, i)
		}
	}
}

// renderRow prints values quoted, NULL bare, comma-separated.
func renderRow(row []eventlog.Value) string {
	cells := make([]string, len(row))
	for i, c := range row {
		if c == nil {
			cells[i] = "NULL"
		} else {
			cells[i] = fmt.Sprintf("%q", *c)
		}
	}
	return strings.Join(cells, ",")
}

// TestPruneKeepsWhatReadersNeed: changes every reader has read go; with a
// reader at 0 (copying) nothing goes; with no reader, all of them (the
// compacted state serves new subscribers), the state untouched.
func TestPruneKeepsWhatReadersNeed(t *testing.T) {
	l, _ := open(t)
	ctx := context.Background()
	s := eventlog.Version{Publication: "prune", Number: 1}
	for lsn := uint64(1); lsn <= 5; lsn++ {
		g := group(lsn, upsert(fmt.Sprint(lsn), v("x")))
		g.Version = s
		if _, err := l.Append(ctx, []eventlog.Group{g}); err != nil {
			t.Fatal(err)
		}
	}
	count := func() int {
		recs, err := l.Changes(ctx, s, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		return len(recs)
	}
	if err := l.SetReader(ctx, s, "a/t", 0); err != nil {
		t.Fatal(err)
	}
	if err := l.SetReader(ctx, s, "b/t", 4); err != nil {
		t.Fatal(err)
	}
	if n, err := l.Prune(ctx, s); err != nil || n != 0 || count() != 5 {
		t.Fatalf("pruned %d (%v) with a reader at 0", n, err)
	}
	if err := l.SetReader(ctx, s, "a/t", 2); err != nil {
		t.Fatal(err)
	}
	if n, _ := l.Prune(ctx, s); n != 2 || count() != 3 {
		t.Fatalf("pruned %d, %d left", n, count())
	}
	if err := l.KeepReaders(ctx, "a/", nil); err != nil {
		t.Fatal(err)
	}
	if n, _ := l.Prune(ctx, s); n != 2 || count() != 1 {
		t.Fatalf("pruned %d, %d left", n, count())
	}
	if err := l.SetReader(ctx, s, "b/t", -1); err != nil {
		t.Fatal(err)
	}
	if n, _ := l.Prune(ctx, s); n != 1 || count() != 0 {
		t.Fatalf("pruned %d, %d left", n, count())
	}
	if st, head := state(t, l, s); head != 5 || strings.Count(st, "x") != 5 {
		t.Fatalf("state %s at %d", st, head)
	}
	// The groups went with their changes; a replay is still known.
	var groups int
	l.pool.QueryRow(ctx, "SELECT count(*) FROM rejot_log.change_groups g JOIN rejot_log.streams s ON s.id = g.stream WHERE s.publication = 'prune'").Scan(&groups)
	if groups != 0 {
		t.Fatalf("%d groups left", groups)
	}
	g := group(3, upsert("3", v("again")))
	g.Version = s
	if n, err := l.Append(ctx, []eventlog.Group{g}); err != nil || n != 0 {
		t.Fatalf("a replay of a pruned group was appended: %d, %v", n, err)
	}
}

// TestKeysPrintLikeJsonb: keys are written as Postgres prints jsonb, so
// they equal the keys an older log stored as jsonb, byte for byte.
func TestKeysPrintLikeJsonb(t *testing.T) {
	conn := pg.Connect(t, "postgres")
	values := []eventlog.Value{v(""), v("plain"), nil, v(`quo"te back\slash`), v("tab\tnl\ncr\rbs\bff\f"),
		v("\x01\x1f\x7f"), v("ünïcödé 💡 <&> \u2028"), v("[1, 2]")}
	got, _ := encode(values)
	var want string
	args := make([]any, len(values))
	params := make([]string, len(values))
	for i, x := range values {
		args[i] = x
		params[i] = fmt.Sprintf("$%d::text", i+1)
	}
	if err := conn.QueryRow(context.Background(), "SELECT jsonb_build_array("+strings.Join(params, ", ")+")::text", args...).Scan(&want); err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("encoded %s\nPostgres %s", got, want)
	}
}

// TestReadFoldsInWhatCompactionWould: reading the state (the table plus
// the changes not compacted yet, folded in on the way) gives what the
// compaction then writes, through random upserts, deletes, key reuse and
// truncates, with a key of two columns.
func TestReadFoldsInWhatCompactionWould(t *testing.T) {
	l, _ := open(t)
	ctx := context.Background()
	s := eventlog.Version{Publication: "fold", Number: 1}
	layout := eventlog.Layout{Columns: 4, Key: []int{2, 0}}
	rng := rand.New(rand.NewPCG(7, 11))
	key := func() (a, b string) { return strconv.Itoa(rng.IntN(4)), strconv.Itoa(rng.IntN(5)) }
	lsn := uint64(1)
	for round := range 40 {
		var changes []eventlog.Change
		for range 1 + rng.IntN(8) {
			a, b := key()
			switch r := rng.IntN(20); {
			case r == 0:
				changes = append(changes, eventlog.Change{Op: eventlog.OpTruncate})
			case r < 7:
				changes = append(changes, eventlog.Change{Op: eventlog.OpDelete, Key: []eventlog.Value{v(b), v(a)}})
			default:
				var note eventlog.Value
				if rng.IntN(3) > 0 {
					note = v(fmt.Sprintf("n%d \\ \"q\"\t%d", round, rng.IntN(100)))
				}
				changes = append(changes, eventlog.Change{Op: eventlog.OpUpsert, Key: []eventlog.Value{v(b), v(a)},
					Row: []eventlog.Value{v(a), note, v(b), v(strconv.Itoa(round))}})
			}
		}
		lsn++
		if _, err := l.Append(ctx, []eventlog.Group{{Version: s, System: "shop", CommitLSN: lsn, Layout: layout, Changes: changes}}); err != nil {
			t.Fatal(err)
		}
		read, head := state(t, l, s)
		if rng.IntN(3) == 0 || round == 39 {
			if _, err := l.pool.Exec(ctx, "SELECT rejot_log.compact(id) FROM rejot_log.streams WHERE publication = 'fold'"); err != nil {
				t.Fatal(err)
			}
			var compacted []string
			rows, err := l.pool.Query(ctx, "SELECT r FROM rejot_log.state_rows('fold', 1) AS r")
			if err != nil {
				t.Fatal(err)
			}
			var row []eventlog.Value
			pgx.ForEachRow(rows, []any{&row}, func() error { compacted = append(compacted, renderRow(row)); return nil })
			if got := strings.Join(compacted, " | "); got != read {
				t.Fatalf("round %d (head %d): read\n%s\ncompacted\n%s", round, head, read, got)
			}
		}
	}
}

// TestStateTablesReadableAsChanges: a role that may read the change log
// may read the state tables the log makes later (sidecars sharing the
// log under roles of their own), and others may not.
func TestStateTablesReadableAsChanges(t *testing.T) {
	l, db := open(t)
	ctx := context.Background()
	conn := pg.Connect(t, db)
	reader, other := "reader_"+db, "other_"+db
	if _, err := conn.Exec(ctx, fmt.Sprintf(`CREATE ROLE %s; CREATE ROLE %s;
		GRANT USAGE ON SCHEMA rejot_log TO %s, %s; GRANT SELECT ON rejot_log.changes TO %s`, reader, other, reader, other, reader)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Exec(context.Background(), fmt.Sprintf("DROP OWNED BY %s, %s; DROP ROLE %s, %s", reader, other, reader, other))
	})
	if _, err := l.Append(ctx, []eventlog.Group{group(1, upsert("1", v("a")))}); err != nil {
		t.Fatal(err)
	}
	for role, want := range map[string]bool{reader: true, other: false} {
		var can bool
		if err := conn.QueryRow(ctx, `SELECT has_table_privilege($1, format('rejot_log.state_%s', id), 'SELECT')
			FROM rejot_log.streams WHERE publication = 'orders'`, role).Scan(&can); err != nil {
			t.Fatal(err)
		}
		if can != want {
			t.Errorf("%s may read the state: %v, want %v", role, can, want)
		}
	}
}

// TestAnotherProcessAppended: what a log remembers of its appends is
// forgotten on request (a publisher starting), so a replay of what
// another process appended meanwhile is still known as one.
func TestAnotherProcessAppended(t *testing.T) {
	a, db := open(t)
	ctx := context.Background()
	if _, err := a.Append(ctx, []eventlog.Group{group(100, upsert("1", v("a")))}); err != nil {
		t.Fatal(err)
	}
	b, err := Open(ctx, pg.URL(db)) // another sidecar process with the slot
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if n, err := b.Append(ctx, []eventlog.Group{group(200, upsert("2", v("b")))}); err != nil || n != 1 {
		t.Fatalf("b: %d, %v", n, err)
	}
	a.Forget()
	if n, err := a.Append(ctx, []eventlog.Group{group(200, upsert("2", v("b")))}); err != nil || n != 0 {
		t.Fatalf("a replay of what the other process appended was appended again: %d, %v", n, err)
	}
	if _, head := state(t, a, orders); head != 2 {
		t.Fatalf("head %d", head)
	}
}

// TestFetchIsNextAndRead: Fetch returns the span Next finds and the
// changes Read gives for it, whatever the limit and the group sizes; a
// first group larger than the limit comes without its changes, and a
// pruned start is ErrPruned.
func TestFetchIsNextAndRead(t *testing.T) {
	l, _ := open(t)
	ctx := context.Background()
	s := eventlog.Version{Publication: "fetch", Number: 1}
	sizes := []int{1, 3, 1, 7, 2, 2, 1, 12, 1}
	var groups []eventlog.Group
	for i, n := range sizes {
		var changes []eventlog.Change
		for j := range n {
			changes = append(changes, upsert(fmt.Sprint(i*100+j), v("x")))
		}
		g := group(uint64(i+1), changes...)
		g.Version, g.CommitTime = s, g.CommitTime.Add(time.Duration(i)*time.Second)
		groups = append(groups, g)
	}
	if _, err := l.Append(ctx, groups); err != nil {
		t.Fatal(err)
	}
	head, err := l.Head(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	for after := int64(0); after <= head; after++ {
		for _, limit := range []int{1, 2, 3, 5, 8, 13, 100} {
			want, err := l.Next(ctx, s, after, limit)
			if err != nil {
				t.Fatal(err)
			}
			var wantRecs []eventlog.Entry
			if want.Groups > 0 {
				if err := l.Read(ctx, s, want, func(r []eventlog.Entry) error {
					wantRecs = append(wantRecs, r...)
					return nil
				}); err != nil && !errors.Is(err, eventlog.ErrPruned) {
					t.Fatal(err)
				}
			}
			got, recs, err := l.Fetch(ctx, s, after, limit)
			if wantRecs == nil && want.Groups > 0 {
				// after is inside a group: Read finds its start missing.
				if !errors.Is(err, eventlog.ErrPruned) {
					t.Fatalf("after %d, limit %d: %v, want ErrPruned", after, limit, err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("after %d, limit %d: %v", after, limit, err)
			}
			if got != want {
				t.Fatalf("after %d, limit %d: span %+v, want %+v", after, limit, got, want)
			}
			if big := want.Groups == 1 && want.Upto-want.After > int64(limit); big {
				if recs != nil {
					t.Fatalf("after %d, limit %d: a group larger than the limit came with its changes", after, limit)
				}
				continue
			}
			if renderRecords(recs) != renderRecords(wantRecs) {
				t.Fatalf("after %d, limit %d: changes %s, want %s", after, limit, renderRecords(recs), renderRecords(wantRecs))
			}
		}
	}
}

func renderRecords(recs []eventlog.Entry) string {
	var b strings.Builder
	for _, r := range recs {
		fmt.Fprintf(&b, "%d %c %d %s [%s] [%s]; ", r.Position, r.Op, r.CommitLSN, r.CommitTime.Format(time.RFC3339), renderRow(r.Key), renderRow(r.Row))
	}
	return b.String()
}

// TestFillAfterFailover: the owner's server failed over to a standby
// whose WAL is behind what was appended (its LSNs restart lower). The
// capture fills the version again at the new server's point: that state
// is taken, and the new server's transactions after it count as new, not
// as replays of the old primary's — with a fresh Log (another process)
// and with the one that filled.
func TestFillAfterFailover(t *testing.T) {
	l, db := open(t)
	ctx := context.Background()
	if _, err := l.Append(ctx, []eventlog.Group{group(1000, upsert("1", v("old primary")))}); err != nil {
		t.Fatal(err)
	}
	tx, err := l.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fill := group(499, eventlog.Change{Op: eventlog.OpTruncate}, upsert("1", v("promoted")))
	if err := tx.Fill(ctx, fill); err != nil {
		t.Fatal(err)
	}
	if err := tx.SetFilled(ctx, orders, "shop", "definition", 499); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := state(t, l, orders); got != `"1","promoted"` {
		t.Fatalf("state after the fill: %s", got)
	}
	if n, err := l.Append(ctx, []eventlog.Group{group(600, upsert("2", v("after")))}); err != nil || n != 1 {
		t.Fatalf("a transaction of the new primary after the fill: %d appended, %v", n, err)
	}
	other, err := Open(ctx, pg.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if n, err := other.Append(ctx, []eventlog.Group{group(700, upsert("3", v("later")))}); err != nil || n != 1 {
		t.Fatalf("from another process: %d appended, %v", n, err)
	}
	if n, _ := other.Append(ctx, []eventlog.Group{group(600, upsert("2", v("after")))}); n != 0 {
		t.Fatal("a replay after the fill was appended again")
	}
	if got, _ := state(t, l, orders); got != `"1","promoted" | "2","after" | "3","later"` {
		t.Fatalf("state: %s", got)
	}
}
