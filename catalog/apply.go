package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rejot-dev/rejot/internal/pgerr"
	"github.com/rejot-dev/rejot/managed"
)

// ErrNameTaken: the publication name belongs to another system.
type ErrNameTaken struct{ Name, Owner string }

func (e *ErrNameTaken) Error() string {
	return fmt.Sprintf("publication name %q belongs to system %q", e.Name, e.Owner)
}

// Claim makes name the system's unless another system has it, and returns
// its owner. A name belongs to the system that first published it.
func (c *Catalog) Claim(ctx context.Context, name, system string) (string, error) {
	_, err := c.pool.Exec(ctx, `INSERT INTO rejot_catalog.publication_names (publication, owner)
		VALUES ($1, $2) ON CONFLICT (publication) DO NOTHING`, name, system)
	if err != nil {
		return "", err
	}
	// A new statement, so a claim that won a race just now is seen.
	var owner string
	err = c.pool.QueryRow(ctx, "SELECT owner FROM rejot_catalog.publication_names WHERE publication = $1", name).Scan(&owner)
	return owner, err
}

// ReleaseStaleClaims gives back names the system claimed for a publish
// that never committed: claims older than ttl with no publication in the
// catalog and none in the system's own record (keep).
func (c *Catalog) ReleaseStaleClaims(ctx context.Context, system string, keep []string, ttl time.Duration) (int64, error) {
	tag, err := c.pool.Exec(ctx, `DELETE FROM rejot_catalog.publication_names n
		WHERE owner = $1 AND created_at < now() - $2::interval AND NOT (publication = ANY ($3))
		  AND NOT EXISTS (SELECT 1 FROM rejot_catalog.publications p WHERE p.publication = n.publication)`,
		system, ttl.String(), keep)
	return tag.RowsAffected(), err
}

// Apply applies one command of a system's outbox, once: a command already
// applied is skipped, so replays after a crash change nothing.
// uid is the command's random id; id its place in the outbox, for messages.
// Only the catalog role the system belongs to (or a member of it) may
// apply its commands: another sidecar's are not this one's to apply.
// A subscribe or resync the catalog refuses (the system has no grant)
// is still recorded, as a stopped subscription with the reason, and then
// returned as a refusal.
func (c *Catalog) Apply(ctx context.Context, system, uid string, id int64, kind string, payload []byte) error {
	var judged *ErrRefused
	err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		if err := mayActFor(ctx, tx, system); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `INSERT INTO rejot_catalog.applied_commands (system, command_uid, command_id)
			VALUES ($1, $2::uuid, $3) ON CONFLICT DO NOTHING`, system, uid, id)
		if err != nil || tag.RowsAffected() == 0 {
			return err
		}
		var err2 error
		judged, err2 = applyCommand(ctx, tx, system, id, kind, payload)
		if err2 == nil && judged != nil {
			_, err2 = tx.Exec(ctx, "UPDATE rejot_catalog.applied_commands SET outcome = $3 WHERE system = $1 AND command_uid = $2::uuid",
				system, uid, judged.Reason)
		}
		return err2
	})
	if err == nil && judged != nil {
		return judged
	}
	return err
}

// applyCommand applies one command in tx. A subscription the catalog
// refuses but records is returned as judged, with a nil error.
func applyCommand(ctx context.Context, tx pgx.Tx, system string, id int64, kind string, payload []byte) (judged *ErrRefused, err error) {
	switch kind {
	case managed.KindSubscribe, managed.KindUnsubscribe, managed.KindResync:
		var sub managed.SubscriptionCommand
		if err := json.Unmarshal(payload, &sub); err != nil {
			return nil, &ErrRefused{fmt.Sprintf("command %d: %v", id, err)}
		}
		judged, err := applySubscription(ctx, tx, system, kind, &sub)
		return judged, refusal(err)
	case managed.KindGrant, managed.KindRevoke:
		var a managed.Access
		if err := json.Unmarshal(payload, &a); err != nil {
			return nil, &ErrRefused{fmt.Sprintf("command %d: %v", id, err)}
		}
		return nil, refusal(applyAccess(ctx, tx, system, &a))
	}
	return nil, applyVersionCommand(ctx, tx, system, id, kind, payload)
}

