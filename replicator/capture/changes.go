package capture

import (
	"context"

	"github.com/rejot-dev/rejot/replicator/eventlog"
)

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
	// A relation message drains what came before: every event here has
	// the same columns. A version that records what it reads is matched
	// to them by identity (columnsFor); an older one by name (fits).
	cols, err := mine[0].rel.columnsFor(src)
	if err != nil {
		return nil, src.cannot(err, true)
	}
	if len(src.Reads) == 0 {
		if err := src.fits(mine[0].rel); err != nil {
			return nil, err
		}
	}
	projected, err := Project(ctx, q, &src.Projection, cols, tuples)
	if err != nil {
		return nil, src.fault(err, false)
	}
	byEvent := make([]Projected, len(mine))
	for j, i := range at {
		byEvent[i] = projected[j]
	}
	for i, m := range mine {
		e := txns[m.txn].events[m.event]
		out[m.txn] = append(out[m.txn], eventChanges(src, cols, e, byEvent[i])...)
	}
	return out, nil
}

// eventChanges are what one event did to a version, its table's columns
// named as the version's query names them (relation.columnsFor).
func eventChanges(src *Source, cols []SourceColumn, e event, p Projected) []eventlog.Change {
	switch e.op {
	case 'T':
		return []eventlog.Change{{Op: eventlog.OpTruncate}}
	case 'D':
		return []eventlog.Change{{Op: eventlog.OpDelete, Key: oldKey(src, cols, e.old)}}
	}
	key := make([]eventlog.Value, len(src.KeyCols))
	for i, c := range src.KeyCols {
		key[i] = p.Row[c]
	}
	var out []eventlog.Change
	if e.op == 'U' && e.old != nil {
		if old := oldKey(src, cols, e.old); !sameValues(old, key) {
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
func oldKey(src *Source, cols []SourceColumn, old []eventlog.Value) []eventlog.Value {
	key := make([]eventlog.Value, len(src.KeySources))
	for i, name := range src.KeySources {
		for j, c := range cols {
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
