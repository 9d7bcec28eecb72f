package sql

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"github.com/rejot-dev/rejot/internal/pgerr"
	"github.com/rejot-dev/rejot/managed"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// A mapped subscription: rejot.subscribe(..., upsert => $$…$$, delete =>
// $$…$$[, truncate => $$…$$]) runs the consumer's own statements instead
// of keeping a mirror table. Each statement is validated here, in the
// caller's own session: parsed by Postgres's parser, its :column
// parameters public columns of the version, one INSERT, UPDATE, DELETE or
// MERGE (TRUNCATE too for the truncate statement), writing only tables
// the caller owns, and planned through EXPLAIN, which checks names, types
// and the caller's privileges against the live schema without running
// anything. The apply runs them as the caller (replicator/apply,
// mapped.go).

// maxMappedStatement bounds each statement's text.
const maxMappedStatement = 64 << 10

// mappedStatement is one validated statement of a mapped subscription.
type mappedStatement struct {
	body   string // :column made ($k::type)
	params []int  // $k stands for the public column params[k-1]
}

// isMapped says whether a subscribe call asks for a mapped subscription.
func isMapped(args Args) bool {
	return args["upsert"] != nil || args["delete"] != nil || args["truncate"] != nil
}

func runMappedSubscribe(ctx context.Context, env *Env, args Args, pub string, version int, copyRows bool) ([][]any, error) {
	if args["columns"] != nil {
		return nil, pgerr.Errorf(pgerr.FeatureNotSupported, "a mapped subscription takes no columns argument: its statements name the columns they use").
			WithHint("Leave columns out.")
	}
	if strings.TrimSpace(args.Text("upsert")) == "" || strings.TrimSpace(args.Text("delete")) == "" {
		return nil, pgerr.Errorf(pgerr.InvalidParameterValue, "a mapped subscription takes both an upsert and a delete statement").
			WithHint("Give upsert => $$INSERT … ON CONFLICT …$$ and delete => $$DELETE … WHERE key = :key$$.")
	}
	target, err := resolveTarget(ctx, env.Session, args["target"])
	if err != nil {
		return nil, err
	}
	if !target.exists {
		return nil, pgerr.Errorf(pgerr.UndefinedTable, "table %s does not exist: a mapped subscription's statements write a table of yours", target.name).
			WithHint("Create the table first; name it as the target.")
	}
	if err := target.mustOwn("subscribe into it"); err != nil {
		return nil, err
	}
	cols, err := env.versionColumns(ctx, pub, version)
	if err != nil {
		return nil, err
	}
	if err := env.checkAccess(ctx, pub, version); err != nil {
		return nil, err
	}
	chosen, err := chooseColumns(cols, nil, pub, version)
	if err != nil {
		return nil, err
	}
	if _, err := env.Session.Query(ctx, managed.LockTarget, &target.schema, &target.table); err != nil {
		return nil, notManaged(err)
	}
	m, err := env.mapping(ctx, args, cols, pub, version)
	if err != nil {
		return nil, err
	}
	recordedCols, err := json.Marshal(chosen)
	if err != nil {
		return nil, err
	}
	recordedMap, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	c, mp, copyText, v := string(recordedCols), string(recordedMap), strconv.FormatBool(copyRows), strconv.Itoa(version)
	rows, err := env.Session.Query(ctx, managed.InsertMappedSubscription, &target.name, &target.schema, &target.table, &pub, &v, &c, &copyText, &mp)
	if err != nil {
		return nil, notManaged(err)
	}
	status := "copying"
	if len(rows.Values) > 0 && rows.Values[0][0] == nil {
		status = "unchanged" // the same subscription is there
		if ex, err := existingSubscription(ctx, env.Session, target.name); err == nil && ex != nil {
			status = ex.status
		}
	}
	return [][]any{{target.name, pub, int32(version), status}}, nil
}

