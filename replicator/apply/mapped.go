package apply

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/rejot-dev/rejot/internal/sqlquote"
	"github.com/rejot-dev/rejot/managed"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// Applying a mapped subscription.
//
// Its statements are the consumer's SQL, and whatever they run (functions,
// triggers, casts of their types) runs as the role that subscribed, never
// with the sidecar's powers:
//
//   - each statement is the body of a temporary SECURITY DEFINER function
//     owned by that role, made for this connection while it has SET
//     LOCAL ROLE to the role (so the sidecar's role must be able to become
//     it, which subscribe checks). SET ROLE alone would not hold: code
//     running after it may RESET ROLE; inside a SECURITY DEFINER function
//     Postgres refuses to change the role at all. The function lives in
//     the connection's own temporary schema, which no other session may
//     use, so nobody else can change it (say, to SECURITY INVOKER);
//   - code the function runs may itself replace it (it owns it): right
//     before each statement that calls it, in the same pipeline,
//     managed.CheckMapped makes sure it is still the role's SECURITY
//     DEFINER function, and a statement calls each function through one
//     evaluation (Postgres decides the call's role once per statement);
//   - the connection resolves names in pg_catalog first and pg_temp last
//     and never uses named prepared statements; what the statements may
//     leave in the session (settings, prepared statements, cursors,
//     listens, advisory locks) is undone by managed.ResetSession right
//     after the statement that ran them, before the sidecar writes the
//     position;
//   - the session is marked (managed.MarkApplySession): session_user is
//     the sidecar's role there, and _rejot's intent functions refuse
//     every call made in it.
//
// Every change runs a statement: the upsert for each upserted row, the
// delete for each deleted key, the truncate for a truncate, in commit
// order, one source transaction after another, with no collapsing per key
// (a statement may count the changes). The whole span and its position
// are one destination transaction, so each change runs exactly once.

// mapped is a mapped subscription's functions on one connection.
type mapped struct {
	role     string // the subscribing role's name, as pg_roles has it now
	roleOID  uint32
	width    int // the version's columns
	upsert   mappedFunc
	delete   mappedFunc
	truncate *mappedFunc // nil: no truncate statement
}

// mappedFunc is one statement as a function: pg_temp.<name>(text, …).
type mappedFunc struct {
	name   string
	body   string
	params []int // its $k is column params[k-1]
}

// errNoTruncate: the subscription cannot go on without a truncate
// statement.
var errNoTruncate = errors.New("no truncate statement")

// maxMappedMessage bounds each message the server sends on a mapped
// subscription's connection: a larger one ends the connection (the
// worker fails, and tries again later).
const maxMappedMessage = 1 << 20

// connectMapped opens the connection a mapped subscription is applied
// on: names resolve in pg_catalog first and pg_temp last, statements are
// sent unnamed, and the session is marked before anything of the
// subscriber's runs in it.
func connectMapped(ctx context.Context, url string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["search_path"] = "pg_catalog, pg_temp"
	cfg.DefaultQueryExecMode = pgx.QueryExecModeCacheDescribe
	// The subscriber's code may RAISE a notice or an error of up to a
	// gigabyte; what the sidecar reads here is small (counts, positions).
	cfg.BuildFrontend = func(r io.Reader, w io.Writer) *pgproto3.Frontend {
		f := pgproto3.NewFrontend(r, w)
		f.SetMaxBodyLen(maxMappedMessage)
		return f
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := managed.MarkSession(ctx, conn); err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("cannot mark the apply session: %w", err)
	}
	return conn, nil
}

