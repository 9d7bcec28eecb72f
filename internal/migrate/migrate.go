// Package migrate applies numbered SQL files to a database, each once, in
// order, safely when several processes start at once. The catalog, the
// event log and the managed schema each have a set of their own.
package migrate

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

type migration struct {
	version int
	name    string
	sql     string
}

// Set is a set of numbered SQL files (001_name.sql, ...) applied in
// order, each once, recorded in Table. Several processes starting at once
// are safe without a lock of their own: a file is applied in the
// transaction that inserts its row into Table, so a second process's
// insert of the same row waits for the first to commit and then skips the
// file. No advisory lock is taken: any role that can connect could hold
// one, and so keep every sidecar from starting (docs/security.md).
type Set struct {
	Files fs.FS
	Dir   string
	Table string // schema-qualified name of the table recording applied files
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
	if err := ms.prepare(ctx, conn); err != nil {
		return err
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

// prepare makes Table on a first start, and refuses a Table (or its
// schema) that a role the connection's is not a member of made first: the
// sidecar would run that role's triggers with its own privileges.
func (ms Set) prepare(ctx context.Context, conn *pgx.Conn) error {
	schema, _, _ := strings.Cut(ms.Table, ".")
	for attempt := 0; ; attempt++ {
		// Only a first start creates anything: a role that may only use
		// what is there (another sidecar's, see docs/guide.md) cannot even
		// ask for CREATE … IF NOT EXISTS.
		var exists bool
		if err := conn.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", ms.Table).Scan(&exists); err != nil {
			return err
		}
		if exists {
			return ms.checkOwners(ctx, conn, schema)
		}
		err := ms.create(ctx, conn, schema)
		if err == nil || attempt >= 4 || !concurrentCreate(err) {
			if err != nil {
				return fmt.Errorf("cannot create the migrations table: %w", err)
			}
			return ms.checkOwners(ctx, conn, schema)
		}
		// Another process made it at the same moment: look again.
	}
}

func (ms Set) create(ctx context.Context, conn *pgx.Conn, schema string) error {
	if err := ms.checkOwners(ctx, conn, schema); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{schema}.Sanitize()); err != nil {
		return err
	}
	_, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+ms.Table+` (
		version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`)
	return err
}

// concurrentCreate reports the errors of a CREATE … IF NOT EXISTS that
// raced another one (the catalog's unique indexes).
func concurrentCreate(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "23505" || pe.Code == "42P06" || pe.Code == "42P07" || pe.Code == "42710")
}

// checkOwners refuses a schema or table of the set's that exists but is
// owned by a role it does not trust: the sidecar would run that role's
// triggers with its own privileges, and that role could change or drop
// what the sidecar relies on. Trusted are the connection's role and the
// roles it is a member of, the database's owner (who made the database
// for the sidecars, or the first sidecar that did; several sidecars with
// roles of their own share what it made, see docs/guide.md) and
// superusers. The schema public is shared, so only its table is judged.
func (ms Set) checkOwners(ctx context.Context, conn *pgx.Conn, schema string) error {
	var what, owner string
	err := conn.QueryRow(ctx, ownersCheck, schema, ms.Table).Scan(&what, &owner)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return err
	}
	return &ForeignError{What: what, Owner: owner}
}

// ownersCheck finds the set's schema ($1, unless public) or table ($2)
// when owned by a role that checkOwners does not trust. Membership is
// followed through pg_auth_members, not pg_has_role, which answers yes to
// a superuser for any role: a superuser sidecar must refuse another
// role's table too.
const ownersCheck = `WITH RECURSIVE mine(oid) AS (
		SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user
		UNION SELECT m.roleid FROM pg_catalog.pg_auth_members m JOIN mine ON m.member = mine.oid),
	trusted(oid) AS (
		SELECT oid FROM mine
		UNION SELECT datdba FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()
		UNION SELECT oid FROM pg_catalog.pg_roles WHERE rolsuper),
	owned(what, owner) AS (
		SELECT 'schema ' || n.nspname, n.nspowner FROM pg_catalog.pg_namespace n
		 WHERE n.nspname = $1 AND n.nspname <> 'public'
		UNION ALL
		SELECT 'table ' || $2, c.relowner FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass($2))
	SELECT what, pg_catalog.pg_get_userbyid(owner)::text FROM owned WHERE owner NOT IN (SELECT oid FROM trusted) LIMIT 1`

// ForeignError: an object the set would use exists, made by a role the
// sidecar does not trust (see checkOwners).
type ForeignError struct{ What, Owner string }

func (e *ForeignError) Error() string {
	return fmt.Sprintf("%s is owned by role %s, which is neither this role (nor one it is a member of), the database's owner "+
		"nor a superuser: refusing to use what it made (if nobody meant to make it, drop it as a superuser after checking what it holds)",
		e.What, e.Owner)
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
