package natslog

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// Kept values are a bucket: key <system>.<table>.<row key's hash>, each
// in hex, value the row's key and its kept columns. Unlike the rest of
// an append they are written at once, not at commit: an append that
// fails is tried again from the slot with the same source rows, which
// keeps the same values again.
type keptRow struct {
	Key  []eventlog.Value          `json:"key"`
	Vals map[string]eventlog.Value `json:"vals"`
}

func keptTable(system, table string) string {
	return hex.EncodeToString([]byte(system)) + "." + hex.EncodeToString([]byte(table))
}

func keptKey(system, table string, key []eventlog.Value) string {
	sum := sha256.Sum256([]byte(eventlog.KeyString(key)))
	return keptTable(system, table) + "." + hex.EncodeToString(sum[:20])
}

// Keep records out-of-line values of source rows, in order.
func (t *Tx) Keep(ctx context.Context, system string, kept []eventlog.Kept) error {
	for _, k := range kept {
		if err := t.log.keep(ctx, system, k); err != nil {
			return err
		}
	}
	return nil
}

func (l *Log) keep(ctx context.Context, system string, k eventlog.Kept) error {
	ctx, cancel := request(ctx)
	defer cancel()
	if k.Key == nil { // every row of the table
		return l.purgeKept(ctx, "$KV.REJOT_KEPT."+keptTable(system, k.Table)+".>")
	}
	key := keptKey(system, k.Table, k.Key)
	if k.Gone {
		err := l.kept.Delete(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			err = nil
		}
		if err != nil || len(k.Values) == 0 {
			return err
		}
	}
	row, err := l.keptRow(ctx, key)
	if err != nil {
		return err
	}
	if row == nil {
		row = &keptRow{Key: k.Key, Vals: map[string]eventlog.Value{}}
	}
	for c, v := range k.Values {
		if _, ok := row.Vals[c]; ok && k.Missing {
			continue // a first fill keeps only what nothing newer kept
		}
		row.Vals[c] = v
	}
	b, err := json.Marshal(row)
	if err != nil {
		return err
	}
	_, err = l.kept.Put(ctx, key, b)
	return err
}

func (l *Log) purgeKept(ctx context.Context, subject string) error {
	s, err := l.js.Stream(ctx, "KV_REJOT_KEPT")
	if err != nil {
		return err
	}
	return s.Purge(ctx, jetstream.WithPurgeSubject(subject))
}

func (l *Log) keptRow(ctx context.Context, key string) (*keptRow, error) {
	ctx, cancel := request(ctx)
	defer cancel()
	e, err := l.kept.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var row keptRow
	if err := json.Unmarshal(e.Value(), &row); err != nil {
		return nil, err
	}
	return &row, nil
}

// Recall returns the values kept for rows of a source table.
func (t *Tx) Recall(ctx context.Context, system, table string, keys [][]eventlog.Value) (map[string]map[string]eventlog.Value, error) {
	out := map[string]map[string]eventlog.Value{}
	for _, k := range keys {
		row, err := t.log.keptRow(ctx, keptKey(system, table, k))
		if err != nil {
			return nil, err
		}
		if row != nil {
			out[eventlog.KeyString(row.Key)] = row.Vals
		}
	}
	return out, nil
}
