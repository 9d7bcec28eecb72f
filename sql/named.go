package sql

import (
	"strconv"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"github.com/rejot-dev/rejot/internal/pgerr"
)

// Named parameters.
//
// A mapped subscription's statements name the public columns they use as
// :column (:"Mixed Case" for a name that needs quotes). They are found
// with Postgres's own scanner, so that nothing inside a string constant
// (':x'), a dollar-quoted body ($$ … :x … $$), a comment or a quoted
// identifier counts, and neither does a cast (x::integer, one TYPECAST
// token): a parameter is a ':' token directly followed, without a space,
// by a name, outside square brackets (there, as in a[1:n], ':' is the
// slice's bound; write a[(:n)] for a parameter).

// namedParam is one :name in a statement: bytes [from, to) of its text.
type namedParam struct {
	name     string // as Postgres reads the identifier (folded unless quoted)
	from, to int
}

// namedParams finds the :name parameters of text, in order. $n
// parameters are refused: the statements run with parameters of their
// own.
func namedParams(text string) ([]namedParam, error) {
	scan, err := pg_query.Scan(text)
	if err != nil {
		return nil, pgerr.Errorf(pgerr.SyntaxError, "%s", strings.TrimPrefix(err.Error(), "error: ")).
			WithHint("Write one INSERT, UPDATE, DELETE or MERGE statement, with :column for the public columns.")
	}
	toks := significant(scan.Tokens)
	var out []namedParam
	var open []pg_query.Token // the brackets and parentheses around a token
	for i, t := range toks {
		switch t.Token {
		case pg_query.Token_ASCII_40, pg_query.Token_ASCII_91:
			open = append(open, t.Token)
		case pg_query.Token_ASCII_41, pg_query.Token_ASCII_93:
			if len(open) > 0 {
				open = open[:len(open)-1]
			}
		case pg_query.Token_PARAM:
			return nil, pgerr.Errorf(pgerr.SyntaxError, "a mapped subscription's statement takes no $n parameters: write :column for a public column").At(t.Start)
		case pg_query.Token_ASCII_58:
			if len(open) > 0 && open[len(open)-1] == pg_query.Token_ASCII_91 {
				continue // a slice a[lo:hi]
			}
			if i+1 >= len(toks) || toks[i+1].Start != t.End || !isName(toks[i+1]) {
				return nil, pgerr.Errorf(pgerr.SyntaxError, "a ':' must be followed by the name of a public column, as in :id").At(t.Start)
			}
			n := toks[i+1]
			out = append(out, namedParam{name: identifier(text[n.Start:n.End]), from: int(t.Start), to: int(n.End)})
		}
	}
	return out, nil
}

// isName says whether a token can be a column's name: an identifier or a
// keyword (:name, :type and :key are keywords to the scanner).
func isName(t *pg_query.ScanToken) bool {
	return t.Token == pg_query.Token_IDENT || t.KeywordKind != pg_query.KeywordKind_NO_KEYWORD
}

// identifier is the name an identifier token stands for: a quoted one
// without its quotes (a doubled quote is one), any other folded to lower
// case as Postgres folds it (ASCII letters only).
func identifier(tok string) string {
	if len(tok) >= 2 && tok[0] == '"' && tok[len(tok)-1] == '"' {
		return strings.ReplaceAll(tok[1:len(tok)-1], `""`, `"`)
	}
	var b strings.Builder
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		b.WriteByte(c)
	}
	return b.String()
}

// positional replaces each parameter of text with $k (k numbering the
// distinct names in the order first seen) and what cast(name) gives
// after it (e.g. "::integer"), in parentheses; it returns the new text,
// the names in $k order and the splices made, by which a position in
// the new text maps back.
func positional(text string, params []namedParam, cast func(name string) string) (string, []string, []splice) {
	var b strings.Builder
	var names []string
	index := map[string]int{}
	var splices []splice
	at := 0
	for _, p := range params {
		k, ok := index[p.name]
		if !ok {
			names = append(names, p.name)
			k = len(names)
			index[p.name] = k
		}
		b.WriteString(text[at:p.from])
		sp := splice{from: p.from, to: p.to, newFrom: b.Len()}
		b.WriteString("($" + strconv.Itoa(k) + cast(p.name) + ")")
		sp.newTo = b.Len()
		splices = append(splices, sp)
		at = p.to
	}
	b.WriteString(text[at:])
	return b.String(), names, splices
}

// originOf maps a byte offset of a text rewritten by positional back to
// the text as written: inside a splice, to its start.
func originOf(splices []splice, off int) int {
	q := relationQuery{splices: splices}
	return q.origin(off)
}
