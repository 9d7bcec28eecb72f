package sql

import (
	"context"
	"errors"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"
	pg_query "github.com/pganalyze/pg_query_go/v6"
	"github.com/rejot-dev/rejot/catalog"
	"github.com/rejot-dev/rejot/internal/pgerr"
)

// CatalogReader reads the catalog for users' queries and calls, with fixed
// statements of its own: no user text reaches the catalog.
type CatalogReader interface {
	// RelationColumns returns a catalog relation's columns, in order.
	RelationColumns(ctx context.Context, rel string) ([]catalog.RelationColumn, error)
	// RelationRows returns the rows of the relations, each relation's as a
	// JSON array of objects, all read in one snapshot.
	RelationRows(ctx context.Context, rels []string) ([]string, error)
	// MaxResult is the budget of one query, in bytes: of the rows read,
	// and of its result.
	MaxResult() int
	// ActiveSubscriptions counts a publication version's subscriptions
	// that are not stopped.
	ActiveSubscriptions(ctx context.Context, publication string, version int) (int64, error)
	// VersionColumns returns a publication version's status and columns;
	// found is false when there is no such version.
	VersionColumns(ctx context.Context, publication string, version int) (status string, cols []catalog.Column, found bool, err error)
	// VersionAccess returns who may subscribe to a publication version:
	// its owner's system, its access as rejot.publications shows it, and
	// the granted systems; found is false when there is no such version.
	VersionAccess(ctx context.Context, publication string, version int) (owner, access string, granted []string, found bool, err error)
}

// RelationSession runs the rewritten query over the catalog relations in
// the caller's own upstream session, between the caller's messages: with
// exactly the caller's privileges, on the caller's database.
type RelationSession interface {
	// Prepare parses a statement with the given parameter types and
	// describes it. An error from the server is a *pgconn.PgError whose
	// position is in sql.
	Prepare(ctx context.Context, sql string, paramOIDs []uint32) (*pgconn.StatementDescription, error)
	// Run runs a statement and returns its row description, rows and tag.
	// Past maxBytes of rows it stops the statement and returns
	// ErrResultTooLarge; errors from the server are as for Prepare.
	Run(ctx context.Context, q RawQuery, maxBytes int) (*RelationRows, error)
}

// ErrResultTooLarge: a result went past its budget.
var ErrResultTooLarge = errors.New("the result is larger than its budget")

// RawQuery is a statement with its parameters in the formats sent; the
// values pass through without being decoded.
type RawQuery struct {
	SQL           string
	Params        [][]byte
	ParamOIDs     []uint32
	ParamFormats  []int16
	ResultFormats []int16
}

// RelationRows is the raw outcome of a query over the catalog relations,
// in the formats the caller asked for, ready to relay.
type RelationRows struct {
	Fields []pgconn.FieldDescription
	Rows   [][][]byte
	Tag    string
}

const oidJSONB = 3802

var errNoCatalog = &pgerr.Error{Code: pgerr.ConnectionFailure, Message: "the catalog is not available to this sidecar",
	Hint: "Start the sidecar with --catalog, or check that the catalog database is up."}

// DescribeRelations returns the parameter types and result fields of a
// query over the catalog relations (statement st of query): only the
// caller's parameters, not those that carry the relations' rows.
func (x *Executor) DescribeRelations(ctx context.Context, query string, st Statement, paramOIDs []uint32, sess RelationSession) (*pgconn.StatementDescription, error) {
	if err := x.waitUntilServable(ctx, Need{Catalog: true}); err != nil {
		return nil, err
	}
	rq, err := x.rewrite(ctx, query, st, len(paramOIDs))
	if err != nil {
		return nil, err
	}
	sd, err := sess.Prepare(ctx, rq.text, rq.paramOIDs(paramOIDs))
	if err != nil {
		return nil, rq.relationError(err, query, st)
	}
	if len(sd.ParamOIDs) >= rq.first-1 {
		sd.ParamOIDs = sd.ParamOIDs[:rq.first-1]
	}
	return sd, nil
}

// QueryRelations runs a query over the catalog relations in the caller's
// session: the relations' rows are read from the catalog and passed as
// parameters after the caller's own (q's, already described: one value for
// each of q.ParamOIDs). A nil q is the simple protocol, which has no
// parameters.
func (x *Executor) QueryRelations(ctx context.Context, query string, st Statement, q *RawQuery, sess RelationSession) (*RelationRows, error) {
	if q == nil {
		q = &RawQuery{}
		if err := noParams(st.Text(query), st.Offset); err != nil {
			return nil, err
		}
	}
	if err := x.waitUntilServable(ctx, Need{Catalog: true}); err != nil {
		return nil, err
	}
	rq, err := x.rewrite(ctx, query, st, len(q.ParamOIDs))
	if err != nil {
		return nil, err
	}
	rows, err := x.Catalog.RelationRows(ctx, rq.rels)
	if err != nil {
		return nil, catalogError(err)
	}
	run := RawQuery{SQL: rq.text, ParamOIDs: rq.paramOIDs(q.ParamOIDs), ResultFormats: q.ResultFormats,
		Params: append(append([][]byte(nil), q.Params...), make([][]byte, rq.first-1-len(q.Params))...)}
	run.ParamFormats = rq.paramFormats(q.ParamFormats, len(run.Params))
	for _, r := range rows {
		run.Params = append(run.Params, []byte(asciiJSON(r)))
	}
	res, err := sess.Run(ctx, run, x.Catalog.MaxResult())
	if errors.Is(err, ErrResultTooLarge) {
		return nil, catalog.ResultTooLarge(x.Catalog.MaxResult())
	}
	if err != nil {
		return nil, rq.relationError(err, query, st)
	}
	return res, nil
}

