package natslog

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// A first state goes into a new state generation: a stream of its own,
// written while the append runs, which the run's marker makes current.
// Until then copies read the old generation; an append that fails
// leaves the new one behind, and the next first state makes it anew. The
// run records the first state's positions as elided: the change stream
// does not hold them, and a reader that needs them copies the state
// (eventlog.ErrPruned), as it does after pruning.
type fillTx struct {
	id         groupID
	gen        int
	stream     jetstream.Stream
	subjects   string
	from, upto int64
	rows       int    // rows sent since the first state began (or its last truncate)
	buf        []byte // rows not sent yet: keys and rows, one after the other
	chunks     int    // chunk messages sent
	acks       []jetstream.PubAckFuture
	// marking: the run's marker was sent, and may have landed whatever
	// the answer (a timeout); committed: it did. The stream of a first
	// state whose marker landed is the version's state: never dropped.
	marking, committed bool
}

// A first state's rows go into the generation's stream in chunks
// (subjects …b.1, …b.2, …), many rows a message, sent without waiting for
// each ack: at most fillWindow chunks are unacknowledged at a time, so the
// memory a first state takes is bounded whatever its size. Changes after
// the first state are per-key messages, which take precedence over a
// chunk's row of the same key (state.go).
const fillWindow = 16

// Fill appends part of a version's first state; see eventlog.Tx.
func (t *Tx) Fill(ctx context.Context, g eventlog.Group) error {
	vt, err := t.version(ctx, g.Version)
	if err != nil {
		return err
	}
	id := groupID{g.System, g.CommitLSN}
	if vt.fill == nil {
		if err := vt.startFill(ctx, t, &g); err != nil {
			return err
		}
	} else if vt.fill.id != id {
		return fmt.Errorf("%s version %d: two first states in one append", g.Version.Publication, g.Version.Number)
	}
	f := vt.fill
	for _, c := range g.Changes {
		vt.now.head++
		switch c.Op {
		case eventlog.OpTruncate:
			if err := f.truncate(ctx); err != nil {
				return err
			}
		case eventlog.OpUpsert:
			if err := f.put(t.log, vt.now.layout, c); err != nil {
				return err
			}
		default:
			return fmt.Errorf("a first state holds upserts only, not %q", c.Op)
		}
	}
	f.upto = vt.now.head
	vt.first = vt.now.head + 1
	return nil
}

// truncate empties what the first state sent so far.
func (f *fillTx) truncate(ctx context.Context) error {
	f.buf = f.buf[:0]
	if f.rows == 0 {
		return nil
	}
	if err := f.wait(0); err != nil {
		return err
	}
	if err := purge(ctx, f.stream); err != nil {
		return err
	}
	f.rows, f.chunks = 0, 0
	return nil
}

// startFill sends what the run holds so far and makes the new state
// generation.
func (vt *versionTx) startFill(ctx context.Context, t *Tx, g *eventlog.Group) error {
	if err := checkLayout(g.Layout); err != nil {
		return err
	}
	if err := vt.send(ctx, t); err != nil {
		return err
	}
	var gen int
	var s jetstream.Stream
	for range 3 {
		gen = nextGen(vt.now.gen)
		var err error
		if s, err = t.log.newStateStream(ctx, g.Version, gen, vt.now.lastSeq); err == nil {
			break
		} else if !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return err
		}
	}
	if s == nil {
		return fmt.Errorf("cannot make a state stream of %s version %d: every generation drawn was taken", g.Version.Publication, g.Version.Number)
	}
	id := groupID{g.System, g.CommitLSN}
	vt.fill = &fillTx{id: id, gen: gen, stream: s, subjects: stateSubjects(g.Version, gen), from: vt.now.head, upto: vt.now.head}
	vt.now.gen = gen
	vt.now.layout = eventlog.Layout{Columns: g.Layout.Columns, Key: slices.Clone(g.Layout.Key)}
	// The version's state is as of this point: only what commits after
	// it is new, lower or not than what the system appended before (an
	// owner that failed over to a standby that was behind).
	vt.now.appended[g.System] = g.CommitLSN
	if !vt.groups[id] {
		vt.groups[id] = true
		vt.fresh++
	}
	return nil
}

