package capture

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// Querier runs queries: a connection to the owner's database (made with
// search_path pg_catalog, see connectOwner), or a transaction of one.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	// Begin starts a transaction (a savepoint in a transaction): where
	// the evaluator of a projection is made, as its role.
	Begin(ctx context.Context) (pgx.Tx, error)
	// SendBatch runs an evaluation and the session's reset after it in
	// one round trip.
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// SourceColumn is a column of a published table as the WAL carries it.
type SourceColumn struct {
	Name string
	Type string // Postgres's name with modifiers, e.g. numeric(12,2)
}

// Projection is how a publication version's rows are made from its source
// table's rows: the published expressions and filter, over the table's
// columns by name (as sql.Projection deparses them).
type Projection struct {
	Version eventlog.Version
	Exprs   []string // one per public column, in order
	Names   []string // the public columns' names
	Filter  string   // "" when there is none
	KeyCols []int    // positions in Exprs of the public key
	// Sources are, per public column, the source column it is when it is
	// a plain column reference ("" otherwise).
	Sources []string
	// Role is the role the projection runs as: the publisher's ("" runs
	// it as the connection's own role, for tests).
	Role string
}

// Projected is one source tuple after projection.
type Projected struct {
	Keep bool             // the row passes the filter
	Row  []eventlog.Value // the public columns, in text form
}

