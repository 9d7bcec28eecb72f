package managed

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
)

// Mapping is a mapped subscription's statements, as _rejot.subscriptions
// .mapping keeps them (migration 012): the consumer's own statements run
// instead of the mirror upsert and delete, as the role that subscribed.
// Each statement's :column parameters became $1 … $n, each cast from text
// to the public column's type ("($1::integer)"); Params lists, for $k,
// the index of its column in the subscription's Columns.
type Mapping struct {
	Upsert       string `json:"upsert"`
	UpsertParams []int  `json:"upsert_params"`
	Delete       string `json:"delete"`
	DeleteParams []int  `json:"delete_params"`
	Truncate     string `json:"truncate,omitempty"` // "": none given
	// SearchPath is the subscriber's search_path when it subscribed:
	// unqualified names in the statements resolve as they did then.
	SearchPath string `json:"search_path"`
}

// Statements of a mapped subscription's apply session.
const (
	// MarkApplySession marks the session as one that runs mapped
	// subscriptions' statements: _rejot.claim refuses every rejot call
	// made in it (migration 012). It forgets the marks of sessions that
	// have ended.
	MarkApplySession = `WITH gone AS (
			DELETE FROM _rejot.apply_sessions a WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity s
				WHERE s.pid = a.pid AND s.backend_start = a.started))
		INSERT INTO _rejot.apply_sessions (pid, started)
		SELECT s.pid, s.backend_start FROM pg_catalog.pg_stat_activity s WHERE s.pid = pg_catalog.pg_backend_pid()
		ON CONFLICT (pid) DO UPDATE SET started = EXCLUDED.started`

	// CheckMapped refuses (42501) to call the function $1 of the
	// session's temporary schema unless it is the only one of its name
	// there, SECURITY DEFINER and owned by the role $2 (an oid). It is
	// sent right before each statement that calls it.
	CheckMapped = "SELECT _rejot.check_mapped($1, $2)"

	// CheckMappedCommit refuses (42501) while the database has deferrable
	// code (a constraint trigger, an exclusion constraint) on a table not
	// the sidecar's role's or a superuser's: its events, queued by the
	// statements as their role, would fire at COMMIT as the sidecar's
	// (migration 014). It is sent after each statement that ran a mapped
	// subscription's code, once ResetSession has run.
	CheckMappedCommit = "SELECT _rejot.check_mapped_commit()"

	// InsertMappedSubscription records a new mapped subscription and its
	// subscribe command: $1 … $7 as InsertSubscription, $8 the Mapping
	// (JSON). It returns the command's id, NULL when the same
	// subscription is there already; another one into the target is
	// refused (42710). The sidecar's role must be able to become the
	// caller (42501).
	InsertMappedSubscription = `SELECT _rejot.insert_mapped_subscription(current_user, $1, $2, $3, $4, $5::int, $6::jsonb, $7::boolean, $8::jsonb)`

	// SubscriptionMapped says whether the subscription into target $1 is
	// mapped ('true' or 'false'); refused as LockSubscriptionRecord.
	SubscriptionMapped = `SELECT _rejot.subscription_mapped(current_user, $1)::text`
)

// ResetSession undoes what a mapped subscription's statements could have
// left in the session beyond the statement that ran them: settings (the
// session's go back to the connection's, search_path included),
// prepared statements, listens, cursors and advisory locks. Each is
// allowed in a transaction block; they run before anything else of the
// sidecar's in the transaction.
var ResetSession = []string{"RESET ALL", "DEALLOCATE ALL", "CLOSE ALL", "UNLISTEN *", "SELECT pg_catalog.pg_advisory_unlock_all()"}

// CopiedBefore says whether a subscription has copied (or started
// streaming) before, in the caller's transaction.
func CopiedBefore(ctx context.Context, q Querier, target string, generation int) (bool, error) {
	var copied bool
	err := q.QueryRow(ctx, "SELECT copied_before FROM _rejot.subscriptions WHERE target = $1 AND generation = $2", target, generation).Scan(&copied)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, ErrMoved
	}
	return copied, err
}

// EndApplySession ends the backend pid if it is a marked apply session
// (MarkApplySession) still running: its statement was abandoned.
func EndApplySession(ctx context.Context, q Querier, pid uint32) error {
	_, err := q.Exec(ctx, `SELECT pg_catalog.pg_terminate_backend(a.pid) FROM _rejot.apply_sessions a
		JOIN pg_catalog.pg_stat_activity s ON s.pid = a.pid AND s.backend_start = a.started WHERE a.pid = $1`, int64(pid))
	return err
}

// MarkSession runs MarkApplySession on conn.
func MarkSession(ctx context.Context, conn *pgx.Conn) error {
	_, err := conn.Exec(ctx, MarkApplySession)
	return err
}
