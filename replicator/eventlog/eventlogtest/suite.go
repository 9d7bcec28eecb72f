// Package eventlogtest is the contract every event log engine is held
// to: one suite of tests, written against eventlog.Log alone, that each
// engine's own tests run on a real store (pglog on a throwaway Postgres
// database, natslog on in-process JetStream servers).
package eventlogtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// Store makes an empty store for one test and returns how to open a log
// on it (each open is closed when the test ends).
type Store func(t testing.TB) (open func() eventlog.Log)

// Run runs the contract's tests.
func Run(t *testing.T, store Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, open func() eventlog.Log)
	}{
		{"AppendOrdersAndCompacts", testAppendOrdersAndCompacts},
		{"AppendIsIdempotent", testAppendIsIdempotent},
		{"ValuesRoundTripExactly", testValuesRoundTripExactly},
		{"LargeGroupIsWholeAndAtomic", testLargeGroupIsWholeAndAtomic},
		{"RollbackLeavesNothing", testRollbackLeavesNothing},
		{"FirstStateInParts", testFirstStateInParts},
		{"PruneKeepsWhatReadersNeed", testPruneKeepsWhatReadersNeed},
		{"CopyThenStreamConverges", testCopyThenStreamConverges},
		{"OverlappingAppendsOfOneSystem", testOverlappingAppends},
		{"WaitWakesOnAppend", testWaitWakesOnAppend},
		{"KeepAndRecall", testKeepAndRecall},
		{"PendingAndWidth", testPendingAndWidth},
		{"ReaderAheadOfTheLog", testReaderAheadOfTheLog},
		{"ChangedLayoutRefused", testChangedLayoutRefused},
		{"BaseStates", testBaseStates},
		{"BaseReferrerPages", testBaseReferrerPages},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, store(t)) })
	}
}

// V is a text value.
func V(s string) eventlog.Value { return &s }

var orders = eventlog.Version{Publication: "orders", Number: 1}

func upsert(key string, row ...eventlog.Value) eventlog.Change {
	return eventlog.Change{Op: eventlog.OpUpsert, Key: []eventlog.Value{V(key)}, Row: append([]eventlog.Value{V(key)}, row...)}
}

func del(key string) eventlog.Change {
	return eventlog.Change{Op: eventlog.OpDelete, Key: []eventlog.Value{V(key)}}
}

var truncate = eventlog.Change{Op: eventlog.OpTruncate}

var layout2 = eventlog.Layout{Columns: 2, Key: []int{0}}

func group(lsn uint64, changes ...eventlog.Change) eventlog.Group {
	return eventlog.Group{Version: orders, System: "shop", CommitLSN: lsn, CommitTime: time.Unix(1700000000+int64(lsn), 0).UTC(),
		Layout: layout2, Changes: changes}
}

func mustAppend(t testing.TB, l eventlog.Log, want int, groups ...eventlog.Group) {
	t.Helper()
	n, err := eventlog.Append(context.Background(), l, groups)
	if err != nil || n != want {
		t.Fatalf("append: %d new, %v; want %d", n, err, want)
	}
}

// State renders a version's compacted state, rows sorted, and its position.
func State(t testing.TB, l eventlog.Reader, v eventlog.Version, columns int) (string, int64) {
	t.Helper()
	rows, at := stateRows(t, l, v, columns)
	var out []string
	for _, r := range rows {
		out = append(out, render(r))
	}
	slices.Sort(out)
	return strings.Join(out, " | "), at
}

func stateRows(t testing.TB, l eventlog.Reader, v eventlog.Version, columns int) ([][]eventlog.Value, int64) {
	t.Helper()
	elements := make([]int, columns)
	for i := range elements {
		elements[i] = i
	}
	var buf bytes.Buffer
	at, err := l.CopyState(context.Background(), v, elements, &buf)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := ParseCopy(buf.String())
	if err != nil {
		t.Fatal(err)
	}
	return rows, at
}

func render(row []eventlog.Value) string {
	parts := make([]string, len(row))
	for i, v := range row {
		if v == nil {
			parts[i] = "NULL"
		} else {
			parts[i] = fmt.Sprintf("%q", *v)
		}
	}
	return strings.Join(parts, ",")
}

