package sql

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"github.com/rejot-dev/rejot/catalog"
	"github.com/rejot-dev/rejot/internal/pgerr"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// relationRefs are the references to the catalog relations in one
// statement, and what else the rewrite must know of it.
type relationRefs struct {
	from     []*pg_query.RangeVar  // rejot.<rel> read as a FROM item
	refused  []*pg_query.RangeVar  // rejot.<rel> written, locked or sampled
	columns  []*pg_query.ColumnRef // rejot.<rel>.<column>: the schema is dropped
	params   []*pg_query.ParamRef
	maxParam int
}

// findRelationRefs walks a statement for its references to the catalog
// relations: every RangeVar qualified with rejot, sorted by what it is used
// for. The walk meets a node before its children, so a RangeVar that is an
// INSERT's target (say) is known as such when it is reached.
func findRelationRefs(node *pg_query.Node) *relationRefs {
	refs := &relationRefs{}
	special := map[*pg_query.RangeVar]bool{}
	mark := func(n *pg_query.Node) {
		if rv := n.GetRangeVar(); rv != nil {
			special[rv] = true
		}
	}
	walk(node.ProtoReflect(), func(m protoreflect.Message) {
		switch v := m.Interface().(type) {
		case *pg_query.InsertStmt:
			special[v.Relation] = true
		case *pg_query.UpdateStmt:
			special[v.Relation] = true
		case *pg_query.DeleteStmt:
			special[v.Relation] = true
		case *pg_query.MergeStmt:
			special[v.Relation] = true
		case *pg_query.LockingClause:
			for _, n := range v.LockedRels {
				mark(n)
			}
		case *pg_query.RangeTableSample:
			mark(v.Relation)
		case *pg_query.RangeVar:
			switch {
			case v.Schemaname != "rejot":
			case special[v]:
				refs.refused = append(refs.refused, v)
			default:
				refs.from = append(refs.from, v)
			}
		case *pg_query.ColumnRef:
			if isRelationColumn(v) {
				refs.columns = append(refs.columns, v)
			}
		case *pg_query.ParamRef:
			refs.params = append(refs.params, v)
			refs.maxParam = max(refs.maxParam, int(v.Number))
		}
	})
	return refs
}

// isRelationColumn: rejot.<relation>.<column> (or .*).
func isRelationColumn(c *pg_query.ColumnRef) bool {
	f := c.Fields
	return len(f) == 3 && f[0].GetString_().GetSval() == "rejot" && catalog.IsRelation(f[1].GetString_().GetSval())
}

// classifyRelations recognises a query over the catalog relations
// (rejot.publications, ...). It runs in the caller's own session with the
// relations' rows as parameters (see QueryRelations), so it may read
// anything the caller may; but the relations can only be read.
func classifyRelations(node *pg_query.Node) (bool, error) {
	refs := findRelationRefs(node)
	if len(refs.from)+len(refs.refused) == 0 {
		return false, nil
	}
	first := refs.from
	if len(first) == 0 || len(refs.refused) > 0 && refs.refused[0].Location < first[0].Location {
		first = refs.refused
	}
	if node.GetSelectStmt() == nil || node.GetSelectStmt().IntoClause != nil {
		return true, errReadOnly(first[0].Location)
	}
	for _, v := range append(refs.from, refs.refused...) {
		if err := checkRelation(v); err != nil {
			return true, err
		}
	}
	if len(refs.refused) > 0 {
		return true, errReadOnly(refs.refused[0].Location)
	}
	return true, nil
}

func errReadOnly(location int32) error {
	return pgerr.Errorf(pgerr.FeatureNotSupported, "the rejot catalog relations are read-only").
		At(location).WithHint("Change publications with CALL rejot.publish(...), rejot.deprecate(...) or rejot.unpublish(...).")
}

func checkRelation(v *pg_query.RangeVar) error {
	if v.Catalogname != "" {
		return pgerr.Errorf(pgerr.FeatureNotSupported, "the catalog relation rejot.%s cannot be qualified with a database name", v.Relname).
			At(v.Location).WithHint("Write rejot.%s: the catalog relations are the same from every database.", v.Relname)
	}
	if !catalog.IsRelation(v.Relname) {
		return pgerr.Errorf(pgerr.UndefinedTable, "relation \"rejot.%s\" does not exist", v.Relname).At(v.Location).
			WithHint("The catalog relations are %s.", relationList())
	}
	return nil
}

func relationList() string {
	names := make([]string, len(catalog.Relations))
	for i, r := range catalog.Relations {
		names[i] = "rejot." + r
	}
	return strings.Join(names, ", ")
}