// applyVersionCommand applies a publish, unpublish or deprecate.
func applyVersionCommand(ctx context.Context, tx pgx.Tx, system string, id int64, kind string, payload []byte) error {
	switch kind {
	case managed.KindPublish:
		var p managed.Published
		if err := json.Unmarshal(payload, &p); err != nil {
			return &ErrRefused{fmt.Sprintf("command %d: %v", id, err)}
		}
		return refusal(applyPublish(ctx, tx, system, &p))
	case managed.KindUnpublish, managed.KindDeprecate:
		var l managed.Lifecycle
		if err := json.Unmarshal(payload, &l); err != nil {
			return &ErrRefused{fmt.Sprintf("command %d: %v", id, err)}
		}
		return refusal(applyLifecycle(ctx, tx, system, &l))
	default:
		return &ErrRefused{fmt.Sprintf("command %d: unknown kind %q", id, kind)}
	}
}

// ErrRefused: the command can never apply (malformed, or data the catalog
// rejects); it is recorded as refused rather than retried, so it cannot
// hold back the commands after it.
type ErrRefused struct{ Reason string }

func (e *ErrRefused) Error() string { return e.Reason }

// refusal marks the catalog's data errors (classes 22 and 23) as refusals.
func refusal(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (strings.HasPrefix(pe.Code, pgerr.ClassDataException) || strings.HasPrefix(pe.Code, pgerr.ClassIntegrityConstraintViolation)) {
		return &ErrRefused{pe.Message}
	}
	return err
}

