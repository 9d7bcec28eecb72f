package sql

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"github.com/rejot-dev/rejot/internal/pgerr"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Join projections: a publication query whose FROM is a root table
// joined (JOIN or LEFT JOIN) to other tables, each on equality of its
// columns with columns of one table before it — many-to-one along the
// data's keys (order → customer → region), checked against the live
// primary keys later. What is accepted, and why:
//
//   - one FROM item, a chain of joins written left to right: each JOIN
//     adds one table (no parenthesised joins, subqueries or functions);
//   - JOIN (inner) and LEFT JOIN only: a RIGHT or FULL join would make
//     rows without a root row, and a public row is one root row;
//   - ON is an AND of col = col equalities between the table it adds
//     and one table before it (no USING or NATURAL: they hide which
//     columns meet; no CROSS JOIN or other conditions: they are not
//     along a key);
//   - every column named with its table's alias (o.id): which table a
//     name belongs to is then plain, and stays so when a table gains a
//     column of the same name.

// JoinProjection is a join projection as Postgres's parser sees it.
type JoinProjection struct {
	Query string
	// Tables are the tables read, the root first, in FROM order.
	Tables []JoinTable
	// Columns are the output columns; their Expr keeps the references
	// qualified (alias.column), and Source is "alias.column" for a plain
	// reference.
	Columns []ProjectedColumn
	// Filter is the WHERE condition, references qualified; "" when none.
	Filter    string
	FilterAt  int
	Functions []FunctionRef
}

// JoinTable is one table a join projection reads.
type JoinTable struct {
	Schema, Table string // as written; Schema may be empty
	Alias         string // as written, or the table's name
	At            int    // 0-based location of the table name
	// Left: reached by a LEFT JOIN (directly or through a table that
	// is): its columns may be NULL in a published row.
	Left bool
	// LeftJoin: joined by a LEFT JOIN itself (Left may come from a table
	// before it).
	LeftJoin bool
	// Parent is the index in Tables of the table it joins to (-1 for the
	// root), On the columns that meet, its own first.
	Parent int
	On     []JoinPair
	// References are the columns of this table the query reads (ON
	// included), each once, in order of appearance.
	References []string
}

// JoinPair is one equality of an ON condition.
type JoinPair struct {
	Column       string // of the joined table
	ParentColumn string // of the table it joins to
	At           int
}

// IsJoin says whether a publication query's FROM is a join (analyse it
// with AnalyzeJoin) rather than one table.
func IsJoin(query string) bool {
	tree, err := pg_query.Parse(query)
	if err != nil || len(tree.Stmts) != 1 {
		return false
	}
	sel := tree.Stmts[0].Stmt.GetSelectStmt()
	return sel != nil && len(sel.FromClause) == 1 && sel.FromClause[0].GetJoinExpr() != nil
}

// AnalyzeJoin checks a join projection's shape (see above). What needs
// the live database — that each join meets its table's primary key, the
// types, nullability, privileges — is checked later through the caller's
// session. Positions in errors are 1-based byte offsets into query.
func AnalyzeJoin(query string) (*JoinProjection, error) {
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
		query = query[:tree.Stmts[0].StmtLocation+n]
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
	if len(sel.FromClause) != 1 {
		at := int32(-1)
		if len(sel.FromClause) > 1 {
			at = location(sel.FromClause[1])
		}
		return nil, pgerr.Errorf(pgerr.FeatureNotSupported, "a join projection has one FROM item: the root table and its JOINs").
			At(at).WithHint("Write FROM a JOIN b ON b.key = a.column, not FROM a, b.")
	}
	p := &JoinProjection{Query: query}
	if err := p.setTables(sel.FromClause[0]); err != nil {
		return nil, err
	}
	if err := p.resolveReferences(sel); err != nil {
		return nil, err
	}
	if err := p.setColumns(sel); err != nil {
		return nil, err
	}
	if sel.WhereClause != nil {
		p.FilterAt = int(location(sel.WhereClause))
		p.Filter = deparseQualified(sel.WhereClause)
	}
	p.Functions = functionRefs(sel)
	return p, nil
}

