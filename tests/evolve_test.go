package tests

import (
	"context"
	"strings"
	"testing"
	"time"
)

// keptCase is a change of the owner's schema, through the sidecar, that
// must not break its version: %[1]s is the table, %[2]s the publication.
type keptCase struct {
	name, ddl, after string // after: more writes, once the DDL is in
	projection       string // the version's rows from the table as changed
}

var keptCases = []keptCase{
	{name: "add_column", ddl: "ALTER TABLE %[1]s ADD COLUMN extra text DEFAULT 'x'",
		after: "UPDATE %[1]s SET customer = 'after ' || id WHERE id <= 10", projection: "SELECT id, customer, total FROM %[1]s"},
	{name: "drop_unpublished", ddl: "ALTER TABLE %[1]s ADD COLUMN note text; ALTER TABLE %[1]s DROP COLUMN note",
		after: "UPDATE %[1]s SET customer = 'after ' || id WHERE id <= 10", projection: "SELECT id, customer, total FROM %[1]s"},
	{name: "rename", ddl: "ALTER TABLE %[1]s RENAME COLUMN customer TO customer_name",
		after: "UPDATE %[1]s SET customer_name = 'after ' || id WHERE id <= 10", projection: "SELECT id, customer_name AS customer, total FROM %[1]s"},
	{name: "swap", ddl: `ALTER TABLE %[1]s ADD COLUMN note text DEFAULT 'a note'; ALTER TABLE %[1]s RENAME customer TO tmp;
		ALTER TABLE %[1]s RENAME note TO customer; ALTER TABLE %[1]s RENAME tmp TO note`,
		after: "UPDATE %[1]s SET note = 'after ' || id, customer = 'not this' WHERE id <= 10", projection: "SELECT id, note AS customer, total FROM %[1]s"},
	{name: "rename_republish", ddl: `BEGIN; ALTER TABLE %[1]s RENAME COLUMN customer TO client;
		CALL rejot.publish('%[2]s', 1, 'SELECT id, client AS customer, total FROM public.%[1]s'); COMMIT`,
		after: "UPDATE %[1]s SET client = 'after ' || id WHERE id <= 10", projection: "SELECT id, client AS customer, total FROM %[1]s"},
	{name: "retype_republish", ddl: `BEGIN; ALTER TABLE %[1]s ALTER COLUMN customer TYPE varchar(200);
		CALL rejot.publish('%[2]s', 1, 'SELECT id, customer::text AS customer, total FROM public.%[1]s'); COMMIT`,
		after: "UPDATE %[1]s SET customer = 'after ' || id WHERE id <= 10", projection: "SELECT id, customer::text AS customer, total FROM %[1]s"},
}

// TestSchemaChangesKeepFlowing: for each kind of DDL that keeps a version
// whole (a column added or an unpublished one dropped; a published column
// renamed, or two names swapped, with no re-publish; a rename or a retype
// with a re-publish in the same migration), all made through the sidecar
// at once under concurrent writes, with a witness publication of the same
// system: every version stays active, the slot keeps confirming while 64 MB
// of WAL are written, every target converges to exactly the projection of
// the source as changed (after more writes to the changed columns), and a
// reader of the targets never sees a source transaction in part.
func TestSchemaChangesKeepFlowing(t *testing.T) {
	s := newIsolation(t)
	ctx := context.Background()
	var versions []*brokenVersion
	var tables, targets []string
	for _, c := range keptCases {
		b := s.setUp(t, ddlCase{name: c.name}, isolatedRows)
		versions, tables, targets = append(versions, b), append(tables, b.table), append(targets, b.target)
	}
	for _, b := range versions {
		targetConverges(t, 60*time.Second, s.admin, b.sql(published), s.consumer.conn, b.target)
	}
	l := s.startLoad(t, tables)
	stopWatch := make(chan struct{})
	watched := watchTargets(t, pg.URL(s.consumer.db), targets, stopWatch)

	for i, b := range versions {
		c := keptCases[i]
		if _, err := s.as.Exec(ctx, b.sql(c.ddl)); err != nil {
			t.Fatalf("%s: %s: %v", c.name, b.sql(c.ddl), err)
		}
		mustExec(t, s.admin, b.sql(c.after))
	}
	before := l.witness.Load()
	s.writeWAL(t, 64)
	waitFor(t, 60*time.Second, func() bool {
		var n int64
		s.consumer.conn.QueryRow(ctx, "SELECT count(*) FROM billing.witness WHERE id > $1", before).Scan(&n)
		return n > 0
	})
	l.end()
	for i, b := range versions {
		targetConverges(t, 60*time.Second, s.admin, b.sql(keptCases[i].projection), s.consumer.conn, b.target)
		// A re-publish fills the version again (its query changed): it
		// is active once that has committed.
		s.waitStatus(t, 30*time.Second, b.pub, "active")
	}
	targetConverges(t, 60*time.Second, s.admin, "SELECT id, v FROM witness", s.consumer.conn, "billing.witness")
	close(stopWatch)
	if bad := watched(); len(bad) > 0 {
		t.Errorf("a reader saw a target in part:\n%s", strings.Join(bad, "\n"))
	}
}