// ParseCopy decodes COPY text data.
func ParseCopy(data string) ([][]eventlog.Value, error) {
	var rows [][]eventlog.Value
	for line := range strings.SplitSeq(strings.TrimSuffix(data, "\n"), "\n") {
		if line == "" && data == "" {
			break
		}
		var row []eventlog.Value
		for field := range strings.SplitSeq(line, "\t") {
			if field == `\N` {
				row = append(row, nil)
				continue
			}
			var b strings.Builder
			for i := 0; i < len(field); i++ {
				if field[i] != '\\' || i+1 == len(field) {
					b.WriteByte(field[i])
					continue
				}
				i++
				switch field[i] {
				case 'n':
					b.WriteByte('\n')
				case 'r':
					b.WriteByte('\r')
				case 't':
					b.WriteByte('\t')
				case '\\':
					b.WriteByte('\\')
				default:
					return nil, fmt.Errorf("unexpected escape \\%c", field[i])
				}
			}
			row = append(row, V(b.String()))
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// changes fetches every change after a position, whole groups at a time.
func changes(t testing.TB, l eventlog.Reader, v eventlog.Version, after int64) []eventlog.Entry {
	t.Helper()
	all, err := readChanges(l, v, after)
	if err != nil {
		t.Fatal(err)
	}
	return all
}

// readChanges reads every change of v after a position, to the head.
func readChanges(l eventlog.Reader, v eventlog.Version, after int64) ([]eventlog.Entry, error) {
	ctx := context.Background()
	var all []eventlog.Entry
	for {
		span, recs, err := l.Fetch(ctx, v, after, 1000)
		if err != nil {
			return all, err
		}
		if span.Groups == 0 {
			return all, nil
		}
		if recs == nil {
			err = l.Read(ctx, v, span, func(e []eventlog.Entry) error { recs = append(recs, e...); return nil })
			if err != nil {
				return all, err
			}
		}
		all = append(all, recs...)
		after = span.Upto
	}
}

func testAppendOrdersAndCompacts(t *testing.T, open func() eventlog.Log) {
	l := open()
	steps := []struct {
		g     eventlog.Group
		state string
		head  int64
	}{
		{group(100, upsert("1", V("a")), upsert("2", V("b"))), `"1","a" | "2","b"`, 2},
		{group(200, upsert("1", V("a2")), del("2"), upsert("3", nil)), `"1","a2" | "3",NULL`, 5},
		{group(300, upsert("4", V("")), upsert("4", V("d")), del("4"), upsert("4", V("last"))), `"1","a2" | "3",NULL | "4","last"`, 9},
		{group(400, upsert("5", V("x")), truncate, upsert("6", V("after"))), `"6","after"`, 12},
	}
	for i, st := range steps {
		mustAppend(t, l, 1, st.g)
		got, head := State(t, l, orders, 2)
		if got != st.state || head != st.head {
			t.Fatalf("step %d: state %s at %d, want %s at %d", i, got, head, st.state, st.head)
		}
	}
	recs := changes(t, l, orders, 2)
	if len(recs) != 10 || recs[0].Position != 3 || recs[0].Op != eventlog.OpUpsert || recs[0].CommitLSN != 200 {
		t.Fatalf("changes after 2: %+v", recs)
	}
	if recs[2].Row[1] != nil {
		t.Fatalf("NULL came back as %q", *recs[2].Row[1])
	}
	if recs[1].Op != eventlog.OpDelete || *recs[1].Key[0] != "2" || recs[8].Op != eventlog.OpTruncate {
		t.Fatalf("delete and truncate records: %+v", recs)
	}
	for i, r := range recs {
		if r.Position != int64(i+3) {
			t.Fatalf("positions are not dense: %d at %d", r.Position, i)
		}
	}
	// Whole groups per fetch: a limit inside the second group stops at the first.
	span, got, err := l.Fetch(context.Background(), orders, 0, 3)
	if err != nil || span.Groups != 1 || span.Upto != 2 || len(got) != 2 {
		t.Fatalf("fetch with a limit inside a group: %+v, %d changes, %v", span, len(got), err)
	}
	if head, err := l.Head(context.Background(), orders); err != nil || head != 12 {
		t.Fatalf("head %d, %v", head, err)
	}
}

func testAppendIsIdempotent(t *testing.T, open func() eventlog.Log) {
	l := open()
	g := group(100, upsert("1", V("a")))
	other := g
	other.Version = eventlog.Version{Publication: "orders", Number: 2}
	mustAppend(t, l, 2, g, other)
	mustAppend(t, l, 0, g, other)
	// A log opened anew (a capture restarting) tells the replay too.
	again := open()
	again.Forget()
	mustAppend(t, again, 0, g, group(50, upsert("9", V("old"))))
	if _, head := State(t, again, orders, 2); head != 1 {
		t.Fatalf("head %d after replays", head)
	}
	// The same LSN from another system is another transaction.
	g.System = "other"
	mustAppend(t, again, 1, g)
}

func testValuesRoundTripExactly(t *testing.T, open func() eventlog.Log) {
	l := open()
	values := []eventlog.Value{V(""), nil, V("12.3400"), V("NaN"), V("-Infinity"), V("infinity"),
		V(`\x00ff10`), V(`{"a": [1, 2.50]}`), V(`{1,NULL,"x,y"}`), V("2024-02-29 23:59:59.999999+00"),
		V("ünïcödé ✓ 😀"), V("quote ' double \" backslash \\ tab \t newline \n cr \r"), V("\u2028\u2029<>&"), V(`\N`)}
	g := group(1, eventlog.Change{Op: eventlog.OpUpsert, Key: values[:1], Row: values})
	g.Layout = eventlog.Layout{Columns: len(values), Key: []int{0}}
	mustAppend(t, l, 1, g)
	rows, _ := stateRows(t, l, orders, len(values))
	recs := changes(t, l, orders, 0)
	if len(rows) != 1 || len(recs) != 1 {
		t.Fatalf("%d rows, %d changes", len(rows), len(recs))
	}
	for _, back := range [][]eventlog.Value{rows[0], recs[0].Row} {
		if len(back) != len(values) {
			t.Fatalf("got %d values", len(back))
		}
		for i := range values {
			if (values[i] == nil) != (back[i] == nil) || (values[i] != nil && *values[i] != *back[i]) {
				t.Errorf("value %d: got %s, want %s", i, render(back[i:i+1]), render(values[i:i+1]))
			}
		}
	}
}

// testLargeGroupIsWholeAndAtomic: a source transaction appended in parts,
// larger than any one message or fetch, is seen whole or not at all.
func testLargeGroupIsWholeAndAtomic(t *testing.T, open func() eventlog.Log) {
	l := open()
	ctx := context.Background()
	mustAppend(t, l, 1, group(10, upsert("before", V("before"))))
	tx, err := l.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	pad := strings.Repeat("x", 300)
	const parts, per = 6, 2000 // about 3.6 MB: several messages of any engine
	for p := range parts {
		var cs []eventlog.Change
		for i := range per {
			cs = append(cs, upsert(fmt.Sprint(p*per+i), V(pad)))
		}
		if err := tx.Append(ctx, []eventlog.Group{group(20, cs...)}); err != nil {
			t.Fatal(err)
		}
		if head, _ := l.Head(ctx, orders); head != 1 {
			t.Fatalf("part %d: the head moved to %d before the commit", p, head)
		}
	}
	if span, recs, err := l.Fetch(ctx, orders, 1, 100); err != nil || span.Groups != 0 || len(recs) != 0 {
		t.Fatalf("before the commit a reader sees %+v, %d changes, %v", span, len(recs), err)
	}
	if n, err := tx.Commit(ctx); err != nil || n != 1 {
		t.Fatalf("commit: %d, %v", n, err)
	}
	span, recs, err := l.Fetch(ctx, orders, 1, 100)
	if err != nil || span.Groups != 1 || span.Upto != 1+parts*per || recs != nil {
		t.Fatalf("fetch of the large group: %+v, %d changes, %v", span, len(recs), err)
	}
	next := int64(2)
	err = l.Read(ctx, orders, span, func(es []eventlog.Entry) error {
		for _, e := range es {
			if e.Position != next || e.CommitLSN != 20 {
				return fmt.Errorf("change at %d (lsn %d), want %d", e.Position, e.CommitLSN, next)
			}
			next++
		}
		return nil
	})
	if err != nil || next != 2+parts*per {
		t.Fatalf("read: up to %d, %v", next, err)
	}
	rows, at := stateRows(t, l, orders, 2)
	if len(rows) != 1+parts*per || at != 1+parts*per {
		t.Fatalf("state: %d rows at %d", len(rows), at)
	}
}

func testRollbackLeavesNothing(t *testing.T, open func() eventlog.Log) {
	l := open()
	ctx := context.Background()
	mustAppend(t, l, 1, group(10, upsert("1", V("a"))))
	tx, err := l.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var cs []eventlog.Change
	for i := range 5000 {
		cs = append(cs, upsert(fmt.Sprint(i+100), V(strings.Repeat("y", 300))))
	}
	if err := tx.Append(ctx, []eventlog.Group{group(20, cs...)}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	// Tried again (from the slot), smaller this time.
	mustAppend(t, l, 2, group(20, upsert("2", V("b"))), group(30, upsert("3", V("c"))))
	mustAppend(t, l, 1, group(30, upsert("3", V("c"))), group(40, del("1")))
	got, head := State(t, l, orders, 2)
	if got != `"2","b" | "3","c"` || head != 4 {
		t.Fatalf("state %s at %d", got, head)
	}
	recs := changes(t, l, orders, 0)
	var lsns []uint64
	for _, r := range recs {
		lsns = append(lsns, r.CommitLSN)
	}
	if !slices.Equal(lsns, []uint64{10, 20, 30, 40}) {
		t.Fatalf("the log holds %v", lsns)
	}
}

func testFirstStateInParts(t *testing.T, open func() eventlog.Log) {
	l := open()
	ctx := context.Background()
	mustAppend(t, l, 1, group(100, upsert("old", V("gone"))))
	tx, err := l.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fill := group(50, truncate)
	for i := range 3000 {
		fill.Changes = append(fill.Changes, upsert(fmt.Sprint(i), V("f")))
		if len(fill.Changes) == 1000 {
			if err := tx.Fill(ctx, fill); err != nil {
				t.Fatal(err)
			}
			fill.Changes = nil
		}
	}
	if err := tx.Fill(ctx, fill); err != nil {
		t.Fatal(err)
	}
	if err := tx.SetFilled(ctx, orders, "shop", "def", 50); err != nil {
		t.Fatal(err)
	}
	if _, _, ok, _ := l.Filled(ctx, orders, "shop"); ok {
		t.Fatal("filled before the commit")
	}
	if got, _ := State(t, l, orders, 2); got != `"old","gone"` {
		t.Fatalf("before the commit the state is %s", got)
	}
	if _, err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	rows, at := stateRows(t, l, orders, 2)
	if len(rows) != 3000 || at != 3002 {
		t.Fatalf("first state: %d rows at %d", len(rows), at)
	}
	lsn, def, ok, err := l.Filled(ctx, orders, "shop")
	if err != nil || !ok || lsn != 50 || def != "def" {
		t.Fatalf("filled: %d %q %v %v", lsn, def, ok, err)
	}
	// The state is as of LSN 50 now: what commits after it is new.
	mustAppend(t, l, 1, group(60, del("0"), upsert("x", V("new"))))
	rows, at = stateRows(t, l, orders, 2)
	if len(rows) != 3000 || at != 3004 {
		t.Fatalf("after the first state: %d rows at %d", len(rows), at)
	}
	if recs := changes(t, l, orders, 3002); len(recs) != 2 || recs[0].CommitLSN != 60 {
		t.Fatalf("changes after the first state: %+v", recs)
	}
}

func testPruneKeepsWhatReadersNeed(t *testing.T, open func() eventlog.Log) {
	l := open()
	ctx := context.Background()
	for i := range 10 {
		mustAppend(t, l, 1, group(uint64(100+i), upsert(fmt.Sprint(i%4), V(fmt.Sprint(i)))))
	}
	if err := l.SetReader(ctx, orders, "billing/t", 6); err != nil {
		t.Fatal(err)
	}
	if err := l.SetReader(ctx, orders, "ops/t", 8); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Prune(ctx, orders); err != nil {
		t.Fatal(err)
	}
	if recs := changes(t, l, orders, 6); len(recs) != 4 || recs[0].Position != 7 {
		t.Fatalf("the slowest reader lost changes: %+v", recs)
	}
	if _, _, err := l.Fetch(ctx, orders, 0, 100); !errors.Is(err, eventlog.ErrPruned) {
		t.Fatalf("fetch of pruned changes: %v, want ErrPruned", err)
	}
	// Readers removed meanwhile go; then nothing holds the changes.
	if err := l.KeepReaders(ctx, "billing/", nil); err != nil {
		t.Fatal(err)
	}
	if err := l.SetReader(ctx, orders, "ops/t", -1); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Prune(ctx, orders); err != nil {
		t.Fatal(err)
	}
	// The reader at 6 needs 7 to 10, which are gone: ErrPruned, not an
	// empty span it would wait on for ever.
	if span, _, err := l.Fetch(ctx, orders, 6, 100); !errors.Is(err, eventlog.ErrPruned) || errors.Is(err, eventlog.ErrAhead) {
		t.Fatalf("fetch after pruning everything: %+v, %v, want ErrPruned", span, err)
	}
	if span, recs, err := l.Fetch(ctx, orders, 10, 100); err != nil || span.Groups != 0 || len(recs) != 0 {
		t.Fatalf("fetch at the head after pruning everything: %+v, %d changes, %v; want nothing", span, len(recs), err)
	}
	got, head := State(t, l, orders, 2)
	if got != `"0","8" | "1","9" | "2","6" | "3","7"` || head != 10 {
		t.Fatalf("state after pruning: %s at %d", got, head)
	}
	// Appends go on, and a reader at the head reads them.
	mustAppend(t, l, 1, group(200, del("0")))
	if recs := changes(t, l, orders, 10); len(recs) != 1 || recs[0].Position != 11 {
		t.Fatalf("after pruning: %+v", recs)
	}
	mustAppend(t, l, 0, group(109, upsert("0", V("replay"))))
}

// testCopyThenStreamConverges: subscribers that copy the state while
// appends run, then apply the changes after the copy's position, end with
// exactly the source's rows.
func testCopyThenStreamConverges(t *testing.T, open func() eventlog.Log) {
	l := open()
	ctx := context.Background()
	model := map[string]string{}
	var mu sync.Mutex
	done := make(chan struct{})
	var appendErr error
	go func() {
		defer close(done)
		r := rand.New(rand.NewPCG(1, 2))
		for i := range 300 {
			var cs []eventlog.Change
			mu.Lock()
			for range 1 + r.IntN(5) {
				k := fmt.Sprint(r.IntN(40))
				switch x := r.IntN(20); {
				case x == 0:
					cs = append(cs, truncate)
					clear(model)
				case x < 6:
					cs = append(cs, del(k))
					delete(model, k)
				default:
					val := fmt.Sprint(i)
					cs = append(cs, upsert(k, V(val)))
					model[k] = val
				}
			}
			mu.Unlock()
			if _, err := eventlog.Append(ctx, l, []eventlog.Group{group(uint64(1+i), cs...)}); err != nil {
				appendErr = err
				return
			}
			if i%50 == 25 {
				if _, err := l.Prune(ctx, orders); err != nil {
					appendErr = err
					return
				}
			}
		}
	}()
	reader := open()
	copies, recopies := 0, 0
	for finished := false; !finished; copies++ {
		select {
		case <-done:
			finished = true
		default:
		}
		rows, at := stateRows(t, reader, orders, 2)
		target := map[string]string{}
		for _, r := range rows {
			target[*r[0]] = *r[1]
		}
		// The copier holds no reader, so a prune may remove what follows
		// its copy before it reads it: as a subscriber does, it copies
		// again (the appends have stopped when finished, so this ends).
		recs, err := readChanges(reader, orders, at)
		if errors.Is(err, eventlog.ErrPruned) {
			recopies++
			finished = false
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range recs {
			switch e.Op {
			case eventlog.OpTruncate:
				clear(target)
			case eventlog.OpDelete:
				delete(target, *e.Key[0])
			case eventlog.OpUpsert:
				target[*e.Key[0]] = *e.Row[1]
			}
		}
		if finished {
			if appendErr != nil {
				t.Fatal(appendErr)
			}
			mu.Lock()
			if fmt.Sprint(target) != fmt.Sprint(model) {
				t.Fatalf("after %d copies (%d again after a prune) the target is\n%v\nthe source\n%v", copies, recopies, target, model)
			}
			mu.Unlock()
		}
	}
	t.Logf("%d copies, %d of them again after a prune", copies, recopies)
}

// testOverlappingAppends: two processes append the same system's
// transactions at once (one lost the lease and still finishes a batch).
// One of them is refused (ErrConcurrentAppend); tried again, it skips what
// the other appended; the log holds each transaction once.
func testOverlappingAppends(t *testing.T, open func() eventlog.Log) {
	a, b := open(), open()
	ctx := context.Background()
	mustAppend(t, a, 1, group(100, upsert("1", V("a"))))
	mustAppend(t, b, 0, group(100, upsert("1", V("a")))) // b learns where the system is
	tx, err := a.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Append(ctx, []eventlog.Group{group(200, upsert("2", V("b")))}); err != nil {
		t.Fatal(err)
	}
	bGroups := []eventlog.Group{group(200, upsert("2", V("b"))), group(300, upsert("3", V("c")))}
	done := make(chan error, 1)
	go func() { _, err := eventlog.Append(ctx, b, bGroups); done <- err }()
	// One engine makes b wait for a's commit, the other lets b commit first.
	select {
	case err := <-done:
		done <- err
	case <-time.After(200 * time.Millisecond):
	}
	_, errA := tx.Commit(ctx)
	errB := <-done
	switch {
	case errA == nil && errors.Is(errB, eventlog.ErrConcurrentAppend):
		mustAppend(t, b, 1, bGroups...)
	case errB == nil && errors.Is(errA, eventlog.ErrConcurrentAppend):
		mustAppend(t, a, 0, group(200, upsert("2", V("b"))))
	default:
		t.Fatalf("overlapping appends: a %v, b %v; want one ErrConcurrentAppend", errA, errB)
	}
	var lsns []uint64
	for _, r := range changes(t, b, orders, 0) {
		lsns = append(lsns, r.CommitLSN)
	}
	if !slices.Equal(lsns, []uint64{100, 200, 300}) {
		t.Fatalf("the log holds commit LSNs %v, want [100 200 300]", lsns)
	}
}

func testWaitWakesOnAppend(t *testing.T, open func() eventlog.Log) {
	l, reader := open(), open()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	mustAppend(t, l, 1, group(1, upsert("1", V("a"))))
	reader.Wait(ctx, orders, 10*time.Millisecond) // a first wait sets up what wakes the next
	woke := make(chan struct{})
	go func() { reader.Wait(ctx, orders, time.Hour); close(woke) }()
	for i := uint64(2); ; i++ {
		mustAppend(t, l, 1, group(i, upsert("1", V("b"))))
		select {
		case <-woke:
			return
		case <-ctx.Done():
			t.Fatal("Wait did not return after appends")
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func testKeepAndRecall(t *testing.T, open func() eventlog.Log) {
	l := open()
	ctx := context.Background()
	tx, err := l.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	k1, k2 := []eventlog.Value{V("1")}, []eventlog.Value{V("2")}
	err = tx.Keep(ctx, "shop", []eventlog.Kept{
		{Table: "public.docs", Key: k1, Values: map[string]eventlog.Value{"body": V("one"), "note": nil}},
		{Table: "public.docs", Key: k2, Values: map[string]eventlog.Value{"body": V("two")}},
		{Table: "public.docs", Key: k1, Values: map[string]eventlog.Value{"body": V("stale")}, Missing: true},
		{Table: "public.docs", Key: k2, Gone: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	tx, err = l.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	got, err := tx.Recall(ctx, "shop", "public.docs", [][]eventlog.Value{k1, k2})
	if err != nil {
		t.Fatal(err)
	}
	row := got[eventlog.KeyString(k1)]
	if len(got) != 1 || row["body"] == nil || *row["body"] != "one" || row["note"] != nil {
		t.Fatalf("recalled %v", got)
	}
	if err := tx.Keep(ctx, "shop", []eventlog.Kept{{Table: "public.docs", Gone: true}}); err != nil {
		t.Fatal(err)
	}
	if got, err := tx.Recall(ctx, "shop", "public.docs", [][]eventlog.Value{k1}); err != nil || len(got) != 0 {
		t.Fatalf("after the table went: %v, %v", got, err)
	}
}

func testPendingAndWidth(t *testing.T, open func() eventlog.Log) {
	l := open()
	ctx := context.Background()
	if w, err := l.Width(ctx, orders); err != nil || w != 0 {
		t.Fatalf("width before any append: %d, %v", w, err)
	}
	mustAppend(t, l, 1, group(10, upsert("1", V("a"))))
	mustAppend(t, l, 1, group(20, upsert("2", V("b"))))
	head, oldest, err := l.Pending(ctx, orders, 1)
	if err != nil || head != 2 || !oldest.Equal(group(20).CommitTime) {
		t.Fatalf("pending after 1: %d %v %v", head, oldest, err)
	}
	if head, oldest, err := l.Pending(ctx, orders, 2); err != nil || head != 2 || !oldest.IsZero() {
		t.Fatalf("pending at the head: %d %v %v", head, oldest, err)
	}
	if w, err := l.Width(ctx, orders); err != nil || w != 2 {
		t.Fatalf("width: %d, %v", w, err)
	}
}

func testChangedLayoutRefused(t *testing.T, open func() eventlog.Log) {
	l := open()
	mustAppend(t, l, 1, group(10, upsert("1", V("a"))))
	g := group(20, eventlog.Change{Op: eventlog.OpUpsert, Key: []eventlog.Value{V("2")}, Row: []eventlog.Value{V("2"), V("b"), V("c")}})
	g.Layout = eventlog.Layout{Columns: 3, Key: []int{0}}
	if _, err := eventlog.Append(context.Background(), l, []eventlog.Group{g}); err == nil {
		t.Fatal("a group laid out otherwise than the state was appended")
	}
}

// testReaderAheadOfTheLog: a position past the head (a log that was
// replaced, or restored from an older backup) is ErrAhead, an ErrPruned,
// so the subscriber copies the state; at the head there is nothing yet,
// and what is appended next is read.
func testReaderAheadOfTheLog(t *testing.T, open func() eventlog.Log) {
	l := open()
	ctx := context.Background()
	ahead := func(what string, after int64) {
		t.Helper()
		span, recs, err := l.Fetch(ctx, orders, after, 100)
		if !errors.Is(err, eventlog.ErrAhead) || !errors.Is(err, eventlog.ErrPruned) {
			t.Fatalf("%s: fetch after %d: %+v, %d changes, %v; want ErrAhead", what, after, span, len(recs), err)
		}
	}
	nothing := func(what string, after int64) {
		t.Helper()
		span, recs, err := l.Fetch(ctx, orders, after, 100)
		if err != nil || span.Groups != 0 || len(recs) != 0 {
			t.Fatalf("%s: fetch after %d: %+v, %d changes, %v; want nothing", what, after, span, len(recs), err)
		}
	}
	nothing("a version never appended to", 0)
	ahead("a version never appended to", 3)
	l.Wait(ctx, orders, time.Millisecond) // a reader that waits first
	ahead("a version waited on, never appended to", 3)
	mustAppend(t, l, 1, group(10, upsert("1", V("a")), upsert("2", V("b"))))
	nothing("at the head", 2)
	ahead("one past the head", 3)
	ahead("far past the head", 1000)
	// A reader that follows the log (the engine remembers where it read)
	// is told too.
	if recs := changes(t, l, orders, 0); len(recs) != 2 {
		t.Fatalf("changes: %+v", recs)
	}
	ahead("past the head, after reading to it", 5)
	mustAppend(t, l, 1, group(20, del("1")))
	if recs := changes(t, l, orders, 2); len(recs) != 1 || recs[0].Position != 3 {
		t.Fatalf("after the next append: %+v", recs)
	}
	if _, err := l.Prune(ctx, orders); err != nil {
		t.Fatal(err)
	}
	nothing("at the head after pruning", 3)
	ahead("past the head after pruning", 4)
}
