package sql

import (
	"fmt"
	"regexp"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"
	pg_query "github.com/pganalyze/pg_query_go/v6"
	"github.com/rejot-dev/rejot/catalog"
	"github.com/rejot-dev/rejot/internal/pgerr"
)

// relationQuery is a statement over the catalog relations rewritten to
// read their rows from parameters: each rejot.<rel> became
//
//	(SELECT * FROM pg_catalog.jsonb_to_recordset($k::pg_catalog.jsonb) AS r(<column> <type>, ...)) AS <rel>
//
// so that it runs in the caller's own session, as the caller, on the rows
// the sidecar read from the catalog. The rewrite is textual, so that an
// error's position can be mapped back to the text the caller wrote.
type relationQuery struct {
	text    string   // the rewritten statement
	rels    []string // parameter $(first+i) carries the rows of rels[i]
	first   int
	splices []splice // in order
}

// splice is one place where the rewritten text differs: bytes [from, to)
// of the statement became [newFrom, newTo) of the rewritten text.
type splice struct {
	from, to, newFrom, newTo int
	text                     string
}

// columnsOf returns a catalog relation's columns.
type columnsOf func(rel string) ([]catalog.RelationColumn, error)

// builtinType is what a column's type may look like in the text built:
// format_type's spelling of a built-in type, nothing that could end a
// literal, an identifier or a comment.
var builtinType = regexp.MustCompile(`^[a-z][a-z0-9_ ]*(\([0-9, ]+\))?[a-z ]*(\[\])*$`)

// rewriteRelations rewrites statement text, which classifyRelations
// accepted. nParams is the number of parameters the caller declared: the
// rows' parameters come after those and after every $n the text uses.
func rewriteRelations(text string, nParams int, columns columnsOf) (*relationQuery, error) {
	tree, err := pg_query.Parse(text)
	if err != nil || len(tree.Stmts) != 1 {
		return nil, ErrNotParsed
	}
	refs := findRelationRefs(tree.Stmts[0].Stmt)
	scan, err := pg_query.Scan(text)
	if err != nil {
		return nil, ErrNotParsed
	}
	toks := significant(scan.Tokens)
	q := &relationQuery{first: max(nParams, refs.maxParam) + 1}
	for _, v := range refs.from {
		k, err := q.param(v.Relname)
		if err != nil {
			return nil, err
		}
		cols, err := columns(v.Relname)
		if err != nil {
			return nil, err
		}
		sp, err := relationSplice(text, toks, v, k, cols)
		if err != nil {
			return nil, err
		}
		q.splices = append(q.splices, sp)
	}
	for _, c := range refs.columns {
		sp, err := schemaSplice(toks, c)
		if err != nil {
			return nil, err
		}
		q.splices = append(q.splices, sp)
	}
	return q, q.apply(text)
}

// param is the number of the parameter carrying rel's rows.
func (q *relationQuery) param(rel string) (int, error) {
	for i, r := range q.rels {
		if r == rel {
			return q.first + i, nil
		}
	}
	if !catalog.IsRelation(rel) {
		return 0, pgerr.Errorf(pgerr.UndefinedTable, "relation \"rejot.%s\" does not exist", rel)
	}
	q.rels = append(q.rels, rel)
	return q.first + len(q.rels) - 1, nil
}

// apply builds the rewritten text from the splices.
func (q *relationQuery) apply(text string) error {
	sort.Slice(q.splices, func(i, j int) bool { return q.splices[i].from < q.splices[j].from })
	var b strings.Builder
	at := 0
	for i := range q.splices {
		sp := &q.splices[i]
		if sp.from < at {
			return pgerr.Errorf(pgerr.FeatureNotSupported, "cannot read the catalog relations in this query").At(int32(sp.from)).
				WithHint("Name each catalog relation once per FROM item, as rejot.<relation>.")
		}
		b.WriteString(text[at:sp.from])
		sp.newFrom = b.Len()
		b.WriteString(sp.text)
		sp.newTo = b.Len()
		at = sp.to
	}
	b.WriteString(text[at:])
	q.text = b.String()
	return nil
}