// endAbandoned ends the backend of a mapped subscription's connection
// that pgx had to close: a statement cancelled (the worker stopping)
// that did not end, since the subscriber's code may catch the cancel and
// go on, leaves its backend running it, holding its locks and its
// snapshot, with nobody to read it. The sidecar's role may end its own
// backends, and nothing the code does can catch that.
func (w *worker) endAbandoned(ctx context.Context, conn *pgx.Conn) {
	if !conn.IsClosed() {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	c, err := connect(ctx, w.s.URL)
	if err != nil {
		w.log().Warn().Err(err).Uint32("pid", conn.PgConn().PID()).Msg("cannot end the backend of a mapped subscription's abandoned statement")
		return
	}
	defer c.Close(ctx)
	if err := managed.EndApplySession(ctx, c, conn.PgConn().PID()); err != nil {
		w.log().Warn().Err(err).Uint32("pid", conn.PgConn().PID()).Msg("cannot end the backend of a mapped subscription's abandoned statement")
	}
}

// prepareMapped makes the subscription's functions on conn.
func (w *worker) prepareMapped(ctx context.Context, conn *pgx.Conn) (*target, error) {
	m := w.sub.mapping
	mp := &mapped{roleOID: w.sub.mappedRole, width: len(w.sub.columns)}
	err := conn.QueryRow(ctx, "SELECT rolname::text FROM pg_catalog.pg_roles WHERE oid = $1", mp.roleOID).Scan(&mp.role)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("the role that made the mapped subscription (oid %d) is gone: subscribe again as another role", mp.roleOID)
	}
	if err != nil {
		return nil, err
	}
	mp.upsert = mp.function("upsert", m.Upsert, m.UpsertParams)
	mp.delete = mp.function("delete", m.Delete, m.DeleteParams)
	fns := []*mappedFunc{&mp.upsert, &mp.delete}
	if m.Truncate != "" {
		tr := mp.function("truncate", m.Truncate, nil)
		mp.truncate = &tr
		fns = append(fns, mp.truncate)
	}
	for _, f := range fns {
		if err := mp.make(ctx, conn, f, m.SearchPath); err != nil {
			return nil, fmt.Errorf("cannot make the mapped subscription's function for its statement: %w", err)
		}
	}
	return &target{schema: w.sub.schema, table: w.sub.table, name: pgx.Identifier{w.sub.schema, w.sub.table}.Sanitize(),
		cols: w.sub.columns, mapped: mp}, nil
}

// function names a statement's function: one per role and body.
func (m *mapped) function(kind, body string, params []int) mappedFunc {
	h := sha256.Sum256([]byte(strconv.Itoa(int(m.roleOID)) + "\x00" + kind + "\x00" + body))
	return mappedFunc{name: "rejot_map_" + hex.EncodeToString(h[:12]), body: body, params: params}
}

