package pglog

import (
	"context"
	"io/fs"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// TestStateMovesToItsOwnTable: a log written before migration 008 (one
// shared state table, rows as jsonb) keeps every stream's state: the rows
// move to the stream's own table, keyed as its definition says, and a
// stream whose definition does not say its key is left to be filled again.
func TestStateMovesToItsOwnTable(t *testing.T) {
	ctx := context.Background()
	db := pg.CreateDB(t)
	conn, err := pgx.Connect(ctx, pg.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	old := fstest.MapFS{}
	entries, _ := fs.ReadDir(files, "migrations")
	for _, e := range entries {
		if e.Name() < "008" {
			body, _ := fs.ReadFile(files, "migrations/"+e.Name())
			old["migrations/"+e.Name()] = &fstest.MapFile{Data: body}
		}
	}
	before := migrations
	before.Files = old
	if err := before.Run(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `
		INSERT INTO rejot_log.streams (id, publication, version, head, definition) VALUES
			(1, 'orders', 1, 3, 'public.orders/["id" "note" "extra"]/""/[0]'),
			(2, 'pairs', 1, 2, 'public.pairs/["a" "b" "v"]/""/[1 0]'),
			(3, 'unknown', 1, 1, NULL),
			(4, 'empty', 1, 0, 'public.empty/["id"]/""/[0]');
		INSERT INTO rejot_log.state (stream, key, row, position) VALUES
			(1, '["1"]', '["1", "a\"b", null]', 1),
			(1, '["2"]', '["2", "", "x"]', 3),
			(2, '["y", "x"]', '["x", "y", "1"]', 1),
			(2, '["z", "x"]', '["x", "z", "2"]', 2),
			(3, '["k"]', '["k"]', 1);`); err != nil {
		t.Fatal(err)
	}
	l, err := Open(ctx, pg.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, c := range []struct {
		pub, want string
	}{
		{"orders", `"1","a\"b",NULL | "2","","x"`},
		{"pairs", `"x","y","1" | "x","z","2"`},
		{"unknown", ``},
		{"empty", ``},
	} {
		var rows []string
		if _, err := l.State(ctx, eventlog.Version{Publication: c.pub, Number: 1}, func(row []eventlog.Value) error {
			rows = append(rows, renderRow(row))
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(rows, " | "); got != c.want {
			t.Errorf("%s: state %s, want %s", c.pub, got, c.want)
		}
	}
	var def *string
	conn.QueryRow(ctx, "SELECT definition FROM rejot_log.streams WHERE publication = 'unknown'").Scan(&def)
	if def != nil {
		t.Errorf("a stream without its key kept its definition %q: it would never be filled again", *def)
	}
	// The moved state takes appends keyed as before: (b, a) for pairs.
	pairs := eventlog.Version{Publication: "pairs", Number: 1}
	g := eventlog.Group{Version: pairs, System: "shop", CommitLSN: 10, Layout: eventlog.Layout{Columns: 3, Key: []int{1, 0}},
		Changes: []eventlog.Change{
			{Op: eventlog.OpUpsert, Key: []eventlog.Value{v("y"), v("x")}, Row: []eventlog.Value{v("x"), v("y"), v("3")}},
			{Op: eventlog.OpDelete, Key: []eventlog.Value{v("z"), v("x")}},
		}}
	if _, err := l.Append(ctx, []eventlog.Group{g}); err != nil {
		t.Fatal(err)
	}
	if got, _ := state(t, l, pairs); got != `"x","y","3"` {
		t.Errorf("pairs after an upsert and a delete: %s", got)
	}
	// A group laid out otherwise than the state is refused, not mixed in.
	g.CommitLSN, g.Layout = 11, eventlog.Layout{Columns: 3, Key: []int{0}}
	if _, err := l.Append(ctx, []eventlog.Group{g}); err == nil {
		t.Error("a group keyed differently from its stream's state was appended")
	}
}