func (x *Executor) rewrite(ctx context.Context, query string, st Statement, nParams int) (*relationQuery, error) {
	if x.Catalog == nil {
		return nil, errNoCatalog
	}
	rq, err := rewriteRelations(st.Text(query), nParams, func(rel string) ([]catalog.RelationColumn, error) {
		return x.Catalog.RelationColumns(ctx, rel)
	})
	var own *pgerr.Error
	switch {
	case errors.As(err, &own):
		if own.Position > 0 {
			own.Position += st.Offset
		}
		return nil, own
	case err != nil:
		return nil, catalogError(err)
	}
	return rq, nil
}

// paramOIDs are the caller's parameter types, unspecified (0) up to the
// rows' parameters, then jsonb for those.
func (q *relationQuery) paramOIDs(given []uint32) []uint32 {
	oids := append([]uint32(nil), given...)
	for len(oids) < q.first-1 {
		oids = append(oids, 0)
	}
	for range q.rels {
		oids = append(oids, oidJSONB)
	}
	return oids
}

// paramFormats spells the caller's formats out for its n parameters
// (one code applies to all), then text for the rows'.
func (q *relationQuery) paramFormats(given []int16, n int) []int16 {
	if len(given) == 0 {
		return nil
	}
	out := make([]int16, n, n+len(q.rels))
	for i := range out {
		out[i] = formatOf(given, i)
	}
	return append(out, make([]int16, len(q.rels))...)
}

func formatOf(formats []int16, i int) int16 {
	switch {
	case len(formats) == 1:
		return formats[0]
	case i < len(formats):
		return formats[i]
	}
	return 0
}

// noParams refuses $n in a simple query, as Postgres does.
func noParams(text string, offset int) error {
	tree, err := pg_query.Parse(text)
	if err != nil || len(tree.Stmts) != 1 {
		return nil // the rewrite reports it
	}
	if refs := findRelationRefs(tree.Stmts[0].Stmt); len(refs.params) > 0 {
		p := refs.params[0]
		return pgerr.Errorf(pgerr.UndefinedParameter, "there is no parameter $%d", p.Number).At(p.Location + int32(offset))
	}
	return nil
}

// relationError turns the session's error into the caller's, with its
// position moved from the rewritten statement to the whole query string.
func (q *relationQuery) relationError(err error, query string, st Statement) error {
	var own *pgerr.Error // the sidecar's own refusal
	if errors.As(err, &own) {
		return own
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return &pgerr.Error{Code: pgerr.ConnectionFailure, Message: "cannot run the query over the catalog relations: " + err.Error()}
	}
	e := &pgerr.Error{Code: pe.Code, Message: pe.Message, Detail: pe.Detail, Hint: pe.Hint}
	if pe.Position > 0 {
		e.Position = st.Offset + q.origin(byteOffset(q.text, int(pe.Position))) + 1
	}
	return e
}

// catalogError is a failure to read the catalog.
func catalogError(err error) error {
	var own *pgerr.Error
	if errors.As(err, &own) {
		return own
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return &pgerr.Error{Code: pe.Code, Message: "cannot read the catalog relations: " + pe.Message, Hint: pe.Hint}
	}
	return &pgerr.Error{Code: pgerr.ConnectionFailure, Message: "cannot read the catalog relations: " + err.Error(),
		Hint: errNoCatalog.Hint}
}

// asciiJSON escapes every non-ASCII character of a JSON text as \uXXXX:
// the text is sent in the caller's session, whose client_encoding may not
// be UTF-8, and an escape means the same character in any.
func asciiJSON(s string) string {
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			n++
		}
	}
	if n == 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 4*n)
	for _, r := range s {
		switch {
		case r < utf8.RuneSelf:
			b.WriteByte(byte(r))
		case r > 0xFFFF:
			r -= 0x10000
			writeEscape(&b, 0xD800+(r>>10))
			writeEscape(&b, 0xDC00+(r&0x3FF))
		default:
			writeEscape(&b, r)
		}
	}
	return b.String()
}

func writeEscape(b *strings.Builder, r rune) {
	const hex = "0123456789abcdef"
	b.WriteString(`\u`)
	b.WriteByte(hex[r>>12&0xF])
	b.WriteByte(hex[r>>8&0xF])
	b.WriteByte(hex[r>>4&0xF])
	b.WriteByte(hex[r&0xF])
}

// byteOffset is the byte offset of the 1-based character position pos.
func byteOffset(text string, pos int) int {
	off := 0
	for i := 1; i < pos && off < len(text); i++ {
		_, size := utf8.DecodeRuneInString(text[off:])
		off += size
	}
	return off
}