// put adds a first state's row to the chunk being filled, sending the
// chunk when it is full.
func (f *fillTx) put(l *Log, layout eventlog.Layout, c eventlog.Change) error {
	if len(c.Row) > layout.Columns {
		return fmt.Errorf("a row of %d values does not fit a state of %d", len(c.Row), layout.Columns)
	}
	before := len(f.buf)
	f.buf = appendValues(f.buf, keyOf(layout, c))
	f.buf = appendValues(f.buf, c.Row)
	f.rows++
	if len(f.buf) <= l.chunk {
		return nil
	}
	if before == 0 { // one row alone is the chunk
		return f.sendChunk(l, len(f.buf))
	}
	return f.sendChunk(l, before) // the row starts the next chunk
}

// sendChunk sends the first n bytes of the buffer as a chunk, not waiting
// for its ack unless the window is full.
func (f *fillTx) sendChunk(l *Log, n int) error {
	if n == 0 {
		return nil
	}
	if err := f.wait(fillWindow - 1); err != nil {
		return err
	}
	f.chunks++
	m := newMsg(chunkOf(f.subjects, f.chunks), slices.Clone(f.buf[:n]))
	ack, err := l.js.PublishMsgAsync(m)
	if err != nil {
		return fmt.Errorf("cannot write the state: %w", err)
	}
	f.acks = append(f.acks, ack)
	f.buf = append(f.buf[:0], f.buf[n:]...)
	return nil
}

// wait waits for the oldest acks until at most left are outstanding.
func (f *fillTx) wait(left int) error {
	n := max(len(f.acks)-left, 0)
	err := waitAcks(f.acks[:n])
	f.acks = append(f.acks[:0], f.acks[n:]...)
	return err
}

func waitAcks(acks []jetstream.PubAckFuture) error {
	for _, a := range acks {
		select {
		case <-a.Ok():
		case err := <-a.Err():
			return fmt.Errorf("cannot write the state: %w", err)
		}
	}
	return nil
}

// finish sends the last chunk, waits for the chunks and records the
// generation's watermark: it holds every change up to the first state's
// end, and how many chunks.
func (f *fillTx) finish(ctx context.Context, l *Log, vt *versionTx) error {
	ctx, cancel := request(ctx)
	defer cancel()
	if err := f.sendChunk(l, len(f.buf)); err != nil {
		return err
	}
	if err := f.wait(0); err != nil {
		return err
	}
	m := markMsg(f.subjects, stateMark{pos: f.upto, chunks: f.chunks})
	_, err := l.js.PublishMsg(ctx, m)
	return err
}

// drop removes a first state that was abandoned, unless its marker
// landed: an append of several versions whose later marker failed, or a
// marker whose answer was lost. Where that cannot be told (the change
// stream does not answer), the stream stays: space is lost, not the
// version's state.
func (f *fillTx) drop(ctx context.Context, l *Log, v eventlog.Version) {
	waitAcks(f.acks)
	if f.committed {
		return
	}
	if f.marking {
		r, err := l.last(ctx, v)
		if err != nil || r != nil && r.gen == f.gen {
			return
		}
	}
	// Left behind if this fails: the next first state removes it.
	_ = l.deleteStream(ctx, f.stream.CachedInfo().Config.Name)
}

// nextGen is the generation a first state after gen goes to: later than
// gen, and not gen+1 but a number of its own, so that two first states of
// one version at once (two instances filling it while the lease moves)
// write two streams and never each other's. Only one's marker commits;
// the other's stream is dropped (dropStates, or its own drop). A
// variable: a test draws the same number twice.
var nextGen = func(gen int) int {
	return gen + 1 + rand.IntN(genSpread)
}

// genSpread bounds the numbers nextGen skips: two first states from the
// same generation pick the same one once in genSpread.
const genSpread = 1 << 30

