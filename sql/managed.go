package sql

import (
	"context"
	"embed"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/internal/migrate"
)

//go:embed managed/*.sql
var managedSQL embed.FS

// managedMigrations are what the sidecar installs in the database it
// manages, in its private schema _rejot: the outbox of calls and the
// owner's record of its publications.
var managedMigrations = migrate.Set{Files: managedSQL, Dir: "managed",
	Table: "_rejot.schema_migrations", Lock: 7_265_106_112}

// InstallManaged installs or upgrades schema _rejot; safe when several
// sidecars start at once.
func InstallManaged(ctx context.Context, conn *pgx.Conn) error {
	return managedMigrations.Run(ctx, conn)
}
