package sql

import (
	"context"
	"errors"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/internal/pgerr"
)

// PublicColumn is a column of a public schema, as validated against the
// live database.
type PublicColumn struct {
	Name     string
	Type     string // Postgres's name with modifiers, e.g. numeric(12,2)
	TypeOID  uint32
	TypeMod  int32
	IsKey    bool
	Nullable bool
}

// Validated is a projection checked against the live database.
type Validated struct {
	*Projection
	TableOID uint32
	Source   string // schema-qualified, quoted
	// TableSchema and TableName are the table's, as resolved.
	TableSchema, TableName string
	Columns                []PublicColumn
	Key                    []string
	// Stored is the query as the owner's record keeps it, and the capture
	// evaluates it: with search_path pg_catalog it means what Query
	// means to the caller (see stored.go).
	Stored string
	attrs  map[int16]attribute // the table's columns
}

// projectionPrefix wraps a publication query to describe its output.
const projectionPrefix = "SELECT * FROM ("

// Validate checks a projection against the live database through the
// caller's own session: its privileges apply, and uncommitted DDL earlier
// in its transaction counts. Error positions are 1-based byte offsets into
// p.Query.
func Validate(ctx context.Context, sess Session, p *Projection) (*Validated, error) {
	v := &Validated{Projection: p}
	if err := v.resolveTable(ctx, sess); err != nil {
		return nil, err
	}
	if err := v.checkRowSecurity(ctx, sess); err != nil {
		return nil, err
	}
	if err := v.checkAggregates(ctx, sess); err != nil {
		return nil, err
	}
	fields, err := v.describe(ctx, sess)
	if err != nil {
		return nil, err
	}
	attrs, err := v.attributes(ctx, sess)
	if err != nil {
		return nil, err
	}
	v.attrs = attrs
	if err := v.setColumns(ctx, sess, fields, attrs); err != nil {
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

func (v *Validated) resolveTable(ctx context.Context, sess Session) error {
	t, err := resolveRelation(ctx, sess, v.Schema, v.Table, v.TableAt)
	if err != nil {
		return err
	}
	v.TableOID, v.TableSchema, v.TableName, v.Source = t.OID, t.Schema, t.Name, t.Source
	return nil
}

// ResolvedTable is a table a projection reads, as the caller's session
// resolves it.
type ResolvedTable struct {
	OID          uint32
	Schema, Name string
	Source       string // schema-qualified, quoted
	attrs        map[int16]attribute
}

// resolveRelation finds the table a query names (as written, at the
// 0-based position at) in the caller's session: a table or a partitioned
// table.
func resolveRelation(ctx context.Context, sess Session, schema, table string, at int) (ResolvedTable, error) {
	name := pgx.Identifier{table}.Sanitize()
	if schema != "" {
		name = pgx.Identifier{schema, table}.Sanitize()
	}
	rows, err := sess.Query(ctx, `SELECT c.oid, c.relkind, n.nspname, c.relname
		FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE c.oid = pg_catalog.to_regclass($1)`, &name)
	if err != nil {
		return ResolvedTable{}, err
	}
	if len(rows.Values) == 0 {
		return ResolvedTable{}, pgerr.Errorf(pgerr.UndefinedTable, "relation %q does not exist", strings.Trim(name, `"`)).At(int32(at))
	}
	r := rows.Values[0]
	oid, _ := strconv.ParseUint(*r[0], 10, 32)
	t := ResolvedTable{OID: uint32(oid), Schema: *r[2], Name: *r[3]}
	t.Source = pgx.Identifier{t.Schema, t.Name}.Sanitize()
	if kind := *r[1]; kind != "r" && kind != "p" {
		return ResolvedTable{}, pgerr.Errorf(pgerr.FeatureNotSupported, "%s is not a table (it is a %s): a publication reads a table's rows",
			t.Source, relkindName(kind)).At(int32(at)).WithHint("Publish from the table the %s reads.", relkindName(kind))
	}
	return t, nil
}

// checkAggregates refuses aggregate and window functions by name, before
// Postgres would complain about GROUP BY in words that do not say why.
func (v *Validated) checkAggregates(ctx context.Context, sess Session) error {
	return checkAggregates(ctx, sess, v.Functions)
}

func checkAggregates(ctx context.Context, sess Session, functions []FunctionRef) error {
	if len(functions) == 0 {
		return nil
	}
	names := make([]string, len(functions))
	for i, f := range functions {
		names[i] = `"` + strings.ReplaceAll(strings.ReplaceAll(f.Name, `\`, `\\`), `"`, `\"`) + `"`
	}
	list := "{" + strings.Join(names, ",") + "}"
	rows, err := sess.Query(ctx, `SELECT DISTINCT p.proname, p.prokind FROM pg_catalog.pg_proc p
		WHERE p.proname = ANY ($1::text[]) AND p.prokind IN ('a', 'w') AND pg_catalog.pg_function_is_visible(p.oid)
		ORDER BY p.prokind DESC`, &list)
	if err != nil {
		return err
	}
	for _, r := range rows.Values {
		for _, f := range functions {
			if f.Name == *r[0] && f.Schema == "" {
				kind := "aggregate"
				if *r[1] == "w" {
					kind = "window"
				}
				return pgerr.Errorf(pgerr.FeatureNotSupported, "%s function %s() is not supported in a publication query: a publication is the table's rows, one per key", kind, f.Name).At(int32(f.At))
			}
		}
	}
	return nil
}

func relkindName(k string) string {
	switch k {
	case "v":
		return "view"
	case "m":
		return "materialized view"
	case "f":
		return "foreign table"
	case "S":
		return "sequence"
	}
	return "relation of kind " + k
}

// describe runs the query with LIMIT 0: Postgres checks the columns, the
// functions and the caller's privileges, and describes the output.
func (v *Validated) describe(ctx context.Context, sess Session) ([]Field, error) {
	return describeQuery(ctx, sess, v.Query)
}

func describeQuery(ctx context.Context, sess Session, query string) ([]Field, error) {
	rows, err := sess.Query(ctx, projectionPrefix+query+"\n) AS rejot_projection LIMIT 0")
	if err != nil {
		var qe *pgerr.Error
		if errors.As(err, &qe) {
			e := &pgerr.Error{Code: qe.Code, Message: qe.Message, Detail: qe.Detail, Hint: qe.Hint}
			if pos := qe.InternalPosition - len(projectionPrefix); pos > 0 && pos <= len([]rune(query))+1 {
				e.Position = byteOffset(query, pos) + 1
			}
			return nil, e
		}
		return nil, err
	}
	return rows.Fields, nil
}

type attribute struct {
	name    string
	notNull bool
	isKey   bool
	typ     string // declared type: a domain stays a domain
	typeOID uint32
	typeMod int32
}

func (v *Validated) attributes(ctx context.Context, sess Session) (map[int16]attribute, error) {
	return tableAttributes(ctx, sess, v.TableOID)
}

func tableAttributes(ctx context.Context, sess Session, table uint32) (map[int16]attribute, error) {
	oid := strconv.FormatUint(uint64(table), 10)
	rows, err := sess.Query(ctx, `SELECT a.attnum, a.attname, a.attnotnull,
			coalesce(a.attnum = ANY (i.indkey::int2[]), false),
			pg_catalog.format_type(a.atttypid, a.atttypmod), a.atttypid, a.atttypmod
		FROM pg_catalog.pg_attribute a
		LEFT JOIN pg_catalog.pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
		WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped`, &oid)
	if err != nil {
		return nil, err
	}
	attrs := map[int16]attribute{}
	for _, r := range rows.Values {
		num, _ := strconv.Atoi(*r[0])
		oid, _ := strconv.ParseUint(*r[5], 10, 32)
		mod, _ := strconv.Atoi(*r[6])
		attrs[int16(num)] = attribute{name: *r[1], notNull: *r[2] == "t", isKey: *r[3] == "t",
			typ: *r[4], typeOID: uint32(oid), typeMod: int32(mod)}
	}
	return attrs, nil
}

// setColumns types the output and finds the public key: the table's
// primary key, published as plain column references.
func (v *Validated) setColumns(ctx context.Context, sess Session, fields []Field, attrs map[int16]attribute) error {
	types, err := formatTypes(ctx, sess, fields)
	if err != nil {
		return err
	}
	covered := map[int16]bool{}
	for i, f := range fields {
		c := PublicColumn{Name: v.Projection.Columns[i].Name, Type: types[i], TypeOID: f.TypeOID, TypeMod: f.TypeMod, Nullable: true}
		if a, ok := attrs[f.Column]; ok && f.TableOID == v.TableOID && v.Projection.Columns[i].Source != "" {
			c.Nullable = !a.notNull
			c.Type, c.TypeOID, c.TypeMod = a.typ, a.typeOID, a.typeMod
			if a.isKey && !covered[f.Column] {
				c.IsKey, c.Nullable, covered[f.Column] = true, false, true
				v.Key = append(v.Key, c.Name)
			}
		}
		v.Columns = append(v.Columns, c)
	}
	return v.checkKey(attrs, covered)
}

func (v *Validated) checkKey(attrs map[int16]attribute, covered map[int16]bool) error {
	var pk, missing []string
	for num, a := range attrs {
		if a.isKey {
			pk = append(pk, a.name)
			if !covered[num] {
				missing = append(missing, a.name)
			}
		}
	}
	if len(pk) == 0 {
		return pgerr.Errorf(pgerr.FeatureNotSupported, "%s has no primary key: a publication's rows are identified by the table's primary key", v.Source).
			At(int32(v.TableAt)).WithHint("Add a primary key to %s.", v.Source)
	}
	if len(missing) > 0 {
		return pgerr.Errorf(pgerr.FeatureNotSupported, "the publication must include the primary key of %s as plain columns; missing: %s",
			v.Source, strings.Join(missing, ", ")).WithHint("Add %s to the select list; you may rename it (%s AS new_name).",
			strings.Join(missing, ", "), missing[0])
	}
	return nil
}

func formatTypes(ctx context.Context, sess Session, fields []Field) ([]string, error) {
	oids, mods := make([]string, len(fields)), make([]string, len(fields))
	for i, f := range fields {
		oids[i] = strconv.FormatUint(uint64(f.TypeOID), 10)
		mods[i] = strconv.Itoa(int(f.TypeMod))
	}
	o, m := "{"+strings.Join(oids, ",")+"}", "{"+strings.Join(mods, ",")+"}"
	rows, err := sess.Query(ctx, `SELECT pg_catalog.format_type(t, m)
		FROM unnest($1::oid[], $2::int4[]) WITH ORDINALITY AS u(t, m, i) ORDER BY i`, &o, &m)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(rows.Values))
	for i, r := range rows.Values {
		out[i] = *r[0]
	}
	return out, nil
}

// checkImmutable asks Postgres itself whether the projection's expressions
// and filter are immutable, with operator and cast resolution included:
// each becomes a generated column of a temporary copy of the table, which
// Postgres accepts only for immutable expressions. The copy is made inside
// a PL/pgSQL block that always undoes its work, so nothing remains.
func (v *Validated) checkImmutable(ctx context.Context, sess Session) error {
	var checks []immutabilityCheck
	for i, c := range v.Projection.Columns {
		if c.Source == "" {
			checks = append(checks, immutabilityCheck{c.Expr, v.Columns[i].Type, c.Expr, c.At})
		}
	}
	if v.Filter != "" {
		checks = append(checks, immutabilityCheck{v.Filter, "boolean", v.Filter, v.FilterAt})
	}
	return checkImmutable(ctx, sess, "LIKE "+v.Source, checks, v.Filter != "",
		"The check builds a temporary copy of the table: the publishing role needs TEMPORARY on the database and SELECT on the whole table (or publish plain columns without a filter).")
}
