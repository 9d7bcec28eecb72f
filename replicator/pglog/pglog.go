// Package pglog is the event log kept in Postgres: per publication version
// an ordered change log and the compacted state, updated together, so a
// new subscriber copies the state at a position and streams from there
// without touching the owner's database. Appends notify listeners on the
// channel rejot_log.
package pglog

import (
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rejot-dev/rejot/catalog"
	"github.com/rejot-dev/rejot/replicator"
)

//go:embed migrations/*.sql
var files embed.FS

var migrations = catalog.Migrations{Files: files, Dir: "migrations", Table: "rejot_log.schema_migrations", Lock: 7_265_106_113}

// Channel is the LISTEN channel appends notify; the payload is
// "<publication>/<version>/<head position>".
const Channel = "rejot_log"

// Log is an open event log.
type Log struct {
	pool *pgxpool.Pool
}

var _ replicator.Log = (*Log)(nil)

// Open connects to the event log at url and migrates its schema.
func Open(ctx context.Context, url string) (*Log, error) {
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("cannot open the event log: %w", err)
	}
	err = pool.AcquireFunc(ctx, func(c *pgxpool.Conn) error { return migrations.Run(ctx, c.Conn()) })
	if err != nil {
		pool.Close()
		return nil, err
	}
	return &Log{pool: pool}, nil
}

// Close closes the log's connections.
func (l *Log) Close() { l.pool.Close() }

// Append appends groups in one transaction. Groups of several source
// transactions may come together: each stays whole, and per stream the
// work is a handful of statements whatever the number of groups.
func (l *Log) Append(ctx context.Context, groups []replicator.Group) (int, error) {
	added := 0
	err := pgx.BeginFunc(ctx, l.pool, func(tx pgx.Tx) error {
		added = 0
		byStream := map[replicator.Stream][]*replicator.Group{}
		var order []replicator.Stream
		for i := range groups {
			g := &groups[i]
			if _, ok := byStream[g.Stream]; !ok {
				order = append(order, g.Stream)
			}
			byStream[g.Stream] = append(byStream[g.Stream], g)
		}
		for _, s := range order {
			n, err := appendStream(ctx, tx, s, byStream[s])
			if err != nil {
				return err
			}
			added += n
		}
		return nil
	})
	return added, err
}

// appendStream appends one stream's groups (in order), skipping those
// already appended.
func appendStream(ctx context.Context, tx pgx.Tx, s replicator.Stream, groups []*replicator.Group) (int, error) {
	stream, err := streamID(ctx, tx, s)
	if err != nil {
		return 0, err
	}
	fresh, err := newGroups(ctx, tx, stream, groups)
	if err != nil || len(fresh) == 0 {
		return 0, err
	}
	total := 0
	var all []replicator.Change
	for _, g := range fresh {
		total += len(g.Changes)
		all = append(all, g.Changes...)
	}
	var head int64
	if err := tx.QueryRow(ctx, "UPDATE rejot_log.streams SET head = head + $2 WHERE id = $1 RETURNING head", stream, total).Scan(&head); err != nil {
		return 0, err
	}
	first := head - int64(total) + 1
	if err := insertChanges(ctx, tx, stream, first, fresh); err != nil {
		return 0, err
	}
	if err := compact(ctx, tx, stream, first, all); err != nil {
		return 0, err
	}
	if err := insertGroups(ctx, tx, stream, first, fresh); err != nil {
		return 0, err
	}
	payload := s.Publication + "/" + strconv.Itoa(s.Version) + "/" + strconv.FormatInt(head, 10)
	_, err = tx.Exec(ctx, "SELECT pg_notify($1, $2)", Channel, payload)
	return len(fresh), err
}

