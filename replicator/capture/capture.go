package capture

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// Source is a publication version and the table its rows come from.
type Source struct {
	Projection
	Schema, Table string
	// KeySources are the source columns of the public key, in key order:
	// a deleted row's public key is read from its old key tuple.
	KeySources []string
	// References are the source columns the projection reads.
	References []string
}

// relation is a table as the WAL describes it.
type relation struct {
	schema, table string
	cols          []SourceColumn
	key           []bool // in the replica identity
	varlena       []bool // variable length: may be stored out of line
	// kept marks the columns whose out-of-line values the log keeps:
	// variable-length, outside the replica identity, read by a projection.
	kept []bool
}

// name is how the log's kept values name the table.
func (r *relation) name() string { return r.schema + "." + r.table }

// keepColumns works out which columns of a table the log keeps values of
// for the sources (see Kept).
func keepColumns(sources []Source, schema, table string, names []string, key, varlena []bool) []bool {
	read := map[string]bool{}
	for _, s := range sources {
		if s.Schema == schema && s.Table == table {
			for _, c := range s.References {
				read[c] = true
			}
		}
	}
	kept := make([]bool, len(names))
	for i, n := range names {
		kept[i] = varlena[i] && !key[i] && read[n]
	}
	return kept
}

func anyTrue(b []bool) bool {
	for _, x := range b {
		if x {
			return true
		}
	}
	return false
}

// event is one row change of a source transaction, values in text form.
type event struct {
	op       byte // 'I', 'U', 'D' or 'T'
	rel      uint32
	old, new []eventlog.Value
	// toasted marks new values the WAL left out (unchanged TOAST).
	toasted []bool
}

// transaction is a decoded source transaction.
type transaction struct {
	commitLSN  uint64
	endLSN     uint64
	commitTime time.Time
	events     []event
	parts      int // parts already appended (a large transaction)
}

// tupleValues turns a WAL tuple into text values; unchanged TOAST values
// are reported, for the caller to fill.
func tupleValues(t *pglogrepl.TupleData) ([]eventlog.Value, []bool) {
	if t == nil {
		return nil, nil
	}
	// One allocation for the values' bytes and one for their headers,
	// rather than two per value: a busy capture decodes millions.
	size := 0
	for _, c := range t.Columns {
		size += len(c.Data)
	}
	var b strings.Builder
	b.Grow(size)
	for _, c := range t.Columns {
		b.Write(c.Data)
	}
	all := b.String()
	vals, strs := make([]eventlog.Value, len(t.Columns)), make([]string, len(t.Columns))
	var toasted []bool
	at := 0
	for i, c := range t.Columns {
		switch c.DataType {
		case 't', 'b':
			strs[i] = all[at : at+len(c.Data)]
			vals[i] = &strs[i]
		case 'u':
			if toasted == nil {
				toasted = make([]bool, len(t.Columns))
			}
			toasted[i] = true
		}
		at += len(c.Data)
	}
	return vals, toasted
}

// changesFor computes what each of several source transactions did to one
// publication version, in commit order, with one projection query for all
// of them. Transactions for which skip is true get no changes.
func changesFor(ctx context.Context, q Querier, src *Source, rels map[uint32]*relation, txns []*transaction, skip func(*transaction) bool) ([][]eventlog.Change, error) {
	type ref struct {
		txn, event int
		rel        *relation
	}
	var mine []ref // the source's events, in order
	var tuples [][]eventlog.Value
	var at []int // index in mine of each tuple
	for ti, txn := range txns {
		if skip(txn) {
			continue
		}
		for ei := range txn.events {
			e := &txn.events[ei]
			r := rels[e.rel]
			if r == nil || r.schema != src.Schema || r.table != src.Table {
				continue
			}
			if e.op == 'I' || e.op == 'U' {
				tuples, at = append(tuples, e.new), append(at, len(mine))
			}
			mine = append(mine, ref{ti, ei, r})
		}
	}
	out := make([][]eventlog.Change, len(txns))
	if len(mine) == 0 {
		return out, nil
	}
	projected, err := Project(ctx, q, &src.Projection, mine[0].rel.cols, tuples)
	if err != nil {
		return nil, err
	}
	byEvent := make([]Projected, len(mine))
	for j, i := range at {
		byEvent[i] = projected[j]
	}
	for i, m := range mine {
		e := txns[m.txn].events[m.event]
		out[m.txn] = append(out[m.txn], eventChanges(src, m.rel, e, byEvent[i])...)
	}
	return out, nil
}

func eventChanges(src *Source, rel *relation, e event, p Projected) []eventlog.Change {
	switch e.op {
	case 'T':
		return []eventlog.Change{{Op: eventlog.OpTruncate}}
	case 'D':
		return []eventlog.Change{{Op: eventlog.OpDelete, Key: oldKey(src, rel, e.old)}}
	}
	key := make([]eventlog.Value, len(src.KeyCols))
	for i, c := range src.KeyCols {
		key[i] = p.Row[c]
	}
	var out []eventlog.Change
	if e.op == 'U' && e.old != nil {
		if old := oldKey(src, rel, e.old); !sameValues(old, key) {
			out = append(out, eventlog.Change{Op: eventlog.OpDelete, Key: old}) // the key changed
		}
	}
	if p.Keep {
		return append(out, eventlog.Change{Op: eventlog.OpUpsert, Key: key, Row: p.Row})
	}
	if e.op == 'U' {
		out = append(out, eventlog.Change{Op: eventlog.OpDelete, Key: key}) // the row left the filter
	}
	return out
}

// oldKey reads the public key from an old (key or full) tuple.
func oldKey(src *Source, rel *relation, old []eventlog.Value) []eventlog.Value {
	key := make([]eventlog.Value, len(src.KeySources))
	for i, name := range src.KeySources {
		for j, c := range rel.cols {
			if c.Name == name && j < len(old) {
				key[i] = TextForm(c.Type, old[j]) // as the projection gives keys
			}
		}
	}
	return key
}

func sameValues(a, b []eventlog.Value) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if (a[i] == nil) != (b[i] == nil) || (a[i] != nil && *a[i] != *b[i]) {
			return false
		}
	}
	return true
}

// readColumn reads a column of a row by its replica identity from the
// table as it is now: the last resort for an unchanged out-of-line value
// the log does not keep (a row captured before values were kept).
func readColumn(ctx context.Context, q Querier, rel *relation, key []eventlog.Value, col string) (eventlog.Value, error) {
	var conds []string
	var args []any
	k := 0
	for j, c := range rel.cols {
		if rel.key[j] {
			args = append(args, key[k])
			k++
			conds = append(conds, fmt.Sprintf("%s::text = $%d", pgx.Identifier{c.Name}.Sanitize(), len(args)))
		}
	}
	query := fmt.Sprintf("SELECT %s::text FROM %s WHERE %s", pgx.Identifier{col}.Sanitize(),
		pgx.Identifier{rel.schema, rel.table}.Sanitize(), strings.Join(conds, " AND "))
	rows, err := q.Query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var v eventlog.Value
	if rows.Next() {
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
	}
	return v, rows.Err()
}