// origin maps a byte offset in the rewritten text to one in the statement:
// an offset inside a splice maps to the splice's start.
func (q *relationQuery) origin(off int) int {
	shift := 0
	for _, sp := range q.splices {
		if off < sp.newFrom {
			break
		}
		if off < sp.newTo {
			return sp.from
		}
		shift = sp.to - sp.newTo
	}
	return off + shift
}

// significant drops the comments: they may sit between the tokens of a name.
func significant(toks []*pg_query.ScanToken) []*pg_query.ScanToken {
	out := toks[:0:0]
	for _, t := range toks {
		if t.Token != pg_query.Token_SQL_COMMENT && t.Token != pg_query.Token_C_COMMENT {
			out = append(out, t)
		}
	}
	return out
}

// nameAt finds the tokens `rejot` `.` `<rel>` starting at byte offset loc.
func nameAt(toks []*pg_query.ScanToken, loc int32) (int, error) {
	i := sort.Search(len(toks), func(i int) bool { return toks[i].Start >= loc })
	if i+2 >= len(toks) || toks[i].Start != loc || toks[i+1].Token != pg_query.Token_ASCII_46 {
		return 0, pgerr.Errorf(pgerr.FeatureNotSupported, "cannot read the catalog relations in this query").At(loc).
			WithHint("Write each catalog relation as rejot.<relation>.")
	}
	return i, nil
}

// relationSplice replaces the FROM item rejot.<rel> — with ONLY before it
// or * after it, and TABLE rejot.<rel> as a whole — by the subquery over
// parameter k.
func relationSplice(text string, toks []*pg_query.ScanToken, v *pg_query.RangeVar, k int, cols []catalog.RelationColumn) (splice, error) {
	i, err := nameAt(toks, v.Location)
	if err != nil {
		return splice{}, err
	}
	first, last := i, i+2
	switch {
	case first > 0 && toks[first-1].Token == pg_query.Token_ONLY:
		first--
	case first > 1 && toks[first-1].Token == pg_query.Token_ASCII_40 && toks[first-2].Token == pg_query.Token_ONLY &&
		last+1 < len(toks) && toks[last+1].Token == pg_query.Token_ASCII_41:
		first, last = first-2, last+1
	case last+1 < len(toks) && toks[last+1].Token == pg_query.Token_ASCII_42:
		last++
	}
	prefix := ""
	if first > 0 && toks[first-1].Token == pg_query.Token_TABLE {
		first--
		prefix = "SELECT * FROM "
	}
	defs, err := columnDefs(cols)
	if err != nil {
		return splice{}, err
	}
	repl := fmt.Sprintf("%s(SELECT * FROM pg_catalog.jsonb_to_recordset($%d::pg_catalog.jsonb) AS r(%s))", prefix, k, defs)
	if v.Alias == nil {
		repl += " AS " + pgx.Identifier{v.Relname}.Sanitize() + " "
	}
	return splice{from: int(toks[first].Start), to: int(toks[last].End), text: repl}, nil
}

// schemaSplice drops rejot. from rejot.<rel>.<column>: the FROM item is
// named <rel> (its own alias when it has none).
func schemaSplice(toks []*pg_query.ScanToken, c *pg_query.ColumnRef) (splice, error) {
	i, err := nameAt(toks, c.Location)
	if err != nil {
		return splice{}, err
	}
	return splice{from: int(toks[i].Start), to: int(toks[i+2].Start)}, nil
}

func columnDefs(cols []catalog.RelationColumn) (string, error) {
	defs := make([]string, len(cols))
	for i, c := range cols {
		if !builtinType.MatchString(c.Type) {
			return "", fmt.Errorf("the catalog relation's column %s has an unexpected type %q", c.Name, c.Type)
		}
		defs[i] = pgx.Identifier{c.Name}.Sanitize() + " " + c.Type
	}
	return strings.Join(defs, ", "), nil
}
