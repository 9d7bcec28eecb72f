package pglog

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

var _ eventlog.Reader = (*Log)(nil)

// Head returns a version's last position (0 when it has none).
func (l *Log) Head(ctx context.Context, v eventlog.Version) (int64, error) {
	var head int64
	err := l.pool.QueryRow(ctx, "SELECT head FROM rejot_log.streams WHERE publication = $1 AND version = $2",
		v.Publication, v.Number).Scan(&head)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	return head, err
}

// Pending returns a version's last position and the commit time of its
// first change after position after (zero when none).
func (l *Log) Pending(ctx context.Context, v eventlog.Version, after int64) (int64, time.Time, error) {
	var head int64
	var oldest *time.Time
	err := l.pool.QueryRow(ctx, `SELECT s.head, (SELECT c.commit_time FROM rejot_log.changes c
			WHERE c.stream = s.id AND c.position > $3 ORDER BY c.position LIMIT 1)
		FROM rejot_log.streams s WHERE s.publication = $1 AND s.version = $2`, v.Publication, v.Number, after).Scan(&head, &oldest)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, time.Time{}, nil
	}
	if err != nil || oldest == nil {
		return head, time.Time{}, err
	}
	return head, *oldest, nil
}

// Width returns how many values the rows of a version's state have (0
// when it has no state).
func (l *Log) Width(ctx context.Context, v eventlog.Version) (int, error) {
	var n int
	err := l.pool.QueryRow(ctx, "SELECT coalesce(state_columns, 0) FROM rejot_log.streams WHERE publication = $1 AND version = $2",
		v.Publication, v.Number).Scan(&n)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	return n, err
}

// streamOf is the stream of version $2 of publication $1, as a value:
// the change log is then read as a range of its key, (stream, position),
// which the planner chooses whatever its statistics say of a change log
// that has just grown by millions (a join to rejot_log.streams let it
// scan the whole log for each chunk of a large span: quadratic).
const streamOf = "(SELECT s.id FROM rejot_log.streams s WHERE s.publication = $1 AND s.version = $2)"

// Changes returns up to limit changes of a version after position.
func (l *Log) Changes(ctx context.Context, v eventlog.Version, after int64, limit int) ([]eventlog.Entry, error) {
	recs, _, _, err := l.changesAndHead(ctx, v, after, limit)
	return recs, err
}

// changesAndHead returns up to limit changes of a version after
// position, which of them end a group, and the version's head, in one
// statement: a reader at the log's head asks for the next changes far
// more often than there are any, and learns from the same answer whether
// none came yet or they are gone (a second statement for that was a
// third of sixteen subscribers' reads at the head). The head is 0 for a
// version the log does not have.
func (l *Log) changesAndHead(ctx context.Context, v eventlog.Version, after int64, limit int) ([]eventlog.Entry, []bool, int64, error) {
	rows, err := l.pool.Query(ctx, `SELECT s.head, c.position, (c.commit_lsn - '0/0')::int8, c.commit_time, c.op::text, c.key::text, c.row::text, c.last
		FROM rejot_log.streams s LEFT JOIN LATERAL (
			SELECT c.* FROM rejot_log.changes c WHERE c.stream = s.id AND c.position > $3 ORDER BY c.position LIMIT $4) c ON true
		WHERE s.publication = $1 AND s.version = $2`, v.Publication, v.Number, after, limit)
	if err != nil {
		return nil, nil, 0, err
	}
	defer rows.Close()
	var head int64
	recs, ends := make([]eventlog.Entry, 0, min(limit, 64)), make([]bool, 0, min(limit, 64))
	for rows.Next() {
		var position *int64
		r, last, err := scanRecordAfter(rows, &head, &position)
		if err != nil {
			return nil, nil, 0, err
		}
		if position == nil {
			break // no changes after the position: the one row has the head alone
		}
		// No ORDER BY outside: it sorted the whole span again (on disk, for
		// 50 000 changes). At most one stream matches, and a nested loop
		// gives the rows of its one outer row in the inner scan's order,
		// which is checked here.
		if n := len(recs); n > 0 && r.Position <= recs[n-1].Position {
			return nil, nil, 0, fmt.Errorf("the event log returned change %d after %d", r.Position, recs[n-1].Position)
		}
		// Room for the few changes read at the log's head, then sixteen
		// times more at each step up to the limit: doubling, the copies of a
		// growing slice of changes took more than decoding them.
		if n := len(recs); n == cap(recs) && n < limit {
			more := min(15*n, limit-n)
			recs, ends = slices.Grow(recs, more), slices.Grow(ends, more)
		}
		recs, ends = append(recs, r), append(ends, last)
	}
	return recs, ends, head, rows.Err()
}

// chunk returns a version's changes at positions (after, upto].
func (l *Log) chunk(ctx context.Context, v eventlog.Version, after, upto int64) ([]eventlog.Entry, error) {
	rows, err := l.pool.Query(ctx, `SELECT c.position, (c.commit_lsn - '0/0')::int8, c.commit_time, c.op::text, c.key::text, c.row::text, c.last
		FROM rejot_log.changes c WHERE c.stream = `+streamOf+` AND c.position > $3 AND c.position <= $4
		ORDER BY c.position`, v.Publication, v.Number, after, upto)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (eventlog.Entry, error) {
		r, _, err := scanRecord(row)
		return r, err
	})
}

