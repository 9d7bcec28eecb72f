package capture_test

import (
	"context"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/rejot-dev/rejot/replicator/capture"
	"github.com/rejot-dev/rejot/replicator/eventlog"
	"github.com/rs/zerolog"
)

// TestWideTransactionInParts: a source transaction of few rows but wide
// values is appended in parts by its bytes, not only by its row count —
// its whole values never sit in memory at once — and arrives exact.
func TestWideTransactionInParts(t *testing.T) {
	l, logDB := open(t)
	srcDB := pg.CreateDB(t)
	owner := pg.Connect(t, srcDB)
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := owner.Exec(ctx, q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	exec("CREATE TABLE wide (id int PRIMARY KEY, body text)")
	stream := eventlog.Version{Publication: "wide_items", Number: 1}
	query := "SELECT id, md5(body) AS digest, length(body) AS size FROM wide"
	system := "wide_" + srcDB
	var logs syncBuffer
	pub := &capture.WALReader{URL: pg.URL(srcDB), System: system, Log: l,
		Sources: []capture.Source{source(t, stream, query, "id")}, Logger: zerolog.New(&logs), StatusInterval: 100 * time.Millisecond}
	defer owner.Exec(context.Background(), "SELECT pg_drop_replication_slot($1)", capture.SlotName(system))
	runPublisher(t, ctx, pub, owner)
	exec("INSERT INTO wide VALUES (0, 'x')")
	waitUntil(t, func() bool { return headOf(t, l, stream) == 2 }) // the first fill's truncate, the insert
	// 70 rows of 1 MB each: far fewer rows than a part, far more bytes.
	exec("INSERT INTO wide SELECT i, repeat(md5(i::text), 32768) FROM generate_series(1, 70) i")
	want := projection(t, owner, query)
	// 70 MB through the capture and the projection take a while on a
	// busy machine.
	for deadline := time.Now().Add(90 * time.Second); sortedState(t, l, stream) != want; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the wide transaction did not arrive exact within 90 s: %s", logs.String())
		}
	}
	var groups, changes int64
	if err := pg.Connect(t, logDB).QueryRow(ctx, `SELECT count(*), sum(last_position - first_position + 1) FROM rejot_log.change_groups g
		JOIN rejot_log.streams s ON s.id = g.stream WHERE s.publication = $1 AND g.first_position > 2`, stream.Publication).Scan(&groups, &changes); err != nil {
		t.Fatal(err)
	}
	if groups != 1 || changes != 70 {
		t.Fatalf("%d groups, %d changes; want the transaction's 70 changes in one group", groups, changes)
	}
	m := regexp.MustCompile(`"parts":(\d+)`).FindStringSubmatch(logs.String())
	if m == nil {
		t.Fatalf("a transaction of 70 MB was not appended in parts: %s", logs.String())
	}
	if parts, _ := strconv.Atoi(m[1]); parts < 3 {
		t.Fatalf("70 MB appended in %d parts; want parts of at most 32 MB", parts)
	}
}
