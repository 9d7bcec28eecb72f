package natslog

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

var _ eventlog.Reader = (*Log)(nil)

// Head returns a version's last position (0 when it has none).
func (l *Log) Head(ctx context.Context, v eventlog.Version) (int64, error) {
	r, err := l.last(ctx, v)
	if err != nil || r == nil {
		return 0, err
	}
	return r.head, nil
}

// Width returns how many values the rows of a version's state have (0
// before its first append).
func (l *Log) Width(ctx context.Context, v eventlog.Version) (int, error) {
	r, err := l.last(ctx, v)
	if err != nil || r == nil {
		return 0, err
	}
	return r.layout.Columns, nil
}

// Pending returns a version's last position and the commit time of its
// first change after position after (zero when none, or pruned).
func (l *Log) Pending(ctx context.Context, v eventlog.Version, after int64) (int64, time.Time, error) {
	r, err := l.last(ctx, v)
	if err != nil || r == nil || r.head <= after {
		return headOf(r), time.Time{}, err
	}
	var oldest time.Time
	err = l.scan(ctx, v, after, func(p part, _ bool) (bool, error) {
		oldest = p.commitTime
		return false, nil
	})
	if errors.Is(err, eventlog.ErrPruned) {
		return r.head, time.Time{}, nil
	}
	return r.head, oldest, err
}

func headOf(r *run) int64 {
	if r == nil {
		return 0
	}
	return r.head
}

// last is the version's last marker (nil: nothing appended yet).
func (l *Log) last(ctx context.Context, v eventlog.Version) (*run, error) {
	s, ok, err := l.changeStreamOf(ctx, v)
	if !ok {
		return nil, err
	}
	return lastRun(ctx, s, v)
}

// Fetch is the span of whole groups after a position, up to about limit
// changes (at least one group), with its changes; nil changes when the
// first group alone is larger than limit.
func (l *Log) Fetch(ctx context.Context, v eventlog.Version, after int64, limit int) (eventlog.Span, []eventlog.Entry, error) {
	limit = max(limit, 1)
	span := eventlog.Span{After: after, Upto: after}
	var out, cur []eventlog.Entry
	open, big, started := 0, false, false
	err := l.scan(ctx, v, after, func(p part, last bool) (bool, error) {
		if !started {
			span.Resets, started = p.changes[0].Op == eventlog.OpTruncate, true
		}
		open += len(p.changes)
		if span.Groups > 0 && len(out)+open > limit {
			return false, nil // the open group waits for the next fetch
		}
		if span.Groups == 0 && open > limit {
			big, cur = true, nil
		}
		if !big {
			cur = appendEntries(cur, p)
		}
		if !last {
			return true, nil
		}
		span.Upto, span.LastCommit = p.first+int64(len(p.changes))-1, p.commitTime
		span.Groups++
		out, cur, open = append(out, cur...), nil, 0
		return !big && len(out) < limit, nil
	})
	if err != nil {
		return eventlog.Span{After: after, Upto: after}, nil, err
	}
	if big {
		return span, nil, nil
	}
	return span, out, nil
}

func appendEntries(out []eventlog.Entry, p part) []eventlog.Entry {
	for i, c := range p.changes {
		out = append(out, eventlog.Entry{Position: p.first + int64(i), CommitLSN: p.lsn, CommitTime: p.commitTime, Change: c})
	}
	return out
}

// readChunk is how many changes Read passes at a time.
const readChunk = 5000

// Read calls fn for each change of a span, in order, in chunks.
func (l *Log) Read(ctx context.Context, v eventlog.Version, span eventlog.Span, fn func([]eventlog.Entry) error) error {
	var buf []eventlog.Entry
	reached := span.After
	err := l.scan(ctx, v, span.After, func(p part, _ bool) (bool, error) {
		for i, c := range p.changes {
			pos := p.first + int64(i)
			if pos > span.Upto {
				return false, nil
			}
			buf = append(buf, eventlog.Entry{Position: pos, CommitLSN: p.lsn, CommitTime: p.commitTime, Change: c})
			reached = pos
			if len(buf) == readChunk {
				if err := fn(buf); err != nil {
					return false, err
				}
				buf = buf[:0]
			}
		}
		return reached < span.Upto, nil
	})
	if err != nil {
		return err
	}
	if len(buf) > 0 {
		if err := fn(buf); err != nil {
			return err
		}
	}
	if reached < span.Upto {
		return eventlog.ErrPruned
	}
	return nil
}

