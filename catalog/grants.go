package catalog

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rejot-dev/rejot/internal/pgerr"
	"github.com/rejot-dev/rejot/managed"
)

// applyAccess sets who may subscribe to a version to exactly what its
// owner recorded (a grant or revoke carries the whole list), and stops
// the subscriptions of every system that lost its access, with the reason.
// Their rows stay as they were: the subscriber's apply stops too.
func applyAccess(ctx context.Context, tx pgx.Tx, system string, a *managed.Access) error {
	tag, err := tx.Exec(ctx, `UPDATE rejot_catalog.publications SET restricted = $4, updated_at = now()
		WHERE publication = $1 AND version = $2 AND owner = $3`, a.Publication, a.Version, system, a.Restricted)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return &ErrRefused{fmt.Sprintf("publication %s version %d is not system %s's", a.Publication, a.Version, system)}
	}
	_, err = tx.Exec(ctx, `DELETE FROM rejot_catalog.grants WHERE publication = $1 AND version = $2 AND NOT (system = ANY (coalesce($3::text[], '{}')))`,
		a.Publication, a.Version, a.Granted)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO rejot_catalog.grants (publication, version, system, granted_by)
		SELECT $1, $2, g, $4 FROM unnest($3::text[]) AS g ON CONFLICT DO NOTHING`, a.Publication, a.Version, a.Granted, a.Caller)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `UPDATE rejot_catalog.subscriptions s SET status = 'stopped', error = r.refusal
		FROM (SELECT DISTINCT system, rejot_catalog.access_refusal($1, $2, system) AS refusal
		        FROM rejot_catalog.subscriptions WHERE publication = $1 AND version = $2) r
		WHERE s.publication = $1 AND s.version = $2 AND s.system = r.system AND r.refusal IS NOT NULL`, a.Publication, a.Version)
	return err
}

// mayActFor refuses a catalog role that may not act for system: neither
// the role the system belongs to nor a member of it.
func mayActFor(ctx context.Context, tx pgx.Tx, system string) error {
	var ok bool
	if err := tx.QueryRow(ctx, "SELECT rejot_catalog.may_act_for($1)", system).Scan(&ok); err != nil {
		return err
	}
	if !ok {
		return pgerr.Errorf(pgerr.InsufficientPrivilege, "this sidecar's catalog role may not act for system %q: the system is not registered, or belongs to another catalog role", system)
	}
	return nil
}

// Access says why this system may not read a publication version ("" when
// it may): a subscriber's apply asks before it copies the version's state
// and, while it streams, again and again, since the event log would serve
// it regardless.
func (c *Catalog) Access(ctx context.Context, system, publication string, version int) (string, error) {
	var refusal *string
	err := c.pool.QueryRow(ctx, "SELECT rejot_catalog.access_refusal($1, $2, $3)", publication, version, system).Scan(&refusal)
	if err != nil || refusal == nil {
		return "", err
	}
	return *refusal, nil
}

// Access is Catalog.Access for this system on the current catalog.
func (l *Lazy) Access(ctx context.Context, publication string, version int) (string, error) {
	c := l.cur.Load()
	if c == nil {
		return "", ErrUnavailable
	}
	return c.Access(ctx, l.System.Name, publication, version)
}

// VersionAccess returns who may subscribe to a publication version: the
// owner's system, its access as rejot.publications shows it (open, or the
// granted systems) and the granted systems; found is false when there is
// no such version.
func (c *Catalog) VersionAccess(ctx context.Context, publication string, version int) (owner, access string, granted []string, found bool, err error) {
	err = c.readOnly(ctx, func(conn *pgxpool.Conn) error {
		err := conn.QueryRow(ctx, `SELECT owner, access, coalesce(granted_to, '{}') FROM rejot.publications
			WHERE publication = $1 AND version = $2`, publication, version).Scan(&owner, &access, &granted)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		found = err == nil
		return err
	})
	return owner, access, granted, found, err
}
