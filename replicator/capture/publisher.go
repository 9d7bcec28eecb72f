package capture

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rejot-dev/rejot/internal/sqlquote"
)

// Evaluating a version as its publisher.
//
// A projection is the publisher's SQL: its expressions and filter may call
// functions the publisher wrote (one merely declared IMMUTABLE passes
// every check), and its column types may be the publisher's, with casts
// the publisher defined. Whatever of it runs, runs as the role that
// recorded the version (Source.Role), never with the sidecar's powers:
//
//   - every connection to the owner's database resolves names in
//     pg_catalog only (and pg_temp last), so no function or operator
//     someone put in public or a schema of their own is picked up; the
//     stored query names everything else by its schema;
//   - a projection that can run code of anyone's (an expression, a
//     filter, a column of a type that is not built in) runs inside a
//     temporary SECURITY DEFINER function owned by the publisher, made
//     for it while the session has SET ROLE to it. SET ROLE alone would
//     not hold: code running after a SET ROLE may RESET ROLE back to the
//     session's role, but inside a SECURITY DEFINER function Postgres
//     refuses to change the role at all. The function reads in a
//     read-only transaction state (transaction_read_only, which nothing
//     after the first query can turn off) with row_security = off, so a
//     table row-level security would filter for the publisher is an
//     error, not a silently smaller copy;
//   - a projection of plain columns of built-in types runs no code but
//     Postgres's own: it is read under SET LOCAL ROLE to the publisher
//     with row_security = off, which keeps its privileges and streams;
//   - what the publisher's code can leave behind in the session outlives
//     the function: settings it set for the session (DateStyle,
//     extra_float_digits, statement_timeout... would change how every
//     other version's values read, or stop the capture), statements it
//     PREPAREd, channels it listens on, advisory locks. Each evaluation
//     is followed, in the same round trip, by resetSession; and owner
//     connections never use named prepared statements
//     (QueryExecModeCacheDescribe), so none the publisher's code
//     replaced with one of its own (pg_prepared_statements lists them)
//     can ever run as the sidecar.

// ownerSearchPath is the search_path of every connection to the owner's
// database.
const ownerSearchPath = "pg_catalog, pg_temp"

// connectOwner connects to the owner's database with names resolved in
// pg_catalog only, and statements sent unnamed (see above).
func connectOwner(ctx context.Context, url string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["search_path"] = ownerSearchPath
	cfg.DefaultQueryExecMode = pgx.QueryExecModeCacheDescribe
	return pgx.ConnectConfig(ctx, cfg)
}

// resetSession undoes what code of a publisher's could have left in the
// session beyond its function: the session's settings go back to the
// connection's (those of the start-up message, search_path included),
// and its prepared statements, listens and advisory locks go. Each is
// allowed in a transaction block, and none touches the evaluators
// (temporary functions).
var resetSession = []string{"RESET ALL", "DEALLOCATE ALL", "UNLISTEN *", "SELECT pg_catalog.pg_advisory_unlock_all()"}

// queueReset queues resetSession on b, after an evaluation.
func queueReset(b *pgx.Batch) {
	for _, q := range resetSession {
		b.Queue(q)
	}
}

// reset runs resetSession on q in one round trip.
func reset(ctx context.Context, q Querier) error {
	b := &pgx.Batch{}
	queueReset(b)
	if err := q.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("cannot reset the session after a projection ran: %w", err)
	}
	return nil
}

// runsCode says whether evaluating a source's projection can run code
// that is not Postgres's own: anything but plain columns of built-in types
// without a filter.
func (s *Source) runsCode(cols []SourceColumn) bool {
	if s.Filter != "" {
		return true
	}
	for _, name := range s.Sources {
		if name == "" {
			return true
		}
	}
	for _, c := range cols {
		if !builtinType(c.Type) {
			return true
		}
	}
	return false
}

// builtinType says whether a type, as format_type names it on a
// connection of connectOwner, is Postgres's own: with search_path
// pg_catalog, format_type qualifies every type outside pg_catalog (and
// only the superuser can put one there), and a built-in type's casts to
// and from text are Postgres's — nobody else can define a cast between
// types they do not own.
func builtinType(typ string) bool { return !strings.Contains(typ, ".") }

// asText is a column's value as text, as the log keeps it, in SQL the
// sidecar runs with its own role (the TOAST paths, which read tables the
// projections read): (col)::text for a built-in type, whose casts are
// Postgres's; for any other type its output function by way of format,
// never a cast, since whoever owns the type may have made its cast to
// text a function of theirs. Output functions are C, which only a
// superuser can write. For a type without a cast of its own the two give
// the same text.
func asText(col string, builtin bool) string {
	if builtin {
		return pgx.Identifier{col}.Sanitize() + "::text"
	}
	return "pg_catalog.format('%s', " + pgx.Identifier{col}.Sanitize() + ")"
}

// evaluator is a temporary SECURITY DEFINER function owned by a role,
// running body: name is how to call it (pg_temp-qualified).
type evaluator struct {
	role, params, returns, body string
}

// name is the function's name: one per role and definition, so a
// connection that made it once calls it ever after.
func (e *evaluator) name() string {
	h := sha256.Sum256([]byte(e.role + "\x00" + e.params + "\x00" + e.returns + "\x00" + e.body))
	return "pg_temp.rejot_eval_" + hex.EncodeToString(h[:12])
}

// columns are the names of the first n columns it returns.
func (e *evaluator) columns(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = "rejot_" + strconv.Itoa(i)
	}
	return out
}

// make creates the function in its own transaction on conn, as the role
// (SET LOCAL ROLE: its owner is the role). A role of "" is the
// connection's own.
func (e *evaluator) make(ctx context.Context, conn beginner) error {
	tag, err := sqlquote.DollarTag(e.body)
	if err != nil {
		return err
	}
	// PL/pgSQL, not SQL: RETURN QUERY gathers the rows in one call (a SQL
	// function in FROM is called once per row, and each call of a
	// SECURITY DEFINER function sets its role and settings anew), and
	// the plan is kept for the session.
	create := fmt.Sprintf("CREATE FUNCTION %s(%s) RETURNS TABLE (%s) LANGUAGE plpgsql SECURITY DEFINER"+
		" SET search_path = pg_catalog, pg_temp SET row_security = off SET transaction_read_only = on AS %s"+
		"#variable_conflict use_column\nBEGIN RETURN QUERY %s; END%s",
		e.name(), e.params, e.returns, tag, e.body, tag)
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if err := actAs(ctx, tx, e.role); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, create)
		return err
	})
}

// beginner starts transactions: a connection (or a transaction, whose
// Begin is a savepoint).
type beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// actAs sets the role of the transaction (SET LOCAL ROLE), with
// row_security off; "" keeps the session's role.
func actAs(ctx context.Context, q Querier, role string) error {
	query := "SELECT pg_catalog.set_config('row_security', 'off', true)"
	args := []any{}
	if role != "" {
		query += ", pg_catalog.set_config('role', $1, true)"
		args = append(args, role)
	}
	rows, err := q.Query(ctx, query, args...)
	if err != nil {
		return err
	}
	rows.Close()
	return rows.Err()
}

// undefinedEvaluator says whether err is an evaluator not made yet on
// this connection (no temporary schema at all yet: 3F000).
func undefinedEvaluator(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "42883" && strings.Contains(pe.Message, "rejot_eval_") ||
		pe.Code == "3F000" && strings.Contains(pe.Message, "pg_temp"))
}
