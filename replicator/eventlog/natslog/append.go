package natslog

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// known is what appends learned of a version: its stream's last
// sequence, head, the last commit LSN each system appended, the state's
// layout and generation. Only committed facts go in; an append that
// fails makes the log forget (its marker may or may not have landed).
type known struct {
	lastSeq  uint64
	head     int64
	appended map[string]uint64
	layout   eventlog.Layout
	gen      int
	baseSeq  uint64            // the base stream's committed sequence (base.go)
	baseNext uint64            // the base stream's last sequence: where writes go on
	baseAt   map[string]uint64 // each system's base position
}

func (k *known) clone() *known {
	c := *k
	c.appended = maps.Clone(k.appended)
	c.baseAt = maps.Clone(k.baseAt)
	return &c
}

// Forget drops what appends remembered: the next ones ask the log.
func (l *Log) Forget() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.known = map[eventlog.Version]*known{}
}

func (l *Log) forgetVersion(v eventlog.Version) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.known, v)
}

func (l *Log) learn(v eventlog.Version, k *known) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.known[v] = k
}

// current is what the log holds of a version now: remembered, or read
// from its stream.
func (l *Log) current(ctx context.Context, v eventlog.Version, s jetstream.Stream) (*known, error) {
	l.mu.Lock()
	k := l.known[v]
	l.mu.Unlock()
	if k != nil {
		return k.clone(), nil
	}
	info, err := streamInfo(ctx, s)
	if err != nil {
		return nil, err
	}
	r, err := lastRun(ctx, s, v)
	if err != nil {
		return nil, err
	}
	k = &known{lastSeq: info.State.LastSeq, appended: map[string]uint64{}, gen: 1, baseAt: map[string]uint64{}}
	if r != nil {
		k.head, k.appended, k.layout, k.gen = r.head, r.appended, r.layout, r.gen
		k.baseSeq, k.baseAt = r.baseSeq, r.baseAt
	}
	if err := l.recoverBase(ctx, v, s, k); err != nil {
		return nil, err
	}
	return k, nil
}

// Append appends groups in one Tx.
func (l *Log) Append(ctx context.Context, groups []eventlog.Group) (int, error) {
	return eventlog.Append(ctx, l, groups)
}

// Begin starts an append: nothing is visible until Commit writes each
// version's marker.
func (l *Log) Begin(ctx context.Context) (eventlog.Tx, error) {
	id := make([]byte, 8)
	rand.Read(id)
	return &Tx{log: l, id: hex.EncodeToString(id), versions: map[eventlog.Version]*versionTx{}}, nil
}

// Tx is an append in progress: per version, a run being written.
type Tx struct {
	log      *Log
	id       string
	versions map[eventlog.Version]*versionTx
	order    []eventlog.Version
	filled   []filledRecord
	done     bool
}

type groupID struct {
	system string
	lsn    uint64
}

type versionTx struct {
	v      eventlog.Version
	stream jetstream.Stream
	was    *known // the version when the append started
	now    known  // after this append
	from   uint64 // sequence of the run's first message; 0: none yet
	sent   int    // messages sent
	buf    []byte // the body not sent yet
	first  int64  // position of buf's first change
	open   *groupID
	count  int // changes in buf's open record
	groups map[groupID]bool
	fresh  int // new groups
	fill   *fillTx
	base   *baseTx // base state changes (join versions)
}

func (t *Tx) version(ctx context.Context, v eventlog.Version) (*versionTx, error) {
	if vt := t.versions[v]; vt != nil {
		return vt, nil
	}
	s, err := t.log.ensureChangeStream(ctx, v)
	if err != nil {
		return nil, err
	}
	k, err := t.log.current(ctx, v, s)
	if err != nil {
		return nil, fmt.Errorf("cannot read the change stream of %s version %d: %w", v.Publication, v.Number, err)
	}
	vt := &versionTx{v: v, stream: s, was: k, now: *k.clone(), groups: map[groupID]bool{}}
	vt.first = k.head + 1
	t.versions[v] = vt
	t.order = append(t.order, v)
	return vt, nil
}

// Append appends groups in order; see eventlog.Tx.
func (t *Tx) Append(ctx context.Context, groups []eventlog.Group) error {
	for i := range groups {
		if err := t.appendGroup(ctx, &groups[i]); err != nil {
			return err
		}
	}
	return nil
}

