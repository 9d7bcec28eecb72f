package tests

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// stateOf is a version's state in the event log, read on log.
func stateOf(t *testing.T, log *pgx.Conn, name string) string {
	t.Helper()
	var state string
	log.QueryRow(context.Background(), `SELECT coalesce(string_agg(to_jsonb(r)::text, ' ' ORDER BY r[1]::int), '')
		FROM rejot_log.state_rows($1, 1) AS r`, name).Scan(&state)
	return state
}

// TestColumnsBoundByIdentity: versions of a table, one read column by
// column (no Postgres evaluation) and one with a filter (evaluated by
// Postgres), keep flowing through renames of the columns they read, with
// no re-publish: after a rename, and after a swap of two names (a→tmp,
// b→a, tmp→b), each public column still carries the source column it was
// published from. Read by name, the swap would have swapped the data.
func TestColumnsBoundByIdentity(t *testing.T) {
	p := newPublisher(t)
	admin, log := pg.Connect(t, p.db), pg.Connect(t, "rejot")
	plain, filtered := p.name("plain"), p.name("filtered")
	p.execAll(t, "CREATE TABLE pairs (id int PRIMARY KEY, a text, b text, n int)",
		"INSERT INTO pairs VALUES (1, 'a1', 'b1', 1)",
		"CALL rejot.publish('"+plain+"', 1, 'SELECT id, a, b FROM pairs')",
		"CALL rejot.publish('"+filtered+"', 1, 'SELECT id, a, b FROM pairs WHERE n > 0')")
	both := func(want string) {
		t.Helper()
		waitFor(t, 30*time.Second, func() bool {
			return strings.Contains(stateOf(t, log, plain), want) && strings.Contains(stateOf(t, log, filtered), want)
		})
	}
	both(`["1", "a1", "b1"]`)

	// A rename through the sidecar: the guard lets it commit.
	if err := p.exec(t, "ALTER TABLE pairs RENAME COLUMN a TO alpha"); err != nil {
		t.Fatal(err)
	}
	mustExec(t, admin, "INSERT INTO pairs (id, alpha, b, n) VALUES (2, 'a2', 'b2', 1); UPDATE pairs SET alpha = 'a1!' WHERE id = 1")
	both(`["2", "a2", "b2"]`)
	both(`["1", "a1!", "b1"]`)

	// A swap of the names, in one transaction.
	mustExec(t, admin, "BEGIN; ALTER TABLE pairs RENAME alpha TO tmp; ALTER TABLE pairs RENAME b TO alpha; ALTER TABLE pairs RENAME tmp TO b; COMMIT")
	// b is the column published as a now, alpha the one published as b.
	mustExec(t, admin, "INSERT INTO pairs (id, b, alpha, n) VALUES (3, 'a3', 'b3', 1); UPDATE pairs SET b = 'a2!' WHERE id = 2")
	both(`["3", "a3", "b3"]`)
	both(`["2", "a2!", "b2"]`)
	for _, name := range []string{plain, filtered} {
		if state := stateOf(t, log, name); strings.Contains(state, `"b3", "a3"`) || strings.Count(state, "[") != 3 {
			t.Fatalf("%s: %s", name, state)
		}
	}
}
