package natslog

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// The compacted state of a version's generation is a stream with one
// subject per key (a hash of it; the row holds the key) and at most one
// message per subject: the key's last row, or a tombstone where it was
// deleted (which expires: a missing key is a deleted one). Its watermark
// (subject …w) is the position up to which it holds every change.
//
// The state is written after the change stream, by the owner's sidecar,
// which compacts the runs it appended in the background (and before
// pruning). A copy reads the watermark W, then every key's row, then the
// version's head P, and folds the changes (W, P] in: each row it read
// was written for a change at or before P (the state follows the change
// stream), and a key whose row was newer than W is among the changes
// folded in, so the result is the state at P exactly, however the
// compaction moved meanwhile. Pruning never drops changes past W.

// keyHash names a key's subject.
func keyHash(prefix string, key []eventlog.Value) string {
	sum := sha256.Sum256([]byte(eventlog.KeyString(key)))
	return prefix + ".k." + hex.EncodeToString(sum[:20])
}

func keyOf(l eventlog.Layout, c eventlog.Change) []eventlog.Value {
	if c.Key != nil {
		return c.Key
	}
	key := make([]eventlog.Value, len(l.Key))
	for i, k := range l.Key {
		if k < len(c.Row) {
			key[i] = c.Row[k]
		}
	}
	return key
}

// tombstoneTTL is how long a deleted key's tombstone stays.
const tombstoneTTL = "1h"

// compactor compacts one version's state in the background.
type compactor struct {
	mu   sync.Mutex // one compaction of the version at a time
	wake chan struct{}
}

func (l *Log) compactorOf(v eventlog.Version) *compactor {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.compacts[v]
	if c == nil {
		c = &compactor{wake: make(chan struct{}, 1)}
		l.compacts[v] = c
		l.bg.Go(func() {
			for {
				select {
				case <-l.ctx.Done():
					return
				case <-c.wake:
					// Several appends at a time: the state trails the
					// change stream by a moment, which copies fold in.
					if sleep(l.ctx, 100*time.Millisecond) != nil {
						return
					}
					// A failure is tried again by the next append's wake-up,
					// and by Prune, which returns it.
					_, _ = l.compact(l.ctx, v)
				}
			}
		})
	}
	return c
}