// mapping validates the statements of a mapped subscription.
func (env *Env) mapping(ctx context.Context, args Args, cols []publicColumn, pub string, version int) (*managed.Mapping, error) {
	path, err := searchPath(ctx, env.Session)
	if err != nil {
		return nil, err
	}
	v := &mappedValidation{env: env, cols: cols, pub: pub, version: version, path: path}
	up, err := v.statement(ctx, "upsert", *args["upsert"])
	if err != nil {
		return nil, err
	}
	del, err := v.statement(ctx, "delete", *args["delete"])
	if err != nil {
		return nil, err
	}
	m := &managed.Mapping{Upsert: up.body, UpsertParams: up.params, Delete: del.body, DeleteParams: del.params, SearchPath: path}
	if t := args["truncate"]; t != nil && strings.TrimSpace(*t) != "" {
		tr, err := v.statement(ctx, "truncate", *t)
		if err != nil {
			return nil, err
		}
		m.Truncate = tr.body
	}
	return m, nil
}

// mappedValidation validates the statements of one subscribe call.
type mappedValidation struct {
	env     *Env
	cols    []publicColumn
	pub     string
	version int
	path    string            // the caller's search_path
	types   map[string]string // a column's type, qualified
}

// statement validates the statement given as argument arg.
func (v *mappedValidation) statement(ctx context.Context, arg, text string) (*mappedStatement, error) {
	if len(text) > maxMappedStatement {
		return nil, pgerr.Errorf(pgerr.ProgramLimitExceeded, "the %s statement is %d bytes long; a mapped subscription's statement has at most %d", arg, len(text), maxMappedStatement)
	}
	params, err := namedParams(text)
	if err != nil {
		return nil, v.env.inArg(arg, err)
	}
	index, err := v.checkParams(ctx, arg, params)
	if err != nil {
		return nil, v.env.inArg(arg, err)
	}
	body, names, splices := positional(text, params, func(name string) string { return "::" + v.types[name] })
	tree, err := v.parse(arg, body)
	if err != nil {
		return nil, v.env.inArg(arg, v.back(err, body, splices))
	}
	if err := v.checkWritten(ctx, arg, tree, text, body, splices); err != nil {
		return nil, err
	}
	if tree.GetTruncateStmt() == nil {
		if err := v.explain(ctx, body, len(names)); err != nil {
			return nil, v.env.inArg(arg, v.back(err, body, splices))
		}
	}
	s := &mappedStatement{body: body}
	for _, n := range names {
		s.params = append(s.params, index[n])
	}
	return s, nil
}

// checkParams makes sure each parameter is a public column (a key
// column in a delete, none in a truncate), with its type known here, and
// returns each one's index among the columns.
func (v *mappedValidation) checkParams(ctx context.Context, arg string, params []namedParam) (map[string]int, error) {
	index := map[string]int{}
	for _, p := range params {
		i := v.column(p.name)
		switch {
		case arg == "truncate":
			return nil, pgerr.Errorf(pgerr.InvalidColumnReference, "the truncate statement takes no parameters: a truncate removes every row").At(int32(p.from))
		case i < 0:
			return nil, pgerr.Errorf(pgerr.UndefinedColumn, "publication %s version %d has no column %q", v.pub, v.version, p.name).At(int32(p.from)).
				WithHint("The parameters are the public columns: %s.", v.columnNames())
		case arg == "delete" && !v.cols[i].key:
			return nil, pgerr.Errorf(pgerr.InvalidColumnReference, "the delete statement may use only the key (%s): a delete carries the key of the row gone, not %q",
				v.keyNames(), p.name).At(int32(p.from))
		}
		index[p.name] = i
		if err := v.typeOf(ctx, p.name, i); err != nil {
			return nil, err
		}
	}
	return index, nil
}

func (v *mappedValidation) column(name string) int {
	for i, c := range v.cols {
		if c.name == name {
			return i
		}
	}
	return -1
}

