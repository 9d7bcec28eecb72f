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
	"google.golang.org/protobuf/reflect/protoreflect"
)

// classifyRelations recognises a query over the catalog relations
// (rejot.publications, ...). Such a query runs against the catalog
// database, so it may read nothing else, and only read.
func classifyRelations(node *pg_query.Node) (bool, error) {
	var vars []*pg_query.RangeVar
	ctes := map[string]bool{}
	walk(node.ProtoReflect(), func(m protoreflect.Message) {
		switch v := m.Interface().(type) {
		case *pg_query.RangeVar:
			vars = append(vars, v)
		case *pg_query.CommonTableExpr:
			ctes[v.Ctename] = true
		}
	})
	first := -1
	for i, v := range vars {
		if v.Schemaname == "rejot" {
			first = i
			break
		}
	}
	if first < 0 {
		return false, nil
	}
	if node.GetSelectStmt() == nil || node.GetSelectStmt().IntoClause != nil {
		return true, pgerr.Errorf(pgerr.FeatureNotSupported, "the rejot catalog relations are read-only").
			At(vars[first].Location).WithHint("Change publications with CALL rejot.publish(...), rejot.deprecate(...) or rejot.unpublish(...).")
	}
	for _, v := range vars {
		if err := checkRelation(v, ctes); err != nil {
			return true, err
		}
	}
	return true, nil
}

func checkRelation(v *pg_query.RangeVar, ctes map[string]bool) error {
	switch {
	case v.Schemaname == "rejot" && v.Catalogname == "":
		for _, r := range catalog.Relations {
			if v.Relname == r {
				return nil
			}
		}
		return pgerr.Errorf(pgerr.UndefinedTable, "relation \"rejot.%s\" does not exist", v.Relname).At(v.Location).
			WithHint("The catalog relations are %s.", relationList())
	case v.Schemaname == "" && v.Catalogname == "" && ctes[v.Relname]:
		return nil
	}
	name := v.Relname
	if v.Schemaname != "" {
		name = v.Schemaname + "." + name
	}
	return pgerr.Errorf(pgerr.FeatureNotSupported, "a query over the rejot catalog relations cannot also read %s", name).
		At(v.Location).WithHint("The catalog relations live in the catalog database: query them on their own.")
}

func relationList() string {
	names := make([]string, len(catalog.Relations))
	for i, r := range catalog.Relations {
		names[i] = "rejot." + r
	}
	return strings.Join(names, ", ")
}

// CatalogReader answers queries over the catalog relations.
type CatalogReader interface {
	Describe(ctx context.Context, sql string, paramOIDs []uint32) (*pgconn.StatementDescription, error)
	Query(ctx context.Context, sql string, params [][]byte, paramOIDs []uint32, paramFormats, resultFormats []int16) (*catalog.Result, error)
}

var errNoCatalog = &pgerr.Error{Code: pgerr.ConnectionFailure, Message: "the catalog is not available to this sidecar",
	Hint: "Start the sidecar with --catalog, or check that the catalog database is up."}

// DescribeRelations returns the parameter types and result fields of a
// query over the catalog relations (statement st of query).
func (x *Executor) DescribeRelations(ctx context.Context, query string, st Statement, paramOIDs []uint32) (*pgconn.StatementDescription, error) {
	if x.Catalog == nil {
		return nil, errNoCatalog
	}
	sd, err := x.Catalog.Describe(ctx, st.Text(query), paramOIDs)
	return sd, relationError(err, query, st)
}

// QueryRelations runs a query over the catalog relations; values pass
// through in the formats given.
func (x *Executor) QueryRelations(ctx context.Context, query string, st Statement, params [][]byte, paramOIDs []uint32, paramFormats, resultFormats []int16) (*catalog.Result, error) {
	if x.Catalog == nil {
		return nil, errNoCatalog
	}
	res, err := x.Catalog.Query(ctx, st.Text(query), params, paramOIDs, paramFormats, resultFormats)
	return res, relationError(err, query, st)
}

// relationError turns the catalog's error into the caller's, with its
// position moved from the statement to the whole query string.
func relationError(err error, query string, st Statement) error {
	if err == nil {
		return nil
	}
	var own *pgerr.Error // the catalog's own refusal, such as a result over its budget
	if errors.As(err, &own) {
		return own
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return &pgerr.Error{Code: pgerr.ConnectionFailure, Message: "cannot query the catalog: " + err.Error()}
	}
	e := &pgerr.Error{Code: pe.Code, Message: pe.Message, Detail: pe.Detail, Hint: pe.Hint}
	if pe.Position > 0 {
		e.Position = st.Offset + byteOffset(st.Text(query), int(pe.Position)) + 1
	}
	return e
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