// newGroups drops the groups already appended (same system and commit
// LSN) and the empty ones.
func newGroups(ctx context.Context, tx pgx.Tx, stream int, groups []*replicator.Group) ([]*replicator.Group, error) {
	systems, lsns := make([]string, len(groups)), make([]string, len(groups))
	for i, g := range groups {
		systems[i], lsns[i] = g.System, pglogrepl.LSN(g.CommitLSN).String()
	}
	rows, err := tx.Query(ctx, `SELECT g.system, g.commit_lsn::text FROM rejot_log.groups g
		JOIN unnest($2::text[], $3::pg_lsn[]) AS u(system, lsn) ON g.system = u.system AND g.commit_lsn = u.lsn
		WHERE g.stream = $1`, stream, systems, lsns)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for rows.Next() {
		var system, lsn string
		if err := rows.Scan(&system, &lsn); err != nil {
			return nil, err
		}
		seen[system+"/"+lsn] = true
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var fresh []*replicator.Group
	for i, g := range groups {
		key := systems[i] + "/" + lsns[i]
		if !seen[key] && len(g.Changes) > 0 {
			seen[key] = true // the same transaction twice in one call counts once
			fresh = append(fresh, g)
		}
	}
	return fresh, nil
}

func insertGroups(ctx context.Context, tx pgx.Tx, stream int, first int64, groups []*replicator.Group) error {
	n := len(groups)
	systems, lsns, times := make([]string, n), make([]string, n), make([]time.Time, n)
	firsts, lasts := make([]int64, n), make([]int64, n)
	pos := first
	for i, g := range groups {
		systems[i], lsns[i], times[i] = g.System, pglogrepl.LSN(g.CommitLSN).String(), g.CommitTime
		firsts[i], lasts[i] = pos, pos+int64(len(g.Changes))-1
		pos += int64(len(g.Changes))
	}
	_, err := tx.Exec(ctx, `INSERT INTO rejot_log.groups (stream, system, commit_lsn, commit_time, first_position, last_position)
		SELECT $1, s, l, t, f, z FROM unnest($2::text[], $3::pg_lsn[], $4::timestamptz[], $5::int8[], $6::int8[]) AS u(s, l, t, f, z)`,
		stream, systems, lsns, times, firsts, lasts)
	return err
}

func streamID(ctx context.Context, tx pgx.Tx, s replicator.Stream) (int, error) {
	var id int
	err := tx.QueryRow(ctx, `INSERT INTO rejot_log.streams (publication, version) VALUES ($1, $2)
		ON CONFLICT (publication, version) DO UPDATE SET version = EXCLUDED.version RETURNING id`,
		s.Publication, s.Version).Scan(&id)
	return id, err
}

func encode(values []replicator.Value) ([]byte, error) {
	if values == nil {
		return nil, nil
	}
	return json.Marshal(values)
}

func insertChanges(ctx context.Context, tx pgx.Tx, stream int, first int64, groups []*replicator.Group) error {
	var ops, keys, lsns []string
	var rows []*string
	var times []time.Time
	for _, g := range groups {
		lsn := pglogrepl.LSN(g.CommitLSN).String()
		for _, c := range g.Changes {
			k, err := encode(c.Key)
			if err != nil {
				return err
			}
			if k == nil {
				k = []byte("[]")
			}
			var row *string
			if c.Op == replicator.OpUpsert {
				r, err := encode(c.Row)
				if err != nil {
					return err
				}
				s := string(r)
				row = &s
			}
			ops, keys, rows = append(ops, string(c.Op)), append(keys, string(k)), append(rows, row)
			lsns, times = append(lsns, lsn), append(times, g.CommitTime)
		}
	}
	_, err := tx.Exec(ctx, `INSERT INTO rejot_log.changes (stream, position, commit_lsn, commit_time, op, key, row)
		SELECT $1, $2 + o - 1, lsn, t, op::"char", key::jsonb, row::jsonb
		FROM unnest($3::text[], $4::text[], $5::text[], $6::pg_lsn[], $7::timestamptz[]) WITH ORDINALITY AS c(op, key, row, lsn, t, o)`,
		stream, first, ops, keys, rows, lsns, times)
	return err
}

// compact brings the state up to date with a group's changes: the last
// change per key wins, a truncate clears what came before it.
func compact(ctx context.Context, tx pgx.Tx, stream int, first int64, changes []replicator.Change) error {
	type latest struct {
		row      *string
		position int64
	}
	final := map[string]latest{}
	var order []string
	truncated := false
	for i, c := range changes {
		pos := first + int64(i)
		if c.Op == replicator.OpTruncate {
			final, order, truncated = map[string]latest{}, nil, true
			continue
		}
		k, err := encode(c.Key)
		if err != nil {
			return err
		}
		key := string(k)
		if _, seen := final[key]; !seen {
			order = append(order, key)
		}
		l := latest{position: pos}
		if c.Op == replicator.OpUpsert {
			r, err := encode(c.Row)
			if err != nil {
				return err
			}
			s := string(r)
			l.row = &s
		}
		final[key] = l
	}
	if truncated {
		if _, err := tx.Exec(ctx, "DELETE FROM rejot_log.state WHERE stream = $1", stream); err != nil {
			return err
		}
	}
	var upKeys, upRows, delKeys []string
	var upPos []int64
	for _, key := range order {
		l := final[key]
		if l.row == nil {
			delKeys = append(delKeys, key)
			continue
		}
		upKeys, upRows, upPos = append(upKeys, key), append(upRows, *l.row), append(upPos, l.position)
	}
	if len(delKeys) > 0 {
		if _, err := tx.Exec(ctx, "DELETE FROM rejot_log.state WHERE stream = $1 AND key = ANY ($2::jsonb[])", stream, delKeys); err != nil {
			return err
		}
	}
	if len(upKeys) == 0 {
		return nil
	}
	_, err := tx.Exec(ctx, `INSERT INTO rejot_log.state (stream, key, row, position)
		SELECT $1, k::jsonb, r::jsonb, p FROM unnest($2::text[], $3::text[], $4::int8[]) AS u(k, r, p)
		ON CONFLICT (stream, key) DO UPDATE SET row = EXCLUDED.row, position = EXCLUDED.position`,
		stream, upKeys, upRows, upPos)
	return err
}

// Since returns the commit LSN of the first group system appended to s.
func (l *Log) Since(ctx context.Context, s replicator.Stream, system string) (uint64, bool, error) {
	var lsn *string
	err := l.pool.QueryRow(ctx, `SELECT min(g.commit_lsn)::text FROM rejot_log.groups g
		JOIN rejot_log.streams s ON s.id = g.stream
		WHERE s.publication = $1 AND s.version = $2 AND g.system = $3`, s.Publication, s.Version, system).Scan(&lsn)
	if err != nil || lsn == nil {
		return 0, false, err
	}
	parsed, err := pglogrepl.ParseLSN(*lsn)
	return uint64(parsed), err == nil, err
}

// State calls fn for every row of a stream's compacted state, as of one
// consistent moment, and returns the position that state is at: a
// subscriber that copies it continues with the changes after it.
func (l *Log) State(ctx context.Context, s replicator.Stream, fn func(row []replicator.Value) error) (int64, error) {
	var head int64
	err := pgx.BeginTxFunc(ctx, l.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var id int
		err := tx.QueryRow(ctx, "SELECT id, head FROM rejot_log.streams WHERE publication = $1 AND version = $2",
			s.Publication, s.Version).Scan(&id, &head)
		if err == pgx.ErrNoRows {
			return nil
		}
		if err != nil {
			return err
		}
		rows, err := tx.Query(ctx, "SELECT row::text FROM rejot_log.state WHERE stream = $1 ORDER BY key", id)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var raw string
			var row []replicator.Value
			if err := rows.Scan(&raw); err != nil {
				return err
			}
			if err := json.Unmarshal([]byte(raw), &row); err != nil {
				return err
			}
			if err := fn(row); err != nil {
				return err
			}
		}
		return rows.Err()
	})
	return head, err
}

