// Package catalog is ReJot's shared catalog, kept in a Postgres database:
// the systems (one per sidecar), the publications with their versions and
// columns, and the subscriptions. It migrates its own schema, and answers
// the read-only relations users query through any sidecar
// (rejot.publications, rejot.columns, rejot.subscriptions, rejot.systems).
// It never moves row data.
package catalog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rejot-dev/rejot/internal/pgerr"
)

// Relations are the catalog relations users may query, in schema rejot.
var Relations = []string{"publications", "columns", "subscriptions", "systems"}

// Budgets of the users' queries over the catalog relations: any login role
// can send one through any sidecar, so none may hold the sidecar's memory or
// the catalog's connections for long. They run in a pool of their own, so
// that a few slow ones cannot starve the applier, the heartbeats and the
// reports, which use the other.
const (
	DefaultQueryTimeout   = 10 * time.Second
	DefaultMaxResultBytes = 64 << 20
	userConns             = 4 // the users' pool
	sidecarConns          = 8 // the sidecar's own pool
)

// Catalog is an open catalog database.
type Catalog struct {
	pool   *pgxpool.Pool // the sidecar's own work
	users  *pgxpool.Pool // users' queries over the catalog relations
	reader bool          // queries run as rejot_catalog_reader
	// QueryTimeout bounds a user's query over the catalog relations (the
	// catalog's statement_timeout, which cancels it with 57014).
	QueryTimeout time.Duration
	// MaxResultBytes bounds the values of a user's query result: past it
	// the query stops with 54000.
	MaxResultBytes int
}

// Open connects to the catalog at url and migrates its schema.
func Open(ctx context.Context, url string) (*Catalog, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("invalid catalog URL: %w", err)
	}
	usersCfg := cfg.Copy()
	cfg.MaxConns, usersCfg.MaxConns = sidecarConns, userConns
	var c *Catalog
	// One value larger than the budget is refused by its message's length,
	// before it is read.
	usersCfg.ConnConfig.BuildFrontend = func(r io.Reader, w io.Writer) *pgproto3.Frontend {
		f := pgproto3.NewFrontend(r, w)
		if c != nil {
			f.SetMaxBodyLen(c.maxResultBytes() + 64<<10)
		}
		return f
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("cannot open the catalog: %w", err)
	}
	users, err := pgxpool.NewWithConfig(ctx, usersCfg)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("cannot open the catalog: %w", err)
	}
	c = &Catalog{pool: pool, users: users, QueryTimeout: DefaultQueryTimeout, MaxResultBytes: DefaultMaxResultBytes}
	err = pool.AcquireFunc(ctx, func(conn *pgxpool.Conn) error { return Migrate(ctx, conn.Conn()) })
	if err == nil {
		err = pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rejot_catalog_reader')
			AND pg_has_role(current_user, 'rejot_catalog_reader', 'MEMBER')`).Scan(&c.reader)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Close closes the catalog's connections.
func (c *Catalog) Close() {
	c.pool.Close()
	c.users.Close()
}

// System is one sidecar's system: the database it manages.
type System struct {
	Name     string
	Database string
	Address  string
	Version  string
}

// RegisterSystem records a system, or refreshes it, and marks it seen now.
// A system name belongs to the catalog role that first registered it: as
// another role (not a member of that one) the registration is refused
// with 42501 (rejot_catalog.guard_system), and the system's row is left
// as it was.
func (c *Catalog) RegisterSystem(ctx context.Context, s System) error {
	_, err := c.pool.Exec(ctx, `
		INSERT INTO rejot_catalog.systems (system, database, address, version, last_seen)
		VALUES ($1, $2, $3, $4, now())
		ON CONFLICT (system) DO UPDATE
		   SET database = EXCLUDED.database, address = EXCLUDED.address,
		       version = EXCLUDED.version, last_seen = now()`,
		s.Name, s.Database, s.Address, s.Version)
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == pgerr.InsufficientPrivilege {
		return &pgerr.Error{Code: pe.Code, Message: "cannot register system " + strconv.Quote(s.Name) + ": " + pe.Message, Hint: pe.Hint}
	}
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
// formats, so values pass through without being decoded. A result whose
// values exceed MaxResultBytes is not read further: the query fails with
// 54000 and its connection is dropped, rather than read to its end.
func (c *Catalog) Query(ctx context.Context, sql string, params [][]byte, paramOIDs []uint32, paramFormats, resultFormats []int16) (*Result, error) {
	var res *Result
	err := c.readOnly(ctx, func(conn *pgconn.PgConn) error {
		qctx, stop := context.WithCancel(ctx)
		defer stop()
		rr := conn.ExecParams(qctx, sql, params, paramOIDs, paramFormats, resultFormats)
		r := &Result{}
		size := 0
		for rr.NextRow() {
			row := make([][]byte, len(rr.Values()))
			for i, v := range rr.Values() {
				size += len(v)
				if v != nil {
					row[i] = append([]byte{}, v...)
				}
			}
			if size > c.maxResultBytes() {
				stop() // closes the connection: the rest is never read
				rr.Close()
				return errResultTooLarge(c.maxResultBytes())
			}
			r.Rows = append(r.Rows, row)
		}
		// Copied here: a result without rows still has its fields.
		r.Fields = append([]pgconn.FieldDescription(nil), rr.FieldDescriptions()...)
		tag, err := rr.Close()
		var long *pgproto3.ExceededMaxBodyLenErr
		if errors.As(err, &long) {
			return errResultTooLarge(c.maxResultBytes())
		}
		if err != nil {
			return err
		}
		r.Tag, res = tag.String(), r
		return nil
	})
	return res, err
}

func (c *Catalog) maxResultBytes() int {
	if c.MaxResultBytes > 0 {
		return c.MaxResultBytes
	}
	return DefaultMaxResultBytes
}

func errResultTooLarge(limit int) error {
	return &pgerr.Error{Code: pgerr.ProgramLimitExceeded,
		Message: fmt.Sprintf("the result of a catalog query is larger than %d MB; select fewer rows or columns", limit>>20),
		Hint:    "Add a WHERE clause or a LIMIT, or leave out long columns such as query and description."}
}

// readOnly runs f inside a read-only transaction on the users' pool: a
// user's query over the catalog relations can read them and nothing can
// change. The catalog's statement_timeout ends a slow query with its own
// clear error; the context's deadline, a little later, bounds the wait for
// a connection and a catalog that stopped answering.
func (c *Catalog) readOnly(ctx context.Context, f func(*pgconn.PgConn) error) error {
	timeout := c.QueryTimeout
	if timeout <= 0 {
		timeout = DefaultQueryTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout+2*time.Second)
	defer cancel()
	return c.users.AcquireFunc(ctx, func(pc *pgxpool.Conn) error {
		conn := pc.Conn()
		setup := fmt.Sprintf("BEGIN READ ONLY; SET LOCAL statement_timeout = %d; SET LOCAL search_path = rejot, pg_catalog",
			timeout.Milliseconds())
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