func applyPublish(ctx context.Context, tx pgx.Tx, system string, p *managed.Published) error {
	var owner string
	err := tx.QueryRow(ctx, `INSERT INTO rejot_catalog.publication_names (publication, owner) VALUES ($1, $2)
		ON CONFLICT (publication) DO UPDATE SET owner = rejot_catalog.publication_names.owner
		RETURNING owner`, p.Publication, system).Scan(&owner)
	if err != nil {
		return err
	}
	if owner != system {
		return &ErrNameTaken{Name: p.Publication, Owner: owner}
	}
	// owner_role: the role the version was first published as, which its
	// capture runs as (the owner's record keeps the first too).
	_, err = tx.Exec(ctx, `INSERT INTO rejot_catalog.publications
			(publication, version, minor, owner, database, query, source, key_columns, description, owner_role, tables)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, nullif($10, ''), $11)
		ON CONFLICT (publication, version) DO UPDATE SET
			minor = EXCLUDED.minor, query = EXCLUDED.query, source = EXCLUDED.source, tables = EXCLUDED.tables,
			key_columns = EXCLUDED.key_columns, description = EXCLUDED.description, updated_at = now(),
			owner_role = coalesce(rejot_catalog.publications.owner_role, EXCLUDED.owner_role)
		WHERE rejot_catalog.publications.minor <= EXCLUDED.minor`,
		p.Publication, p.Version, p.Minor, system, p.Database, p.Query, p.Source, p.KeyColumns, p.Description, p.Caller, tablesOf(p))
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, "DELETE FROM rejot_catalog.columns WHERE publication = $1 AND version = $2", p.Publication, p.Version); err != nil {
		return err
	}
	for i, col := range p.Columns {
		_, err := tx.Exec(ctx, `INSERT INTO rejot_catalog.columns
				(publication, version, position, name, type, type_oid, type_mod, is_key, nullable, since_minor)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
			p.Publication, p.Version, i+1, col.Name, col.Type, col.TypeOID, col.TypeMod, col.IsKey, col.Nullable, col.SinceMinor)
		if err != nil {
			return err
		}
	}
	return nil
}

func applyLifecycle(ctx context.Context, tx pgx.Tx, system string, l *managed.Lifecycle) error {
	var sunset *string
	if l.Sunset != "" {
		sunset = &l.Sunset
	}
	_, err := tx.Exec(ctx, `UPDATE rejot_catalog.publications
		SET status = $4, sunset = $5::date, note = $6, updated_at = now()
		WHERE publication = $1 AND version = $2 AND owner = $3`, l.Publication, l.Version, system, l.Status, sunset, l.Note)
	return err
}

// applySubscription applies a subscription's command. The catalog judges
// a subscribe or resync: a system without a grant for the version gets
// its subscription recorded as stopped, with the reason (judged).
func applySubscription(ctx context.Context, tx pgx.Tx, system, kind string, s *managed.SubscriptionCommand) (*ErrRefused, error) {
	if kind == managed.KindUnsubscribe {
		_, err := tx.Exec(ctx, "DELETE FROM rejot_catalog.subscriptions WHERE system = $1 AND target = $2", system, s.Target)
		return nil, err
	}
	var reason *string
	if err := tx.QueryRow(ctx, "SELECT rejot_catalog.access_refusal($1, $2, $3)", s.Publication, s.Version, system).Scan(&reason); err != nil {
		return nil, err
	}
	status := "copying"
	if reason != nil {
		status = "stopped"
	}
	var err error
	switch kind {
	case managed.KindSubscribe:
		_, err = tx.Exec(ctx, `INSERT INTO rejot_catalog.subscriptions (target, system, publication, version, status, error, mapped)
			VALUES ($1, $2, $3, $4, $5, $6, $7)
			ON CONFLICT (system, target) DO UPDATE SET publication = EXCLUDED.publication, version = EXCLUDED.version,
				status = EXCLUDED.status, copied_rows = 0, applied_position = NULL, error = EXCLUDED.error, created_at = now(),
				mapped = EXCLUDED.mapped`,
			s.Target, system, s.Publication, s.Version, status, reason, s.Mapped)
	case managed.KindResync:
		_, err = tx.Exec(ctx, `UPDATE rejot_catalog.subscriptions SET status = $3, copied_rows = 0, applied_position = NULL, error = $4
			WHERE system = $1 AND target = $2`, system, s.Target, status, reason)
	}
	if err != nil || reason == nil {
		return nil, err
	}
	return &ErrRefused{*reason}, nil
}

// SubscriptionReport is how a subscription is doing, as its sidecar
// reports it to rejot.subscriptions (see managed.SubscriptionReport).
type SubscriptionReport = managed.SubscriptionReport

// ReportSubscriptions records how a system's subscriptions are doing. A
// subscription the catalog does not know yet (its subscribe command is
// not applied) is left out; the next report has it.
func (c *Catalog) ReportSubscriptions(ctx context.Context, system string, reports []SubscriptionReport) error {
	batch := &pgx.Batch{}
	for _, r := range reports {
		// A subscription to a retired version gets nothing more: stopped;
		// so does one the system has no grant for, whatever its sidecar
		// says. Only the system's catalog role reports for it.
		batch.Queue(`UPDATE rejot_catalog.subscriptions s SET
				status = CASE WHEN p.status = 'retired' OR rejot_catalog.access_refusal(s.publication, s.version, $1) IS NOT NULL
					THEN 'stopped' ELSE $3 END,
				copied_rows = $4, applied_position = $5, lag_seconds = $6, lag_changes = $7, last_applied_at = $8,
				error = CASE WHEN p.status = 'retired' THEN 'publication ' || s.publication || ' version ' || s.version || ' is retired: subscribe to another version'
					ELSE coalesce(rejot_catalog.access_refusal(s.publication, s.version, $1), $9) END
			FROM rejot_catalog.publications p
			WHERE s.system = $1 AND s.target = $2 AND p.publication = s.publication AND p.version = s.version
				AND rejot_catalog.may_act_for($1)`,
			system, r.Target, r.Status, r.CopiedRows, r.Position, r.LagSeconds, r.LagChanges, r.LastAppliedAt, r.Error)
	}
	return c.pool.SendBatch(ctx, batch).Close()
}

// IsRefusal reports whether an Apply error is the command's own fault (it
// can never apply) rather than the catalog's (retry later).
func IsRefusal(err error) bool {
	var taken *ErrNameTaken
	var refused *ErrRefused
	return errors.As(err, &taken) || errors.As(err, &refused)
}

// tablesOf are the tables a published version reads: its source alone in
// a command of a release before join projections.
func tablesOf(p *managed.Published) []string {
	if len(p.Tables) == 0 {
		return []string{p.Source}
	}
	return p.Tables
}
