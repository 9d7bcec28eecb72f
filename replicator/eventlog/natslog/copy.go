package natslog

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// A copy at the version's head P, streamed (the state is never held
// whole):
//
//  1. the watermark W (with the chunks that are current, and where keys'
//     messages are void);
//  2. every key's message, kept in memory: the keys changed since the
//     first state (an ordered consumer in sequence order: the stream
//     holds one message per key, so each is the key's last; a key written
//     again meanwhile comes again, newer);
//  3. the head P, then the changes (W, P] folded into those keys;
//  4. the chunks' rows, each written unless its key is among those kept
//     (whose value at P is the kept one, or none);
//  5. the kept keys' rows.
//
// Each key message read was written for a change at or before P (the
// state follows the change stream); a key whose message was newer than W
// is among the changes folded in; a key with no message and no change in
// (W, P] has its chunk's row at P (chunks are the first state, at or
// before W, and never change). A truncate after W voids every chunk and
// every key read. So the result is the state at P exactly, however the
// compaction moved meanwhile. The memory a copy takes is the keys changed
// since the first state and the changes not yet compacted, not the state.

// errMoved: a first state replaced the generation a copy was reading, or
// a truncate removed the chunks it was reading.
var errMoved = errors.New("the state moved to a new generation")

// CopyState writes a version's compacted state to w in COPY's text
// format, the given elements of each row as columns (NULL past a row's
// end), and returns the position it is at. It starts again where the
// state moved under it before it wrote anything; after that, the caller
// does (its COPY is incomplete).
func (l *Log) CopyState(ctx context.Context, v eventlog.Version, elements []int, w io.Writer) (int64, error) {
	cw := newCopyWriter(w, elements)
	for attempt := 0; ; attempt++ {
		at, err := l.copyAt(ctx, v, cw)
		if err == nil {
			return at, cw.bw.Flush()
		}
		if cw.wrote {
			if errors.Is(err, errMoved) {
				return 0, fmt.Errorf("the event log's state of %s version %d changed while it was copied (a new first state or a truncate): copy again: %w",
					v.Publication, v.Number, err)
			}
			return 0, err
		}
		if (errors.Is(err, errMoved) || errors.Is(err, eventlog.ErrPruned) || transient(err)) && attempt < 100 {
			cw.reset()
			if err := sleep(ctx, 50*time.Millisecond); err != nil {
				return 0, err
			}
			continue
		}
		return 0, err
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

// keyed is where a kept key's row is in its copy's rowArena, encoded as
// in the state's messages (appendValues); gone for a deleted key.
type keyed struct {
	block, off, n int32
	gone          bool
}

// keptKeys are the keys a copy holds: every key changed since the first
// state, so each should cost its row's bytes and little more. The rows go
// one after another into blocks of rowBlock bytes (one of its own for a
// larger row): no allocation, slice header or value pointer per row.
type keptKeys struct {
	keys   map[keyID]keyed
	blocks [][]byte
}

const rowBlock = 1 << 20

func newKeptKeys() *keptKeys { return &keptKeys{keys: map[keyID]keyed{}} }

// put keeps row (encoded) for id, in place of what id had.
func (k *keptKeys) put(id keyID, row []byte) {
	last := len(k.blocks) - 1
	if len(row) > rowBlock {
		k.blocks = append(k.blocks, append([]byte(nil), row...))
		k.keys[id] = keyed{block: int32(len(k.blocks) - 1), n: int32(len(row))}
		return
	}
	if last < 0 || len(k.blocks[last])+len(row) > cap(k.blocks[last]) {
		k.blocks = append(k.blocks, make([]byte, 0, rowBlock))
		last++
	}
	b := k.blocks[last]
	k.keys[id] = keyed{block: int32(last), off: int32(len(b)), n: int32(len(row))}
	k.blocks[last] = append(b, row...)
}

// drop marks id deleted.
func (k *keptKeys) drop(id keyID) { k.keys[id] = keyed{gone: true} }

// clear forgets every key (a truncate).
func (k *keptKeys) clear() {
	clear(k.keys)
	k.blocks = nil
}

func (k *keptKeys) has(id keyID) bool {
	_, ok := k.keys[id]
	return ok
}

// rows calls f with every kept row that is not deleted, decoded.
func (k *keptKeys) rows(f func([]eventlog.Value) error) error {
	for _, e := range k.keys {
		if e.gone {
			continue
		}
		row, err := decodeRow(k.blocks[e.block][e.off : e.off+e.n])
		if err != nil {
			return err
		}
		if err := f(row); err != nil {
			return err
		}
	}
	return nil
}

// copyAt writes the state as of the version's head: see the top of the file.
func (l *Log) copyAt(ctx context.Context, v eventlog.Version, cw *copyWriter) (int64, error) {
	first, err := l.last(ctx, v)
	if err != nil || first == nil {
		if err != nil {
			err = fmt.Errorf("cannot read the change stream's head: %w", err)
		}
		return 0, err
	}
	prefix := stateSubjects(v, first.gen)
	rctx, cancel := request(ctx)
	defer cancel()
	ks, err := l.js.Stream(rctx, stateStream(v, first.gen))
	if err == nil {
		err = waitLeader(ctx, ks)
	}
	keys := newKeptKeys()
	var mark stateMark
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound) && first.gen == 1:
		// never compacted: everything is in the change stream
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return 0, errMoved
	case err != nil:
		return 0, fmt.Errorf("cannot open the state stream: %w", err)
	default:
		if mark, err = watermark(ctx, ks, prefix); err != nil {
			return 0, fmt.Errorf("cannot read the state's watermark: %w", err)
		}
		if err := readKeys(ctx, l.js, ks, prefix, mark.void, keys); err != nil {
			return 0, fmt.Errorf("cannot read the state: %w", err)
		}
	}
	now, err := l.last(ctx, v)
	if err != nil {
		return 0, fmt.Errorf("cannot read the change stream's head: %w", err)
	}
	if now.gen != first.gen {
		return 0, errMoved
	}
	chunks := mark.chunks
	var scratch []byte
	err = l.scan(ctx, v, mark.pos, func(p part, _ bool) (bool, error) {
		for i, c := range p.changes {
			if p.first+int64(i) > now.head {
				return false, nil
			}
			switch c.Op {
			case eventlog.OpTruncate:
				keys.clear()
				chunks = 0
			case eventlog.OpUpsert:
				scratch = appendValues(scratch[:0], c.Row)
				keys.put(keyIDOf(keyOf(now.layout, c)), scratch)
			case eventlog.OpDelete:
				keys.drop(keyIDOf(keyOf(now.layout, c)))
			}
		}
		return true, nil
	})
	if err != nil {
		if !errors.Is(err, eventlog.ErrPruned) {
			err = fmt.Errorf("cannot read the changes after the state: %w", err)
		}
		return 0, err
	}
	copyFolded()
	if err := copyChunks(ctx, ks, prefix, chunks, keys, cw); err != nil {
		return 0, err
	}
	if err := keys.rows(cw.row); err != nil {
		return 0, err
	}
	return now.head, nil
}

