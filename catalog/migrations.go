package catalog

import (
	"context"
	"embed"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/internal/migrate"
	"github.com/rejot-dev/rejot/internal/pgerr"
)

//go:embed migrations/*.sql
var migrations embed.FS

// catalogMigrations are the catalog's own.
var catalogMigrations = migrate.Set{Files: migrations, Dir: "migrations", Table: "public.rejot_catalog_migrations"}

// Migrate brings the catalog's schema to the newest version.
func Migrate(ctx context.Context, conn *pgx.Conn) error { return catalogMigrations.Run(ctx, conn) }

// EnsureDatabase creates database name on the server that adminURL points
// at, unless it exists. Concurrent creators are fine: losing the race is
// success.
func EnsureDatabase(ctx context.Context, adminURL, name string) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("cannot connect to create the catalog database: %w", err)
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return err
	}
	if exists {
		return nil
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	// Another sidecar created it meanwhile: two CREATE DATABASEs that race
	// collide on pg_database's unique index rather than on the name check.
	if pgerr.Is(err, pgerr.DuplicateDatabase) || pgerr.Is(err, pgerr.UniqueViolation) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cannot create the catalog database %q: %w", name, err)
	}
	return nil
}
