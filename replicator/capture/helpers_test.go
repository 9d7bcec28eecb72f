package capture_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/replicator/eventlog"
	"github.com/rejot-dev/rejot/replicator/eventlog/pglog"
)

// open opens an event log in a database of its own, closed when the test
// ends, and returns the database's name too.
func open(t testing.TB) (*pglog.Log, string) {
	t.Helper()
	db := pg.CreateDB(t)
	l, err := pglog.Open(context.Background(), pg.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return l, db
}

// state renders a version's compacted state.
func state(t testing.TB, l *pglog.Log, s eventlog.Version) (string, int64) {
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

// projectConn opens a superuser connection to db that sends its
// statements unnamed, as the capture's connections to the owner's
// database do (Project resets the session after each evaluation, its
// prepared statements included), closed when the test ends.
func projectConn(t testing.TB, db string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(pg.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeCacheDescribe
	conn, err := pgx.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}
