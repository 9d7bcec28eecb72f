package sql

import (
	"errors"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"github.com/rejot-dev/rejot/internal/pgerr"
)

// Statement is one statement of a query string.
type Statement struct {
	// Offset and Length locate the statement in the query string (bytes).
	Offset, Length int
	// Call is set when the statement calls the rejot API.
	Call *Call
	// Err is set when the statement uses the rejot API in a way the sidecar
	// refuses (a rejot function inside a larger expression, say). Such a
	// statement is answered by the sidecar with this error.
	Err error
	// Relations is set for a SELECT over the catalog relations
	// (rejot.publications, ...), which the sidecar rewrites to read their
	// rows from parameters and runs in the caller's session.
	Relations bool
	// CopyFromStdin marks COPY ... FROM STDIN, which reads data from the
	// client while it runs.
	CopyFromStdin bool
	// Guarded marks DDL that can break a published version (ALTER TABLE,
	// a rename, a drop of a table, schema, type or domain): the sidecar
	// has its transaction checked when it commits (see managed 009).
	Guarded bool
}

// Intercepted reports whether the sidecar answers the statement itself.
func (s Statement) Intercepted() bool { return s.Call != nil || s.Err != nil || s.Relations }

// Text returns the statement's text within query.
func (s Statement) Text(query string) string { return query[s.Offset : s.Offset+s.Length] }

// ErrNotParsed means the query is not valid SQL for Postgres's parser; the
// sidecar forwards it so that the database reports the error itself.
var ErrNotParsed = errors.New("query does not parse")

// Split parses a query string with Postgres's parser and returns its
// statements, each classified. Call it only for text that MentionsRejot.
func Split(query string) ([]Statement, error) {
	tree, err := pg_query.Parse(query)
	if err != nil {
		return nil, ErrNotParsed
	}
	stmts := make([]Statement, 0, len(tree.Stmts))
	for _, raw := range tree.Stmts {
		st := Statement{Offset: int(raw.StmtLocation), Length: int(raw.StmtLen)}
		if st.Length == 0 {
			st.Length = len(query) - st.Offset
		}
		st.Call, st.Err = classify(raw.Stmt, query)
		if st.Call == nil && st.Err == nil {
			st.Relations, st.Err = classifyRelations(raw.Stmt)
		}
		if cs := raw.Stmt.GetCopyStmt(); cs != nil && cs.IsFrom && cs.Filename == "" && !cs.IsProgram {
			st.CopyFromStdin = true
		}
		st.Guarded = guarded(raw.Stmt)
		stmts = append(stmts, st)
	}
	return stmts, nil
}

// guarded says whether a statement is DDL that can break a published
// version: what it reads is a table's columns, by number, name and type.
// Statements that cannot run in a transaction block (DROP INDEX
// CONCURRENTLY) are not: nothing can be checked at their commit.
func guarded(n *pg_query.Node) bool {
	switch {
	case n.GetAlterTableStmt() != nil:
		t := n.GetAlterTableStmt().Objtype
		return t == pg_query.ObjectType_OBJECT_TABLE || t == pg_query.ObjectType_OBJECT_FOREIGN_TABLE
	case n.GetRenameStmt() != nil:
		switch n.GetRenameStmt().RenameType {
		case pg_query.ObjectType_OBJECT_TABLE, pg_query.ObjectType_OBJECT_FOREIGN_TABLE, pg_query.ObjectType_OBJECT_COLUMN,
			pg_query.ObjectType_OBJECT_SCHEMA:
			return true
		}
	case n.GetAlterObjectSchemaStmt() != nil:
		t := n.GetAlterObjectSchemaStmt().ObjectType
		return t == pg_query.ObjectType_OBJECT_TABLE || t == pg_query.ObjectType_OBJECT_FOREIGN_TABLE
	case n.GetDropStmt() != nil:
		d := n.GetDropStmt()
		switch d.RemoveType {
		case pg_query.ObjectType_OBJECT_TABLE, pg_query.ObjectType_OBJECT_FOREIGN_TABLE, pg_query.ObjectType_OBJECT_SCHEMA,
			pg_query.ObjectType_OBJECT_TYPE, pg_query.ObjectType_OBJECT_DOMAIN:
			return !d.Concurrent
		}
	case n.GetDropOwnedStmt() != nil:
		return true
	}
	return false
}

