package pglog

import (
	"context"
	"errors"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

var _ eventlog.Reader = (*Log)(nil)

// Ping checks that the log's database answers.
func (l *Log) Ping(ctx context.Context) error { return l.pool.Ping(ctx) }

// CopyState writes a stream's compacted state to w in COPY's text format,
// the given elements of each row as columns (an element past a row's end,
// a column a later minor added, is NULL), as of one consistent moment,
// and returns the position that state is at: the stream's head, with the
// changes not compacted yet folded in on the way. Postgres renders the
// rows: they pass through as bytes.
func (l *Log) CopyState(ctx context.Context, s eventlog.Version, elements []int, w io.Writer) (int64, error) {
	var at int64
	err := l.readState(ctx, s, func(tx pgx.Tx, st stateAt) error {
		at = st.head
		if st.layout.Columns == 0 {
			return nil // no state yet
		}
		q, err := st.query(ctx, tx, elements)
		if err != nil {
			return err
		}
		_, err = tx.Conn().PgConn().CopyTo(ctx, w, "COPY ("+q+") TO STDOUT")
		return err
	})
	return at, err
}

// Head returns a stream's last position (0 when it has none).
func (l *Log) Head(ctx context.Context, s eventlog.Version) (int64, error) {
	var head int64
	err := l.pool.QueryRow(ctx, "SELECT head FROM rejot_log.streams WHERE publication = $1 AND version = $2",
		s.Publication, s.Number).Scan(&head)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	return head, err
}

// Next returns the span of whole groups after position after, up to about
// limit changes (at least one group, however large), and the commit time
// of its last group.
func (l *Log) Next(ctx context.Context, s eventlog.Version, after int64, limit int) (eventlog.Span, error) {
	// Groups end at marked changes; what is visible is committed whole.
	rows, err := l.pool.Query(ctx, `SELECT c.position, c.commit_time FROM rejot_log.changes c
		JOIN rejot_log.streams s ON s.id = c.stream
		WHERE s.publication = $1 AND s.version = $2 AND c.position > $3 AND c.last
		ORDER BY c.position LIMIT $4`, s.Publication, s.Number, after, max(limit, 1))
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
func (l *Log) Fetch(ctx context.Context, s eventlog.Version, after int64, limit int) (eventlog.Span, []eventlog.Entry, error) {
	limit = max(limit, 1)
	recs, ends, err := l.changes(ctx, s, after, limit)
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
	if len(recs) > 0 && recs[0].Position != after+1 {
		return span, nil, eventlog.ErrPruned
	}
	if span.Groups == 0 && len(recs) == limit {
		span, err := l.Next(ctx, s, after, limit)
		return span, nil, err
	}
	return span, recs[:whole], nil
}

// Read calls fn for each change of a span, in order, in chunks.
func (l *Log) Read(ctx context.Context, s eventlog.Version, span eventlog.Span, fn func([]eventlog.Entry) error) error {
	const chunk = 5000
	for after := span.After; after < span.Upto; {
		recs, err := l.Changes(ctx, s, after, min(chunk, int(span.Upto-after)))
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

// SetReader records a subscriber's position (the log keeps what it has
// not read); a negative position removes the reader.
func (l *Log) SetReader(ctx context.Context, s eventlog.Version, reader string, position int64) error {
	if position < 0 {
		_, err := l.pool.Exec(ctx, `DELETE FROM rejot_log.readers r USING rejot_log.streams s
			WHERE s.id = r.stream AND s.publication = $1 AND s.version = $2 AND r.reader = $3`, s.Publication, s.Number, reader)
		return err
	}
	// The stream may not exist yet (subscribed before the owner's first
	// fill): the reader holds it from the start all the same.
	return pgx.BeginFunc(ctx, l.pool, func(tx pgx.Tx) error {
		id, err := streamID(ctx, tx, s)
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

// Prune deletes the changes of a stream that every reader has read (all of
// them when it has none: new subscribers copy the compacted state). It
// returns how many it deleted.
func (l *Log) Prune(ctx context.Context, s eventlog.Version) (int64, error) {
	var n int64
	err := pgx.BeginFunc(ctx, l.pool, func(tx pgx.Tx) error {
		var id int
		var upto int64
		// Changes go only once the state holds them.
		err := tx.QueryRow(ctx, `SELECT s.id, least(rejot_log.compact(s.id), coalesce((SELECT min(position) FROM rejot_log.readers r WHERE r.stream = s.id), s.head))
			FROM rejot_log.streams s WHERE s.publication = $1 AND s.version = $2`, s.Publication, s.Number).Scan(&id, &upto)
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

// Wait returns when the log notifies an append to s, or after at most d.
func (l *Log) Wait(ctx context.Context, s eventlog.Version, d time.Duration) {
	ch := l.waiter().channel(s)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-ch:
	}
}

// notifier listens on the log's channel with one connection and wakes the
// waiters of each stream.
type notifier struct {
	mu      sync.Mutex
	waiters map[string]chan struct{}
}

func (l *Log) waiter() *notifier {
	l.notifyOnce.Do(func() {
		l.notify = &notifier{waiters: map[string]chan struct{}{}}
		go l.listen(l.notify)
	})
	return l.notify
}

func (n *notifier) channel(s eventlog.Version) chan struct{} {
	key := streamKey(s)
	n.mu.Lock()
	defer n.mu.Unlock()
	ch := n.waiters[key]
	if ch == nil {
		ch = make(chan struct{})
		n.waiters[key] = ch
	}
	return ch
}

// wake wakes the waiters of one stream ("" wakes all).
func (n *notifier) wake(key string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for k, ch := range n.waiters {
		if key == "" || k == key {
			close(ch)
			delete(n.waiters, k)
		}
	}
}

func streamKey(s eventlog.Version) string {
	return s.Publication + "/" + strconv.Itoa(s.Number)
}

// listen keeps a LISTEN connection until the log closes, reconnecting
// with backoff; after a reconnect every waiter wakes (a notification may
// have been missed).
func (l *Log) listen(n *notifier) {
	backoff := 100 * time.Millisecond
	for l.ctx.Err() == nil {
		conn, err := l.pool.Acquire(l.ctx)
		if err == nil {
			_, err = conn.Exec(l.ctx, "LISTEN "+Channel)
			if err == nil {
				backoff = 100 * time.Millisecond
				n.wake("")
				for err == nil {
					var note *pgconn.Notification
					note, err = conn.Conn().WaitForNotification(l.ctx)
					if err == nil {
						// payload: publication/version/head
						if i := strings.LastIndexByte(note.Payload, '/'); i > 0 {
							n.wake(note.Payload[:i])
						}
					}
				}
			}
			conn.Hijack().Close(context.Background())
		}
		if l.ctx.Err() != nil {
			return
		}
		select {
		case <-l.ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}