// setTables reads the FROM item: a left-deep chain of joins.
func (p *JoinProjection) setTables(from *pg_query.Node) error {
	var joins []*pg_query.JoinExpr
	n := from
	for n.GetJoinExpr() != nil {
		j := n.GetJoinExpr()
		joins = append(joins, j)
		n = j.Larg
	}
	root, err := joinTable(n)
	if err != nil {
		return err
	}
	root.Parent = -1
	p.Tables = append(p.Tables, root)
	for i := len(joins) - 1; i >= 0; i-- {
		j := joins[i]
		t, err := joinTable(j.Rarg)
		if err != nil {
			return err
		}
		switch {
		case j.IsNatural:
			return pgerr.Errorf(pgerr.FeatureNotSupported, "NATURAL JOIN is not supported in a publication query: name the columns that meet").
				At(int32(t.At)).WithHint("Write JOIN %s ON %s.<its key> = <table>.<column>.", t.Alias, t.Alias)
		case len(j.UsingClause) > 0:
			return pgerr.Errorf(pgerr.FeatureNotSupported, "JOIN ... USING is not supported in a publication query: name the columns that meet").
				At(int32(t.At)).WithHint("Write JOIN %s ON %s.<its key> = <table>.<column>.", t.Alias, t.Alias)
		case j.Jointype != pg_query.JoinType_JOIN_INNER && j.Jointype != pg_query.JoinType_JOIN_LEFT:
			return pgerr.Errorf(pgerr.FeatureNotSupported, "%s is not supported in a publication query: a published row is one row of the root table, so only JOIN and LEFT JOIN are", joinTypeName(j.Jointype)).
				At(int32(t.At))
		case j.Quals == nil:
			return pgerr.Errorf(pgerr.FeatureNotSupported, "a join without ON (CROSS JOIN) is not supported in a publication query: each joined table meets a table before it on its key").
				At(int32(t.At)).WithHint("Write JOIN %s ON %s.<its key> = <table>.<column>.", t.Alias, t.Alias)
		}
		for _, other := range p.Tables {
			if other.Alias == t.Alias {
				return pgerr.Errorf(pgerr.DuplicateAlias, "table name %q specified more than once", t.Alias).At(int32(t.At)).
					WithHint("Give each table its own alias: JOIN %s AS another_name.", t.Table)
			}
		}
		t.Left = j.Jointype == pg_query.JoinType_JOIN_LEFT
		t.LeftJoin = t.Left
		p.Tables = append(p.Tables, t)
		if err := p.setOn(len(p.Tables)-1, j.Quals); err != nil {
			return err
		}
		if parent := p.Tables[p.Tables[len(p.Tables)-1].Parent]; parent.Left {
			p.Tables[len(p.Tables)-1].Left = true // no parent row, no row of its own
		}
	}
	return nil
}

func joinTypeName(t pg_query.JoinType) string {
	switch t {
	case pg_query.JoinType_JOIN_RIGHT:
		return "RIGHT JOIN"
	case pg_query.JoinType_JOIN_FULL:
		return "FULL JOIN"
	}
	return "this kind of join"
}

// joinTable reads one table of the FROM chain.
func joinTable(n *pg_query.Node) (JoinTable, error) {
	rv := n.GetRangeVar()
	if rv == nil {
		what := "this FROM item"
		switch {
		case n.GetJoinExpr() != nil:
			what = "a parenthesised join"
		case n.GetRangeFunction() != nil:
			what = "a function in FROM"
		case n.GetRangeSubselect() != nil:
			what = "a subquery in FROM"
		}
		return JoinTable{}, pgerr.Errorf(pgerr.FeatureNotSupported, "%s is not supported in a publication query: it reads tables, joined one after another", what).
			At(location(n))
	}
	if rv.Catalogname != "" {
		return JoinTable{}, pgerr.Errorf(pgerr.FeatureNotSupported, "cross-database references are not supported").At(rv.Location)
	}
	t := JoinTable{Schema: rv.Schemaname, Table: rv.Relname, Alias: rv.Relname, At: int(rv.Location)}
	if rv.Alias != nil {
		if len(rv.Alias.Colnames) > 0 {
			return JoinTable{}, pgerr.Errorf(pgerr.FeatureNotSupported, "column aliases in FROM are not supported in a publication query: rename columns in the SELECT list").
				At(rv.Location)
		}
		t.Alias = rv.Alias.Aliasname
	}
	return t, nil
}

// setOn reads the ON condition of table i: an AND of equalities between
// its columns and those of one table before it.
func (p *JoinProjection) setOn(i int, quals *pg_query.Node) error {
	t := &p.Tables[i]
	t.Parent = -1
	for _, c := range conjuncts(quals) {
		e := c.GetAExpr()
		op, ok := "", false
		if e != nil && e.Kind == pg_query.A_Expr_Kind_AEXPR_OP {
			op, ok = operatorName(e)
		}
		if !ok || op != "=" || e.Lexpr.GetColumnRef() == nil || e.Rexpr.GetColumnRef() == nil {
			return pgerr.Errorf(pgerr.FeatureNotSupported, "the ON condition of %s can only be column = column equalities joined with AND: each joined table meets a table before it on its key", t.Alias).
				At(location(c)).WithHint("Move other conditions to WHERE.")
		}
		l, lat, err := p.qualified(e.Lexpr.GetColumnRef(), i+1)
		if err != nil {
			return err
		}
		r, rat, err := p.qualified(e.Rexpr.GetColumnRef(), i+1)
		if err != nil {
			return err
		}
		if l.table != i { // written the other way round
			l, r, lat = r, l, rat
		}
		switch {
		case l.table != i || r.table == i:
			return pgerr.Errorf(pgerr.FeatureNotSupported, "the ON condition of %s must compare a column of %s with a column of a table before it", t.Alias, t.Alias).
				At(int32(lat))
		case t.Parent >= 0 && r.table != t.Parent:
			return pgerr.Errorf(pgerr.FeatureNotSupported, "%s joins to %s and to %s: a joined table meets one table before it", t.Alias, p.Tables[t.Parent].Alias, p.Tables[r.table].Alias).
				At(int32(lat))
		}
		t.Parent = r.table
		t.On = append(t.On, JoinPair{Column: l.column, ParentColumn: r.column, At: lat})
	}
	return nil
}

