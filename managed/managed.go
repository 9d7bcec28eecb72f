// Package managed owns the sidecar's private schema _rejot in each
// database it manages: its migrations, every statement that reads or
// writes it, the payloads of the outbox's commands, their kinds and the
// NOTIFY channels that announce them. No other package names _rejot, so
// what the schema holds, and who may touch it, is decided here alone.
// Beside it the sidecar keeps schema rejot, the API's signposts for psql
// (api.go).
//
// Callers with a pgx connection call the functions; statements that run
// through a client's own session (package sql) or are queued in a caller's
// pgx.Batch are exported as documented constants.
package managed

import (
	"context"
	"embed"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rejot-dev/rejot/internal/migrate"
	"github.com/rejot-dev/rejot/internal/pgerr"
)

// Schema is the sidecar's private schema in a managed database.
const Schema = "_rejot"

//go:embed migrations/*.sql
var migrationFiles embed.FS

// migrations are what the sidecar installs in the database it manages:
// the outbox of calls, the owner's record of its publications and the
// subscriptions with their positions. The table is that of every
// release so far: a database installed by one sees nothing new.
// They are applied together: calls need the functions of the last one as
// soon as the tables of the first are there.
var migrations = migrate.Set{Files: migrationFiles, Dir: "migrations",
	Table: Schema + ".schema_migrations", Together: true}

// Install installs or upgrades schema _rejot; safe when several sidecars
// start at once. It refuses (a *ForeignError) a _rejot that is not the
// sidecar's: made by another role before the sidecar first started, or
// holding another role's objects. The sidecar runs what that schema holds
// with its own credentials, so it must be the only one who can change it.
func Install(ctx context.Context, conn *pgx.Conn) error {
	if err := CheckOwned(ctx, conn); err != nil {
		return err
	}
	if err := migrations.Run(ctx, conn); err != nil {
		return err
	}
	// Again: a _rejot made by another role in the moment between the
	// check and the migrations' CREATE SCHEMA IF NOT EXISTS.
	return CheckOwned(ctx, conn)
}

// ForeignError: schema _rejot, or an object in it, belongs to a role the
// sidecar's role is not (nor a member of). The sidecar does not manage the
// database until an administrator has dealt with it.
type ForeignError struct {
	Object string // "schema _rejot", "table _rejot.commands", …
	Owner  string // the role that owns it
	Role   string // the sidecar's role
}

func (e *ForeignError) Error() string {
	return fmt.Sprintf("%s belongs to role %q, not to the sidecar's role %q: the sidecar does not manage this database "+
		"while %s holds what another role made. If nobody meant to make it, drop it as a superuser "+
		"(DROP SCHEMA %s CASCADE, after checking what it holds); if it is the sidecar's from another setup, "+
		"give the schema and every object in it to %q (ALTER ... OWNER TO). The sidecar checks again within 30 s",
		e.Object, e.Owner, e.Role, Schema, Schema, e.Role)
}

// ownedQuery finds the first of schema and its objects (relations,
// functions, types) owned by a role that is neither the current role nor
// one it is a member of. Membership is followed through pg_auth_members,
// not pg_has_role, which answers yes to a superuser for any role: a
// superuser sidecar must refuse another role's schema too. schema is one
// of the constants Schema and APISchema.
func ownedQuery(schema string) string {
	return `WITH RECURSIVE mine(oid) AS (
		SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user
		UNION SELECT m.roleid FROM pg_catalog.pg_auth_members m JOIN mine ON m.member = mine.oid),
	s AS (SELECT oid, nspowner FROM pg_catalog.pg_namespace WHERE nspname = '` + schema + `'),
	owned(what, owner) AS (
		SELECT 'schema ` + schema + `', nspowner FROM s
		UNION ALL SELECT CASE c.relkind WHEN 'r' THEN 'table' WHEN 'S' THEN 'sequence' WHEN 'v' THEN 'view'
				WHEN 'i' THEN 'index' ELSE 'relation' END || ' ` + schema + `.' || pg_catalog.quote_ident(c.relname), c.relowner
			FROM pg_catalog.pg_class c JOIN s ON c.relnamespace = s.oid
		UNION ALL SELECT 'function ` + schema + `.' || pg_catalog.quote_ident(p.proname), p.proowner
			FROM pg_catalog.pg_proc p JOIN s ON p.pronamespace = s.oid
		UNION ALL SELECT 'type ` + schema + `.' || pg_catalog.quote_ident(t.typname), t.typowner
			FROM pg_catalog.pg_type t JOIN s ON t.typnamespace = s.oid)
	SELECT what, pg_catalog.pg_get_userbyid(owner)::text, current_user::text FROM owned
	WHERE owner NOT IN (SELECT oid FROM mine) ORDER BY what LIMIT 1`
}

var ownedCheck = ownedQuery(Schema)

// CheckOwned says whether schema _rejot, when there, is the current
// role's: nil, or a *ForeignError naming the first object that is not.
// Whoever acts on what _rejot holds checks it first.
func CheckOwned(ctx context.Context, q Querier) error {
	var e ForeignError
	err := q.QueryRow(ctx, ownedCheck).Scan(&e.Object, &e.Owner, &e.Role)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cannot check who owns schema %s: %w", Schema, err)
	}
	return &e
}

// NotInstalled says whether err is a statement failing because _rejot is
// not there yet. The sidecar installs it as it starts, and nothing can be
// recorded before, so a reader may take it as "nothing recorded".
func NotInstalled(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == pgerr.UndefinedTable
}

// Querier is what runs a statement: a *pgx.Conn, or a pgx.Tx when the
// statement must commit with the caller's other work.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}
