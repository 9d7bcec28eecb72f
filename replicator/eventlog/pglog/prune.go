package pglog

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// SetReader records a subscriber's position (the log keeps what it has
// not read); a negative position removes the reader.
func (l *Log) SetReader(ctx context.Context, v eventlog.Version, reader string, position int64) error {
	if position < 0 {
		_, err := l.pool.Exec(ctx, `DELETE FROM rejot_log.readers r USING rejot_log.streams s
			WHERE s.id = r.stream AND s.publication = $1 AND s.version = $2 AND r.reader = $3`, v.Publication, v.Number, reader)
		return err
	}
	// One statement for a version that exists: the stream's row is read,
	// not locked. versionID's upsert locks it, and waited for every
	// append in flight (they hold it until they commit), which held the
	// subscriber that records its place behind the capture.
	tag, err := l.pool.Exec(ctx, `INSERT INTO rejot_log.readers (stream, reader, position)
		SELECT s.id, $3, $4 FROM rejot_log.streams s WHERE s.publication = $1 AND s.version = $2
		ON CONFLICT (stream, reader) DO UPDATE SET position = EXCLUDED.position, updated_at = now()`,
		v.Publication, v.Number, reader, position)
	if err != nil || tag.RowsAffected() > 0 {
		return err
	}
	// The version does not exist yet (subscribed before the owner's first
	// fill): the reader holds it from the start all the same.
	return pgx.BeginFunc(ctx, l.pool, func(tx pgx.Tx) error {
		id, err := versionID(ctx, tx, v)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO rejot_log.readers (stream, reader, position) VALUES ($1, $2, $3)
			ON CONFLICT (stream, reader) DO UPDATE SET position = EXCLUDED.position, updated_at = now()`, id, reader, position)
		return err
	})
}

// KeepReaders forgets the readers whose names start with prefix other than
// keep: subscriptions removed while their sidecar was down.
func (l *Log) KeepReaders(ctx context.Context, prefix string, keep []string) error {
	if keep == nil {
		keep = []string{} // not NULL: nothing is kept
	}
	_, err := l.pool.Exec(ctx, `DELETE FROM rejot_log.readers WHERE starts_with(reader, $1) AND NOT (reader = ANY ($2))`, prefix, keep)
	return err
}

// Prune deletes the changes of a version that every reader has read (all of
// them when it has none: new subscribers copy the compacted state). It
// returns how many it deleted.
func (l *Log) Prune(ctx context.Context, v eventlog.Version) (int64, error) {
	var n int64
	err := pgx.BeginFunc(ctx, l.pool, func(tx pgx.Tx) error {
		var id int
		var upto int64
		// Changes go only once the state holds them.
		err := tx.QueryRow(ctx, `SELECT s.id, least(rejot_log.compact(s.id), coalesce((SELECT min(position) FROM rejot_log.readers r WHERE r.stream = s.id), s.head))
			FROM rejot_log.streams s WHERE s.publication = $1 AND s.version = $2`, v.Publication, v.Number).Scan(&id, &upto)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, "DELETE FROM rejot_log.changes WHERE stream = $1 AND position <= $2", id, upto)
		if err != nil {
			return err
		}
		n = tag.RowsAffected()
		// The groups of what is gone: readers only look past their
		// position, and appends know replays by rejot_log.appended.
		_, err = tx.Exec(ctx, "DELETE FROM rejot_log.groups WHERE stream = $1 AND last_position <= $2", id, upto)
		return err
	})
	return n, err
}