// make creates f in its own transaction on conn, as the role, with the
// subscriber's search_path kept for its body.
func (m *mapped) make(ctx context.Context, conn *pgx.Conn, f *mappedFunc, path string) error {
	tag, err := sqlquote.DollarTag(f.body)
	if err != nil {
		return err
	}
	// The types are qualified: the subscriber's search_path, in effect
	// here, may name a type "text" of its own (a domain whose CHECK would
	// run in the sidecar's call, as the sidecar). The body is not checked
	// here (it was planned when subscribing), so that none of it is
	// analysed while only SET LOCAL ROLE holds.
	args := strings.TrimSuffix(strings.Repeat("pg_catalog.text, ", len(f.params)), ", ")
	create := fmt.Sprintf("CREATE FUNCTION pg_temp.%s(%s) RETURNS pg_catalog.void LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS %s%s%s",
		f.name, args, tag, f.body, tag)
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_catalog.set_config('role', $1, true), pg_catalog.set_config('search_path', $2, true),
			pg_catalog.set_config('check_function_bodies', 'off', true)`, m.role, path); err != nil {
			return err
		}
		return execOne(ctx, tx.Conn(), create)
	})
}

// call is f called with the columns of u (c0 …).
func (f *mappedFunc) call(from string) string {
	args := make([]string, len(f.params))
	for i, p := range f.params {
		args[i] = from + ".c" + strconv.Itoa(p)
	}
	return "pg_temp." + f.name + "(" + strings.Join(args, ", ") + ")"
}

// guarded wraps the statement that calls the functions: each checked
// right before it; right after it, the session reset, and no deferrable
// code its commit would run as the sidecar.
func (m *mapped) guarded(call statement) []statement {
	var out []statement
	for _, f := range m.functions() {
		out = append(out, statement{sql: managed.CheckMapped, args: []any{f.name, m.roleOID}})
	}
	out = append(out, call)
	for _, q := range managed.ResetSession {
		out = append(out, statement{sql: q})
	}
	// After the reset, which runs none of the subscriber's code, so that
	// the check runs with the connection's settings.
	return append(out, statement{sql: managed.CheckMappedCommit})
}

func (m *mapped) functions() []*mappedFunc {
	fns := []*mappedFunc{&m.upsert, &m.delete}
	if m.truncate != nil {
		fns = append(fns, m.truncate)
	}
	return fns
}

// statements are the statements that run changes in order: one
// statement calls the function of each change (none collapsed), in
// order, with the change's values as text.
func (m *mapped) statements(t *target, recs []eventlog.Entry) ([]statement, error) {
	if len(recs) == 0 {
		return nil, nil
	}
	ops := make([]string, len(recs))
	cols := make([][]eventlog.Value, m.width)
	for i := range cols {
		cols[i] = make([]eventlog.Value, len(recs))
	}
	for j, r := range recs {
		ops[j] = string(r.Op)
		switch r.Op {
		case eventlog.OpTruncate:
			if m.truncate == nil {
				return nil, m.noTruncate(t, "its publication version was truncated at the source (a TRUNCATE, or its owner filling it again)")
			}
		case eventlog.OpUpsert:
			for i := range cols {
				if i < len(r.Row) {
					cols[i][j] = r.Row[i]
				}
			}
		case eventlog.OpDelete:
			for k, i := range t.keys {
				if k < len(r.Key) {
					cols[i][j] = r.Key[k]
				}
			}
		}
	}
	args := []any{ops}
	for _, c := range cols {
		args = append(args, c)
	}
	return m.guarded(statement{sql: m.changeSQL(), args: args}), nil
}

// changeSQL calls, for each change, the function of its op.
func (m *mapped) changeSQL() string {
	arrays := arrayParams(m.width + 1)
	names := append([]string{"op"}, aliases("c", m.width)...)
	tr := "NULL"
	if m.truncate != nil {
		tr = m.truncate.call("u")
	}
	// Volatile expressions of a sorted query are evaluated after the
	// sort: the calls happen in the changes' order.
	return fmt.Sprintf(`SELECT pg_catalog.count(x.r) FROM (SELECT CASE u.op WHEN 'u' THEN %s WHEN 'd' THEN %s ELSE %s END AS r
		FROM unnest(%s) WITH ORDINALITY AS u(%s, o) ORDER BY u.o) AS x`,
		m.upsert.call("u"), m.delete.call("u"), tr, strings.Join(arrays, ", "), strings.Join(names, ", "))
}

func (m *mapped) noTruncate(t *target, why string) error {
	return fmt.Errorf("%w: the mapped subscription into %s cannot go on: %s, and it has no truncate statement to say what that does to your table; "+
		"subscribe again with one (CALL rejot.unsubscribe('%s'), then rejot.subscribe(..., truncate => $$DELETE FROM …$$))", errNoTruncate, t.name, why, t.name)
}

// awaitFirstState waits until the owner has filled the version's state
// once: a mapped subscription that copied before would meet the first
// fill's truncate in the log, and fail without a truncate statement
// where there is nothing to remove.
func (w *worker) awaitFirstState(ctx context.Context) error {
	for {
		width, err := w.s.Log.Width(ctx, w.sub.version)
		if err != nil || width > 0 {
			return err
		}
		w.s.Log.Wait(ctx, w.sub.version, time.Second)
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// mappedState is the temporary table a mapped subscription's copy
// reads the state into, in the transaction that copies it.
const mappedState = "pg_temp.rejot_mapped_state"

// fillMapped copies the version's state into a mapped subscription, in
// tx: the truncate statement first (when there is one; a copy after the
// first needs it), then the upsert statement for every row of the state.
func (w *worker) fillMapped(ctx context.Context, tx pgx.Tx, t *target) (int64, error) {
	m := t.mapped
	copied, err := managed.CopiedBefore(ctx, tx, w.sub.target, w.sub.generation)
	if err != nil {
		return 0, err
	}
	if copied && m.truncate == nil {
		return 0, m.noTruncate(t, "it copies the state again (a resync, or the event log no longer holds the changes it needs)")
	}
	defs := make([]string, m.width)
	for i := range defs {
		defs[i] = "c" + strconv.Itoa(i) + " text"
	}
	if err := execOne(ctx, tx.Conn(), "CREATE TEMPORARY TABLE "+mappedState[len("pg_temp."):]+" ("+strings.Join(defs, ", ")+") ON COMMIT DROP"); err != nil {
		return 0, err
	}
	elements := make([]int, m.width)
	for i := range elements {
		elements[i] = i
	}
	position, err := w.pipeInto(ctx, tx, "COPY "+mappedState+" FROM STDIN", elements)
	if err != nil {
		return 0, err
	}
	var stmts []statement
	if m.truncate != nil {
		stmts = append(stmts, m.guarded(statement{sql: "SELECT pg_catalog.count(" + m.truncate.call("s") + ") FROM (SELECT 1) AS s"})...)
	}
	stmts = append(stmts, m.guarded(statement{sql: "SELECT pg_catalog.count(" + m.upsert.call("s") + ") FROM " + mappedState + " AS s"})...)
	stmts = append(stmts, statement{sql: "SET LOCAL synchronous_commit = on"})
	for _, st := range stmts {
		if err := execOne(ctx, tx.Conn(), st.sql, st.args...); err != nil {
			return 0, err
		}
	}
	return position, managed.Copied(ctx, tx, w.sub.target, w.sub.generation, position, w.copied.Load())
}
