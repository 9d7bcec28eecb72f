package managed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Subscription is a row of _rejot.subscriptions: a target table of this
// database kept in sync with a publication version. Its position in the
// event log is read and moved with the functions below, in the
// transaction that applies the rows it stands for.
type Subscription struct {
	Target      string // schema.table, as identifiers quoted
	Schema      string
	Table       string
	Publication string
	Version     int
	Columns     []SubscribedColumn
	Copy        bool // copy the version's state first, rather than stream over what the table holds
	Generation  int  // bumped by each resync: a worker of an older one stops
	// Mapping: the consumer's own statements (nil: a mirror of the
	// version), run as the role MappedRole (an oid).
	Mapping    *Mapping
	MappedRole uint32
}

// ErrMoved: the subscription was resynced or removed since its worker
// read it (no row has its target and generation any more).
var ErrMoved = errors.New("the subscription changed (resync or unsubscribe)")

// ListenSubscriptions makes conn hear of subscriptions made, removed or
// resynced (ChannelSubscriptions).
func ListenSubscriptions(ctx context.Context, conn *pgx.Conn) error {
	_, err := conn.Exec(ctx, "LISTEN "+ChannelSubscriptions)
	return err
}

// LoadSubscriptions reads the database's subscriptions, by target. A
// database without _rejot yet has none; one whose _rejot is not the
// sidecar's is refused (a *ForeignError), before anything in it is read.
func LoadSubscriptions(ctx context.Context, conn *pgx.Conn) ([]Subscription, error) {
	if err := CheckOwned(ctx, conn); err != nil {
		return nil, err
	}
	rows, err := conn.Query(ctx, `SELECT target, target_schema, target_table, publication, version, columns::text, copy, generation,
			mapping::text, coalesce(mapped_role, 0)
		FROM _rejot.subscriptions ORDER BY target`)
	if err != nil {
		if NotInstalled(err) {
			return nil, nil
		}
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Subscription, error) {
		var sub Subscription
		var cols string
		var mapping *string
		if err := r.Scan(&sub.Target, &sub.Schema, &sub.Table, &sub.Publication, &sub.Version, &cols, &sub.Copy, &sub.Generation,
			&mapping, &sub.MappedRole); err != nil {
			return sub, err
		}
		if err := json.Unmarshal([]byte(cols), &sub.Columns); err != nil {
			return sub, fmt.Errorf("subscription %s: cannot read its columns: %w", sub.Target, err)
		}
		if mapping != nil {
			sub.Mapping = &Mapping{}
			if err := json.Unmarshal([]byte(*mapping), sub.Mapping); err != nil {
				return sub, fmt.Errorf("subscription %s: cannot read its statements: %w", sub.Target, err)
			}
		}
		return sub, nil
	})
}

// RecordError marks a subscription's generation failed, with why.
func RecordError(ctx context.Context, q Querier, target string, generation int, msg string) error {
	_, err := q.Exec(ctx, `UPDATE _rejot.subscriptions SET status = 'failed', error = $3, updated_at = now()
		WHERE target = $1 AND generation = $2`, target, generation, msg)
	return err
}

// RecordStopped marks a subscription's generation stopped, with why (its
// system may no longer read the version): its rows stay as they are.
func RecordStopped(ctx context.Context, q Querier, target string, generation int, msg string) error {
	_, err := q.Exec(ctx, `UPDATE _rejot.subscriptions SET status = 'stopped', error = $3, updated_at = now()
		WHERE target = $1 AND generation = $2`, target, generation, msg)
	return err
}

// Position returns a subscription's position: nil before its first copy,
// ErrMoved when the generation is gone.
func Position(ctx context.Context, q Querier, target string, generation int) (*int64, error) {
	return ScanPosition(q.QueryRow(ctx, "SELECT position FROM _rejot.subscriptions WHERE target = $1 AND generation = $2",
		target, generation))
}

// LockPosition is the statement that locks a subscription's row ($1
// target, $2 generation) and returns its position: the first of a
// transaction that applies changes, so that only one worker applies to a
// target. Its answer is read with ScanPosition.
const LockPosition = "SELECT position FROM _rejot.subscriptions WHERE target = $1 AND generation = $2 FOR UPDATE"