func (t *Tx) appendGroup(ctx context.Context, g *eventlog.Group) error {
	vt, err := t.version(ctx, g.Version)
	if err != nil {
		return err
	}
	id := groupID{g.System, g.CommitLSN}
	if !vt.groups[id] {
		// A system appends in commit order: at or before the last LSN it
		// appended is a replay.
		if last, ok := vt.was.appended[g.System]; ok && g.CommitLSN <= last {
			return nil
		}
		if len(g.Changes) == 0 {
			return nil
		}
		vt.groups[id] = true
		vt.fresh++
	}
	if err := vt.fits(g); err != nil {
		return err
	}
	vt.now.appended[g.System] = max(vt.now.appended[g.System], g.CommitLSN)
	return vt.add(ctx, t, g, g.Changes)
}

// fits checks g's rows against the version's state layout (set by the
// first append or first state).
func (vt *versionTx) fits(g *eventlog.Group) error {
	if vt.now.layout.Columns == 0 {
		if err := checkLayout(g.Layout); err != nil {
			return err
		}
		vt.now.layout = eventlog.Layout{Columns: g.Layout.Columns, Key: slices.Clone(g.Layout.Key)}
	} else if g.Layout.Columns > 0 && !sameLayout(vt.now.layout, g.Layout) {
		return fmt.Errorf("%s version %d: rows laid out as %+v, its state as %+v (a changed definition needs a new first state)",
			g.Version.Publication, g.Version.Number, g.Layout, vt.now.layout)
	}
	for _, c := range g.Changes {
		if len(c.Row) > vt.now.layout.Columns {
			return fmt.Errorf("a row of %d values does not fit a state of %d", len(c.Row), vt.now.layout.Columns)
		}
	}
	return nil
}

// add encodes changes of g into the run's body, sending a chunk whenever
// the body is full: memory stays bounded whatever the group's size.
func (vt *versionTx) add(ctx context.Context, t *Tx, g *eventlog.Group, changes []eventlog.Change) error {
	start := 0
	var rec []byte
	for i, c := range changes {
		before := len(rec)
		rec = appendChange(rec, c)
		if len(vt.buf)+len(rec) > t.log.chunk && i > start {
			vt.record(g, rec[:before], i-start) // c goes to the next chunk
			if err := vt.send(ctx, t); err != nil {
				return err
			}
			rec = append(rec[:0], rec[before:]...)
			start = i
		}
	}
	vt.record(g, rec, len(changes)-start)
	if len(vt.buf) >= t.log.chunk {
		return vt.send(ctx, t)
	}
	return nil
}

// record adds a record of n changes of g, already encoded, to the body.
func (vt *versionTx) record(g *eventlog.Group, changes []byte, n int) {
	vt.buf = appendRecordHeader(vt.buf, g.System, g.CommitLSN, g.CommitTime, n)
	vt.buf = append(vt.buf, changes...)
	vt.now.head += int64(n)
}

// send publishes the body so far as a chunk of the run.
func (vt *versionTx) send(ctx context.Context, t *Tx) error {
	if len(vt.buf) == 0 {
		return nil
	}
	m := newMsg(chunkSubject(vt.v), vt.buf)
	m.Header.Set(hdrTx, t.id)
	m.Header.Set(hdrFirst, strconv.FormatInt(vt.first, 10))
	rctx, cancel := request(ctx)
	defer cancel()
	ack, err := t.log.js.PublishMsg(rctx, m, jetstream.WithExpectLastSequence(vt.now.lastSeq),
		jetstream.WithMsgID(t.id+"/"+strconv.Itoa(vt.sent)))
	if err != nil {
		t.log.forgetVersion(vt.v)
		if isWrongLastSequence(err) {
			return eventlog.ErrConcurrentAppend
		}
		return fmt.Errorf("cannot append to the change stream of %s version %d: %w", vt.v.Publication, vt.v.Number, err)
	}
	if vt.from == 0 {
		vt.from = ack.Sequence
	}
	vt.sent++
	vt.now.lastSeq = ack.Sequence
	vt.buf = vt.buf[:0]
	vt.first = vt.now.head + 1
	return nil
}

// Commit writes each version's marker (its first state's watermark
// first), then what the append recorded of first states, and returns
// how many groups were new.
func (t *Tx) Commit(ctx context.Context) (int, error) {
	t.done = true
	added := 0
	for _, v := range t.order {
		vt := t.versions[v]
		if vt.fresh == 0 && (vt.base == nil || !vt.base.dirty) {
			continue
		}
		n, err := vt.commit(ctx, t)
		if err != nil {
			t.log.forgetVersion(v)
			t.abandon(ctx)
			return 0, err
		}
		added += n
	}
	for _, f := range t.filled {
		if err := t.log.putFilled(ctx, f); err != nil {
			return 0, err
		}
	}
	return added, nil
}

