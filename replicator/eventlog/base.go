package eventlog

import (
	"errors"
	"strconv"
	"strings"
)

// Base states of join versions.
//
// A version whose query joins tables (docs/join-projections.md) is kept
// exact as of each source transaction without re-reading the owner's
// tables: the log keeps, hidden from subscribers, the columns the version
// reads of every row of every table it reads (its base state), and the
// capture recomputes from them, in the append of each source transaction,
// the public rows whose join keys the transaction touched. Tables are
// named by their index in the version's query (0 is the root); a row by
// the KeyString of its primary key.

// ErrNoBaseStates: the engine keeps no base states, so it cannot carry
// join versions (the capture fails such a version alone, with this as its
// problem). Both engines keep base states; an engine that does not
// would return it from every base state method.
var ErrNoBaseStates = errors.New("join projections need the Postgres event log: this system's event log keeps no base states (see docs/scale.md)")

// BaseRow is one row of a join version's base state.
type BaseRow struct {
	Table int    // the table's index in the version's query
	Key   string // KeyString of the row's primary key, as the WAL gives it
	// Row is the columns the version reads of the row, in the version's
	// order for that table; nil: the row is gone.
	Row []Value
	// Refs are the rows of the tables joined to this one that this row
	// meets: by the joined table's index, the KeyString of the values of
	// this row's join columns (absent when one of them is NULL: it meets
	// nothing).
	Refs map[int]string
}

// ParseKeyString decodes what KeyString encoded.
func ParseKeyString(s string) ([]Value, error) {
	var out []Value
	for len(s) > 0 {
		if strings.HasPrefix(s, "n;") {
			out, s = append(out, nil), s[2:]
			continue
		}
		colon := strings.IndexByte(s, ':')
		if colon < 0 {
			return nil, errors.New("malformed key")
		}
		n, err := strconv.Atoi(s[:colon])
		if err != nil || n < 0 || colon+1+n >= len(s) {
			return nil, errors.New("malformed key")
		}
		v := s[colon+1 : colon+1+n]
		if s[colon+1+n] != ';' {
			return nil, errors.New("malformed key")
		}
		out, s = append(out, &v), s[colon+2+n:]
	}
	return out, nil
}
