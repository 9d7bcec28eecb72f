package natslog

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// The compacted state of a version's generation is a stream of:
//
//   - chunks (subjects …b.1, …b.2, …): the first state's rows, many a
//     message, written once by Fill (fill.go) and never changed;
//   - one message per key changed after the first state (subject …k.<a
//     hash of the key>; the row holds the key), at most one per subject:
//     the key's last row, or a tombstone where it was deleted. A key's
//     message takes precedence over a chunk's row of the same key. A
//     tombstone stays while the generation has chunks (a chunk may hold
//     the key), and expires after an hour when it has none (a missing key
//     is a deleted one then);
//   - the watermark (subject …w, stateMark): the position up to which the
//     state holds every change, how many chunks are current (none after a
//     truncate), and below which position keys' messages are void (the
//     last truncate: its purge may not have run).
//
// The state is written after the change stream, by the owner's sidecar,
// which compacts the runs it appended in the background, in bounded and
// paced passes (pace.go), and before pruning. Each compaction's messages
// are a chain: the first expects the stream's last sequence as the
// compaction read it with the watermark, each next one the message id of
// the one before. Another writer's message in between (an instance that
// lost the lease still compacting what it read before the new active one
// moved the state on) breaks the chain for good: of two compactions at
// once only one's messages land after the other's, never mixed, and one
// that read a watermark since moved writes nothing. The copy is in
// copy.go.

// keyHash names a key's subject: prefix.k. and the key's keyID in hex.
func keyHash(prefix string, key []eventlog.Value) string {
	id := keyIDOf(key)
	return prefix + ".k." + hex.EncodeToString(id[:])
}

// keyID identifies a key in a state: the first 20 bytes of the SHA-256 of
// its text.
type keyID [20]byte

func keyIDOf(key []eventlog.Value) keyID {
	sum := sha256.Sum256([]byte(eventlog.KeyString(key)))
	return keyID(sum[:20])
}

