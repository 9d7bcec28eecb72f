package pglog

import (
	"context"
	"encoding/json"

	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// Keep records out-of-line values of source rows, in order; see
// eventlog.Kept.
func (t *Tx) Keep(ctx context.Context, system string, kept []eventlog.Kept) error {
	type pending struct {
		table   string
		key     string
		vals    map[string]eventlog.Value
		gone    bool // delete what is kept before storing vals
		missing bool
	}
	var order []*pending
	byKey := map[string]*pending{}
	flush := func() error {
		if len(order) == 0 {
			return nil
		}
		var goneT, goneK, putT, putK, putV []string
		var putMissing []bool
		for _, p := range order {
			if p.gone {
				goneT, goneK = append(goneT, p.table), append(goneK, p.key)
			}
			if p.vals != nil {
				v, err := json.Marshal(p.vals)
				if err != nil {
					return err
				}
				putT, putK, putV = append(putT, p.table), append(putK, p.key), append(putV, string(v))
				putMissing = append(putMissing, p.missing)
			}
		}
		order, byKey = nil, map[string]*pending{}
		if len(goneT) > 0 {
			if _, err := t.tx.Exec(ctx, `DELETE FROM rejot_log.kept k USING unnest($2::text[], $3::jsonb[]) AS u(source, key)
				WHERE k.system = $1 AND k.source = u.source AND k.key = u.key`, system, goneT, goneK); err != nil {
				return err
			}
		}
		for _, missing := range []bool{false, true} {
			var tables, keys, vals []string
			for i := range putT {
				if putMissing[i] == missing {
					tables, keys, vals = append(tables, putT[i]), append(keys, putK[i]), append(vals, putV[i])
				}
			}
			if len(tables) == 0 {
				continue
			}
			merge := "rejot_log.kept.vals || EXCLUDED.vals" // newer values win
			if missing {
				merge = "EXCLUDED.vals || rejot_log.kept.vals" // kept values win
			}
			_, err := t.tx.Exec(ctx, `INSERT INTO rejot_log.kept (system, source, key, vals)
				SELECT $1, s, k, v FROM unnest($2::text[], $3::jsonb[], $4::jsonb[]) AS u(s, k, v)
				ON CONFLICT (system, source, key) DO UPDATE SET vals = `+merge, system, tables, keys, vals)
			if err != nil {
				return err
			}
		}
		return nil
	}
	for _, k := range kept {
		if k.Key == nil { // every row of the table
			if err := flush(); err != nil {
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
		id := k.Table + "\x00" + string(enc)
		p := byKey[id]
		if p == nil || p.missing != k.Missing {
			if p != nil {
				if err := flush(); err != nil {
					return err
				}
			}
			p = &pending{table: k.Table, key: string(enc), missing: k.Missing}
			byKey[id] = p
			order = append(order, p)
		}
		if k.Gone {
			p.gone, p.vals = true, nil
			continue
		}
		if p.vals == nil {
			p.vals = map[string]eventlog.Value{}
		}
		for c, v := range k.Values {
			p.vals[c] = v
		}
	}
	return flush()
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