// Changes returns up to limit records of a stream after position.
func (l *Log) Changes(ctx context.Context, s replicator.Stream, after int64, limit int) ([]replicator.Record, error) {
	rows, err := l.pool.Query(ctx, `SELECT c.position, c.commit_lsn::text, c.commit_time, c.op::text, c.key::text, c.row::text
		FROM rejot_log.changes c JOIN rejot_log.streams s ON s.id = c.stream
		WHERE s.publication = $1 AND s.version = $2 AND c.position > $3
		ORDER BY c.position LIMIT $4`, s.Publication, s.Version, after, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, scanRecord)
}

func scanRecord(row pgx.CollectableRow) (replicator.Record, error) {
	var r replicator.Record
	var lsn, op, key string
	var data *string
	var at time.Time
	if err := row.Scan(&r.Position, &lsn, &at, &op, &key, &data); err != nil {
		return r, err
	}
	parsed, err := pglogrepl.ParseLSN(lsn)
	if err != nil {
		return r, err
	}
	r.CommitLSN, r.CommitTime, r.Op = uint64(parsed), at, replicator.Op(op[0])
	if err := json.Unmarshal([]byte(key), &r.Key); err != nil {
		return r, err
	}
	if data != nil {
		if err := json.Unmarshal([]byte(*data), &r.Row); err != nil {
			return r, err
		}
	}
	return r, nil
}
