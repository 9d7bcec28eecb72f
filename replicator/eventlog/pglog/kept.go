package pglog

import (
	"context"
	"encoding/json"

	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// Keep records out-of-line values of source rows, in order; see
// eventlog.Kept. Consecutive records of many rows go in a handful of
// statements: a batch holds one entry per row, and what must stay in order
// (a whole table gone, a row again with the other Missing) ends a batch.
func (t *Tx) Keep(ctx context.Context, system string, kept []eventlog.Kept) error {
	var b keptBatch
	for _, k := range kept {
		if k.Key == nil { // every row of the table
			if err := t.writeKept(ctx, system, &b); err != nil {
				return err
			}
			if _, err := t.tx.Exec(ctx, "DELETE FROM rejot_log.kept WHERE system = $1 AND source = $2", system, k.Table); err != nil {
				return err
			}
			continue
		}
		enc, err := encode(k.Key)
		if err != nil {
			return err
		}
		r, ok := b.row(k.Table, string(enc), k.Missing)
		if !ok {
			if err := t.writeKept(ctx, system, &b); err != nil {
				return err
			}
			r, _ = b.row(k.Table, string(enc), k.Missing)
		}
		r.merge(k)
	}
	return t.writeKept(ctx, system, &b)
}

// keptBatch is what Keep has yet to write: one entry per source row, in
// the order the rows came.
type keptBatch struct {
	order []*keptRow
	byRow map[string]*keptRow // by table and key
}

// keptRow is what a batch records of one source row.
type keptRow struct {
	table   string
	key     string
	vals    map[string]eventlog.Value
	gone    bool // delete what is kept before storing vals
	missing bool
}

// row returns the batch's entry for a source row, made if new; ok is false
// when the row is in the batch with the other Missing: the two are written
// one after the other, so the batch must be written first.
func (b *keptBatch) row(table, key string, missing bool) (r *keptRow, ok bool) {
	id := table + "\x00" + key
	if r = b.byRow[id]; r != nil {
		return r, r.missing == missing
	}
	if b.byRow == nil {
		b.byRow = map[string]*keptRow{}
	}
	r = &keptRow{table: table, key: key, missing: missing}
	b.byRow[id] = r
	b.order = append(b.order, r)
	return r, true
}

// merge adds a record of the row: gone drops what the batch had for it.
func (r *keptRow) merge(k eventlog.Kept) {
	if k.Gone {
		r.gone, r.vals = true, nil
		return
	}
	if r.vals == nil {
		r.vals = map[string]eventlog.Value{}
	}
	for c, v := range k.Values {
		r.vals[c] = v
	}
}

// keptArgs are rows as a statement takes them: source tables, keys and,
// to store, the values as JSON.
type keptArgs struct {
	tables, keys, vals []string
}

// take empties the batch and returns its rows that are gone and, by
// Missing (false, true), the values to keep.
func (b *keptBatch) take() (gone keptArgs, put [2]keptArgs, err error) {
	for _, r := range b.order {
		if r.gone {
			gone.tables, gone.keys = append(gone.tables, r.table), append(gone.keys, r.key)
		}
		if r.vals != nil {
			v, err := json.Marshal(r.vals)
			if err != nil {
				return gone, put, err
			}
			p := &put[0]
			if r.missing {
				p = &put[1]
			}
			p.tables, p.keys, p.vals = append(p.tables, r.table), append(p.keys, r.key), append(p.vals, string(v))
		}
	}
	*b = keptBatch{}
	return gone, put, nil
}

// writeKept writes a batch: what is gone first, then the values to keep,
// newer ones winning, then those kept only where nothing is kept yet.
func (t *Tx) writeKept(ctx context.Context, system string, b *keptBatch) error {
	if len(b.order) == 0 {
		return nil
	}
	gone, put, err := b.take()
	if err != nil {
		return err
	}
	if len(gone.tables) > 0 {
		if _, err := t.tx.Exec(ctx, `DELETE FROM rejot_log.kept k USING unnest($2::text[], $3::jsonb[]) AS u(source, key)
				WHERE k.system = $1 AND k.source = u.source AND k.key = u.key`, system, gone.tables, gone.keys); err != nil {
			return err
		}
	}
	for i, missing := range []bool{false, true} {
		if err := t.putKept(ctx, system, put[i], missing); err != nil {
			return err
		}
	}
	return nil
}

// putKept stores values to keep, merged with what is kept: the new values
// win, or with missing the kept ones.
func (t *Tx) putKept(ctx context.Context, system string, put keptArgs, missing bool) error {
	if len(put.tables) == 0 {
		return nil
	}
	merge := "rejot_log.kept.vals || EXCLUDED.vals" // newer values win
	if missing {
		merge = "EXCLUDED.vals || rejot_log.kept.vals" // kept values win
	}
	_, err := t.tx.Exec(ctx, `INSERT INTO rejot_log.kept (system, source, key, vals)
				SELECT $1, s, k, v FROM unnest($2::text[], $3::jsonb[], $4::jsonb[]) AS u(s, k, v)
				ON CONFLICT (system, source, key) DO UPDATE SET vals = `+merge, system, put.tables, put.keys, put.vals)
	return err
}

// Recall returns the values kept for rows of a source table.
func (t *Tx) Recall(ctx context.Context, system, table string, keys [][]eventlog.Value) (map[string]map[string]eventlog.Value, error) {
	out := map[string]map[string]eventlog.Value{}
	if len(keys) == 0 {
		return out, nil
	}
	enc := make([]string, len(keys))
	for i, k := range keys {
		e, err := encode(k)
		if err != nil {
			return nil, err
		}
		enc[i] = string(e)
	}
	rows, err := t.tx.Query(ctx, `SELECT key::text, vals::text FROM rejot_log.kept
		WHERE system = $1 AND source = $2 AND key = ANY ($3::jsonb[])`, system, table, enc)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var rawKey, rawVals string
		if err := rows.Scan(&rawKey, &rawVals); err != nil {
			return nil, err
		}
		var key []eventlog.Value
		vals := map[string]eventlog.Value{}
		if err := json.Unmarshal([]byte(rawKey), &key); err != nil {
			return nil, err
		}
		if err := json.Unmarshal([]byte(rawVals), &vals); err != nil {
			return nil, err
		}
		out[eventlog.KeyString(key)] = vals
	}
	return out, rows.Err()
}
