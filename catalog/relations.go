package catalog

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rejot-dev/rejot/internal/pgerr"
)

// Relations are the catalog relations users may query, in schema rejot.
var Relations = []string{"publications", "columns", "subscriptions", "systems", "instances"}

// RelationColumn is a column of a catalog relation.
type RelationColumn struct {
	Name string
	// Type is the column's type as format_type spells it ("timestamp with
	// time zone", "text[]"); always a built-in type.
	Type string
}

// The sidecar's only statements over the catalog relations. No user text
// ever reaches the catalog: a user's query is rewritten to read the rows
// these return, and runs in the user's own session (see sql.QueryRelations).
const (
	relationColumnsSQL = `
		SELECT c.relname, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.atttypid < 16384
		  FROM pg_catalog.pg_attribute a
		  JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
		  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		 WHERE n.nspname = 'rejot' AND c.relname = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped
		 ORDER BY c.relname, a.attnum`
	// relationRowsSQL is one relation's rows as a JSON array of objects, one
	// key per column: to_jsonb writes timestamps in ISO 8601 with their
	// offset, arrays as arrays and NULLs as null, so jsonb_to_recordset
	// gives back exactly the values.
	relationRowsSQL = "(SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(r)), '[]')::pg_catalog.text FROM %s r)"
)

// RelationColumns returns the columns of the catalog relation rel, in
// order. They are read once: a migration only ever adds columns, and rows
// read later with more keys still fit the columns known.
func (c *Catalog) RelationColumns(ctx context.Context, rel string) ([]RelationColumn, error) {
	c.colsMu.Lock()
	defer c.colsMu.Unlock()
	if c.cols == nil {
		cols, err := c.readRelationColumns(ctx)
		if err != nil {
			return nil, err
		}
		c.cols = cols
	}
	cols, ok := c.cols[rel]
	if !ok {
		return nil, fmt.Errorf("the catalog has no relation rejot.%s", rel)
	}
	return cols, nil
}

