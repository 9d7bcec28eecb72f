package pglog

import (
	"context"
	"errors"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// Base states of join versions (see eventlog/base.go): rejot_log.base and
// base_refs (migration 011), written in the append's transaction.

// baseID is the stream id of a version, looked up once per append.
func (t *Tx) baseID(ctx context.Context, v eventlog.Version) (int, error) {
	if id, ok := t.baseIDs[v]; ok {
		return id, nil
	}
	id, err := versionID(ctx, t.tx, v)
	if err != nil {
		return 0, err
	}
	if t.baseIDs == nil {
		t.baseIDs = map[eventlog.Version]int{}
	}
	t.baseIDs[v] = id
	return id, nil
}

// PutBase writes base rows and the base position; see eventlog.Tx.
func (t *Tx) PutBase(ctx context.Context, v eventlog.Version, system string, lsn uint64, rows []eventlog.BaseRow) error {
	id, err := t.baseID(ctx, v)
	if err != nil {
		return err
	}
	// The last of each row is what it is now.
	type rowID struct {
		tab int
		key string
	}
	last := map[rowID]int{}
	for i, r := range rows {
		last[rowID{r.Table, r.Key}] = i
	}
	var tabs, refTabs, refChildren []int32
	var keys, vals, refKeys, refs []string
	var putTabs []int32
	var putKeys []string
	for i, r := range rows {
		if last[rowID{r.Table, r.Key}] != i {
			continue
		}
		tabs, keys = append(tabs, int32(r.Table)), append(keys, r.Key)
		if r.Row == nil {
			continue
		}
		putTabs, putKeys, vals = append(putTabs, int32(r.Table)), append(putKeys, r.Key), append(vals, eventlog.KeyString(r.Row))
		for child, ref := range r.Refs {
			refTabs, refChildren = append(refTabs, int32(r.Table)), append(refChildren, int32(child))
			refKeys, refs = append(refKeys, r.Key), append(refs, ref)
		}
	}
	b := &pgx.Batch{}
	if len(tabs) > 0 {
		b.Queue(`DELETE FROM rejot_log.base b USING unnest($2::int4[], $3::text[]) AS u(tab, key)
			WHERE b.stream = $1 AND b.tab = u.tab AND b.key = u.key`, id, tabs, keys)
		b.Queue(`DELETE FROM rejot_log.base_refs b USING unnest($2::int4[], $3::text[]) AS u(tab, key)
			WHERE b.stream = $1 AND b.tab = u.tab AND b.key = u.key`, id, tabs, keys)
	}
	if len(putTabs) > 0 {
		b.Queue(`INSERT INTO rejot_log.base (stream, tab, key, row) SELECT $1, u.tab, u.key, u.row
			FROM unnest($2::int4[], $3::text[], $4::text[]) AS u(tab, key, row)`, id, putTabs, putKeys, vals)
	}
	if len(refTabs) > 0 {
		b.Queue(`INSERT INTO rejot_log.base_refs (stream, tab, child, ref, key) SELECT $1, u.tab, u.child, u.ref, u.key
			FROM unnest($2::int4[], $3::int4[], $4::text[], $5::text[]) AS u(tab, child, ref, key)`, id, refTabs, refChildren, refs, refKeys)
	}
	b.Queue(`INSERT INTO rejot_log.base_at (stream, system, lsn) VALUES ($1, $2, $3::pg_lsn)
		ON CONFLICT (stream, system) DO UPDATE SET lsn = EXCLUDED.lsn`, id, system, pglogrepl.LSN(lsn).String())
	return t.tx.SendBatch(ctx, b).Close()
}

// ClearBase empties a table of a version's base state, or all of them.
func (t *Tx) ClearBase(ctx context.Context, v eventlog.Version, table int) error {
	id, err := t.baseID(ctx, v)
	if err != nil {
		return err
	}
	b := &pgx.Batch{}
	b.Queue("DELETE FROM rejot_log.base WHERE stream = $1 AND ($2 < 0 OR tab = $2)", id, table)
	b.Queue("DELETE FROM rejot_log.base_refs WHERE stream = $1 AND ($2 < 0 OR tab = $2)", id, table)
	return t.tx.SendBatch(ctx, b).Close()
}

// Base reads base rows by key.
func (t *Tx) Base(ctx context.Context, v eventlog.Version, table int, keys []string) (map[string][]eventlog.Value, error) {
	out := map[string][]eventlog.Value{}
	if len(keys) == 0 {
		return out, nil
	}
	id, err := t.baseID(ctx, v)
	if err != nil {
		return nil, err
	}
	rows, err := t.tx.Query(ctx, `SELECT b.key, b.row FROM rejot_log.base b
		WHERE b.stream = $1 AND b.tab = $2 AND b.key = ANY ($3::text[])`, id, table, keys)
	if err != nil {
		return nil, err
	}
	var key, row string
	_, err = pgx.ForEachRow(rows, []any{&key, &row}, func() error {
		vals, err := eventlog.ParseKeyString(row)
		if err != nil {
			return errors.New("a base row of the event log does not read: " + err.Error())
		}
		out[key] = vals
		return nil
	})
	return out, err
}

// Referrers pages through the rows of table that meet rows of child (of
// every row of table when child is negative), in key order: the cursor
// is the last key of the page before.
func (t *Tx) Referrers(ctx context.Context, v eventlog.Version, table, child int, refs []string, cursor string, limit int) ([]string, string, error) {
	if child >= 0 && len(refs) == 0 {
		return nil, "", nil
	}
	id, err := t.baseID(ctx, v)
	if err != nil {
		return nil, "", err
	}
	var rows pgx.Rows
	if child < 0 {
		rows, err = t.tx.Query(ctx, `SELECT b.key FROM rejot_log.base b WHERE b.stream = $1 AND b.tab = $2 AND b.key > $3
			ORDER BY b.key LIMIT $4`, id, table, cursor, limit)
	} else {
		rows, err = t.tx.Query(ctx, `SELECT DISTINCT r.key FROM rejot_log.base_refs r
			WHERE r.stream = $1 AND r.tab = $2 AND r.child = $3 AND r.ref = ANY ($4::text[]) AND r.key > $5
			ORDER BY r.key LIMIT $6`, id, table, child, refs, cursor, limit)
	}
	if err != nil {
		return nil, "", err
	}
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(keys) < limit {
		return keys, "", err
	}
	return keys, keys[len(keys)-1], nil
}

// BaseAt reads a version's base position for a system.
func (l *Log) BaseAt(ctx context.Context, v eventlog.Version, system string) (uint64, bool, error) {
	var lsn string
	err := l.pool.QueryRow(ctx, `SELECT a.lsn::text FROM rejot_log.base_at a JOIN rejot_log.streams s ON s.id = a.stream
		WHERE s.publication = $1 AND s.version = $2 AND a.system = $3`, v.Publication, v.Number, system).Scan(&lsn)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	parsed, err := pglogrepl.ParseLSN(lsn)
	return uint64(parsed), err == nil, err
}
