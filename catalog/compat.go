package catalog

import (
	"fmt"
	"strings"

	"github.com/rejot-dev/rejot/managed"
)

// Column is a column of a publication version. It is the column the owner
// records and sends in its publish command, so the payload's type is the
// catalog's: the rules below judge exactly what was recorded.
type Column = managed.Column

// Change is how a new definition of a publication version relates to the
// one published before.
type Change int

const (
	Unchanged  Change = iota // the same columns: a no-op, or a new query with the same columns
	Compatible               // columns added: the minor version goes up
	Breaking                 // a column removed, renamed, retyped, made nullable, or the key changed
)

// Compare applies the compatibility rules of a publication version: what
// subscribers of the old definition rely on must still hold. It returns the
// merged columns (old ones first, keeping their since_minor; added ones
// marked with nextMinor) and, for a breaking change, the reason.
func Compare(old, new []Column, nextMinor int) ([]Column, Change, string) {
	byName := map[string]Column{}
	for _, c := range new {
		byName[c.Name] = c
	}
	var reasons []string
	merged := make([]Column, 0, len(new))
	for _, o := range old {
		n, ok := byName[o.Name]
		switch {
		case !ok:
			reasons = append(reasons, fmt.Sprintf("column %s is removed (or renamed)", o.Name))
			continue
		case n.Type != o.Type:
			reasons = append(reasons, fmt.Sprintf("column %s changes type from %s to %s", o.Name, o.Type, n.Type))
		case n.IsKey != o.IsKey:
			reasons = append(reasons, fmt.Sprintf("the key changes (column %s)", o.Name))
		case n.Nullable && !o.Nullable:
			reasons = append(reasons, fmt.Sprintf("column %s becomes nullable", o.Name))
		}
		n.SinceMinor = o.SinceMinor
		merged = append(merged, n)
		delete(byName, o.Name)
	}
	if len(reasons) > 0 {
		return nil, Breaking, strings.Join(reasons, "; ")
	}
	added := false
	for _, c := range new {
		if _, isNew := byName[c.Name]; isNew {
			if c.IsKey && len(old) > 0 {
				return nil, Breaking, fmt.Sprintf("the key changes (column %s joins it)", c.Name)
			}
			c.SinceMinor = nextMinor
			merged = append(merged, c)
			added = true
		}
	}
	if added {
		return merged, Compatible, ""
	}
	return merged, Unchanged, ""
}
