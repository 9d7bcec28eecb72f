// Package catalog is ReJot's shared catalog, kept in a Postgres database:
// the systems (one per sidecar), the publications with their versions and
// columns, and the subscriptions. It migrates its own schema, and answers
// the read-only relations users query through any sidecar
// (rejot.publications, rejot.columns, rejot.subscriptions, rejot.systems).
// It never moves row data.
package catalog

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Relations are the catalog relations users may query, in schema rejot.
var Relations = []string{"publications", "columns", "subscriptions", "systems"}

// Catalog is an open catalog database.
type Catalog struct {
	pool   *pgxpool.Pool
	reader bool // queries run as rejot_catalog_reader
	// QueryTimeout bounds a user's query over the catalog relations.
	QueryTimeout time.Duration
}

// Open connects to the catalog at url and migrates its schema.
func Open(ctx context.Context, url string) (*Catalog, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("invalid catalog URL: %w", err)
	}
	cfg.MaxConns = 8
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("cannot open the catalog: %w", err)
	}
	c := &Catalog{pool: pool, QueryTimeout: 30 * time.Second}
	err = pool.AcquireFunc(ctx, func(conn *pgxpool.Conn) error { return Migrate(ctx, conn.Conn()) })
	if err == nil {
		err = pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rejot_catalog_reader')
			AND pg_has_role(current_user, 'rejot_catalog_reader', 'MEMBER')`).Scan(&c.reader)
	}
	if err != nil {
		pool.Close()
		return nil, err
	}
	return c, nil
}

// Close closes the catalog's connections.
func (c *Catalog) Close() { c.pool.Close() }

// System is one sidecar's system: the database it manages.
type System struct {
	Name     string
	Database string
	Address  string
	Version  string
}

// RegisterSystem records a system, or refreshes it, and marks it seen now.
func (c *Catalog) RegisterSystem(ctx context.Context, s System) error {
	_, err := c.pool.Exec(ctx, `
		INSERT INTO rejot_catalog.systems (system, database, address, version, last_seen)
		VALUES ($1, $2, $3, $4, now())
		ON CONFLICT (system) DO UPDATE
		   SET database = EXCLUDED.database, address = EXCLUDED.address,
		       version = EXCLUDED.version, last_seen = now()`,
		s.Name, s.Database, s.Address, s.Version)
	if err != nil {
		return fmt.Errorf("cannot register system %q: %w", s.Name, err)
	}
	return nil
}

// Heartbeat marks a system seen now.
func (c *Catalog) Heartbeat(ctx context.Context, system, problem string) error {
	_, err := c.pool.Exec(ctx, "UPDATE rejot_catalog.systems SET last_seen = now(), problem = nullif($2, '') WHERE system = $1", system, problem)
	return err
}

// Result is the raw outcome of a query over the catalog relations, in the
// formats the caller asked for, ready to relay.
type Result struct {
	Fields []pgconn.FieldDescription
	Rows   [][][]byte
	Tag    string
}

// Describe prepares a query over the catalog relations and returns its
// parameter types and result fields.
func (c *Catalog) Describe(ctx context.Context, sql string, paramOIDs []uint32) (*pgconn.StatementDescription, error) {
	var sd *pgconn.StatementDescription
	err := c.readOnly(ctx, func(conn *pgconn.PgConn) error {
		var err error
		sd, err = conn.Prepare(ctx, "", sql, paramOIDs)
		return err
	})
	return sd, err
}

// Query runs a query over the catalog relations in a read-only
// transaction with a time limit; parameters and results use the given
// formats, so values pass through without being decoded.
func (c *Catalog) Query(ctx context.Context, sql string, params [][]byte, paramOIDs []uint32, paramFormats, resultFormats []int16) (*Result, error) {
	var res *Result
	err := c.readOnly(ctx, func(conn *pgconn.PgConn) error {
		rr := conn.ExecParams(ctx, sql, params, paramOIDs, paramFormats, resultFormats)
		r := &Result{}
		for rr.NextRow() {
			row := make([][]byte, len(rr.Values()))
			for i, v := range rr.Values() {
				if v != nil {
					row[i] = append([]byte{}, v...)
				}
			}
			r.Rows = append(r.Rows, row)
		}
		// Copied here: a result without rows still has its fields.
		r.Fields = append([]pgconn.FieldDescription(nil), rr.FieldDescriptions()...)
		tag, err := rr.Close()
		if err != nil {
			return err
		}
		r.Tag, res = tag.String(), r
		return nil
	})
	return res, err
}

// readOnly runs f inside a read-only transaction: a user's query over the
// catalog relations can read them and nothing can change.
func (c *Catalog) readOnly(ctx context.Context, f func(*pgconn.PgConn) error) error {
	ctx, cancel := context.WithTimeout(ctx, c.QueryTimeout)
	defer cancel()
	return c.pool.AcquireFunc(ctx, func(pc *pgxpool.Conn) error {
		conn := pc.Conn()
		setup := fmt.Sprintf("BEGIN READ ONLY; SET LOCAL statement_timeout = %d; SET LOCAL search_path = rejot, pg_catalog",
			c.QueryTimeout.Milliseconds())
		if c.reader {
			setup += "; SET LOCAL ROLE rejot_catalog_reader"
		}
		if _, err := conn.PgConn().Exec(ctx, setup).ReadAll(); err != nil {
			return err
		}
		err := f(conn.PgConn())
		if _, rerr := conn.Exec(context.WithoutCancel(ctx), "ROLLBACK"); rerr != nil && err == nil {
			err = rerr
		}
		return err
	})
}
