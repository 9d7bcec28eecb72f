package apply

import "github.com/rejot-dev/rejot/replicator/eventlog"

// statement is SQL with its arguments.
type statement struct {
	sql  string
	args []any
}

// changeStatements are the statements that apply changes in order,
// collapsed per key: the last change per key wins (a bulk delete of the
// keys last deleted, then a bulk upsert of the rows last written, in the
// order the keys were first seen); a truncate clears the table, and what
// came before it. Applying exactly once rests on it.
func changeStatements(t *target, recs []eventlog.Entry) []statement {
	var out []statement
	c := newCollapse(len(recs))
	for _, r := range recs {
		switch r.Op {
		case eventlog.OpTruncate:
			c = newCollapse(0)
			out = append(out, statement{sql: t.clear})
		case eventlog.OpUpsert:
			c.set(t.rowKey(r.Row), r.Row)
		case eventlog.OpDelete:
			c.set(r.Key, nil)
		}
	}
	return c.statements(t, out)
}

// spanStatements are the statements that apply changes to t: collapsed
// for a mirror, one call per change for a mapped subscription (which
// refuses a truncate it has no statement for).
func spanStatements(t *target, recs []eventlog.Entry) ([]statement, error) {
	if t.mapped != nil {
		return t.mapped.statements(t, recs)
	}
	return changeStatements(t, recs), nil
}

// collapse is the last change per key of a run of changes, in the order
// the keys were first seen.
type collapse struct {
	at   map[string]int     // a key's place in keys and rows
	keys [][]eventlog.Value // the keys, in the order first seen
	rows [][]eventlog.Value // the row last written with each; nil: deleted
}

// newCollapse makes a collapse with room for n keys.
func newCollapse(n int) *collapse {
	return &collapse{at: make(map[string]int, n), keys: make([][]eventlog.Value, 0, n), rows: make([][]eventlog.Value, 0, n)}
}

// set records that the row with key is now row (nil: deleted).
func (c *collapse) set(key, row []eventlog.Value) {
	ks := eventlog.KeyString(key)
	if i, ok := c.at[ks]; ok {
		c.keys[i], c.rows[i] = key, row
		return
	}
	c.at[ks] = len(c.keys)
	c.keys, c.rows = append(c.keys, key), append(c.rows, row)
}

// statements appends to out the delete, then the upsert, that leave t as
// the collapsed changes say.
func (c *collapse) statements(t *target, out []statement) []statement {
	var upserts, deletes [][]eventlog.Value
	for i, row := range c.rows {
		if row != nil {
			upserts = append(upserts, row)
		} else {
			deletes = append(deletes, c.keys[i])
		}
	}
	if len(deletes) > 0 {
		out = append(out, t.deleteStatement(deletes))
	}
	if len(upserts) > 0 {
		out = append(out, t.upsertStatement(upserts))
	}
	return out
}

// rowKey is the key of a row of the version: its key columns' values (NULL
// where the row is too short to have them).
func (t *target) rowKey(row []eventlog.Value) []eventlog.Value {
	key := make([]eventlog.Value, len(t.keys))
	for i, k := range t.keys {
		if idx := t.cols[k].Index; idx < len(row) {
			key[i] = row[idx]
		}
	}
	return key
}

// deleteStatement deletes the rows with keys: one array per key column.
func (t *target) deleteStatement(keys [][]eventlog.Value) statement {
	args := make([]any, len(t.keys))
	for i := range t.keys {
		col := make(textArray, len(keys))
		for j, k := range keys {
			col[j] = k[i]
		}
		args[i] = col
	}
	return statement{t.delete, args}
}

// upsertStatement writes rows of the version: one array per target
// column. A row appended before a minor added columns is shorter: the
// values it does not have are NULL.
func (t *target) upsertStatement(rows [][]eventlog.Value) statement {
	args := make([]any, len(t.cols))
	for i, c := range t.cols {
		col := make(textArray, len(rows))
		for j, row := range rows {
			if c.Index < len(row) {
				col[j] = row[c.Index]
			}
		}
		args[i] = col
	}
	return statement{t.upsert, args}
}
