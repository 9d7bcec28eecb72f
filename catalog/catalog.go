// Package catalog is ReJot's shared catalog, kept in a Postgres database:
// the systems (one per sidecar), the publications with their versions and
// columns, and the subscriptions. It migrates its own schema, and reads the
// rows of the read-only relations users query through any sidecar
// (rejot.publications, rejot.columns, rejot.subscriptions, rejot.systems)
// with fixed statements of its own. It never moves row data.
package catalog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rejot-dev/rejot/internal/pgerr"
)

// Budgets of the users' queries over the catalog relations: any login role
// can send one through any sidecar, so none may hold the sidecar's memory or
// the catalog's connections for long. The reads of the relations' rows
// they cause use a pool of their own, so that many at once cannot starve
// the applier, the heartbeats and the reports, which use the other.
const (
	DefaultQueryTimeout   = 10 * time.Second
	DefaultMaxResultBytes = 64 << 20
	userConns             = 4 // the users' pool
	sidecarConns          = 8 // the sidecar's own pool
)

// Catalog is an open catalog database.
type Catalog struct {
	pool  *pgxpool.Pool // the sidecar's own work
	users *pgxpool.Pool // reads of the catalog relations for users' queries
	// QueryTimeout bounds each read of the catalog relations for a user's
	// query (the catalog's statement_timeout, which cancels it with 57014).
	QueryTimeout time.Duration
	// MaxResultBytes bounds what one user's query over the catalog
	// relations may make the sidecar hold: the rows read from the catalog,
	// and the query's result. Past it the query stops with 54000.
	MaxResultBytes int

	colsMu sync.Mutex
	cols   map[string][]RelationColumn // the relations' columns, once read
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
	return c.registerSystem(ctx, s, true)
}

// registerSystem is RegisterSystem; a standby instance (address false)
// leaves the address of a system already registered as it is: it is the
// active instance's.
func (c *Catalog) registerSystem(ctx context.Context, s System, address bool) error {
	_, err := c.pool.Exec(ctx, `
		INSERT INTO rejot_catalog.systems (system, database, address, version, last_seen)
		VALUES ($1, $2, $3, $4, now())
		ON CONFLICT (system) DO UPDATE
		   SET database = EXCLUDED.database,
		       address = CASE WHEN $5 THEN EXCLUDED.address ELSE rejot_catalog.systems.address END,
		       version = EXCLUDED.version, last_seen = now()`,
		s.Name, s.Database, s.Address, s.Version, address)
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == pgerr.InsufficientPrivilege {
		return &pgerr.Error{Code: pe.Code, Message: "cannot register system " + strconv.Quote(s.Name) + ": " + pe.Message, Hint: pe.Hint}
	}
	if err != nil {
		return fmt.Errorf("cannot register system %q: %w", s.Name, err)
	}
	return nil
}

// VersionFailure is a publication version its owner's sidecar cannot
// compute, and why (with the fix).
type VersionFailure struct {
	Publication string
	Version     int
	Problem     string
}

// ReportFailures records which of a system's own publication versions are
// failed (rejot.publications' status and problem) and clears the problem
// of the others; nil failures (not known yet) changes nothing. Only the
// system's catalog role reports for it.
func (c *Catalog) ReportFailures(ctx context.Context, system string, failures []VersionFailure) error {
	if failures == nil {
		return nil
	}
	pubs, versions, problems := make([]string, len(failures)), make([]int32, len(failures)), make([]string, len(failures))
	for i, f := range failures {
		pubs[i], versions[i], problems[i] = f.Publication, int32(f.Version), f.Problem
	}
	_, err := c.pool.Exec(ctx, `UPDATE rejot_catalog.publications p SET problem = x.problem
		FROM (SELECT q.publication, q.version, u.problem FROM rejot_catalog.publications q
			LEFT JOIN unnest($2::text[], $3::int4[], $4::text[]) AS u(publication, version, problem)
				ON u.publication = q.publication AND u.version = q.version
			WHERE q.owner = $1) x
		WHERE p.publication = x.publication AND p.version = x.version AND p.problem IS DISTINCT FROM x.problem
			AND rejot_catalog.may_act_for($1)`, system, pubs, versions, problems)
	if err != nil {
		return fmt.Errorf("cannot record the failed versions of system %q: %w", system, err)
	}
	return nil
}

// Heartbeat marks a system seen now.
func (c *Catalog) Heartbeat(ctx context.Context, system, problem string) error {
	_, err := c.pool.Exec(ctx, "UPDATE rejot_catalog.systems SET last_seen = now(), problem = nullif($2, '') WHERE system = $1", system, problem)
	return err
}

// Seen marks a system seen now, and nothing else: a standby instance's
// heartbeat (the active one records the system's problem).
func (c *Catalog) Seen(ctx context.Context, system string) error {
	_, err := c.pool.Exec(ctx, "UPDATE rejot_catalog.systems SET last_seen = now() WHERE system = $1", system)
	return err
}
