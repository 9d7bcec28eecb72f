package sql

import (
	"context"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	pg_query "github.com/pganalyze/pg_query_go/v6"
	"github.com/rejot-dev/rejot/internal/pgerr"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// ValidatedJoin is a join projection checked against the live database.
type ValidatedJoin struct {
	*JoinProjection
	// Resolved are the tables, as Tables lists them.
	Resolved []ResolvedTable
	Columns  []PublicColumn
	Key      []string
	// Stored is the query as the owner's record keeps it (see stored.go).
	Stored string
}

// Source is the root table, schema-qualified and quoted.
func (v *ValidatedJoin) Source() string { return v.Resolved[0].Source }

// TableNames are the tables read, the root first, each once.
func (v *ValidatedJoin) TableNames() []string {
	var out []string
	for _, t := range v.Resolved {
		if !slices.Contains(out, t.Source) {
			out = append(out, t.Source)
		}
	}
	return out
}

// ValidateJoin checks a join projection against the live database
// through the caller's own session, as Validate does one table's: the
// tables, each joined table met on exactly its primary key by columns of
// the same types, the caller's privileges (Postgres describes the query),
// immutability, the public key (the root's primary key as plain
// columns), the stored form. A LEFT JOINed table's columns are nullable.
func ValidateJoin(ctx context.Context, sess Session, p *JoinProjection) (*ValidatedJoin, error) {
	v := &ValidatedJoin{JoinProjection: p}
	for _, t := range p.Tables {
		r, err := resolveRelation(ctx, sess, t.Schema, t.Table, t.At)
		if err != nil {
			return nil, err
		}
		if err := checkRowSecurity(ctx, sess, r.OID, r.Source, t.At); err != nil {
			return nil, err
		}
		if r.attrs, err = tableAttributes(ctx, sess, r.OID); err != nil {
			return nil, err
		}
		v.Resolved = append(v.Resolved, r)
	}
	if err := checkAggregates(ctx, sess, p.Functions); err != nil {
		return nil, err
	}
	fields, err := describeQuery(ctx, sess, p.Query)
	if err != nil {
		return nil, err
	}
	if err := v.checkJoinKeys(); err != nil {
		return nil, err
	}
	if err := v.setColumns(ctx, sess, fields); err != nil {
		return nil, err
	}
	if err := v.checkImmutable(ctx, sess); err != nil {
		return nil, err
	}
	if err := v.setStored(ctx, sess, fields); err != nil {
		return nil, err
	}
	return v, nil
}

// attr finds a column of table i by name.
func (v *ValidatedJoin) attr(i int, name string) (attribute, bool) {
	for _, a := range v.Resolved[i].attrs {
		if a.name == name {
			return a, true
		}
	}
	return attribute{}, false
}

// checkJoinKeys checks that each joined table is met on exactly its
// primary key (many-to-one: a root row meets at most one row of it), by
// columns of the same type: the capture finds the rows that meet by
// comparing the values' text.
func (v *ValidatedJoin) checkJoinKeys() error {
	for i, t := range v.Tables[1:] {
		i++
		r := v.Resolved[i]
		var pk []string
		for _, a := range r.attrs {
			if a.isKey {
				pk = append(pk, a.name)
			}
		}
		slices.Sort(pk)
		var on []string
		for _, pair := range t.On {
			on = append(on, pair.Column)
			a, ok := v.attr(i, pair.Column)
			pa, pok := v.attr(t.Parent, pair.ParentColumn)
			if !ok || !pok {
				continue // Postgres's describe has said which is missing
			}
			if a.typeOID != pa.typeOID || a.typeMod != pa.typeMod {
				return pgerr.Errorf(pgerr.FeatureNotSupported, "%s.%s (%s) and %s.%s (%s) meet, but their types differ: a join projection meets a table on columns of its key's types",
					t.Alias, pair.Column, a.typ, v.Tables[t.Parent].Alias, pair.ParentColumn, pa.typ).At(int32(pair.At)).
					WithHint("Give %s.%s the type %s.", v.Tables[t.Parent].Alias, pair.ParentColumn, a.typ)
			}
		}
		slices.Sort(on)
		if len(pk) == 0 || !slices.Equal(pk, slices.Compact(slices.Clone(on))) || len(on) != len(pk) {
			return pgerr.Errorf(pgerr.FeatureNotSupported, "%s is joined on %s, not on its primary key (%s): a published row is one row of the root table, which meets at most one row of each joined table",
				t.Alias, strings.Join(on, ", "), strings.Join(pk, ", ")).At(int32(t.At)).
				WithHint("Join %s ON each column of its primary key = a column of the table it joins to.", t.Alias)
		}
	}
	return nil
}

// setColumns types the output and finds the public key: the root's
// primary key, published as plain column references.
func (v *ValidatedJoin) setColumns(ctx context.Context, sess Session, fields []Field) error {
	types, err := formatTypes(ctx, sess, fields)
	if err != nil {
		return err
	}
	covered := map[string]bool{}
	for i, f := range fields {
		pc := v.JoinProjection.Columns[i]
		c := PublicColumn{Name: pc.Name, Type: types[i], TypeOID: f.TypeOID, TypeMod: f.TypeMod, Nullable: true}
		if alias, col, ok := strings.Cut(pc.Source, "."); ok {
			ti := v.Table(alias)
			if a, ok := v.attr(ti, col); ok {
				c.Nullable = !a.notNull || v.Tables[ti].Left
				c.Type, c.TypeOID, c.TypeMod = a.typ, a.typeOID, a.typeMod
				if ti == 0 && a.isKey && !covered[col] {
					c.IsKey, c.Nullable, covered[col] = true, false, true
					v.Key = append(v.Key, c.Name)
				}
			}
		}
		v.Columns = append(v.Columns, c)
	}
	var pk, missing []string
	for _, a := range v.Resolved[0].attrs {
		if a.isKey {
			pk = append(pk, a.name)
			if !covered[a.name] {
				missing = append(missing, a.name)
			}
		}
	}
	root := v.Tables[0].Alias
	switch {
	case len(pk) == 0:
		return pgerr.Errorf(pgerr.FeatureNotSupported, "%s has no primary key: a publication's rows are identified by the root table's primary key", v.Source()).
			At(int32(v.Tables[0].At)).WithHint("Add a primary key to %s.", v.Source())
	case len(missing) > 0:
		return pgerr.Errorf(pgerr.FeatureNotSupported, "the publication must include the primary key of its root table %s as plain columns; missing: %s.%s",
			v.Source(), root, strings.Join(missing, ", "+root+".")).WithHint("Add %s.%s to the select list; you may rename it (%s.%s AS new_name).",
			root, missing[0], root, missing[0])
	}
	return nil
}

// flatName is how checkImmutable names a table column alias.column.
func flatName(alias, column string) string { return alias + "." + column }

// flattenRefs rewrites an expression's alias.column references into
// single names "alias.column", columns of the one table checkImmutable
// makes.
func flattenRefs(expr string) (string, error) {
	tree, err := pg_query.Parse("SELECT " + expr)
	if err != nil {
		return "", err
	}
	walk(tree.ProtoReflect(), func(m protoreflect.Message) {
		if ref, ok := m.Interface().(*pg_query.ColumnRef); ok && len(ref.Fields) == 2 {
			name := flatName(ref.Fields[0].GetString_().GetSval(), ref.Fields[1].GetString_().GetSval())
			ref.Fields = []*pg_query.Node{pg_query.MakeStrNode(name)}
		}
	})
	out, err := pg_query.Deparse(tree)
	return strings.TrimPrefix(out, "SELECT "), err
}

// checkImmutable checks, as Validated.checkImmutable does, that the
// expressions and the filter are immutable: each becomes a generated
// column of a temporary table whose columns are those the query reads,
// named alias.column; nothing of it remains.
func (v *ValidatedJoin) checkImmutable(ctx context.Context, sess Session) error {
	var checks []immutabilityCheck
	add := func(expr, typ string, at int) error {
		flat, err := flattenRefs(expr)
		if err != nil {
			return err
		}
		checks = append(checks, immutabilityCheck{flat, typ, expr, at})
		return nil
	}
	for i, c := range v.JoinProjection.Columns {
		if c.Source == "" {
			if err := add(c.Expr, v.Columns[i].Type, c.At); err != nil {
				return err
			}
		}
	}
	if v.Filter != "" {
		if err := add(v.Filter, "boolean", v.FilterAt); err != nil {
			return err
		}
	}
	var cols []string
	for i, t := range v.Tables {
		for _, ref := range t.References {
			if a, ok := v.attr(i, ref); ok {
				cols = append(cols, pgx.Identifier{flatName(t.Alias, ref)}.Sanitize()+" "+a.typ)
			}
		}
	}
	return checkImmutable(ctx, sess, strings.Join(cols, ", "), checks, v.Filter != "",
		"The check builds a temporary table: the publishing role needs TEMPORARY on the database.")
}

// setStored works out the stored form (a temporary view's definition
// printed with search_path pg_catalog, as for one table) and checks that
// it is the same join with the same columns, of the same types.
func (v *ValidatedJoin) setStored(ctx context.Context, sess Session, fields []Field) error {
	stored, err := storedForm(ctx, sess, func() (string, error) { return viewDefinition(ctx, sess, v.Query) },
		func(stored string) error {
			if err := v.checkStored(ctx, sess, stored, fields); err != nil {
				return err
			}
			return v.setNullability(ctx, sess, stored)
		})
	if err != nil {
		return err
	}
	v.Stored = stored
	return nil
}

func (v *ValidatedJoin) checkStored(ctx context.Context, sess Session, stored string, fields []Field) error {
	differs := func(why string) error {
		return pgerr.Errorf(pgerr.FeatureNotSupported, "the publication's query does not mean the same with every name qualified by its schema (%s)", why).
			WithHint("Qualify each function, operator and type outside pg_catalog with its schema in the query (myschema.f(x), OPERATOR(myschema.+), x::myschema.t).")
	}
	sp, perr := AnalyzeJoin(stored)
	if perr != nil {
		return differs(perr.Error())
	}
	if len(sp.Columns) != len(v.JoinProjection.Columns) || len(sp.Tables) != len(v.Tables) {
		return differs("its columns or tables differ")
	}
	for i, c := range sp.Columns {
		if c.Name != v.JoinProjection.Columns[i].Name || c.Source != v.JoinProjection.Columns[i].Source {
			return differs("column " + strconv.Quote(c.Name) + " differs")
		}
	}
	got, err := describeQuery(ctx, sess, stored)
	if err != nil {
		return differs(err.Error())
	}
	for i, f := range got {
		if i >= len(fields) || f.TypeOID != fields[i].TypeOID || f.TypeMod != fields[i].TypeMod {
			return differs("the type of column " + strconv.Quote(sp.Columns[min(i, len(sp.Columns)-1)].Name) + " differs")
		}
	}
	return nil
}
