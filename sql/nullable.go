package sql

import (
	"context"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Nullability.
//
// A public column is NOT NULL only when Postgres could never return NULL
// for it in a published row. The rules read the stored form of the query
// (stored.go), where every function, operator and type outside
// pg_catalog is qualified by its schema: an unqualified name there is
// Postgres's own. Everything the rules do not know is nullable.
//
// Not null:
//   - a column declared NOT NULL, or one the filter requires to be not
//     null (below);
//   - a constant other than NULL;
//   - a cast of a not-null value, when no function outside pg_catalog
//     casts to the target type (nor to its base or element types): the
//     built-in casts and the conversions through a type's text form never
//     turn a value into NULL (Postgres checks that of input functions);
//   - coalesce(...) with at least one not-null argument;
//   - CASE with an ELSE whose results are all not null;
//   - IS [NOT] NULL, IS [NOT] TRUE/FALSE/UNKNOWN, an ARRAY[...] (its
//     elements may be NULL, the array is not), and AND, OR, NOT of
//     not-null operands;
//   - a built-in arithmetic, concatenation or comparison operator
//     (+ - * / || = <> < > <= >=) of not-null operands: each of these
//     pg_catalog operators gives a value for values.
//
// The filter keeps only rows for which it is true, so in a published row:
// a column tested IS NOT NULL or IS TRUE/FALSE, a boolean column that is a
// condition itself (or under NOT), and a column compared by a built-in
// comparison operator (= <> < > <= >=, also = ANY (...)) is not null — in
// the filter's top-level AND conjuncts only, and for the comparisons only
// when the session confirms that every pg_catalog operator of those names
// is strict (NULL in, NULL out: the row would not pass). OR, functions
// and everything else decide nothing.

// resultOperators give a non-null result for non-null operands.
var resultOperators = map[string]bool{"+": true, "-": true, "*": true, "/": true, "||": true,
	"=": true, "<>": true, "<": true, ">": true, "<=": true, ">=": true}

// filterOperators are the comparisons whose truth in the filter implies
// non-null operands, as they are strict (checked through the session).
var filterOperators = []string{"=", "<>", "<", ">", "<=", ">="}

// nullness knows which values of a stored projection are never NULL.
type nullness struct {
	table    string          // how the stored query names its table (its alias); "" for a join
	notNull  map[string]bool // table columns never NULL in a published row (alias.column for a join)
	safeCast map[string]bool // cast target types with only built-in cast functions
}

// setNullability decides which public columns are not null, from the
// stored query, with the session's search_path the capture's (setStored).
func (v *Validated) setNullability(ctx context.Context, sess Session, stored string) error {
	sel := storedSelect(stored)
	if sel == nil {
		return nil // stays nullable: checkStored has already compared it
	}
	if len(sel.FromClause) != 1 || sel.FromClause[0].GetRangeVar() == nil {
		return nil // one table here; a join's are ValidatedJoin's
	}
	n := &nullness{notNull: map[string]bool{}, safeCast: map[string]bool{}}
	rv := sel.FromClause[0].GetRangeVar()
	n.table = rv.Relname
	if rv.Alias != nil {
		n.table = rv.Alias.Aliasname
	}
	for _, a := range v.attrs {
		if a.notNull {
			n.notNull[a.name] = true
		}
	}
	return n.decide(ctx, sess, sel, v.Columns)
}

// setNullability decides which public columns of a join are not null,
// by the rules above, from its stored query (every column there is
// alias.column): a NOT NULL column of a table that may be missing from a
// row (LEFT JOINed, or joined to one that is) is nullable unless the
// filter requires it.
func (v *ValidatedJoin) setNullability(ctx context.Context, sess Session, stored string) error {
	sel := storedSelect(stored)
	sp, err := AnalyzeJoin(stored)
	if sel == nil || err != nil || len(sp.Tables) != len(v.Resolved) {
		return nil // stays as setColumns decided: checkStored has compared it
	}
	n := &nullness{notNull: map[string]bool{}, safeCast: map[string]bool{}}
	for i, t := range sp.Tables {
		if t.Left {
			continue
		}
		for _, a := range v.Resolved[i].attrs {
			if a.notNull {
				n.notNull[t.Alias+"."+a.name] = true
			}
		}
	}
	return n.decide(ctx, sess, sel, v.Columns)
}

// storedSelect is the SELECT of a stored query, or nil.
func storedSelect(stored string) *pg_query.SelectStmt {
	tree, err := pg_query.Parse(stored)
	if err != nil || len(tree.Stmts) != 1 {
		return nil
	}
	return tree.Stmts[0].Stmt.GetSelectStmt()
}

// decide marks the public columns (cols, as sel's targets) that are not
// null: what the filter requires, then each target's expression.
func (n *nullness) decide(ctx context.Context, sess Session, sel *pg_query.SelectStmt, cols []PublicColumn) error {
	if sel.WhereClause != nil {
		strict, err := strictComparisons(ctx, sess)
		if err != nil {
			return err
		}
		n.requiredByFilter(sel.WhereClause, strict)
	}
	if err := n.resolveCasts(ctx, sess, sel.TargetList); err != nil {
		return err
	}
	for i, t := range sel.TargetList {
		if i >= len(cols) || cols[i].IsKey {
			continue
		}
		if rt := t.GetResTarget(); rt != nil && n.expr(rt.Val) {
			cols[i].Nullable = false
		}
	}
	return nil
}

// requiredByFilter notes the columns a true filter proves not null.
func (n *nullness) requiredByFilter(where *pg_query.Node, strict bool) {
	for _, c := range conjuncts(where) {
		switch {
		case c.GetNullTest() != nil:
			if t := c.GetNullTest(); t.Nulltesttype == pg_query.NullTestType_IS_NOT_NULL {
				n.noteColumn(t.Arg)
			}
		case c.GetBooleanTest() != nil:
			switch t := c.GetBooleanTest(); t.Booltesttype {
			case pg_query.BoolTestType_IS_TRUE, pg_query.BoolTestType_IS_FALSE:
				n.noteColumn(t.Arg)
			}
		case c.GetColumnRef() != nil:
			n.noteColumn(c)
		case c.GetBoolExpr() != nil:
			if b := c.GetBoolExpr(); b.Boolop == pg_query.BoolExprType_NOT_EXPR && len(b.Args) == 1 {
				n.noteColumn(b.Args[0])
			}
		case c.GetAExpr() != nil && strict:
			e := c.GetAExpr()
			op, builtin := operatorName(e)
			if builtin && isFilterOperator(op) && (e.Kind == pg_query.A_Expr_Kind_AEXPR_OP ||
				e.Kind == pg_query.A_Expr_Kind_AEXPR_OP_ANY && op == "=") {
				n.noteColumn(e.Lexpr)
				if e.Kind == pg_query.A_Expr_Kind_AEXPR_OP {
					n.noteColumn(e.Rexpr)
				}
			}
		}
	}
}

// conjuncts flattens the top-level ANDs of a condition.
func conjuncts(n *pg_query.Node) []*pg_query.Node {
	if b := n.GetBoolExpr(); b != nil && b.Boolop == pg_query.BoolExprType_AND_EXPR {
		var out []*pg_query.Node
		for _, a := range b.Args {
			out = append(out, conjuncts(a)...)
		}
		return out
	}
	return []*pg_query.Node{n}
}

func (n *nullness) noteColumn(node *pg_query.Node) {
	if name, ok := n.column(node); ok {
		n.notNull[name] = true
	}
}

// column is the table column a node references: a plain name, or one
// qualified by the table's alias (for a join: alias.column, as notNull
// has it). Anything else (a field of a composite
// column, a whole row) is not a column here.
func (n *nullness) column(node *pg_query.Node) (string, bool) {
	ref := node.GetColumnRef()
	if ref == nil {
		return "", false
	}
	names := make([]string, len(ref.Fields))
	for i, f := range ref.Fields {
		s := f.GetString_()
		if s == nil {
			return "", false
		}
		names[i] = s.Sval
	}
	switch {
	case n.table == "" && len(names) == 2:
		return names[0] + "." + names[1], true
	case n.table == "":
		return "", false
	case len(names) == 1:
		return names[0], true
	case len(names) == 2 && names[0] == n.table:
		return names[1], true
	}
	return "", false
}

// operatorName is an operator's name, and whether it is Postgres's own:
// unqualified in the stored form.
func operatorName(e *pg_query.A_Expr) (string, bool) {
	if len(e.Name) != 1 || e.Name[0].GetString_() == nil {
		return "", false
	}
	return e.Name[0].GetString_().Sval, true
}

func isFilterOperator(op string) bool {
	for _, o := range filterOperators {
		if o == op {
			return true
		}
	}
	return false
}

// expr reports whether an expression is never NULL in a published row.
func (n *nullness) expr(node *pg_query.Node) bool {
	if node == nil {
		return false
	}
	switch x := node.Node.(type) {
	case *pg_query.Node_ColumnRef:
		name, ok := n.column(node)
		return ok && n.notNull[name]
	case *pg_query.Node_AConst:
		return !x.AConst.Isnull
	case *pg_query.Node_TypeCast:
		return n.expr(x.TypeCast.Arg) && n.safeCast[typeNameText(x.TypeCast.TypeName)]
	case *pg_query.Node_CollateClause:
		return n.expr(x.CollateClause.Arg)
	case *pg_query.Node_CoalesceExpr:
		for _, a := range x.CoalesceExpr.Args {
			if n.expr(a) {
				return true
			}
		}
		return false
	case *pg_query.Node_CaseExpr:
		return n.caseExpr(x.CaseExpr)
	case *pg_query.Node_NullTest, *pg_query.Node_BooleanTest, *pg_query.Node_AArrayExpr:
		return true
	case *pg_query.Node_BoolExpr:
		return n.all(x.BoolExpr.Args)
	case *pg_query.Node_AExpr:
		e := x.AExpr
		op, builtin := operatorName(e)
		return e.Kind == pg_query.A_Expr_Kind_AEXPR_OP && builtin && resultOperators[op] &&
			(e.Lexpr == nil || n.expr(e.Lexpr)) && n.expr(e.Rexpr)
	}
	return false
}

// caseExpr: a CASE without ELSE gives NULL when no branch matches.
func (n *nullness) caseExpr(c *pg_query.CaseExpr) bool {
	if c.Defresult == nil || !n.expr(c.Defresult) {
		return false
	}
	for _, w := range c.Args {
		cw := w.GetCaseWhen()
		if cw == nil || !n.expr(cw.Result) {
			return false
		}
	}
	return true
}

func (n *nullness) all(nodes []*pg_query.Node) bool {
	for _, a := range nodes {
		if !n.expr(a) {
			return false
		}
	}
	return len(nodes) > 0
}

// typeNameText prints a type name as a cast writes it.
func typeNameText(tn *pg_query.TypeName) string {
	if tn == nil {
		return ""
	}
	cast := &pg_query.Node{Node: &pg_query.Node_TypeCast{TypeCast: &pg_query.TypeCast{
		Arg:      &pg_query.Node{Node: &pg_query.Node_AConst{AConst: &pg_query.A_Const{Isnull: true}}},
		TypeName: tn,
	}}}
	return strings.TrimPrefix(deparseExpr(cast), "NULL::")
}

// resolveCasts asks the session which cast target types of the select
// list are cast to by built-in functions only — the type, and its base
// and element types, recursively.
func (n *nullness) resolveCasts(ctx context.Context, sess Session, targets []*pg_query.Node) error {
	var names []string
	for _, t := range targets {
		walk(t.ProtoReflect(), func(m protoreflect.Message) {
			if c, ok := m.Interface().(*pg_query.TypeCast); ok {
				if s := typeNameText(c.TypeName); s != "" {
					names = append(names, s)
				}
			}
		})
	}
	if len(names) == 0 {
		return nil
	}
	list := "{" + strings.Join(quoteArray(names), ",") + "}"
	rows, err := sess.Query(ctx, safeCastsQuery, &list)
	if err != nil {
		return err
	}
	for _, r := range rows.Values {
		if r[0] != nil && r[1] != nil && *r[1] == "true" {
			n.safeCast[*r[0]] = true
		}
	}
	return nil
}

// safeCastsQuery: for each type name ($1), true when it resolves and no
// function outside pg_catalog casts to it or to a type it is made of.
const safeCastsQuery = `WITH RECURSIVE made(name, oid) AS (
		SELECT n, pg_catalog.to_regtype(n)::pg_catalog.oid FROM pg_catalog.unnest($1::pg_catalog.text[]) n
		UNION
		SELECT made.name, x.oid FROM made JOIN pg_catalog.pg_type t ON t.oid = made.oid,
			LATERAL (VALUES (t.typbasetype), (t.typelem)) AS x(oid) WHERE x.oid <> 0
	)
	SELECT name, (pg_catalog.bool_and(oid IS NOT NULL) AND NOT pg_catalog.bool_or(EXISTS (
			SELECT FROM pg_catalog.pg_cast c JOIN pg_catalog.pg_proc p ON p.oid = c.castfunc
			WHERE c.casttarget = made.oid AND p.pronamespace <> 'pg_catalog'::pg_catalog.regnamespace)))::pg_catalog.text
	FROM made GROUP BY name`

// strictComparisons asks the session whether every pg_catalog comparison
// operator the filter rules rely on is strict.
func strictComparisons(ctx context.Context, sess Session) (bool, error) {
	list := "{" + strings.Join(quoteArray(filterOperators), ",") + "}"
	rows, err := sess.Query(ctx, `SELECT pg_catalog.bool_and(p.proisstrict)::pg_catalog.text
		FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode
		WHERE o.oprnamespace = 'pg_catalog'::pg_catalog.regnamespace AND o.oprname = ANY ($1::pg_catalog.text[])`, &list)
	if err != nil {
		return false, err
	}
	return len(rows.Values) == 1 && rows.Values[0][0] != nil && *rows.Values[0][0] == "true", nil
}
