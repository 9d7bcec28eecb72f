package capture

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// Unchanged out-of-line values.
//
// An update that does not change a value stored out of line (TOAST) leaves
// it out of the WAL ('u' in pgoutput) unless the table has REPLICA
// IDENTITY FULL. Re-reading the row would give its value now, not as of
// that transaction, so the log keeps the last value the capture saw of
// every such column a projection reads (eventlog.Tx.Keep), in the same
// transaction as the changes: what it recalls for a transaction is exactly
// the value the row had just before it.

// rowKey reads a row's replica identity from a tuple.
func rowKey(rel *relation, tuple []eventlog.Value) []eventlog.Value {
	var key []eventlog.Value
	for i, k := range rel.key {
		if k && i < len(tuple) {
			key = append(key, tuple[i])
		}
	}
	return key
}

// keptValues are the kept columns of a tuple.
func keptValues(rel *relation, tuple []eventlog.Value) map[string]eventlog.Value {
	vals := map[string]eventlog.Value{}
	for i, k := range rel.kept {
		if k && i < len(tuple) {
			vals[rel.cols[i].Name] = tuple[i]
		}
	}
	return vals
}

// fillUnchanged supplies, in commit order, the values the WAL left out of
// the transactions' updates, and records in tx what the log keeps from
// them. A value neither kept nor in an old tuple is read from the table (a
// row captured before its values were kept): right once the log catches
// up, logged as a warning.
func (s *session) fillUnchanged(ctx context.Context, tx eventlog.Tx, txns []*transaction) error {
	recalled, err := s.recall(ctx, tx, txns)
	if err != nil {
		return err
	}
	// What this batch has seen, per table and row, overrides the log:
	// nil for a row that is gone.
	type seen struct {
		rows      map[string]map[string]eventlog.Value
		truncated bool
	}
	batch := map[uint32]*seen{}
	var kept []eventlog.Kept
	for _, txn := range txns {
		for i := range txn.events {
			e := &txn.events[i]
			r := s.rels[e.rel]
			if r == nil || !anyTrue(r.kept) {
				continue
			}
			b := batch[e.rel]
			if b == nil {
				b = &seen{rows: map[string]map[string]eventlog.Value{}}
				batch[e.rel] = b
			}
			switch e.op {
			case 'T':
				b.rows, b.truncated = map[string]map[string]eventlog.Value{}, true
				kept = append(kept, eventlog.Kept{Table: r.name(), Gone: true})
			case 'D':
				key := rowKey(r, e.old)
				b.rows[eventlog.KeyString(key)] = nil
				kept = append(kept, eventlog.Kept{Table: r.name(), Key: key, Gone: true})
			case 'I', 'U':
				if e.op == 'U' && leftOut(r, e) {
					k := eventlog.KeyString(before(r, e))
					vals, ok := b.rows[k]
					if !ok && !b.truncated {
						vals = recalled[e.rel][k]
					}
					if err := s.supply(ctx, r, e, vals); err != nil {
						return err
					}
				}
				toasty := mayBeToasted(e)
				if !toasty && e.old == nil {
					// All inline (the common case): nothing to keep, and
					// no later update in this batch can leave a value of
					// this row out before a large write keeps it.
					continue
				}
				key := rowKey(r, e.new)
				if e.op == 'U' && e.old != nil {
					if old := rowKey(r, e.old); !sameValues(old, key) {
						b.rows[eventlog.KeyString(old)] = nil
						kept = append(kept, eventlog.Kept{Table: r.name(), Key: old, Gone: true})
					}
				}
				if toasty {
					vals := keptValues(r, e.new)
					b.rows[eventlog.KeyString(key)] = vals
					kept = append(kept, eventlog.Kept{Table: r.name(), Key: key, Values: vals})
				}
			}
		}
	}
	return tx.Keep(ctx, s.p.System, kept)
}

// recall reads from the log the values kept for the rows the
// transactions update with a value left out, per table and row key.
func (s *session) recall(ctx context.Context, tx eventlog.Tx, txns []*transaction) (map[uint32]map[string]map[string]eventlog.Value, error) {
	want := map[uint32][][]eventlog.Value{}
	for _, txn := range txns {
		for i := range txn.events {
			e := &txn.events[i]
			r := s.rels[e.rel]
			if r == nil || e.op != 'U' || !leftOut(r, e) {
				continue
			}
			want[e.rel] = append(want[e.rel], before(r, e))
		}
	}
	recalled := map[uint32]map[string]map[string]eventlog.Value{}
	for id, keys := range want {
		got, err := tx.Recall(ctx, s.p.System, s.rels[id].name(), keys)
		if err != nil {
			return nil, fmt.Errorf("cannot recall kept values: %w", err)
		}
		recalled[id] = got
	}
	return recalled, nil
}

// toastFloor is a row size under which Postgres stores every value inline:
// TOAST moves values out of line only from rows of about 2 kB
// (TOAST_TUPLE_THRESHOLD), with some room for headers and for values
// whose stored form is larger than their text.
const toastFloor = 1800

// mayBeToasted says whether a row, as an insert or update carries it,
// could have values stored out of line — and so could later leave them
// out of an update. Rows that cannot (most rows of most tables) need
// nothing kept: a value that becomes out of line later arrives whole in
// the update that moves it, which keeps it then.
func mayBeToasted(e *event) bool {
	size := 16 * len(e.new)
	for i, v := range e.new {
		if i < len(e.toasted) && e.toasted[i] {
			return true
		}
		if v != nil {
			size += len(*v)
		}
	}
	return size >= toastFloor
}

// leftOut says whether an update left out a kept value.
func leftOut(r *relation, e *event) bool {
	for i, t := range e.toasted {
		if t && i < len(r.kept) && r.kept[i] {
			return true
		}
	}
	return false
}

// before is the replica identity the row had before an update.
func before(r *relation, e *event) []eventlog.Value {
	if e.old != nil {
		return rowKey(r, e.old)
	}
	return rowKey(r, e.new)
}

// supply fills an update's left-out kept values: from what is kept, else
// from the old tuple (REPLICA IDENTITY FULL), else from the table.
func (s *session) supply(ctx context.Context, r *relation, e *event, vals map[string]eventlog.Value) error {
	for i, t := range e.toasted {
		if !t || !r.kept[i] {
			continue
		}
		name := r.cols[i].Name
		if v, ok := vals[name]; ok {
			e.new[i] = v
			continue
		}
		if e.old != nil && i < len(e.old) && e.old[i] != nil {
			e.new[i] = e.old[i]
			continue
		}
		v, err := readColumn(ctx, s.conn, r, before(r, e), name)
		if err != nil {
			return err
		}
		s.p.Logger.Warn().Str("system", s.p.System).Str("table", r.name()).Str("column", name).
			Msg("an unchanged out-of-line value was not kept; read the row's current value instead")
		e.new[i] = v
	}
	return nil
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
			conds = append(conds, fmt.Sprintf("%s = $%d", asText(c.Name, builtinType(c.Type)), len(args)))
		}
	}
	builtin := true
	for _, c := range rel.cols {
		if c.Name == col {
			builtin = builtinType(c.Type)
		}
	}
	query := fmt.Sprintf("SELECT %s FROM %s WHERE %s", asText(col, builtin),
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