func (v *mappedValidation) columnNames() string {
	names := make([]string, len(v.cols))
	for i, c := range v.cols {
		names[i] = ":" + c.name
	}
	return strings.Join(names, ", ")
}

func (v *mappedValidation) keyNames() string {
	var names []string
	for _, c := range v.cols {
		if c.key {
			names = append(names, ":"+c.name)
		}
	}
	return strings.Join(names, ", ")
}

// typeOf qualifies the type of column i (named name) as it resolves in
// this database: only a name Postgres reads as a type goes into the text.
func (v *mappedValidation) typeOf(ctx context.Context, name string, i int) error {
	if v.types == nil {
		v.types = map[string]string{}
	}
	if _, ok := v.types[name]; ok {
		return nil
	}
	c := v.cols[i]
	if err := checkTypes(ctx, v.env.Session, []managed.SubscribedColumn{{Name: c.name, Type: c.typ}}); err != nil {
		return err
	}
	q, err := qualifyType(ctx, v.env.Session, c.typ, v.path)
	if err != nil {
		return err
	}
	v.types[name] = q.name
	return nil
}

// parse parses a statement: exactly one, of a kind that writes rows.
func (v *mappedValidation) parse(arg, body string) (*pg_query.Node, error) {
	tree, err := pg_query.Parse(body)
	if err != nil {
		return nil, parseError(err, body)
	}
	if len(tree.Stmts) != 1 {
		at := int32(0)
		if len(tree.Stmts) > 1 {
			at = tree.Stmts[1].StmtLocation
		}
		return nil, pgerr.Errorf(pgerr.SyntaxError, "the %s statement must be one statement, not %d", arg, len(tree.Stmts)).At(at).
			WithHint("Give one INSERT, UPDATE, DELETE or MERGE statement; a WITH clause can do several things in one.")
	}
	st := tree.Stmts[0].Stmt
	switch {
	case st.GetInsertStmt() != nil, st.GetUpdateStmt() != nil, st.GetDeleteStmt() != nil, st.GetMergeStmt() != nil:
		return st, nil
	case st.GetTruncateStmt() != nil && arg == "truncate":
		return st, nil
	}
	return nil, pgerr.Errorf(pgerr.FeatureNotSupported, "the %s statement must be an INSERT, UPDATE, DELETE or MERGE, not %s", arg, statementKind(st)).
		WithHint("A mapped subscription's statements write rows, in the apply's transaction: no transaction control, SET, DO, COPY or CALL.")
}

// statementKind names the kind of a statement the parser read.
func statementKind(st *pg_query.Node) string {
	switch {
	case st.GetTransactionStmt() != nil:
		return "transaction control"
	case st.GetVariableSetStmt() != nil:
		return "SET"
	case st.GetDoStmt() != nil:
		return "DO"
	case st.GetCopyStmt() != nil:
		return "COPY"
	case st.GetCallStmt() != nil:
		return "CALL"
	case st.GetSelectStmt() != nil:
		return "SELECT"
	case st.GetTruncateStmt() != nil:
		return "TRUNCATE (only the truncate statement may be one)"
	}
	kind := strings.TrimPrefix(fmt.Sprintf("%T", st.Node), "*pg_query.Node_")
	return "a " + strings.TrimSuffix(kind, "Stmt") + " statement"
}