// scan calls fn with the committed changes after position after, in
// order, a part at a time, saying whether the part ends its group, until
// fn returns false or the head is reached. It returns ErrPruned when the
// stream no longer holds the changes after after.
func (l *Log) scan(ctx context.Context, v eventlog.Version, after int64, fn func(p part, last bool) (bool, error)) error {
	s, ok, err := l.changeStreamOf(ctx, v)
	if !ok {
		if err == nil && after > 0 {
			return fmt.Errorf("position %d, no change stream: %w", after, eventlog.ErrAhead)
		}
		return err
	}
	r, err := l.runFor(ctx, s, v, after)
	if err != nil || r == nil {
		return err
	}
	for r != nil {
		if r.start > after+1 || after < r.elidedUpto {
			return eventlog.ErrPruned
		}
		more, err := scanRun(ctx, s, r, after, fn)
		if err != nil || !more {
			return err
		}
		after = r.head
		l.remember(v, r)
		if r, err = runAfter(ctx, s, v, r.seq+1); err != nil {
			return err
		}
	}
	return nil
}

// runFor finds the run holding position after+1: the one after the
// last run read when after is its head (a reader following the log),
// else by bisecting the stream.
func (l *Log) runFor(ctx context.Context, s jetstream.Stream, v eventlog.Version, after int64) (*run, error) {
	l.mu.Lock()
	c, ok := l.cursors[v]
	l.mu.Unlock()
	if ok && c.head == after {
		return runAfter(ctx, s, v, c.seq+1)
	}
	r, firstSeq, err := runHolding(ctx, s, v, after+1)
	if err != nil {
		return nil, err
	}
	if r == nil {
		// A position past the head was not taken in this log (one that
		// replaced another): the reader copies the state.
		last, err := lastRun(ctx, s, v)
		if err == nil && after > headOf(last) {
			return nil, fmt.Errorf("position %d, head %d: %w", after, headOf(last), eventlog.ErrAhead)
		}
		return nil, err
	}
	if r.from < firstSeq {
		return nil, eventlog.ErrPruned
	}
	return r, nil
}

// cursor is where the last run read of a version ends.
type cursor struct {
	head int64
	seq  uint64
}

func (l *Log) remember(v eventlog.Version, r *run) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cursors[v] = cursor{head: r.head, seq: r.seq}
}

// scanRun passes a run's parts after position after to fn; a part ends
// its group where the next part is another group's, or the run ends.
func scanRun(ctx context.Context, s jetstream.Stream, r *run, after int64, fn func(p part, last bool) (bool, error)) (bool, error) {
	var held *part
	emit := func(p *part) (bool, error) {
		if held != nil {
			last := p == nil || p.system != held.system || p.lsn != held.lsn
			if more, err := fn(*held, last); err != nil || !more {
				return false, err
			}
		}
		held = p
		return true, nil
	}
	for seq := r.from; seq <= r.seq; seq++ {
		body, first := r.body, r.first
		if seq < r.seq {
			m, err := getMsg(ctx, s, seq)
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				return false, eventlog.ErrPruned
			}
			if err != nil {
				return false, fmt.Errorf("cannot read the change stream: %w", err)
			}
			if m.Header.Get(hdrTx) != r.tx {
				return false, errCorrupt // a run's messages are consecutive
			}
			if first, err = strconv.ParseInt(m.Header.Get(hdrFirst), 10, 64); err != nil {
				return false, errCorrupt
			}
			body = m.Data
		}
		parts, err := decodeParts(body, first)
		if err != nil {
			return false, err
		}
		for i := range parts {
			p := &parts[i]
			end := p.first + int64(len(p.changes)) - 1
			if end <= after {
				continue
			}
			if p.first <= after {
				p.changes = p.changes[after-p.first+1:]
				p.first = after + 1
			}
			if more, err := emit(p); err != nil || !more {
				return false, err
			}
		}
	}
	return emit(nil)
}

func getMsg(ctx context.Context, s jetstream.Stream, seq uint64) (*jetstream.RawStreamMsg, error) {
	ctx, cancel := request(ctx)
	defer cancel()
	return s.GetMsg(ctx, seq)
}