// LockAt is the statement that locks a subscription's row ($1 target, $2
// generation) and fails on the server, with SQLSTATE NotAt, unless its
// position is $3 (migration 017): the first statement of a transaction
// that applies the span after $3 (a pipelined one then commits in the
// same round trip). MovedError turns its failure into ErrMoved.
const LockAt = "SELECT _rejot.lock_at($1, $2, $3)"

// NotAt is the SQLSTATE of LockAt's refusal.
const NotAt = "RJ001"

// MovedError is err, or ErrMoved when err is LockAt's refusal.
func MovedError(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == NotAt {
		return ErrMoved
	}
	return err
}

// CheckTarget is the statement that refuses to let a transaction write a
// subscription's target ($1 its oid, $2 the names of the columns written)
// when that would run code of an owner other than the sidecar's role or a
// superuser (triggers, rules, defaults, constraints, index expressions,
// policies, types of others); it locks the table until the transaction
// ends, so none can be added meanwhile (migration 008). It comes after
// LockPosition or LockAt, before anything writes the target.
const CheckTarget = "SELECT _rejot.check_target($1, $2)"

// ScanPosition reads the answer of LockPosition (or Position): the
// position, or ErrMoved when the generation is gone.
func ScanPosition(row pgx.Row) (*int64, error) {
	var position *int64
	err := row.Scan(&position)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrMoved
	}
	return position, err
}

// Advance is the statement that moves a subscription's position with an
// applied span of the log, in the transaction that applied it: $1 target,
// $2 generation, $3 the new position, $4 the source commit time of its
// last change.
const Advance = `UPDATE _rejot.subscriptions SET position = $3, status = 'streaming', last_applied_at = now(),
	last_commit_at = $4, error = NULL, updated_at = now() WHERE target = $1 AND generation = $2`

// StartStreaming sets the position of a subscription that does not copy
// (it streams over what the target holds), in the caller's transaction.
func StartStreaming(ctx context.Context, q Querier, target string, generation int, position int64) error {
	_, err := q.Exec(ctx, `UPDATE _rejot.subscriptions SET position = $3, status = 'streaming', copied_before = true, updated_at = now()
		WHERE target = $1 AND generation = $2`, target, generation, position)
	return err
}

// Copied sets the position of a subscription whose target now holds the
// version's state at position (rows of them), in the transaction that
// copied them.
func Copied(ctx context.Context, q Querier, target string, generation int, position, rows int64) error {
	_, err := q.Exec(ctx, `UPDATE _rejot.subscriptions SET position = $3, status = 'streaming', copied_rows = $4, copied_before = true,
			last_applied_at = now(), error = NULL, updated_at = now() WHERE target = $1 AND generation = $2`,
		target, generation, position, rows)
	return err
}

// ColumnsAdded records, in the transaction that added and filled them,
// that the target now has the subscription's columns (their Adding marks
// cleared) and holds the version's rows as of position (nil: it has not
// copied yet, and stays so).
func ColumnsAdded(ctx context.Context, q Querier, target string, generation int, position *int64, columns []SubscribedColumn) error {
	cols, err := json.Marshal(columns)
	if err != nil {
		return err
	}
	tag, err := q.Exec(ctx, `UPDATE _rejot.subscriptions SET columns = $3::jsonb, position = coalesce($4, position),
			status = CASE WHEN $4 IS NULL THEN status ELSE 'streaming' END,
			last_applied_at = CASE WHEN $4 IS NULL THEN last_applied_at ELSE now() END, error = NULL, updated_at = now()
		WHERE target = $1 AND generation = $2`,
		target, generation, string(cols), position)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return ErrMoved
	}
	return nil
}

// Recopy makes a subscription at position copy the state again; ErrMoved
// when it is no longer there (resynced, removed, or moved on).
func Recopy(ctx context.Context, q Querier, target string, generation int, position int64) error {
	tag, err := q.Exec(ctx, `UPDATE _rejot.subscriptions SET position = NULL, status = 'copying', updated_at = now()
		WHERE target = $1 AND generation = $2 AND position = $3`, target, generation, position)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return ErrMoved
	}
	return nil
}

// SubscriptionReport is how a subscription of this database is doing, as
// its sidecar's apply reports it to the catalog (rejot.subscriptions):
// the row's status and position as the apply sees them, with its lag.
type SubscriptionReport struct {
	Target        string
	Status        string
	CopiedRows    int64
	Position      *int64
	LagSeconds    *float64
	LagChanges    *int64
	LastAppliedAt *time.Time
	Error         *string
}
