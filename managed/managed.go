// Package managed owns the sidecar's private schema _rejot in each
// database it manages: its migrations, every statement that reads or
// writes it, the payloads of the outbox's commands, their kinds and the
// NOTIFY channels that announce them. No other package names _rejot, so
// what the schema holds, and who may touch it, is decided here alone.
//
// Callers with a pgx connection call the functions; statements that run
// through a client's own session (package sql) or are queued in a caller's
// pgx.Batch are exported as documented constants.
package managed

import (
	"context"
	"embed"
	"errors"

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
// subscriptions with their positions. The table and lock are those of
// every release so far: a database installed by one sees nothing new.
var migrations = migrate.Set{Files: migrationFiles, Dir: "migrations",
	Table: Schema + ".schema_migrations", Lock: 7_265_106_112}

// Install installs or upgrades schema _rejot; safe when several sidecars
// start at once.
func Install(ctx context.Context, conn *pgx.Conn) error {
	return migrations.Run(ctx, conn)
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