// dropStates removes, once the marker at sequence marker switched the
// version from generation old to now, the state generations that can no
// longer be current: old, and every first state started before the
// marker (its metadata says after what it started), whose run expects a
// change stream that has moved past it and can never commit: another
// instance's still being written (the lease moved while both filled), or
// one whose append failed. A first state started after the marker (an
// instance that took the lease since, and read this marker) is kept:
// its run may commit. A copy still reading a dropped generation fails and
// starts again on the current one.
func (l *Log) dropStates(ctx context.Context, v eventlog.Version, old, now int, marker uint64) {
	// Only space is lost if this fails; nothing reads an old generation.
	_ = l.deleteStream(ctx, stateStream(v, old))
	lctx, cancel := request(ctx)
	defer cancel()
	list := l.js.ListStreams(lctx, jetstream.WithStreamListSubject("rejot.state."+versionToken(v)+".>"))
	var dead []string
	for info := range list.Info() {
		name := info.Config.Name
		if name == stateStream(v, now) || !strings.HasPrefix(name, stateStreamPrefix(v)) {
			continue
		}
		if after, err := strconv.ParseUint(info.Config.Metadata[metaAfter], 10, 64); err == nil {
			if after < marker {
				dead = append(dead, name)
			}
			continue
		}
		// Without the metadata: the first generation (made by a
		// compaction), or one made before first states had it, when
		// generations were consecutive: those before now are done.
		if gen, err := strconv.Atoi(strings.TrimPrefix(name, stateStreamPrefix(v))); err == nil && gen < now {
			dead = append(dead, name)
		}
	}
	for _, name := range dead {
		_ = l.deleteStream(ctx, name)
	}
}

// FillStart: the log takes first states through Fill only.
func (t *Tx) FillStart(ctx context.Context, g eventlog.Group) (bool, error) { return false, nil }

// FillCopy is never called: FillStart says no.
func (t *Tx) FillCopy(ctx context.Context, g eventlog.Group, r io.Reader) (int64, error) {
	return 0, errors.New("the NATS event log takes first states through Fill")
}

// FillEnd is never called: FillStart says no.
func (t *Tx) FillEnd(ctx context.Context, g eventlog.Group, rows int64) error {
	return errors.New("the NATS event log takes first states through Fill")
}

type filledRecord struct {
	v          eventlog.Version
	System     string `json:"system"`
	Definition string `json:"definition"`
	LSN        uint64 `json:"lsn"`
}

func filledKey(v eventlog.Version, system string) string {
	return versionToken(v) + "." + hex.EncodeToString([]byte(system))
}

// SetFilled records, once the append commits, what a version's state is
// filled from.
func (t *Tx) SetFilled(ctx context.Context, v eventlog.Version, system, definition string, lsn uint64) error {
	t.filled = append(t.filled, filledRecord{v: v, System: system, Definition: definition, LSN: lsn})
	return nil
}

func (l *Log) putFilled(ctx context.Context, f filledRecord) error {
	ctx, cancel := request(ctx)
	defer cancel()
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	_, err = l.filled.Put(ctx, filledKey(f.v, f.System), b)
	return err
}

// Filled returns where and with what definition system last filled v.
func (l *Log) Filled(ctx context.Context, v eventlog.Version, system string) (uint64, string, bool, error) {
	ctx, cancel := request(ctx)
	defer cancel()
	e, err := l.filled.Get(ctx, filledKey(v, system))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, "", false, nil
	}
	if err != nil {
		return 0, "", false, err
	}
	var f filledRecord
	if err := json.Unmarshal(e.Value(), &f); err != nil {
		return 0, "", false, err
	}
	return f.LSN, f.Definition, true, nil
}

func purge(ctx context.Context, s jetstream.Stream, opts ...jetstream.StreamPurgeOpt) error {
	ctx, cancel := request(ctx)
	defer cancel()
	return s.Purge(ctx, opts...)
}