// copyFolded is called when a copy has read the keys and folded the
// changes after the watermark: a benchmark measures what it holds there.
var copyFolded = func() {}

// readKeys reads every key's message of a state stream (those below void
// are void: a truncate's purge may not have run).
func readKeys(ctx context.Context, js jetstream.JetStream, ks jetstream.Stream, prefix string, void int64, keys *keptKeys) error {
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
	// No key's message (a first state no change has followed yet): a
	// fetch would wait for one.
	if ci, err := cons.Info(rctx); err != nil {
		return err
	} else if ci.NumPending == 0 {
		return nil
	}
	var last uint64 // the stream sequence of the last key's message read
	for fetch, came := 0, time.Now(); ; fetch++ {
		batch, err := cons.Fetch(10000, jetstream.FetchMaxWait(keysFetchWait(fetch)))
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
			done = meta.NumPending == 0
			last = meta.Sequence.Stream
			if err := readKey(m, void, keys); err != nil {
				return err
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return err
		}
		if done {
			return nil
		}
		if n > 0 {
			came = time.Now()
			continue
		}
		// A fetch that timed out (a busy server, a leader election), or
		// whose messages were lost on the way (a reconnect), says nothing
		// of what is left: every key must be read, or the copy writes
		// chunks' rows where the keys' are newer. The stream's leader
		// says whether a key's message comes after the last one read;
		// the next fetch starts after it.
		if time.Since(came) > stallAfter {
			return fmt.Errorf("no key's message came for %v, with some left", stallAfter)
		}
		if more, err := keysAfter(ctx, ks, prefix, last); err != nil || !more {
			return err
		}
	}
}

