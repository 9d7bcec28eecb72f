package capture_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rejot-dev/rejot/replicator/capture"
	"github.com/rejot-dev/rejot/replicator/eventlog"
	"github.com/rejot-dev/rejot/replicator/eventlog/pglog"
	"github.com/rs/zerolog"
)

// TestUnchangedToastIsExactAsOfItsTransaction: updates that leave an
// out-of-line value out of the WAL (unchanged TOAST, no REPLICA IDENTITY
// FULL) are projected with the value the row had at that transaction —
// not the one it has when the capture gets to it — whether the value was
// captured by the first fill, earlier in the same batch, by a previous
// append, or under the row's old key.
func TestUnchangedToastIsExactAsOfItsTransaction(t *testing.T) {
	l, logDB := open(t)
	srcDB := pg.CreateDB(t)
	owner := pg.Connect(t, srcDB)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := owner.Exec(ctx, q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	// EXTERNAL storage: no compression, so these values are out of line.
	exec("CREATE TABLE docs (id int PRIMARY KEY, n int NOT NULL, body text)")
	exec("ALTER TABLE docs ALTER body SET STORAGE EXTERNAL")
	big := func(tag string) string { return tag + strings.Repeat("0123456789abcdef", 600) }
	b1, b2, b3 := big("one"), big("two"), big("three")
	exec("INSERT INTO docs VALUES (1, 1, $1), (2, 0, $1)", b1)

	stream := eventlog.Version{Publication: "toast_docs", Number: 1}
	query := "SELECT id, n, body, length(body) AS len FROM docs WHERE n > 0"
	system := "toast_" + srcDB
	pub := &capture.WALReader{URL: pg.URL(srcDB), System: system, Log: l,
		Sources: []capture.Source{source(t, stream, query, "id")}, Logger: zerolog.Nop(), StatusInterval: 100 * time.Millisecond}
	defer owner.Exec(context.Background(), "SELECT pg_drop_replication_slot($1)", capture.SlotName(system))
	caughtUp := func() {
		t.Helper()
		want := projection(t, owner, query)
		waitUntil(t, func() bool { return sortedState(t, l, stream) == want })
	}
	stop := startPublisher(t, ctx, pub, owner)
	caughtUp() // the first fill
	head := headOf(t, l, stream)
	stop()

	// Queued while the capture is stopped: when it reads them, row 1's
	// body is already b2 and row 2 (now 10) has b3.
	exec("UPDATE docs SET n = 2 WHERE id = 1") // body as filled: b1
	exec("UPDATE docs SET n = 1 WHERE id = 2") // enters the filter with b1
	exec("UPDATE docs SET body = $1 WHERE id = 1", b2)
	exec("UPDATE docs SET n = 3 WHERE id = 1")   // b2, from earlier in the batch
	exec("UPDATE docs SET id = 10 WHERE id = 2") // b1, under the old key
	exec("UPDATE docs SET body = $1 WHERE id = 10", b3)
	stop = startPublisher(t, ctx, pub, owner)
	caughtUp()
	stop()
	exec("UPDATE docs SET n = 4 WHERE id = 10") // b3, from a previous append
	stop = startPublisher(t, ctx, pub, owner)
	defer stop()
	caughtUp()

	recs, err := l.Changes(ctx, stream, head, 100)
	if err != nil {
		t.Fatal(err)
	}
	name := map[string]string{b1: "b1", b2: "b2", b3: "b3"}
	var got []string
	for _, r := range recs {
		s := fmt.Sprintf("%c %s", r.Op, *r.Key[0])
		if r.Op == eventlog.OpUpsert {
			s += fmt.Sprintf(" n=%s %s len=%s", *r.Row[1], name[*r.Row[2]], *r.Row[3])
		}
		got = append(got, s)
	}
	want := []string{
		"u 1 n=2 b1 len=9603", "u 2 n=1 b1 len=9603", "u 1 n=2 b2 len=9603", "u 1 n=3 b2 len=9603",
		"d 2", "u 10 n=1 b1 len=9603", "u 10 n=1 b3 len=9605", "u 10 n=4 b3 len=9605",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("log after the first fill:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// What is kept is the last value of each row, and only the body.
	var kept string
	if err := pg.Connect(t, logDB).QueryRow(ctx, `SELECT string_agg(key::text || ' ' || (vals->>'body' = $3)::text || ' ' || (SELECT count(*) FROM jsonb_object_keys(vals))::text, ', ' ORDER BY key::text)
		FROM rejot_log.kept WHERE system = $1 AND source = $2`, system, "public.docs", b3).Scan(&kept); err != nil {
		t.Fatal(err)
	}
	if kept != `["1"] false 1, ["10"] true 1` {
		t.Fatalf("kept: %s", kept)
	}
}

// TestLargeTransactionInParts: a source transaction larger than a part is
// appended in parts, in one log transaction: one group, every change, the
// state right — and out-of-line values inside it still exact.
func TestLargeTransactionInParts(t *testing.T) {
	l, logDB := open(t)
	srcDB := pg.CreateDB(t)
	owner := pg.Connect(t, srcDB)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := owner.Exec(ctx, q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	exec("CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL, body text)")
	exec("ALTER TABLE items ALTER body SET STORAGE EXTERNAL")
	stream := eventlog.Version{Publication: "large_items", Number: 1}
	query := "SELECT id, n, md5(body) AS digest FROM items"
	system := "large_" + srcDB
	var logs syncBuffer
	pub := &capture.WALReader{URL: pg.URL(srcDB), System: system, Log: l,
		Sources: []capture.Source{source(t, stream, query, "id")}, Logger: zerolog.New(&logs), StatusInterval: 100 * time.Millisecond}
	defer owner.Exec(context.Background(), "SELECT pg_drop_replication_slot($1)", capture.SlotName(system))
	runPublisher(t, ctx, pub, owner)
	exec("INSERT INTO items VALUES (0, 0, repeat('x', 5000))")
	head := func() int64 { return headOf(t, l, stream) }
	waitUntil(t, func() bool { return head() == 2 }) // the first fill's truncate, the insert
	exec(`BEGIN;
		INSERT INTO items SELECT g, g, NULL FROM generate_series(1, 25000) g;
		UPDATE items SET n = 7 WHERE id = 0;
		UPDATE items SET n = n + 1 WHERE id <= 100;
		UPDATE items SET body = repeat('y', 5000) WHERE id = 0;
		UPDATE items SET n = 8 WHERE id = 0;
		DELETE FROM items WHERE id BETWEEN 20001 AND 25000;
		COMMIT`)
	want := projection(t, owner, query)
	waitUntil(t, func() bool { return sortedState(t, l, stream) == want })
	var groups, changes int64
	if err := pg.Connect(t, logDB).QueryRow(ctx, `SELECT count(*), sum(last_position - first_position + 1) FROM rejot_log.change_groups g
		JOIN rejot_log.streams s ON s.id = g.stream WHERE s.publication = $1 AND g.first_position > 2`, stream.Publication).Scan(&groups, &changes); err != nil {
		t.Fatal(err)
	}
	if groups != 1 || changes != 25000+1+101+1+1+5000 {
		t.Fatalf("%d groups, %d changes", groups, changes)
	}
	// Row 0 along the way: its body left out of every update but one.
	recs, err := l.Changes(ctx, stream, 2, 40000)
	if err != nil {
		t.Fatal(err)
	}
	var zero []string
	for _, r := range recs {
		if *r.Key[0] == "0" {
			zero = append(zero, *r.Row[1]+" "+*r.Row[2])
		}
	}
	var x, y string
	owner.QueryRow(ctx, "SELECT md5(repeat('x', 5000)), md5(repeat('y', 5000))").Scan(&x, &y)
	if strings.Join(zero, ",") != "7 "+x+",8 "+x+",8 "+y+",8 "+y {
		t.Fatalf("row 0 in the log: %v", zero)
	}
	if !strings.Contains(logs.String(), `"parts":4`) {
		t.Fatalf("not appended in parts: %s", logs.String())
	}
}

func headOf(t testing.TB, l *pglog.Log, s eventlog.Version) int64 {
	t.Helper()
	head, _ := l.Head(context.Background(), s)
	return head
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