// ParseOne classifies a single statement, as sent in an extended-protocol
// Parse message. It returns ErrNotParsed for text Postgres would reject and
// for several statements (the database reports both itself).
func ParseOne(query string) (Statement, error) {
	stmts, err := Split(query)
	if err != nil {
		return Statement{}, err
	}
	if len(stmts) != 1 {
		return Statement{}, ErrNotParsed
	}
	return stmts[0], nil
}

// classify finds rejot API calls in one parsed statement. A statement that
// does not reference the rejot schema is ordinary (nil, nil).
func classify(node *pg_query.Node, query string) (*Call, error) {
	refs := findRejotFuncs(node)
	if len(refs) == 0 {
		return nil, nil
	}
	call, ok := topLevelCall(node)
	if !ok || len(refs) != 1 || refs[0] != call.fn {
		first := refs[0]
		return nil, pgerr.Errorf(pgerr.FeatureNotSupported,
			"rejot.%s() must be called on its own", funcName(first)).
			At(first.Location).
			WithHint("Use CALL rejot.%s(...) or SELECT rejot.%s(...) as a statement by itself.",
				funcName(first), funcName(first))
	}
	c, err := newCall(call, query)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// topLevel is a FuncCall found in one of the accepted statement forms.
type topLevel struct {
	fn    *pg_query.FuncCall
	form  Form
	alias string
}

// topLevelCall recognises CALL f(...), SELECT f(...) [AS a] and
// SELECT * FROM f(...) [AS a].
func topLevelCall(node *pg_query.Node) (topLevel, bool) {
	if cs := node.GetCallStmt(); cs != nil && cs.Funccall != nil {
		return topLevel{fn: cs.Funccall, form: FormCall}, true
	}
	sel := node.GetSelectStmt()
	if sel == nil || !plainSelect(sel) {
		return topLevel{}, false
	}
	if len(sel.FromClause) == 0 && len(sel.TargetList) == 1 {
		rt := sel.TargetList[0].GetResTarget()
		if rt != nil && rt.Val.GetFuncCall() != nil && len(rt.Indirection) == 0 {
			return topLevel{fn: rt.Val.GetFuncCall(), form: FormSelect, alias: rt.Name}, true
		}
	}
	if len(sel.FromClause) == 1 && len(sel.TargetList) == 1 && isStar(sel.TargetList[0]) {
		rf := sel.FromClause[0].GetRangeFunction()
		if rf == nil || rf.Lateral || rf.Ordinality || rf.IsRowsfrom || len(rf.Functions) != 1 || len(rf.Coldeflist) != 0 {
			return topLevel{}, false
		}
		items := rf.Functions[0].GetList().GetItems()
		if len(items) == 0 || items[0].GetFuncCall() == nil {
			return topLevel{}, false
		}
		alias := ""
		if rf.Alias != nil {
			alias = rf.Alias.Aliasname
		}
		return topLevel{fn: items[0].GetFuncCall(), form: FormSelectFrom, alias: alias}, true
	}
	return topLevel{}, false
}

// plainSelect is a SELECT with nothing but a target list and FROM.
func plainSelect(s *pg_query.SelectStmt) bool {
	return s.Op == pg_query.SetOperation_SETOP_NONE && s.WhereClause == nil &&
		len(s.GroupClause) == 0 && s.HavingClause == nil && len(s.WindowClause) == 0 &&
		len(s.SortClause) == 0 && s.LimitCount == nil && s.LimitOffset == nil &&
		len(s.LockingClause) == 0 && s.WithClause == nil && len(s.DistinctClause) == 0 &&
		s.IntoClause == nil && len(s.ValuesLists) == 0
}

func isStar(n *pg_query.Node) bool {
	rt := n.GetResTarget()
	if rt == nil || rt.Name != "" {
		return false
	}
	fields := rt.Val.GetColumnRef().GetFields()
	return len(fields) == 1 && fields[0].GetAStar() != nil
}

func funcName(fn *pg_query.FuncCall) string {
	if len(fn.Funcname) == 0 {
		return ""
	}
	return fn.Funcname[len(fn.Funcname)-1].GetString_().GetSval()
}

// isRejotFunc: the function is qualified with the rejot schema (a catalog
// prefix is refused later by the resolver as an unknown function).
func isRejotFunc(fn *pg_query.FuncCall) bool {
	n := len(fn.Funcname)
	return n >= 2 && fn.Funcname[n-2].GetString_().GetSval() == "rejot"
}