// columnAt is a column reference resolved to a table of the projection.
type columnAt struct {
	table  int
	column string
}

// qualified resolves a column reference written alias.column to one of
// the first n tables.
func (p *JoinProjection) qualified(ref *pg_query.ColumnRef, n int) (columnAt, int, error) {
	at := int(ref.Location)
	names := make([]string, 0, len(ref.Fields))
	for _, f := range ref.Fields {
		if f.GetAStar() != nil {
			return columnAt{}, at, pgerr.Errorf(pgerr.FeatureNotSupported, "* is not supported in a publication query: list the columns to publish, so that the public schema changes only when you publish a new one").At(int32(at))
		}
		names = append(names, f.GetString_().GetSval())
	}
	if len(names) != 2 {
		what := strings.Join(names, ".")
		return columnAt{}, at, pgerr.Errorf(pgerr.FeatureNotSupported, "column %s: in a join projection every column is named with its table's alias", what).
			At(int32(at)).WithHint("Write %s.%s.", p.Tables[0].Alias, names[len(names)-1])
	}
	for i := 0; i < n && i < len(p.Tables); i++ {
		if p.Tables[i].Alias == names[0] {
			return columnAt{table: i, column: names[1]}, at, nil
		}
	}
	return columnAt{}, at, pgerr.Errorf(pgerr.UndefinedTable, "missing FROM-clause entry for table %q", names[0]).At(int32(at))
}

// resolveReferences checks every column reference of the SELECT list and
// the filter, and records the columns each table is read for (ON columns
// first).
func (p *JoinProjection) resolveReferences(s *pg_query.SelectStmt) error {
	seen := make([]map[string]bool, len(p.Tables))
	note := func(c columnAt) {
		if seen[c.table] == nil {
			seen[c.table] = map[string]bool{}
		}
		if !seen[c.table][c.column] {
			seen[c.table][c.column] = true
			p.Tables[c.table].References = append(p.Tables[c.table].References, c.column)
		}
	}
	for i, t := range p.Tables {
		for _, on := range t.On {
			note(columnAt{table: i, column: on.Column})
			note(columnAt{table: t.Parent, column: on.ParentColumn})
		}
	}
	var err error
	visit := func(m protoreflect.Message) {
		ref, ok := m.Interface().(*pg_query.ColumnRef)
		if !ok || err != nil {
			return
		}
		var c columnAt
		if c, _, err = p.qualified(ref, len(p.Tables)); err == nil {
			note(c)
		}
	}
	for _, t := range s.TargetList {
		walk(t.ProtoReflect(), visit)
	}
	if s.WhereClause != nil {
		walk(s.WhereClause.ProtoReflect(), visit)
	}
	return err
}

// setColumns reads the SELECT list: every output column named, each
// name once.
func (p *JoinProjection) setColumns(s *pg_query.SelectStmt) error {
	seen := map[string]bool{}
	for _, t := range s.TargetList {
		rt := t.GetResTarget()
		if rt == nil || rt.Val == nil {
			continue
		}
		col := ProjectedColumn{Name: rt.Name, At: int(rt.Location)}
		if ref := rt.Val.GetColumnRef(); ref != nil {
			c, _, err := p.qualified(ref, len(p.Tables))
			if err != nil {
				return err
			}
			col.Source = p.Tables[c.table].Alias + "." + c.column
			if col.Name == "" {
				col.Name = c.column
			}
		}
		if col.Name == "" {
			return pgerr.Errorf(pgerr.SyntaxError, "every published column needs a name: add AS name after this expression").At(rt.Location)
		}
		if seen[col.Name] {
			return pgerr.Errorf(pgerr.DuplicateColumn, "column name %q is published more than once", col.Name).At(rt.Location).
				WithHint("Name one of them with AS.")
		}
		seen[col.Name] = true
		col.Expr = deparseQualified(rt.Val)
		p.Columns = append(p.Columns, col)
	}
	if len(p.Columns) == 0 {
		return pgerr.Errorf(pgerr.SyntaxError, "a publication query selects at least the root table's primary key").At(int32(p.Tables[0].At))
	}
	return nil
}

// Table returns the index of the table with alias, or -1.
func (p *JoinProjection) Table(alias string) int {
	for i, t := range p.Tables {
		if t.Alias == alias {
			return i
		}
	}
	return -1
}

// deparseQualified prints an expression as it is, references qualified.
func deparseQualified(n *pg_query.Node) string {
	stmt := &pg_query.Node{Node: &pg_query.Node_SelectStmt{SelectStmt: &pg_query.SelectStmt{
		TargetList: []*pg_query.Node{{Node: &pg_query.Node_ResTarget{ResTarget: &pg_query.ResTarget{Val: n}}}},
	}}}
	out, err := pg_query.Deparse(&pg_query.ParseResult{Version: deparseVersion, Stmts: []*pg_query.RawStmt{{Stmt: stmt}}})
	if err != nil {
		return ""
	}
	return strings.TrimPrefix(out, "SELECT ")
}
