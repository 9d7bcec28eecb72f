package sql

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"sort"

	"github.com/jackc/pgx/v5"
)

//go:embed managed/*.sql
var managedSQL embed.FS

// managedLock serialises sidecars installing into one database at once.
const managedLock = 7_265_106_112

// InstallManaged installs or upgrades the sidecar's private schema _rejot in
// the database it manages: the outbox of calls and the owner's record of
// its publications. Each file runs once, in order.
func InstallManaged(ctx context.Context, conn *pgx.Conn) error {
	names, err := fs.Glob(managedSQL, "managed/*.sql")
	if err != nil {
		return err
	}
	sort.Strings(names)
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", int64(managedLock)); err != nil {
		return fmt.Errorf("cannot lock the managed database: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", int64(managedLock))
	if _, err := conn.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS _rejot;
		CREATE TABLE IF NOT EXISTS _rejot.migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return fmt.Errorf("cannot install schema _rejot: %w", err)
	}
	for _, name := range names {
		body, err := managedSQL.ReadFile(name)
		if err != nil {
			return err
		}
		err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			tag, err := tx.Exec(ctx, "INSERT INTO _rejot.migrations (name) VALUES ($1) ON CONFLICT DO NOTHING", name)
			if err != nil || tag.RowsAffected() == 0 {
				return err
			}
			_, err = tx.Exec(ctx, string(body))
			return err
		})
		if err != nil {
			return fmt.Errorf("cannot install %s: %w", name, err)
		}
	}
	return nil
}
