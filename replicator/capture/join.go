package capture

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/replicator/eventlog"
	"github.com/rejot-dev/rejot/sql"
)

// Join versions (docs/join-projections.md).
//
// A version whose query joins tables is computed from base states the
// log keeps (eventlog.BaseRow): per table of the query, the columns it
// reads of every row, by the row's primary key, and per row the key of
// the row of each joined table it meets. Each source transaction that
// changes one of its tables updates those base rows and recomputes, in
// the same log transaction, the public rows of every root row that meets
// a changed row (walking up the joins, old and new join values both: a
// changed row is looked up under its old and new keys, and a row that
// moved is changed itself), over the base rows alone, as the publisher,
// on the owner's server: never by reading the owner's tables again.

// joinPlan is how a join version's rows are made from its tables.
type joinPlan struct {
	query  string // the stored query
	tables []joinTable
}

// joinTable is one table of a join version, as the stored query names it.
type joinTable struct {
	schema, table, alias string
	parent               int  // index of the table it joins to; -1 for the root
	left                 bool // joined by a LEFT JOIN
	on                   []sql.JoinPair
	// reads are the columns the version reads of it: a base row's
	// values, in this order.
	reads []string
	// key are the positions in reads of the row's key: the root's
	// primary key in public key order, a joined table's join columns.
	key []int
	// refs are, per table joined to this one, the positions in reads of
	// the columns that meet it, in that table's key order.
	refs map[int][]int
	// types are the reads' types as the owner's catalog names them
	// (format_type with search_path pg_catalog), for the casts back from
	// text; set per session (joinTypes).
	types []string
}

// newJoinSource makes the source of a join version from its stored
// query (which names every table by its schema), public key columns and
// root table (as resolved).
func newJoinSource(v eventlog.Version, query string, key []string, schema, table string) (Source, error) {
	a, err := sql.AnalyzeJoin(query)
	if err != nil {
		return Source{}, fmt.Errorf("publication %s version %d: %w", v.Publication, v.Number, err)
	}
	plan := &joinPlan{query: a.Query}
	for i, t := range a.Tables {
		jt := joinTable{schema: t.Schema, table: t.Table, alias: t.Alias, parent: t.Parent, left: t.LeftJoin, on: t.On, reads: t.References, refs: map[int][]int{}}
		if i == 0 {
			jt.schema, jt.table = schema, table
		} else if jt.schema == "" {
			return Source{}, fmt.Errorf("publication %s version %d: its recorded query does not name the schema of %s; publish it again", v.Publication, v.Number, t.Table)
		}
		for _, pair := range t.On {
			jt.key = append(jt.key, indexOf(jt.reads, pair.Column))
		}
		plan.tables = append(plan.tables, jt)
	}
	for i, t := range plan.tables[1:] {
		parent := &plan.tables[t.parent]
		for _, pair := range t.on {
			parent.refs[i+1] = append(parent.refs[i+1], indexOf(parent.reads, pair.ParentColumn))
		}
	}
	src := Source{Schema: schema, Table: table, References: a.Tables[0].References, Join: plan}
	src.Version, src.Filter = v, a.Filter
	root := a.Tables[0].Alias + "."
	for i, col := range a.Columns {
		src.Exprs = append(src.Exprs, col.Expr)
		src.Names = append(src.Names, col.Name)
		src.Sources = append(src.Sources, col.Source)
		for _, k := range key {
			if col.Name == k {
				src.KeyCols = append(src.KeyCols, i)
				src.KeySources = append(src.KeySources, strings.TrimPrefix(col.Source, root))
			}
		}
	}
	plan.setRootKey(src.KeySources)
	return src, nil
}

// setRootKey sets the root's key positions from the public key's
// sources, once the columns are in their recorded order (Order).
func (p *joinPlan) setRootKey(keySources []string) {
	root := &p.tables[0]
	root.key = nil
	for _, k := range keySources {
		root.key = append(root.key, indexOf(root.reads, k))
	}
}

func indexOf(list []string, s string) int {
	for i, x := range list {
		if x == s {
			return i
		}
	}
	return -1
}

// name is the table, schema-qualified and quoted.
func (t *joinTable) name() string { return pgx.Identifier{t.schema, t.table}.Sanitize() }

// baseRow makes the base row of table i from the values it reads.
func (p *joinPlan) baseRow(i int, vals []eventlog.Value) eventlog.BaseRow {
	t := &p.tables[i]
	r := eventlog.BaseRow{Table: i, Key: keyOf(vals, t.key), Row: vals}
	for child, at := range t.refs {
		if ref, ok := refOf(vals, at); ok {
			if r.Refs == nil {
				r.Refs = map[int]string{}
			}
			r.Refs[child] = ref
		}
	}
	return r
}

func keyOf(vals []eventlog.Value, at []int) string {
	key := make([]eventlog.Value, len(at))
	for i, j := range at {
		if j >= 0 && j < len(vals) {
			key[i] = vals[j]
		}
	}
	return eventlog.KeyString(key)
}

// refOf is the key the values at at refer to; ok is false when one is
// NULL (it meets no row).
func refOf(vals []eventlog.Value, at []int) (string, bool) {
	key := make([]eventlog.Value, len(at))
	for i, j := range at {
		if j < 0 || j >= len(vals) || vals[j] == nil {
			return "", false
		}
		key[i] = vals[j]
	}
	return eventlog.KeyString(key), true
}

// joinTypes reads the types of the columns each table of a join version
// reads, as the owner's catalog has them now.
func (p *joinPlan) joinTypes(ctx context.Context, q Querier, s *Source) error {
	for i := range p.tables {
		t := &p.tables[i]
		names := t.reads
		if i == 0 {
			names = s.nowNames()
		}
		rows, err := q.Query(ctx, `SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod)
			FROM pg_catalog.pg_attribute a WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
			AND a.attname = ANY ($2)`, t.name(), names)
		if err != nil {
			return err
		}
		types := map[string]string{}
		var n, typ string
		if _, err := pgx.ForEachRow(rows, []any{&n, &typ}, func() error { types[n] = typ; return nil }); err != nil {
			return err
		}
		t.types = make([]string, len(t.reads))
		for j, name := range names {
			typ, ok := types[name]
			if !ok {
				return s.cannot(fmt.Errorf("column %s of %s, which it reads, is gone", pgx.Identifier{name}.Sanitize(), t.name()), true)
			}
			t.types[j] = typ
		}
	}
	return nil
}

// readsJoin says whether a join version reads a table, and at which
// positions of its query.
func (p *joinPlan) positions(schema, table string) []int {
	var out []int
	for i, t := range p.tables {
		if t.schema == schema && t.table == table {
			out = append(out, i)
		}
	}
	return out
}

// definition is what identifies the join's rows beyond the columns.
func (p *joinPlan) definition() string {
	var b strings.Builder
	for _, t := range p.tables {
		fmt.Fprintf(&b, "|%s.%s %s %d %v", t.schema, t.table, t.alias, t.parent, t.on)
	}
	return b.String()
}