// Project evaluates a projection on a batch of source tuples (values in
// text form, in source column order) with Postgres itself, so the result is
// exactly what the query would give for those rows — whatever the table
// holds now. One query per batch, run as the projection's role inside its
// evaluator (see publisher.go), made on the connection the first time,
// and the session reset after it (its prepared statements too: q must
// send its statements unnamed, as connections of connectOwner do).
func Project(ctx context.Context, q Querier, p *Projection, cols []SourceColumn, tuples [][]eventlog.Value) ([]Projected, error) {
	if len(tuples) == 0 {
		return nil, nil
	}
	if at, ok := p.direct(cols); ok {
		out := make([]Projected, len(tuples))
		for i, t := range tuples {
			row := make([]eventlog.Value, len(at))
			for j, c := range at {
				if c < len(t) {
					row[j] = TextForm(cols[c].Type, t[c])
				}
			}
			out[i] = Projected{Keep: true, Row: row}
		}
		return out, nil
	}
	query := projectSQL(p, cols)
	args := make([]any, 0, len(cols)+1)
	ords := make([]int32, len(tuples))
	for i := range tuples {
		ords[i] = int32(i)
	}
	args = append(args, ords)
	for c := range cols {
		col := make([]eventlog.Value, len(tuples))
		for i, t := range tuples {
			if c < len(t) {
				col[i] = t[c]
			}
		}
		args = append(args, col)
	}
	out := make([]Projected, len(tuples))
	err := p.evaluate(ctx, q, query, cols, args, func(rows pgx.Rows) error {
		for rows.Next() {
			dest := make([]any, len(p.Exprs)+2)
			var ord int32
			var keep bool
			vals := make([]eventlog.Value, len(p.Exprs))
			dest[0], dest[1] = &ord, &keep
			for i := range vals {
				dest[i+2] = &vals[i]
			}
			if err := rows.Scan(dest...); err != nil {
				return err
			}
			out[ord] = Projected{Keep: keep, Row: vals}
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("cannot project %s version %d as role %q: %w", p.Version.Publication, p.Version.Number, p.Role, err)
	}
	return out, nil
}

// evaluate runs a projection query through its evaluator, making it when
// the connection has none yet, and hands its rows to read; the session is
// reset after it in the same round trip (see publisher.go).
func (p *Projection) evaluate(ctx context.Context, q Querier, query string, cols []SourceColumn, args []any, read func(pgx.Rows) error) error {
	params := make([]string, len(cols)+1)
	call := make([]string, len(cols)+1)
	params[0], call[0] = "int4[]", "$1"
	for i := range cols {
		params[i+1], call[i+1] = "text[]", "$"+strconv.Itoa(i+2)
	}
	returns := []string{"rejot_ord int4", "rejot_keep boolean"}
	for i := range p.Exprs {
		returns = append(returns, "rejot_"+strconv.Itoa(i)+" text")
	}
	e := &evaluator{role: p.Role, params: strings.Join(params, ", "), returns: strings.Join(returns, ", "), body: query}
	sql := "SELECT * FROM " + e.name() + "(" + strings.Join(call, ", ") + ")"
	run := func() error {
		b := &pgx.Batch{}
		b.Queue(sql, args...)
		queueReset(b)
		br := q.SendBatch(ctx, b)
		rows, err := br.Query()
		if err == nil {
			err = read(rows)
			rows.Close()
			if err == nil {
				err = rows.Err()
			}
		}
		if cerr := br.Close(); err == nil {
			err = cerr
		}
		return err
	}
	err := run()
	if err == nil || !undefinedEvaluator(err) {
		return err
	}
	if err := e.make(ctx, q); err != nil {
		return err
	}
	return run()
}

// projectSQL builds
//
//	SELECT o, coalesce((filter), true), (expr1)::text, ...
//	FROM (SELECT u.o, u.c1::type1 AS "col1", ... FROM unnest($1::int4[], $2::text[], ...) AS u(o, c1, ...)) AS t
func projectSQL(p *Projection, cols []SourceColumn) string {
	var b strings.Builder
	filter := "true"
	if p.Filter != "" {
		filter = "coalesce((" + p.Filter + "), false)"
	}
	fmt.Fprintf(&b, "SELECT t.rejot_ord, %s", filter)
	for _, e := range p.Exprs {
		fmt.Fprintf(&b, ", (%s)::text", e)
	}
	b.WriteString(" FROM (SELECT u.rejot_ord")
	for i, c := range cols {
		fmt.Fprintf(&b, ", u.c%d::%s AS %s", i, c.Type, pgx.Identifier{c.Name}.Sanitize())
	}
	b.WriteString(" FROM unnest($1::int4[]")
	for i := range cols {
		fmt.Fprintf(&b, ", $%d::text[]", i+2)
	}
	b.WriteString(") AS u(rejot_ord")
	for i := range cols {
		b.WriteString(", c" + strconv.Itoa(i))
	}
	b.WriteString(")) AS t")
	return b.String()
}

// direct says whether a projection can be computed without Postgres: no
// filter, and every public column a plain reference to a source column of
// a type whose text form does not depend on session settings (see
// TextForm). It returns where each public column is in cols.
func (p *Projection) direct(cols []SourceColumn) ([]int, bool) {
	if p.Filter != "" || len(p.Sources) != len(p.Exprs) {
		return nil, false
	}
	at := make([]int, len(p.Sources))
	for i, name := range p.Sources {
		at[i] = -1
		for j, c := range cols {
			if c.Name == name && name != "" {
				at[i] = j
				break
			}
		}
		if at[i] < 0 || !plainText(cols[at[i]].Type) {
			return nil, false
		}
	}
	return at, true
}

// plainText lists the types whose output (what the WAL carries) is the
// same in every session and is, after TextForm, what (value)::text gives.
// Dates, times and floats are not among them: their output follows
// DateStyle, TimeZone and extra_float_digits.
func plainText(typ string) bool {
	base, _, _ := strings.Cut(typ, "(")
	switch base {
	case "smallint", "integer", "bigint", "oid", "text", "character varying", "character", "bpchar", "numeric",
		"uuid", "json", "jsonb", "boolean", "inet", "cidr":
		return true
	}
	return false
}

// TextForm turns a value as the WAL carries it (the type's output) into
// what (value)::text gives, which is how the log keeps values: casts to
// text trim character(n)'s padding, spell booleans out and give inet its
// mask. Other types print the same either way.
func TextForm(typ string, v eventlog.Value) eventlog.Value {
	if v == nil {
		return nil
	}
	base, _, _ := strings.Cut(typ, "(")
	switch base {
	case "character", "bpchar":
		if t := strings.TrimRight(*v, " "); len(t) != len(*v) {
			return &t
		}
	case "boolean":
		var t string
		switch *v {
		case "t":
			t = "true"
		case "f":
			t = "false"
		default:
			return v
		}
		return &t
	case "inet":
		if !strings.Contains(*v, "/") {
			t := *v + "/32"
			if strings.Contains(*v, ":") {
				t = *v + "/128"
			}
			return &t
		}
	}
	return v
}