// checkWritten refuses a statement that writes a table the caller does
// not own (by membership): a mapped subscription writes the caller's own
// tables, as the DESIGN's rule for subscribing says.
func (v *mappedValidation) checkWritten(ctx context.Context, arg string, st *pg_query.Node, text, body string, splices []splice) error {
	for _, rv := range writtenTables(st) {
		name := rv.Relname
		if rv.Schemaname != "" {
			name = rv.Schemaname + "." + rv.Relname
		}
		quoted := quoteName(rv)
		rows, err := v.env.Session.Query(ctx, `SELECT pg_catalog.pg_has_role(current_user, c.relowner, 'MEMBER')::text,
				pg_catalog.pg_get_userbyid(c.relowner)::text, current_user::text, pg_catalog.format('%I.%I', n.nspname, c.relname)
			FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
			WHERE c.oid = pg_catalog.to_regclass($1)`, &quoted)
		if err != nil {
			return err
		}
		if len(rows.Values) == 0 {
			e := pgerr.Errorf(pgerr.UndefinedTable, "relation %q does not exist", name).At(rv.Location)
			return v.env.inArg(arg, v.back(e, body, splices))
		}
		r := rows.Values[0]
		if *r[0] != "true" {
			e := notOwner(*r[1], *r[3], "write it in a mapped subscription", *r[2])
			return v.env.inArg(arg, v.back(atLocation(e, rv.Location), body, splices))
		}
	}
	return nil
}

func atLocation(err error, loc int32) error {
	var e *pgerr.Error
	if errors.As(err, &e) {
		return e.At(loc)
	}
	return err
}

// quoteName is a RangeVar's name as to_regclass reads it.
func quoteName(rv *pg_query.RangeVar) string {
	q := func(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
	if rv.Schemaname != "" {
		return q(rv.Schemaname) + "." + q(rv.Relname)
	}
	return q(rv.Relname)
}

// writtenTables are the tables a statement writes: of its INSERT,
// UPDATE, DELETE, MERGE and TRUNCATE, WITH clauses included.
func writtenTables(st *pg_query.Node) []*pg_query.RangeVar {
	var out []*pg_query.RangeVar
	walk(st.ProtoReflect(), func(m protoreflect.Message) {
		switch n := m.Interface().(type) {
		case *pg_query.InsertStmt:
			out = append(out, n.Relation)
		case *pg_query.UpdateStmt:
			out = append(out, n.Relation)
		case *pg_query.DeleteStmt:
			out = append(out, n.Relation)
		case *pg_query.MergeStmt:
			out = append(out, n.Relation)
		case *pg_query.TruncateStmt:
			for _, r := range n.Relations {
				if rv := r.GetRangeVar(); rv != nil {
					out = append(out, rv)
				}
			}
		}
	})
	return out
}

// explainPrefix wraps a statement to have it planned and its privileges
// checked, without running it.
const explainPrefix = "EXPLAIN (COSTS OFF) "

// explain plans the statement in the caller's session with every
// parameter NULL: Postgres resolves its names and types and checks the
// caller's privileges on what it reads and writes (as the executor
// starts), and runs nothing.
func (v *mappedValidation) explain(ctx context.Context, body string, n int) error {
	params := make([]*string, n)
	_, err := v.env.Session.Query(ctx, explainPrefix+body, params...)
	var qe *pgerr.Error
	if !errors.As(err, &qe) {
		return err
	}
	e := &pgerr.Error{Code: qe.Code, Message: qe.Message, Detail: qe.Detail, Hint: qe.Hint}
	if pos := qe.InternalPosition - len(explainPrefix); pos > 0 && pos <= len([]rune(body))+1 {
		e.Position = byteOffset(body, pos) + 1
	}
	return e
}

// back moves an error's position in body to the text the caller wrote.
func (v *mappedValidation) back(err error, body string, splices []splice) error {
	var e *pgerr.Error
	if !errors.As(err, &e) || e.Position == 0 {
		return err
	}
	e.Position = originOf(splices, e.Position-1) + 1
	return e
}

// isMappedSubscription says whether the subscription into target is
// mapped.
func isMappedSubscription(ctx context.Context, sess Session, target string) (bool, error) {
	rows, err := sess.Query(ctx, managed.SubscriptionMapped, &target)
	if err != nil {
		return false, notManaged(err)
	}
	return len(rows.Values) > 0 && rows.Values[0][0] != nil && *rows.Values[0][0] == "true", nil
}