// scanRecord scans a change and its group-end mark.
func scanRecord(row pgx.Row) (r eventlog.Entry, last bool, err error) {
	var lsn int64
	var op, key string
	var data *string
	var at time.Time
	if err := row.Scan(&r.Position, &lsn, &at, &op, &key, &data, &last); err != nil {
		return r, last, err
	}
	return decodeRecord(r, lsn, at, op, key, data, last)
}

// scanRecordAfter scans the version's head, then a change and its
// group-end mark, or none (position left nil): the columns of a LEFT
// JOIN that found no change are NULL.
func scanRecordAfter(row pgx.Row, head *int64, position **int64) (r eventlog.Entry, last bool, err error) {
	var lsn *int64
	var op, key, data *string
	var at *time.Time
	var end *bool
	if err := row.Scan(head, position, &lsn, &at, &op, &key, &data, &end); err != nil || *position == nil {
		return r, false, err
	}
	if lsn == nil || at == nil || op == nil || key == nil || end == nil {
		return r, false, fmt.Errorf("change %d of the event log is missing a value", **position)
	}
	r.Position = **position
	return decodeRecord(r, *lsn, *at, *op, *key, data, *end)
}

// decodeRecord fills in a change read from the log.
func decodeRecord(r eventlog.Entry, lsn int64, at time.Time, op, key string, data *string, last bool) (eventlog.Entry, bool, error) {
	var err error
	r.CommitLSN, r.CommitTime, r.Op = uint64(lsn), at, eventlog.Op(op[0])
	if r.Key, err = decodeValues(key); err != nil {
		return r, last, err
	}
	if data != nil {
		if r.Row, err = decodeValues(*data); err != nil {
			return r, last, err
		}
	}
	return r, last, nil
}

// Next returns the span of whole groups after position after, up to about
// limit changes (at least one group, however large), and the commit time
// of its last group.
func (l *Log) Next(ctx context.Context, v eventlog.Version, after int64, limit int) (eventlog.Span, error) {
	// Groups end at marked changes; what is visible is committed whole.
	rows, err := l.pool.Query(ctx, `SELECT c.position, c.commit_time FROM rejot_log.changes c
		WHERE c.stream = `+streamOf+` AND c.position > $3 AND c.last
		ORDER BY c.position LIMIT $4`, v.Publication, v.Number, after, max(limit, 1))
	if err != nil {
		return eventlog.Span{}, err
	}
	defer rows.Close()
	span := eventlog.Span{After: after, Upto: after}
	for rows.Next() {
		var last int64
		var at time.Time
		if err := rows.Scan(&last, &at); err != nil {
			return span, err
		}
		if span.Upto > after && last-after > int64(limit) {
			break
		}
		span.Upto, span.LastCommit = last, at
		span.Groups++
	}
	return span, rows.Err()
}

// Fetch reads up to limit changes after a position and keeps the whole
// groups among them: one query where Next and Read take two, and each
// change is read once. A first group larger than limit is left to Next
// and Read.
func (l *Log) Fetch(ctx context.Context, v eventlog.Version, after int64, limit int) (eventlog.Span, []eventlog.Entry, error) {
	limit = max(limit, 1)
	recs, ends, head, err := l.changesAndHead(ctx, v, after, limit)
	if err != nil {
		return eventlog.Span{}, nil, err
	}
	span := eventlog.Span{After: after, Upto: after}
	whole := 0 // how many of recs end a group
	for i, r := range recs {
		if ends[i] {
			whole = i + 1
			span.Upto, span.LastCommit = r.Position, r.CommitTime
			span.Groups++
		}
	}
	if len(recs) == 0 {
		return span, nil, nothingAfter(after, head)
	}
	if recs[0].Position != after+1 {
		return span, nil, eventlog.ErrPruned
	}
	resets := len(recs) > 0 && recs[0].Op == eventlog.OpTruncate
	span.Resets = resets
	if span.Groups == 0 && len(recs) == limit {
		span, err := l.Next(ctx, v, after, limit)
		span.Resets = resets
		return span, nil, err
	}
	return span, recs[:whole], nil
}

// nothingAfter says why a version whose head is head has no changes
// after a position, read in the same statement as the head (so one
// snapshot): none came yet (nil), they are gone (ErrPruned: pruned, or
// never kept), or the position is past the head (ErrAhead).
func nothingAfter(after, head int64) error {
	switch {
	case head == after:
		return nil
	case head > after:
		return eventlog.ErrPruned
	default:
		return fmt.Errorf("position %d, head %d: %w", after, head, eventlog.ErrAhead)
	}
}

// readChunk is how many changes Read passes at a time.
const readChunk = 5000

// Read calls fn for each change of a span, in order, in chunks: each a
// range of the change log's key, so that reading a span of millions
// costs the same per change as a small one, whatever the planner's
// statistics of a change log that has just grown say.
func (l *Log) Read(ctx context.Context, v eventlog.Version, span eventlog.Span, fn func([]eventlog.Entry) error) error {
	for after := span.After; after < span.Upto; {
		recs, err := l.chunk(ctx, v, after, min(after+readChunk, span.Upto))
		if err != nil {
			return err
		}
		if len(recs) == 0 || recs[0].Position != after+1 {
			return eventlog.ErrPruned
		}
		if err := fn(recs); err != nil {
			return err
		}
		after = recs[len(recs)-1].Position
	}
	return nil
}