// compactLater wakes the version's compactor.
func (l *Log) compactLater(v eventlog.Version) {
	c := l.compactorOf(v)
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// compact writes the changes after the state's watermark into the state
// and returns the new watermark.
func (l *Log) compact(ctx context.Context, v eventlog.Version) (int64, error) {
	c := l.compactorOf(v)
	c.mu.Lock()
	defer c.mu.Unlock()
	last, err := l.last(ctx, v)
	if err != nil || last == nil {
		return 0, err
	}
	ks, err := l.ensureStateStream(ctx, v, last.gen)
	if err != nil {
		return 0, err
	}
	prefix := stateSubjects(v, last.gen)
	w, err := watermark(ctx, ks, prefix)
	if err != nil || w >= last.head {
		return w, err
	}
	var acks []jetstream.PubAckFuture
	reached := w
	err = l.scan(ctx, v, w, func(p part, _ bool) (bool, error) {
		for i, ch := range p.changes {
			pos := p.first + int64(i)
			if pos > last.head {
				return false, nil
			}
			var err error
			acks, err = l.compactChange(ctx, ks, prefix, last.layout, ch, pos, acks)
			if err != nil {
				return false, err
			}
			reached = pos
		}
		return true, nil
	})
	if err == nil {
		err = waitAcks(acks)
	}
	if err != nil || reached == w {
		return w, err
	}
	m := newMsg(prefix+".w", nil)
	m.Header.Set(hdrPos, strconv.FormatInt(reached, 10))
	rctx, cancel := request(ctx)
	defer cancel()
	if _, err := l.bgjs.PublishMsg(rctx, m); err != nil {
		return w, err
	}
	return reached, nil
}

func (l *Log) compactChange(ctx context.Context, ks jetstream.Stream, prefix string, layout eventlog.Layout, c eventlog.Change, pos int64, acks []jetstream.PubAckFuture) ([]jetstream.PubAckFuture, error) {
	if c.Op == eventlog.OpTruncate {
		if err := waitAcks(acks); err != nil {
			return nil, err
		}
		rctx, cancel := request(ctx)
		defer cancel()
		return nil, ks.Purge(rctx, jetstream.WithPurgeSubject(prefix+".k.>"))
	}
	m := newMsg(keyHash(prefix, keyOf(layout, c)), nil)
	m.Header.Set(hdrPos, strconv.FormatInt(pos, 10))
	if c.Op == eventlog.OpUpsert {
		m.Data = appendValues(nil, c.Row)
	} else {
		m.Header.Set(hdrOp, "d")
		m.Header.Set("Nats-TTL", tombstoneTTL)
	}
	ack, err := l.bgjs.PublishMsgAsync(m)
	if err != nil {
		return acks, err
	}
	acks = append(acks, ack)
	if len(acks) >= 2048 {
		return nil, waitAcks(acks)
	}
	return acks, nil
}

// watermark is the position up to which a state generation holds every
// change (0: none yet).
func watermark(ctx context.Context, ks jetstream.Stream, prefix string) (int64, error) {
	ctx, cancel := request(ctx)
	defer cancel()
	m, err := ks.GetLastMsgForSubject(ctx, prefix+".w")
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(m.Header.Get(hdrPos), 10, 64)
}

// errMoved: a first state replaced the generation a copy was reading.
var errMoved = errors.New("the state moved to a new generation")

// CopyState writes a version's compacted state to w in COPY's text
// format, the given elements of each row as columns (NULL past a row's
// end), and returns the position it is at.
func (l *Log) CopyState(ctx context.Context, v eventlog.Version, elements []int, w io.Writer) (int64, error) {
	for attempt := 0; ; attempt++ {
		rows, at, err := l.stateAt(ctx, v)
		if (errors.Is(err, errMoved) || errors.Is(err, eventlog.ErrPruned) || transient(err)) && attempt < 100 {
			if err := sleep(ctx, 50*time.Millisecond); err != nil {
				return 0, err
			}
			continue
		}
		if err != nil {
			return 0, err
		}
		return at, writeCopy(w, rows, elements)
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// stateAt reads the state as of the version's head: see the top of the file.
func (l *Log) stateAt(ctx context.Context, v eventlog.Version) (map[string][]eventlog.Value, int64, error) {
	rows := map[string][]eventlog.Value{}
	first, err := l.last(ctx, v)
	if err != nil || first == nil {
		if err != nil {
			err = fmt.Errorf("cannot read the change stream's head: %w", err)
		}
		return rows, 0, err
	}
	prefix := stateSubjects(v, first.gen)
	rctx, cancel := request(ctx)
	defer cancel()
	ks, err := l.js.Stream(rctx, stateStream(v, first.gen))
	if err == nil {
		err = waitLeader(ctx, ks)
	}
	var w int64
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound) && first.gen == 1:
		// never compacted: everything is in the change stream
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return nil, 0, errMoved
	case err != nil:
		return nil, 0, fmt.Errorf("cannot open the state stream: %w", err)
	default:
		if w, err = watermark(ctx, ks, prefix); err != nil {
			return nil, 0, fmt.Errorf("cannot read the state's watermark: %w", err)
		}
		if err := readState(ctx, l.js, ks, prefix, rows); err != nil {
			return nil, 0, fmt.Errorf("cannot read the state: %w", err)
		}
	}
	now, err := l.last(ctx, v)
	if err != nil {
		return nil, 0, fmt.Errorf("cannot read the change stream's head: %w", err)
	}
	if now.gen != first.gen {
		return nil, 0, errMoved
	}
	err = l.scan(ctx, v, w, func(p part, _ bool) (bool, error) {
		for i, c := range p.changes {
			if p.first+int64(i) > now.head {
				return false, nil
			}
			switch c.Op {
			case eventlog.OpTruncate:
				clear(rows)
			case eventlog.OpUpsert:
				rows[keyHash(prefix, keyOf(now.layout, c))] = c.Row
			case eventlog.OpDelete:
				delete(rows, keyHash(prefix, keyOf(now.layout, c)))
			}
		}
		return true, nil
	})
	if err != nil && !errors.Is(err, eventlog.ErrPruned) {
		err = fmt.Errorf("cannot read the changes after the state: %w", err)
	}
	return rows, now.head, err
}

// readState reads every key's message of a state stream.
func readState(ctx context.Context, js jetstream.JetStream, ks jetstream.Stream, prefix string, rows map[string][]eventlog.Value) error {
	info, err := streamInfo(ctx, ks)
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return errMoved
		}
		return err
	}
	if info.State.Msgs == 0 {
		return nil
	}
	rctx, cancel := request(ctx)
	defer cancel()
	cons, err := js.OrderedConsumer(rctx, info.Config.Name, jetstream.OrderedConsumerConfig{
		// The stream keeps one message per key: all of them are the last
		// ones (a key written again meanwhile comes again, newer), read in
		// sequence order without the server looking up every subject.
		FilterSubjects: []string{prefix + ".k.>"}, DeliverPolicy: jetstream.DeliverAllPolicy,
		InactiveThreshold: time.Minute}) // gone soon after the copy
	if err != nil {
		return err
	}
	for {
		batch, err := cons.Fetch(10000, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return err
		}
		n := 0
		done := false
		for m := range batch.Messages() {
			n++
			meta, err := m.Metadata()
			if err != nil {
				return err
			}
			if m.Headers().Get(hdrOp) == "d" {
				delete(rows, m.Subject())
			} else {
				row, err := decodeRow(m.Data())
				if err != nil {
					return err
				}
				rows[m.Subject()] = row
			}
			done = meta.NumPending == 0
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return err
		}
		if done || n == 0 {
			return nil
		}
	}
}

// writeCopy writes rows in COPY's text format.
func writeCopy(w io.Writer, rows map[string][]eventlog.Value, elements []int) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	var line []byte
	for _, row := range rows {
		line = line[:0]
		for i, e := range elements {
			if i > 0 {
				line = append(line, '\t')
			}
			if e >= len(row) || row[e] == nil {
				line = append(line, '\\', 'N')
				continue
			}
			line = appendCopyText(line, *row[e])
		}
		line = append(line, '\n')
		if _, err := bw.Write(line); err != nil {
			return err
		}
	}
	return bw.Flush()
}

func appendCopyText(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			b = append(b, '\\', '\\')
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			b = append(b, c)
		}
	}
	return b
}

// transient: JetStream did not answer for now (a stream or consumer
// electing its leader, a node restarting); asking again will do.
func transient(err error) bool {
	return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled)
}