func (vt *versionTx) commit(ctx context.Context, t *Tx) (int, error) {
	if vt.fill != nil {
		if err := vt.fill.finish(ctx, t.log, vt); err != nil {
			return 0, err
		}
	}
	if vt.base != nil && vt.base.dirty {
		if err := vt.writeBase(ctx, t); err != nil {
			return 0, err
		}
	}
	m := newMsg(runSubject(vt.v), vt.buf)
	setMarker(m, t.id, &vt.now, vt.first, vt.from, vt.fill)
	h := m.Header
	h.Set(hdrStart, strconv.FormatInt(vt.was.head+1, 10))
	rctx, cancel := request(ctx)
	defer cancel()
	if vt.fill != nil {
		vt.fill.marking = true
	}
	ack, err := t.log.js.PublishMsg(rctx, m, jetstream.WithExpectLastSequence(vt.now.lastSeq), jetstream.WithMsgID(vt.msgID(t.id)))
	if err != nil {
		if isWrongLastSequence(err) {
			if vt.fill != nil {
				vt.fill.marking = false // refused: it did not land
			}
			return 0, eventlog.ErrConcurrentAppend
		}
		return 0, fmt.Errorf("cannot commit to the change stream of %s version %d: %w", vt.v.Publication, vt.v.Number, err)
	}
	if vt.fill != nil {
		vt.fill.committed = true
	}
	if ack.Duplicate {
		t.log.forgetVersion(vt.v)
		return 0, nil
	}
	vt.now.lastSeq = ack.Sequence
	k := vt.now
	t.log.learn(vt.v, &k)
	if vt.fill != nil {
		t.log.dropStates(ctx, vt.v, vt.was.gen, vt.now.gen, ack.Sequence)
	}
	t.log.compactLater(vt.v)
	return vt.fresh, nil
}

// setMarker sets a marker's headers: what the version is after the run
// (k), where the body's first change is, the run's first message.
func setMarker(m *nats.Msg, tx string, k *known, first int64, from uint64, fill *fillTx) {
	appended, _ := json.Marshal(k.appended)
	baseAt, _ := json.Marshal(k.baseAt)
	h := m.Header
	h.Set(hdrTx, tx)
	h.Set(hdrFirst, strconv.FormatInt(first, 10))
	h.Set(hdrStart, strconv.FormatInt(k.head+1, 10))
	h.Set(hdrHead, strconv.FormatInt(k.head, 10))
	h.Set(hdrFrom, strconv.FormatUint(from, 10))
	h.Set(hdrLayout, formatLayout(k.layout))
	h.Set(hdrAppended, string(appended))
	h.Set(hdrState, strconv.Itoa(k.gen))
	if k.baseSeq > 0 || len(k.baseAt) > 0 {
		h.Set(hdrBase, strconv.FormatUint(k.baseSeq, 10))
		h.Set(hdrBaseAt, string(baseAt))
	}
	if fill != nil {
		h.Set(hdrElided, strconv.FormatInt(fill.from, 10)+"-"+strconv.FormatInt(fill.upto, 10))
	}
}

// msgID de-duplicates a marker sent twice (a publish retried after a
// lost reply). It names the run's last group and the append: (system,
// commit LSN) alone could name two runs (a first state sets a system's
// last LSN back, see fill.go), and replays are told by the LSNs the
// last marker records, which hold however long ago the run was.
func (vt *versionTx) msgID(tx string) string {
	var last groupID
	for g := range vt.groups {
		if g.lsn >= last.lsn {
			last = g
		}
	}
	return last.system + "/" + strconv.FormatUint(last.lsn, 16) + "/" + tx
}

// Rollback abandons the append: chunks sent stay in the stream, never
// read (no marker ends their run).
func (t *Tx) Rollback(ctx context.Context) error {
	if !t.done {
		t.done = true
		t.abandon(ctx)
	}
	return nil
}

func (t *Tx) abandon(ctx context.Context) {
	for _, vt := range t.versions {
		if vt.sent > 0 {
			t.log.forgetVersion(vt.v)
		}
		if vt.fill != nil {
			vt.fill.drop(context.WithoutCancel(ctx), t.log, vt.v)
		}
	}
}

// checkLayout refuses a layout the log cannot key rows by.
func checkLayout(l eventlog.Layout) error {
	if l.Columns <= 0 || len(l.Key) == 0 {
		return fmt.Errorf("the rows' layout is missing (%d values, key %v)", l.Columns, l.Key)
	}
	for _, k := range l.Key {
		if k < 0 || k >= l.Columns {
			return fmt.Errorf("the rows' key %v is outside their %d values", l.Key, l.Columns)
		}
	}
	return nil
}

func sameLayout(a, b eventlog.Layout) bool {
	return a.Columns == b.Columns && slices.Equal(a.Key, b.Key)
}

var errNoState = errors.New("no state")