// keyIDOfSubject is the keyID a key's subject names.
func keyIDOfSubject(subject string) (keyID, error) {
	var id keyID
	const n = 2 * len(id)
	if len(subject) < n {
		return id, errCorrupt
	}
	if _, err := hex.Decode(id[:], []byte(subject[len(subject)-n:])); err != nil {
		return id, errCorrupt
	}
	return id, nil
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
	// draining: the background passes have not reached the head yet
	// (Prune leaves them to it).
	draining atomic.Bool
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
					reached, head, err := l.compactPass(l.ctx, v, l.background)
					c.draining.Store(err == nil && reached < head)
					if c.draining.Load() {
						l.compactLater(v) // the next pass, after the pause
					}
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

// compact writes every change after the state's watermark up to the head
// into the state, at full speed (its caller waits), and returns the new
// watermark.
func (l *Log) compact(ctx context.Context, v eventlog.Version) (int64, error) {
	reached, _, err := l.compactPass(ctx, v, fullPass)
	return reached, err
}

// pruneMark compacts for Prune and returns the watermark: while the
// background passes drain a backlog, the one they reached (compacting
// the rest at full speed is what their pacing avoids; the next Prune
// drops more), else the head's, at full speed.
func (l *Log) pruneMark(ctx context.Context, v eventlog.Version) (int64, error) {
	if !l.compactorOf(v).draining.Load() {
		return l.compact(ctx, v)
	}
	last, err := l.last(ctx, v)
	if err != nil || last == nil {
		return 0, err
	}
	ks, err := l.ensureStateStream(ctx, v, last.gen)
	if err != nil {
		return 0, err
	}
	mark, err := watermark(ctx, ks, stateSubjects(v, last.gen))
	return mark.pos, err
}

// compactPass writes the changes after the state's watermark into the
// state, as p says (pace.go), and returns the new watermark and the head
// it compacted towards.
func (l *Log) compactPass(ctx context.Context, v eventlog.Version, p pass) (int64, int64, error) {
	c := l.compactorOf(v)
	c.mu.Lock()
	defer c.mu.Unlock()
	last, err := l.last(ctx, v)
	if err != nil || last == nil {
		return 0, 0, err
	}
	ks, err := l.ensureStateStream(ctx, v, last.gen)
	if err != nil {
		return 0, 0, err
	}
	prefix := stateSubjects(v, last.gen)
	// The stream's last sequence before the watermark: a write in between
	// and this compaction's first message is refused.
	info, err := streamInfo(ctx, ks)
	if err != nil {
		return 0, 0, err
	}
	mark, err := watermark(ctx, ks, prefix)
	stateRead(l)
	if err != nil || mark.pos >= last.head {
		return mark.pos, last.head, err
	}
	end := last.head
	if p.limit > 0 && mark.pos+p.limit < end {
		end = mark.pos + p.limit
		c.draining.Store(true) // before its watermark shows
	}
	sw := newStateWriter(l.bgjs, info.State.LastSeq)
	reached, err := l.compactChanges(ctx, v, ks, sw, prefix, last.layout, mark, end, newPacer(p, last.head-mark.pos))
	if err == nil && reached.pos > mark.pos {
		_, err = sw.publish(markMsg(prefix, reached))
	}
	if err == nil {
		err = sw.wait()
	}
	if err != nil {
		return mark.pos, last.head, err
	}
	return reached.pos, last.head, nil
}

// compactChanges writes the state's messages for the changes after
// mark up to end, and returns the watermark they reach.
func (l *Log) compactChanges(ctx context.Context, v eventlog.Version, ks jetstream.Stream, sw *stateWriter, prefix string, layout eventlog.Layout, mark stateMark, end int64, pace *pacer) (stateMark, error) {
	reached := mark
	err := l.scan(ctx, v, mark.pos, func(p part, _ bool) (bool, error) {
		for i, ch := range p.changes {
			pos := p.first + int64(i)
			if pos > end {
				return false, nil
			}
			if (pos-mark.pos-1)%paceBatch == 0 {
				if err := pace.wait(ctx, paceBatch); err != nil {
					return false, err
				}
			}
			if err := l.compactChange(ctx, ks, sw, prefix, layout, ch, pos, &reached); err != nil {
				return false, err
			}
			reached.pos = pos
		}
		return true, nil
	})
	return reached, err
}

// stateRead is called when a compaction has read the watermark: a test
// holds a compaction there while another instance moves the state on.
var stateRead = func(*Log) {}

// compactChange writes the state's message for a change at pos. A
// truncate ends the compaction's writes so far with a watermark at it,
// then purges what is before it.
func (l *Log) compactChange(ctx context.Context, ks jetstream.Stream, sw *stateWriter, prefix string, layout eventlog.Layout, c eventlog.Change, pos int64, mark *stateMark) error {
	if c.Op == eventlog.OpTruncate {
		*mark = stateMark{pos: pos, void: pos}
		_, err := sw.publish(markMsg(prefix, *mark))
		if err == nil {
			err = sw.wait()
		}
		if err != nil {
			return err
		}
		seq := sw.lastSeq
		// Only what is before this compaction's watermark goes: older rows
		// (void now) and older chunks, never a message written after it.
		if err := purge(ctx, ks, jetstream.WithPurgeSubject(prefix+".k.>"), jetstream.WithPurgeSequence(seq)); err != nil {
			return err
		}
		return purge(ctx, ks, jetstream.WithPurgeSubject(prefix+".b.>"), jetstream.WithPurgeSequence(seq))
	}
	m := newMsg(keyHash(prefix, keyOf(layout, c)), nil)
	m.Header.Set(hdrPos, strconv.FormatInt(pos, 10))
	if c.Op == eventlog.OpUpsert {
		m.Data = appendValues(nil, c.Row)
	} else {
		m.Header.Set(hdrOp, "d")
		if mark.chunks == 0 {
			m.Header.Set("Nats-TTL", tombstoneTTL)
		}
	}
	_, err := sw.publish(m)
	return err
}

// stateWriter publishes one compaction's messages as a chain (see the top
// of the file), a window of them unacknowledged at a time.
type stateWriter struct {
	js      jetstream.JetStream
	token   string
	n       int
	expect  uint64
	acks    []jetstream.PubAckFuture
	lastSeq uint64 // of the last message acknowledged
}

func newStateWriter(js jetstream.JetStream, lastSeq uint64) *stateWriter {
	id := make([]byte, 8)
	rand.Read(id)
	return &stateWriter{js: js, token: hex.EncodeToString(id), expect: lastSeq}
}

func (w *stateWriter) publish(m *nats.Msg) (jetstream.PubAckFuture, error) {
	opts := []jetstream.PublishOpt{jetstream.WithMsgID(w.token + "/" + strconv.Itoa(w.n))}
	if w.n == 0 {
		opts = append(opts, jetstream.WithExpectLastSequence(w.expect))
	} else {
		opts = append(opts, jetstream.WithExpectLastMsgID(w.token+"/"+strconv.Itoa(w.n-1)))
	}
	w.n++
	ack, err := w.js.PublishMsgAsync(m, opts...)
	if err != nil {
		return nil, fmt.Errorf("cannot write the state: %w", err)
	}
	w.acks = append(w.acks, ack)
	if len(w.acks) >= 2048 {
		return ack, w.wait()
	}
	return ack, nil
}

// wait waits for every message sent. A broken chain is ErrStateFenced.
func (w *stateWriter) wait() error {
	acks := w.acks
	w.acks = nil
	for _, a := range acks {
		select {
		case ack := <-a.Ok():
			w.lastSeq = ack.Sequence
		case err := <-a.Err():
			if isWrongLastSequence(err) || isWrongLastMsgID(err) {
				return ErrStateFenced
			}
			return fmt.Errorf("cannot write the state: %w", err)
		}
	}
	return nil
}

// ErrStateFenced: another process wrote the state while a compaction
// wrote it; the compaction's writes from there on were refused, and the
// next one starts from what the state holds then.
var ErrStateFenced = errors.New("another process wrote the state meanwhile: its compaction stopped")

// errCodeWrongLastMsgID: a publish expected another last message id.
const errCodeWrongLastMsgID jetstream.ErrorCode = 10070

func isWrongLastMsgID(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeWrongLastMsgID
}

// stateMark is a state generation's watermark.
type stateMark struct {
	pos    int64 // every change up to here is in the state (0: none yet)
	chunks int   // the first state's chunks (…b.1 to …b.n) that are current
	void   int64 // keys' messages below this position are void (a truncate)
}

const (
	hdrChunks = "Rejot-Chunks" // a watermark's stateMark.chunks
	hdrVoid   = "Rejot-Void"   // a watermark's stateMark.void
)

func markMsg(prefix string, m stateMark) *nats.Msg {
	msg := newMsg(prefix+".w", nil)
	msg.Header.Set(hdrPos, strconv.FormatInt(m.pos, 10))
	if m.chunks > 0 {
		msg.Header.Set(hdrChunks, strconv.Itoa(m.chunks))
	}
	if m.void > 0 {
		msg.Header.Set(hdrVoid, strconv.FormatInt(m.void, 10))
	}
	return msg
}

func chunkOf(prefix string, n int) string { return prefix + ".b." + strconv.Itoa(n) }

// watermark reads a state generation's watermark (zero: none yet).
func watermark(ctx context.Context, ks jetstream.Stream, prefix string) (stateMark, error) {
	ctx, cancel := request(ctx)
	defer cancel()
	m, err := ks.GetLastMsgForSubject(ctx, prefix+".w")
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return stateMark{}, nil
	}
	if err != nil {
		return stateMark{}, err
	}
	var mark stateMark
	if mark.pos, err = strconv.ParseInt(m.Header.Get(hdrPos), 10, 64); err != nil {
		return mark, errCorrupt
	}
	if c := m.Header.Get(hdrChunks); c != "" {
		if mark.chunks, err = strconv.Atoi(c); err != nil {
			return mark, errCorrupt
		}
	}
	if v := m.Header.Get(hdrVoid); v != "" {
		if mark.void, err = strconv.ParseInt(v, 10, 64); err != nil {
			return mark, errCorrupt
		}
	}
	return mark, nil
}
