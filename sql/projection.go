package sql

import (
	"errors"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"github.com/pganalyze/pg_query_go/v6/parser"
	"github.com/rejot-dev/rejot/internal/pgerr"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Projection is a publication's query as Postgres's parser sees it: one
// table, named output columns, an optional filter.
type Projection struct {
	Query   string
	Schema  string // the source table as written; Schema may be empty
	Table   string
	TableAt int // 0-based location of the table name in Query
	Columns []ProjectedColumn
	// Filter is the WHERE condition with column references unqualified,
	// ready to be evaluated over the table's own columns; "" when none.
	Filter   string
	FilterAt int
	// Functions are the functions the query calls, for the checks that
	// need the live catalog (aggregates, window functions).
	Functions []FunctionRef
	// References are the table columns the output columns and the filter
	// read, each once, in order of appearance.
	References []string
}

// FunctionRef is a function call in a projection.
type FunctionRef struct {
	Schema, Name string
	At           int
}

// ProjectedColumn is one output column of a projection.
type ProjectedColumn struct {
	Name string
	// Expr is the expression with column references unqualified.
	Expr string
	// Source is the table column when the output is a plain reference to
	// one (key columns must be); "" for expressions.
	Source string
	At     int // 0-based location in Query
}

// AnalyzeProjection checks a publication query's shape: exactly one SELECT
// over one table, optional WHERE, every output column named. What needs the
// live database — the table, the columns, the types, the key, volatility —
// is checked later through the caller's session. Positions in errors are
// 1-based byte offsets into query.
func AnalyzeProjection(query string) (*Projection, error) {
	tree, err := pg_query.Parse(query)
	if err != nil {
		return nil, parseError(err, query)
	}
	if len(tree.Stmts) != 1 {
		e := pgerr.Errorf(pgerr.SyntaxError, "a publication query is one SELECT statement, not %d statements", len(tree.Stmts))
		if len(tree.Stmts) > 1 {
			e = e.At(tree.Stmts[1].StmtLocation)
		}
		return nil, e
	}
	if n := tree.Stmts[0].StmtLen; n > 0 {
		query = query[:tree.Stmts[0].StmtLocation+n] // without a trailing semicolon
	}
	sel := tree.Stmts[0].Stmt.GetSelectStmt()
	if sel == nil {
		return nil, pgerr.Errorf(pgerr.FeatureNotSupported, "a publication query must be a SELECT").At(tree.Stmts[0].StmtLocation)
	}
	if err := checkShape(sel); err != nil {
		return nil, err
	}
	if err := checkExpressions(sel); err != nil {
		return nil, err
	}
	p := &Projection{Query: query}
	if err := p.setTable(sel); err != nil {
		return nil, err
	}
	if err := p.setColumns(sel); err != nil {
		return nil, err
	}
	if sel.WhereClause != nil {
		p.FilterAt = int(location(sel.WhereClause))
		p.Filter = deparseExpr(sel.WhereClause)
	}
	p.Functions = functionRefs(sel)
	p.References = columnRefs(sel)
	return p, nil
}

func parseError(err error, query string) error {
	e := pgerr.Errorf(pgerr.SyntaxError, "%s", err.Error())
	var pe *parser.Error
	if errors.As(err, &pe) && pe.Cursorpos > 0 {
		e.Position = byteOffset(query, pe.Cursorpos) + 1
	}
	return e
}

// checkShape refuses every construct a publication cannot be: the error
// names it and says why.
func checkShape(s *pg_query.SelectStmt) error {
	refuse := func(what, why string, at int32) error {
		return pgerr.Errorf(pgerr.FeatureNotSupported, "%s is not supported in a publication query: %s", what, why).At(at)
	}
	const perRow = "a publication is the table's rows, one per key, kept in sync"
	switch {
	case s.Op != pg_query.SetOperation_SETOP_NONE:
		return refuse("UNION, INTERSECT or EXCEPT", "a publication reads one table", -1)
	case s.WithClause != nil:
		return refuse("WITH", "a publication reads one table directly", s.WithClause.Location)
	case len(s.DistinctClause) > 0:
		return refuse("DISTINCT", perRow, -1)
	case len(s.GroupClause) > 0 || s.HavingClause != nil:
		return refuse("GROUP BY or HAVING", perRow, location(firstOf(s.GroupClause, s.HavingClause)))
	case len(s.WindowClause) > 0:
		return refuse("WINDOW", perRow, -1)
	case len(s.SortClause) > 0:
		return refuse("ORDER BY", "a publication is a set of rows, not a listing", location(s.SortClause[0]))
	case s.LimitCount != nil || s.LimitOffset != nil:
		return refuse("LIMIT or OFFSET", perRow, location(firstOf(nil, s.LimitCount, s.LimitOffset)))
	case len(s.LockingClause) > 0:
		return refuse("FOR UPDATE or FOR SHARE", "publishing reads without locking", -1)
	case s.IntoClause != nil:
		return refuse("SELECT INTO", "publishing creates nothing in your database", -1)
	case len(s.ValuesLists) > 0:
		return refuse("VALUES", "a publication reads a table", -1)
	}
	return nil
}

func firstOf(list []*pg_query.Node, nodes ...*pg_query.Node) *pg_query.Node {
	if len(list) > 0 {
		return list[0]
	}
	for _, n := range nodes {
		if n != nil {
			return n
		}
	}
	return nil
}

// checkExpressions refuses subqueries, aggregates, window functions and
// parameters anywhere in the query.
func checkExpressions(s *pg_query.SelectStmt) error {
	var err error
	walk(s.ProtoReflect(), func(m protoreflect.Message) {
		if err != nil {
			return
		}
		switch v := m.Interface().(type) {
		case *pg_query.SubLink:
			err = pgerr.Errorf(pgerr.FeatureNotSupported, "subqueries are not supported in a publication query: each published row must come from its own table row").At(v.Location)
		case *pg_query.RangeSubselect:
			err = pgerr.Errorf(pgerr.FeatureNotSupported, "subqueries are not supported in a publication query: it reads one table directly")
		case *pg_query.FuncCall:
			switch {
			case v.Over != nil:
				err = pgerr.Errorf(pgerr.FeatureNotSupported, "window functions are not supported in a publication query: each published row must depend on its own table row only").At(v.Location)
			case v.AggStar || v.AggDistinct || len(v.AggOrder) > 0 || v.AggFilter != nil || v.AggWithinGroup:
				err = pgerr.Errorf(pgerr.FeatureNotSupported, "aggregate functions are not supported in a publication query: a publication is the table's rows, one per key").At(v.Location)
			}
		case *pg_query.ParamRef:
			err = pgerr.Errorf(pgerr.FeatureNotSupported, "parameters ($%d) are not allowed in a publication query: write the values into it", v.Number).At(v.Location)
		}
	})
	return err
}

func functionRefs(s *pg_query.SelectStmt) []FunctionRef {
	var refs []FunctionRef
	walk(s.ProtoReflect(), func(m protoreflect.Message) {
		if fn, ok := m.Interface().(*pg_query.FuncCall); ok {
			r := FunctionRef{Name: funcName(fn), At: int(fn.Location)}
			if n := len(fn.Funcname); n > 1 {
				r.Schema = fn.Funcname[n-2].GetString_().GetSval()
			}
			refs = append(refs, r)
		}
	})
	return refs
}

func (p *Projection) setTable(s *pg_query.SelectStmt) error {
	if len(s.FromClause) != 1 {
		at := int32(-1)
		if len(s.FromClause) > 1 {
			at = location(s.FromClause[1])
		}
		return pgerr.Errorf(pgerr.FeatureNotSupported, "a publication query reads exactly one table (FROM one table; joins are not supported yet)").At(at)
	}
	from := s.FromClause[0]
	rv := from.GetRangeVar()
	if rv == nil {
		what := "this FROM item"
		switch {
		case from.GetJoinExpr() != nil:
			what = "JOIN"
		case from.GetRangeFunction() != nil:
			what = "a function in FROM"
		}
		return pgerr.Errorf(pgerr.FeatureNotSupported, "%s is not supported in a publication query: it reads exactly one table", what).At(location(from))
	}
	if rv.Catalogname != "" {
		return pgerr.Errorf(pgerr.FeatureNotSupported, "cross-database references are not supported").At(rv.Location)
	}
	p.Schema, p.Table, p.TableAt = rv.Schemaname, rv.Relname, int(rv.Location)
	return nil
}

func (p *Projection) setColumns(s *pg_query.SelectStmt) error {
	seen := map[string]bool{}
	for _, t := range s.TargetList {
		rt := t.GetResTarget()
		if rt == nil || rt.Val == nil {
			continue
		}
		col := ProjectedColumn{Name: rt.Name, At: int(rt.Location)}
		if ref := rt.Val.GetColumnRef(); ref != nil {
			last := ref.Fields[len(ref.Fields)-1]
			if last.GetAStar() != nil {
				return pgerr.Errorf(pgerr.FeatureNotSupported, "* is not supported in a publication query: list the columns to publish, so that the public schema changes only when you publish a new one").At(ref.Location)
			}
			col.Source = last.GetString_().GetSval()
			if col.Name == "" {
				col.Name = col.Source
			}
		}
		if col.Name == "" {
			return pgerr.Errorf(pgerr.SyntaxError, "every published column needs a name: add AS name after this expression").At(rt.Location)
		}
		if seen[col.Name] {
			return pgerr.Errorf(pgerr.DuplicateColumn, "column name %q is published more than once", col.Name).At(rt.Location)
		}
		seen[col.Name] = true
		col.Expr = deparseExpr(rt.Val)
		p.Columns = append(p.Columns, col)
	}
	if len(p.Columns) == 0 {
		return pgerr.Errorf(pgerr.SyntaxError, "a publication query selects at least the table's primary key").At(int32(p.TableAt))
	}
	return nil
}

// columnRefs lists the columns a projection reads (the last name of each
// column reference).
func columnRefs(s *pg_query.SelectStmt) []string {
	var refs []string
	seen := map[string]bool{}
	visit := func(m protoreflect.Message) {
		ref, ok := m.Interface().(*pg_query.ColumnRef)
		if !ok || len(ref.Fields) == 0 {
			return
		}
		name := ref.Fields[len(ref.Fields)-1].GetString_().GetSval()
		if name != "" && !seen[name] {
			seen[name] = true
			refs = append(refs, name)
		}
	}
	for _, t := range s.TargetList {
		walk(t.ProtoReflect(), visit)
	}
	if s.WhereClause != nil {
		walk(s.WhereClause.ProtoReflect(), visit)
	}
	return refs
}

// deparseVersion is the parse tree version pg_query's deparser expects.
var deparseVersion = func() int32 {
	tree, err := pg_query.Parse("SELECT 1")
	if err != nil {
		return 0
	}
	return tree.Version
}()

// deparseExpr prints an expression with its column references reduced to
// the column name, so it can be evaluated over the table's own columns.
func deparseExpr(n *pg_query.Node) string {
	walk(n.ProtoReflect(), func(m protoreflect.Message) {
		if ref, ok := m.Interface().(*pg_query.ColumnRef); ok && len(ref.Fields) > 1 {
			ref.Fields = ref.Fields[len(ref.Fields)-1:]
		}
	})
	stmt := &pg_query.Node{Node: &pg_query.Node_SelectStmt{SelectStmt: &pg_query.SelectStmt{
		TargetList: []*pg_query.Node{{Node: &pg_query.Node_ResTarget{ResTarget: &pg_query.ResTarget{Val: n}}}},
	}}}
	out, err := pg_query.Deparse(&pg_query.ParseResult{Version: deparseVersion, Stmts: []*pg_query.RawStmt{{Stmt: stmt}}})
	if err != nil {
		return ""
	}
	return strings.TrimPrefix(out, "SELECT ")
}
