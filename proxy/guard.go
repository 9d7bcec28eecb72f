package proxy

import (
	"github.com/rejot-dev/rejot/managed"
	"github.com/rejot-dev/rejot/sql"
)

// Contract-safe DDL (docs/schema-evolution.md): before a statement that
// can break a published version — ALTER TABLE, a rename, a drop of a
// table, schema, type or domain (sql.Statement.Guarded) — the sidecar runs
// managed.GuardContract in the same transaction, whose deferred check
// refuses the commit (2BP01) if a version the transaction broke was not
// re-published or retired in it. The check is at commit, not at the
// statement, so a migration may change the table first and re-publish
// after. Ordinary traffic pays only sql.MentionsDDL's scan.

// guarding says whether DDL is guarded: _rejot is installed, and the
// sidecar's.
func (s *session) guarding() bool {
	x := s.srv.Executor
	return x != nil && x.GuardsDDL != nil && x.GuardsDDL()
}

func anyGuarded(stmts []sql.Statement) bool {
	for _, st := range stmts {
		if st.Guarded {
			return true
		}
	}
	return false
}

// guardStatement names the guard's prepared statement and portal: no
// client's (theirs are left as they were), and closed after each use.
const guardStatement = "rejot\x01guard"

// sendGuard sends the guard upstream, before the client's statement, as
// extended-protocol messages of its own statement and portal: its replies
// are dropped but for an error, which the client sees as the statement's
// (and which, as any error, makes the server skip to the next Sync).
func (s *session) sendGuard() error {
	tr := &translation{internal: true}
	name := appendCString(nil, guardStatement)
	parse := append(appendCString(append([]byte(nil), name...), managed.GuardContract), 0, 0)
	bind := append(append(append([]byte(nil), name...), name...), 0, 0, 0, 0, 0, 0)
	execute := append(append([]byte(nil), name...), 0, 0, 0, 0)
	closePortal := append([]byte{'P'}, name...)
	closeStmt := append([]byte{'S'}, name...)
	for _, m := range []struct {
		typ  byte
		body []byte
	}{{'P', parse}, {'B', bind}, {'E', execute}, {'C', closePortal}, {'C', closeStmt}} {
		s.expect(m.typ, nil, tr)
		if err := s.send(m.typ, m.body); err != nil {
			return err
		}
	}
	return nil
}
