package sql

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"github.com/rejot-dev/rejot/internal/pgerr"
)

// The stored query.
//
// The capture evaluates a version's projection as its publisher with
// search_path = pg_catalog, pg_temp (replicator/capture, publisher.go),
// so that no function, operator or type anyone put in public or a schema
// of their own is picked up by accident. The query it stores must mean
// there what it meant when it was published: every name outside
// pg_catalog qualified with the schema it resolved to in the publisher's
// session. Postgres writes that form itself: a view's definition printed
// (pg_get_viewdef) with search_path pg_catalog qualifies exactly the
// names that would otherwise resolve differently — as pg_dump relies on.

// storedSearchPath is the search_path the capture evaluates under.
const storedSearchPath = "pg_catalog, pg_temp"

// setStored works out the stored form of the query and checks, in the
// caller's session with search_path pg_catalog, that it describes as the
// query did (fields); the stored form then decides which columns are not
// null (nullable.go). The session's search_path is put back as it was;
// on an error the call fails, and the caller's transaction is aborted,
// which undoes everything here.
func (v *Validated) setStored(ctx context.Context, sess Session, fields []Field) error {
	stored, err := storedForm(ctx, sess, func() (string, error) {
		if v.runsCode() {
			return v.viewDefinition(ctx, sess)
		}
		return v.qualifiedTable(ctx, sess)
	}, func(stored string) error {
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

// storedForm makes a query's stored form (define sets the session's
// search_path to the capture's on the way), runs check over it under
// that search_path, and puts the caller's search_path back. On an error
// the caller's transaction is aborted, which undoes everything.
func storedForm(ctx context.Context, sess Session, define func() (string, error), check func(stored string) error) (string, error) {
	rows, err := sess.Query(ctx, "SELECT pg_catalog.current_setting('search_path')")
	if err != nil {
		return "", err
	}
	old := *rows.Values[0][0]
	stored, err := define()
	if err != nil {
		return "", err
	}
	if err := check(stored); err != nil {
		return "", err
	}
	if _, err := sess.Query(ctx, "SELECT pg_catalog.set_config('search_path', $1, true)", &old); err != nil {
		return "", err
	}
	return stored, nil
}

// runsCode says whether the query has anything but plain columns of its
// table: expressions or a filter, whose names need resolving.
func (v *Validated) runsCode() bool {
	if v.Filter != "" {
		return true
	}
	for _, c := range v.Projection.Columns {
		if c.Source == "" {
			return true
		}
	}
	return false
}

// setPath sets the session's search_path for the rest of its transaction
// (setStored puts it back).
func setPath(ctx context.Context, sess Session, path string) error {
	_, err := sess.Query(ctx, "SELECT pg_catalog.set_config('search_path', $1, true)", &path)
	return err
}

// qualifiedTable is the stored form of a query of plain columns: the
// query with its table named by schema, as resolved. It names no
// function, operator or type.
func (v *Validated) qualifiedTable(ctx context.Context, sess Session) (string, error) {
	tree, err := pg_query.Parse(v.Query)
	if err != nil {
		return "", err
	}
	rv := tree.Stmts[0].Stmt.GetSelectStmt().FromClause[0].GetRangeVar()
	rv.Schemaname, rv.Relname = v.TableSchema, v.TableName
	stored, err := pg_query.Deparse(tree)
	if err != nil {
		return "", err
	}
	return stored, setPath(ctx, sess, storedSearchPath)
}

// viewDefinition is the stored form of a query with expressions: the
// definition of a temporary view of it, printed with search_path
// pg_catalog, then dropped. It leaves the search_path set so.
func (v *Validated) viewDefinition(ctx context.Context, sess Session) (string, error) {
	return viewDefinition(ctx, sess, v.Query)
}

func viewDefinition(ctx context.Context, sess Session, query string) (string, error) {
	var raw [8]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	view := "pg_temp.rejot_stored_" + hex.EncodeToString(raw[:])
	if _, err := sess.Query(ctx, "CREATE TEMP VIEW "+view+" AS "+query); err != nil {
		var qe *pgerr.Error
		if errors.As(err, &qe) && qe.Code == pgerr.InsufficientPrivilege {
			return "", pgerr.Errorf(pgerr.InsufficientPrivilege, "cannot resolve the names in the publication's query: %s", qe.Message).
				WithHint("The sidecar records the query with every name qualified, which it works out through a temporary view: the publishing role needs TEMPORARY on the database.")
		}
		return "", noPosition(err)
	}
	if err := setPath(ctx, sess, storedSearchPath); err != nil {
		return "", err
	}
	rows, err := sess.Query(ctx, "SELECT pg_catalog.pg_get_viewdef('"+view+"'::pg_catalog.regclass)")
	if err != nil {
		return "", err
	}
	def := strings.TrimSuffix(strings.TrimSpace(*rows.Values[0][0]), ";")
	if _, err := sess.Query(ctx, "DROP VIEW "+view); err != nil {
		return "", err
	}
	tree, err := pg_query.Parse(def)
	if err != nil {
		return "", err
	}
	return pg_query.Deparse(tree) // on one line
}

// checkStored describes the stored form, with search_path pg_catalog as
// set: it must be a projection of the same table with the same columns,
// of the same types, as the query.
func (v *Validated) checkStored(ctx context.Context, sess Session, stored string, fields []Field) error {
	differs := func(why string) error {
		return pgerr.Errorf(pgerr.FeatureNotSupported, "the publication's query does not mean the same with every name qualified by its schema (%s)", why).
			WithHint("Qualify each function, operator and type outside pg_catalog with its schema in the query (myschema.f(x), OPERATOR(myschema.+), x::myschema.t).")
	}
	sp, perr := AnalyzeProjection(stored)
	if perr != nil {
		return differs(perr.Error())
	}
	if len(sp.Columns) != len(v.Projection.Columns) {
		return differs("its columns differ")
	}
	for i, c := range sp.Columns {
		if c.Name != v.Projection.Columns[i].Name || c.Source != v.Projection.Columns[i].Source {
			return differs("column " + strconv.Quote(c.Name) + " differs")
		}
	}
	rows, err := sess.Query(ctx, projectionPrefix+stored+"\n) AS rejot_projection LIMIT 0")
	if err != nil {
		var qe *pgerr.Error
		if errors.As(err, &qe) {
			return differs(qe.Message)
		}
		return err
	}
	for i, f := range rows.Fields {
		if i >= len(fields) || f.TypeOID != fields[i].TypeOID || f.TypeMod != fields[i].TypeMod {
			return differs("the type of column " + strconv.Quote(sp.Columns[min(i, len(sp.Columns)-1)].Name) + " differs")
		}
	}
	return nil
}

// noPosition drops an error's position, which is not in the caller's
// query.
func noPosition(err error) error {
	var qe *pgerr.Error
	if errors.As(err, &qe) {
		return &pgerr.Error{Code: qe.Code, Message: qe.Message, Detail: qe.Detail, Hint: qe.Hint}
	}
	return err
}

// checkRowSecurity refuses a table row-level security applies to for the
// caller: the capture reads its changes from the WAL, where no row policy
// can be applied, so a publication of it would publish every row.
func (v *Validated) checkRowSecurity(ctx context.Context, sess Session) error {
	return checkRowSecurity(ctx, sess, v.TableOID, v.Source, v.TableAt)
}

func checkRowSecurity(ctx context.Context, sess Session, table uint32, source string, at int) error {
	oid := strconv.FormatUint(uint64(table), 10)
	rows, err := sess.Query(ctx, "SELECT pg_catalog.row_security_active($1::oid)::text", &oid)
	if err != nil {
		return err
	}
	if len(rows.Values) == 0 || rows.Values[0][0] == nil || *rows.Values[0][0] != "true" {
		return nil
	}
	return pgerr.Errorf(pgerr.InsufficientPrivilege, "row-level security applies to %s for this role: ReJot reads changes from the WAL, where row policies cannot be applied, so it would publish every row", source).
		At(int32(at)).WithHint("Publish as a role the table's policies do not limit (its owner, without FORCE ROW LEVEL SECURITY), or publish a filtered projection (WHERE ...) as such a role.")
}