// keysAfter says whether the state stream holds a key's message after
// sequence seq (a state stream is read from its leader only).
func keysAfter(ctx context.Context, ks jetstream.Stream, prefix string, seq uint64) (bool, error) {
	rctx, cancel := request(ctx)
	defer cancel()
	_, err := ks.GetMsg(rctx, seq+1, jetstream.WithGetMsgSubject(prefix+".k.>"))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	return err == nil, err
}

// keysFetchWait is how long the nth fetch of the state's keys waits for
// messages (a variable: a test makes fetches time out). An ordered
// consumer makes its consumer again at every fetch, after the last
// message it got: a fetch that timed out loses nothing.
var keysFetchWait = func(int) time.Duration { return time.Second }

// stallAfter bounds how long fetches may bring nothing while the
// consumer says messages are left.
const stallAfter = 30 * time.Second

func readKey(m jetstream.Msg, void int64, keys *keptKeys) error {
	if void > 0 {
		pos, err := parsePos(m.Headers())
		if err != nil {
			return err
		}
		if pos < void {
			return nil
		}
	}
	id, err := keyIDOfSubject(m.Subject())
	if err != nil {
		return err
	}
	if m.Headers().Get(hdrOp) == "d" {
		keys.drop(id)
		return nil
	}
	keys.put(id, m.Data())
	return nil
}

func parsePos(h nats.Header) (int64, error) {
	pos, err := strconv.ParseInt(h.Get(hdrPos), 10, 64)
	if err != nil {
		return 0, errCorrupt
	}
	return pos, nil
}

// copyChunks writes the rows of the first n chunks whose key is not kept.
// A chunk gone (a truncate or a new first state since the copy began) is
// errMoved.
func copyChunks(ctx context.Context, ks jetstream.Stream, prefix string, n int, keys *keptKeys, cw *copyWriter) error {
	for i := 1; i <= n; i++ {
		rctx, cancel := request(ctx)
		m, err := ks.GetLastMsgForSubject(rctx, chunkOf(prefix, i))
		cancel()
		if errors.Is(err, jetstream.ErrMsgNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
			return errMoved
		}
		if err != nil {
			return fmt.Errorf("cannot read the state: %w", err)
		}
		if err := copyChunk(m.Data, keys, cw); err != nil {
			return err
		}
	}
	return nil
}

// copyChunk writes a chunk's rows (its keys and rows, one after the other).
func copyChunk(body []byte, keys *keptKeys, cw *copyWriter) error {
	r := &reader{b: body}
	for len(r.b) > 0 && r.err == nil {
		key := r.values()
		row := r.values()
		if r.err != nil {
			break
		}
		if len(keys.keys) > 0 && keys.has(keyIDOf(key)) {
			continue
		}
		if err := cw.row(row); err != nil {
			return err
		}
	}
	return r.err
}

// copyWriter writes rows in COPY's text format, and knows whether any
// reached the writer under it.
type copyWriter struct {
	w        io.Writer
	bw       *bufio.Writer
	elements []int
	line     []byte
	wrote    bool
}

func newCopyWriter(w io.Writer, elements []int) *copyWriter {
	cw := &copyWriter{w: w, elements: elements}
	cw.bw = bufio.NewWriterSize(passed{cw}, 64<<10)
	return cw
}

// reset drops what is buffered: nothing reached the writer yet.
func (cw *copyWriter) reset() { cw.bw.Reset(passed{cw}) }

// passed is the writer under the buffer: it notes that rows went out.
type passed struct{ cw *copyWriter }

func (p passed) Write(b []byte) (int, error) {
	p.cw.wrote = true
	return p.cw.w.Write(b)
}

func (cw *copyWriter) row(row []eventlog.Value) error {
	line := cw.line[:0]
	for i, e := range cw.elements {
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
	cw.line = line
	_, err := cw.bw.Write(line)
	return err
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