func (c *Catalog) readRelationColumns(ctx context.Context) (map[string][]RelationColumn, error) {
	cols := map[string][]RelationColumn{}
	err := c.readOnly(ctx, func(conn *pgxpool.Conn) error {
		rows, err := conn.Query(ctx, relationColumnsSQL, Relations)
		if err != nil {
			return err
		}
		var rel, name, typ string
		var builtin bool
		_, err = pgx.ForEachRow(rows, []any{&rel, &name, &typ, &builtin}, func() error {
			if !builtin {
				return fmt.Errorf("column %s of rejot.%s has type %s, which is not built in", name, rel, typ)
			}
			cols[rel] = append(cols[rel], RelationColumn{Name: name, Type: typ})
			return nil
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("cannot read the catalog relations' columns: %w", err)
	}
	return cols, nil
}

// RelationRows reads the rows of the relations rels, each as a JSON array
// of objects, in one snapshot (one statement). Their text counts against
// MaxResultBytes: past it, 54000.
func (c *Catalog) RelationRows(ctx context.Context, rels []string) ([]string, error) {
	parts := make([]string, len(rels))
	for i, rel := range rels {
		if !IsRelation(rel) {
			return nil, fmt.Errorf("the catalog has no relation rejot.%s", rel)
		}
		parts[i] = fmt.Sprintf(relationRowsSQL, pgx.Identifier{"rejot", rel}.Sanitize())
	}
	out := make([]string, len(rels))
	err := c.readOnly(ctx, func(conn *pgxpool.Conn) error {
		rr := conn.Conn().PgConn().ExecParams(ctx, "SELECT "+strings.Join(parts, ", "), nil, nil, nil, nil)
		for rr.NextRow() {
			size := 0
			for i, v := range rr.Values() {
				size += len(v)
				out[i] = string(v)
			}
			if size > c.maxResultBytes() {
				rr.Close()
				return ResultTooLarge(c.maxResultBytes())
			}
		}
		_, err := rr.Close()
		var long *pgproto3.ExceededMaxBodyLenErr
		if errors.As(err, &long) {
			return ResultTooLarge(c.maxResultBytes())
		}
		return err
	})
	return out, err
}

// IsRelation says whether rel is one of the catalog relations.
func IsRelation(rel string) bool {
	for _, r := range Relations {
		if r == rel {
			return true
		}
	}
	return false
}

// MaxResult is the budget of one query over the catalog relations, in
// bytes: of the rows read from the catalog, and of the result.
func (c *Catalog) MaxResult() int { return c.maxResultBytes() }

func (c *Catalog) maxResultBytes() int {
	if c.MaxResultBytes > 0 {
		return c.MaxResultBytes
	}
	return DefaultMaxResultBytes
}

// ResultTooLarge is the error of a query over the catalog relations whose
// rows or result exceed limit bytes.
func ResultTooLarge(limit int) *pgerr.Error {
	return &pgerr.Error{Code: pgerr.ProgramLimitExceeded,
		Message: fmt.Sprintf("the result of a catalog query is larger than %d MB; select fewer rows or columns", limit>>20),
		Hint:    "Add a WHERE clause or a LIMIT, or leave out long columns such as query and description."}
}

// readOnly runs f inside a read-only transaction on the users' pool, so
// that the reads users' queries cause cannot hold up the sidecar's own
// work. The catalog's statement_timeout ends a slow read with its own
// clear error; the context's deadline, a little later, bounds the wait for
// a connection and a catalog that stopped answering.
func (c *Catalog) readOnly(ctx context.Context, f func(*pgxpool.Conn) error) error {
	timeout := c.QueryTimeout
	if timeout <= 0 {
		timeout = DefaultQueryTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout+2*time.Second)
	defer cancel()
	return c.users.AcquireFunc(ctx, func(pc *pgxpool.Conn) error {
		setup := fmt.Sprintf("BEGIN READ ONLY; SET LOCAL statement_timeout = %d", timeout.Milliseconds())
		if _, err := pc.Conn().PgConn().Exec(ctx, setup).ReadAll(); err != nil {
			return err
		}
		err := f(pc)
		if _, rerr := pc.Exec(context.WithoutCancel(ctx), "ROLLBACK"); rerr != nil && err == nil {
			err = rerr
		}
		return err
	})
}

// ActiveSubscriptions counts the subscriptions of a publication version
// that are not stopped (unpublish refuses to retire one that has some).
func (c *Catalog) ActiveSubscriptions(ctx context.Context, publication string, version int) (int64, error) {
	var n int64
	err := c.readOnly(ctx, func(conn *pgxpool.Conn) error {
		return conn.QueryRow(ctx, `SELECT count(*) FROM rejot_catalog.subscriptions
			WHERE publication = $1 AND version = $2 AND status <> 'stopped'`, publication, version).Scan(&n)
	})
	return n, err
}

// VersionColumns returns a publication version's status and its columns
// in order (name, type, key, nullable), or found false when there is no
// such version.
func (c *Catalog) VersionColumns(ctx context.Context, publication string, version int) (status string, cols []Column, found bool, err error) {
	err = c.readOnly(ctx, func(conn *pgxpool.Conn) error {
		rows, err := conn.Query(ctx, `SELECT p.status, c.name, c.type, c.is_key, c.nullable
			FROM rejot_catalog.publications p JOIN rejot_catalog.columns c USING (publication, version)
			WHERE p.publication = $1 AND p.version = $2 ORDER BY c.position`, publication, version)
		if err != nil {
			return err
		}
		var col Column
		_, err = pgx.ForEachRow(rows, []any{&status, &col.Name, &col.Type, &col.IsKey, &col.Nullable}, func() error {
			cols = append(cols, col)
			return nil
		})
		return err
	})
	return status, cols, len(cols) > 0, err
}
