// Package migrate applies numbered SQL files to a database, each once, in
// order, safely when several processes start at once. The catalog, the
// event log and the managed schema each have a set of their own.
package migrate

import (
	"context"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

type migration struct {
	version int
	name    string
	sql     string
}

// Set is a set of numbered SQL files (001_name.sql, ...) applied in
// order, each once, recorded in Table, under an advisory lock so that
// several processes starting at once are safe: one works while the others
// wait, then find nothing left to do.
type Set struct {
	Files fs.FS
	Dir   string
	Table string // schema-qualified name of the table recording applied files
	Lock  int64  // advisory lock key
	// Together applies the pending files in one transaction: nothing of
	// a later file is missing once anything of an earlier one is seen
	// (a schema whose readers need its last file too).
	Together bool
}

func (ms Set) load() ([]migration, error) {
	entries, err := fs.ReadDir(ms.Files, ms.Dir)
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil {
			return nil, fmt.Errorf("migration %s: name must start with a number and _", e.Name())
		}
		body, err := fs.ReadFile(ms.Files, ms.Dir+"/"+e.Name())
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, name: e.Name(), sql: string(body)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	return out, nil
}

// Run applies the migrations not applied yet.
func (ms Set) Run(ctx context.Context, conn *pgx.Conn) error {
	all, err := ms.load()
	if err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", ms.Lock); err != nil {
		return fmt.Errorf("cannot lock for migration: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", ms.Lock)
	// Only a first start creates anything: a role that may only use what
	// is there (another sidecar's, see docs/guide.md) cannot even ask for
	// CREATE … IF NOT EXISTS.
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", ms.Table).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		if schema, _, ok := strings.Cut(ms.Table, "."); ok {
			if _, err := conn.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+schema); err != nil {
				return err
			}
		}
		if _, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+ms.Table+` (
			version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
			return fmt.Errorf("cannot create the migrations table: %w", err)
		}
	}
	if ms.Together {
		return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			for _, m := range all {
				if err := ms.apply(ctx, tx, m); err != nil {
					return err
				}
			}
			return nil
		})
	}
	for _, m := range all {
		if err := ms.apply(ctx, conn, m); err != nil {
			return err
		}
	}
	return nil
}

// apply applies m in a transaction of its own (or a savepoint of the
// transaction all are applied in).
func (ms Set) apply(ctx context.Context, conn interface {
	Begin(context.Context) (pgx.Tx, error)
}, m migration) error {
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, "INSERT INTO "+ms.Table+" (version, name) VALUES ($1, $2) ON CONFLICT DO NOTHING", m.version, m.name)
		if err != nil || tag.RowsAffected() == 0 {
			return err
		}
		if _, err := tx.Exec(ctx, m.sql); err != nil {
			return fmt.Errorf("migration %s: %w", m.name, err)
		}
		return nil
	})
}

// Names lists the set's files in the order they are applied.
func (ms Set) Names() ([]string, error) {
	all, err := ms.load()
	names := make([]string, len(all))
	for i, m := range all {
		names[i] = m.name
	}
	return names, err
}
