package natslog

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// Base states of join versions (eventlog/base.go) live in one stream per
// version, REJOT_BASE_<v>: a subject per row (…r.<table>.<key hash>, the
// row, its key and its refs) and one per reference (…x.<table>.<child>.
// <ref hash>.<key hash>), each holding its last message (or a tombstone,
// header Rejot-Op "d"); the stream keeps the last two of each subject.
//
// What an append writes to it is buffered in the Tx (its reads see it
// first) and written at Commit, one message per subject, before the
// version's marker; the marker records the base stream's sequence up to
// which the base is committed (Rejot-Base) and each system's base
// position (Rejot-Base-At). A message past that sequence is of an append
// that did not commit: reads that meet one fail as a concurrent append,
// and the next append that learns the version from the stream voids it
// (a marker that keeps the old sequence, fenced like every marker, so
// that the append that wrote it can no longer commit) and deletes it:
// the subject's message before it, committed, is its last again. See
// docs/natslog.md.

const (
	hdrBase   = "Rejot-Base"    // the base stream's committed sequence
	hdrBaseAt = "Rejot-Base-At" // JSON {system: base LSN}
)

func baseStream(v eventlog.Version) string { return "REJOT_BASE_" + versionToken(v) }
func basePrefix(v eventlog.Version) string { return "rejot.base." + versionToken(v) }

func hashOf(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:20])
}

func rowSubject(v eventlog.Version, table int, key string) string {
	return basePrefix(v) + ".r." + strconv.Itoa(table) + "." + hashOf(key)
}

func refSubject(v eventlog.Version, table, child int, ref, key string) string {
	return refPrefix(v, table, child, ref) + "." + hashOf(key)
}

func refPrefix(v eventlog.Version, table, child int, ref string) string {
	return basePrefix(v) + ".x." + strconv.Itoa(table) + "." + strconv.Itoa(child) + "." + hashOf(ref)
}

// baseMsg is a row's or a reference's message body.
type baseMsg struct {
	Key  string         `json:"k"`
	Row  string         `json:"r,omitempty"` // KeyString of the values
	Refs map[int]string `json:"f,omitempty"` // a row's refs
	Ref  string         `json:"x,omitempty"` // a reference's ref
}

// ensureBaseStream makes a version's base stream if it is missing.
func (l *Log) ensureBaseStream(ctx context.Context, v eventlog.Version) (jetstream.Stream, error) {
	return l.ensureStream(ctx, v, "base", jetstream.StreamConfig{
		Name: baseStream(v), Subjects: []string{basePrefix(v) + ".>"},
		MaxMsgsPerSubject: 2, Discard: jetstream.DiscardOld, AllowDirect: true, // batched reads (base_get.go)
		Description: fmt.Sprintf("rejot base state of join version %s %d", v.Publication, v.Number),
	}, nil)
}

// recoverBase voids and deletes base messages past the committed
// sequence (of an append that failed), so that k's version reads only
// committed base rows; it returns k updated (the void marker's sequence,
// where base writes go on). It runs whenever an append learns the
// version from its stream.
func (l *Log) recoverBase(ctx context.Context, v eventlog.Version, s jetstream.Stream, k *known) error {
	rctx, cancel := request(ctx)
	defer cancel()
	bs, err := l.js.Stream(rctx, baseStream(v))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	info, err := streamInfo(ctx, bs)
	if err != nil {
		return err
	}
	last := info.State.LastSeq
	k.baseNext = max(last, k.baseSeq)
	if last > k.baseSeq {
		if err := l.voidBase(ctx, v, bs, k, info.State.FirstSeq, last); err != nil {
			return err
		}
	}
	return l.stampBase(ctx, v, k)
}

// voidBase voids the base messages past the committed sequence, up to
// last, and deletes them.
func (l *Log) voidBase(ctx context.Context, v eventlog.Version, bs jetstream.Stream, k *known, first, last uint64) error {
	// Void first: once this marker lands, the append that wrote past the
	// committed sequence cannot commit (its marker expects an older last
	// sequence).
	m := newMsg(runSubject(v), nil)
	setMarker(m, "void", k, k.head+1, 0, nil)
	pctx, pcancel := request(ctx)
	defer pcancel()
	ack, err := l.js.PublishMsg(pctx, m, jetstream.WithExpectLastSequence(k.lastSeq))
	if err != nil {
		if isWrongLastSequence(err) {
			return eventlog.ErrConcurrentAppend
		}
		return fmt.Errorf("cannot void an unfinished base write of %s version %d: %w", v.Publication, v.Number, err)
	}
	k.lastSeq = ack.Sequence
	for seq := max(k.baseSeq+1, first); seq <= last; seq++ {
		dctx, dcancel := request(ctx)
		err := bs.DeleteMsg(dctx, seq)
		dcancel()
		if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) && !isMsgGone(err) {
			return fmt.Errorf("cannot drop an unfinished base write of %s version %d: %w", v.Publication, v.Number, err)
		}
	}
	return nil
}

// stampBase gives a base stream whose committed part has no stamp (one
// written before stamps were, base_get.go) one, committed by a marker
// that changes nothing else.
func (l *Log) stampBase(ctx context.Context, v eventlog.Version, k *known) error {
	if k.baseSeq == 0 {
		return nil // nothing committed: the first base write brings the stamp
	}
	ok, err := l.stamped(ctx, v)
	if err != nil || ok {
		return err
	}
	pctx, pcancel := request(ctx)
	defer pcancel()
	ack, err := l.js.PublishMsg(pctx, newMsg(stampSubject(v), []byte{}), jetstream.WithExpectLastSequence(k.baseNext))
	if err != nil {
		if isWrongLastSequence(err) {
			return eventlog.ErrConcurrentAppend
		}
		return fmt.Errorf("cannot stamp the base state of %s version %d: %w", v.Publication, v.Number, err)
	}
	stamped := *k
	stamped.baseSeq, stamped.baseNext = ack.Sequence, ack.Sequence
	m := newMsg(runSubject(v), nil)
	setMarker(m, "stamp", &stamped, k.head+1, 0, nil)
	mack, err := l.js.PublishMsg(pctx, m, jetstream.WithExpectLastSequence(k.lastSeq))
	if err != nil {
		if isWrongLastSequence(err) {
			return eventlog.ErrConcurrentAppend
		}
		return fmt.Errorf("cannot stamp the base state of %s version %d: %w", v.Publication, v.Number, err)
	}
	k.baseSeq, k.baseNext, k.lastSeq = ack.Sequence, ack.Sequence, mack.Sequence
	return nil
}

// stamped says whether the base stream's last stamp is there, as its
// leader has it (a direct get could be answered by a replica behind).
func (l *Log) stamped(ctx context.Context, v eventlog.Version) (bool, error) {
	body, err := json.Marshal(map[string]string{"last_by_subj": stampSubject(v)})
	if err != nil {
		return false, err
	}
	rctx, cancel := request(ctx)
	defer cancel()
	m, err := l.nc.RequestWithContext(rctx, "$JS.API.STREAM.MSG.GET."+baseStream(v), body)
	if err != nil {
		return false, fmt.Errorf("cannot read the base stream of %s version %d: %w", v.Publication, v.Number, err)
	}
	var resp struct {
		Error *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		return false, err
	}
	if resp.Error == nil {
		return true, nil
	}
	if resp.Error.Code == 404 {
		return false, nil
	}
	return false, fmt.Errorf("cannot read the base stream of %s version %d: %w", v.Publication, v.Number, resp.Error)
}

// isMsgGone: a delete of a message the stream no longer holds.
func isMsgGone(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeMessageNotFound || apiErr.Code == 404)
}

// baseTx is what an append changes in a version's base state.
type baseTx struct {
	cleared map[int]bool                   // tables emptied (before rows)
	all     bool                           // every table emptied
	rows    map[int]map[string]*baseMsgRow // table, key: the last row written
	dirty   bool                           // something to write
	stream  jetstream.Stream
	// listings are the consumers of referrers pages still to come
	// (base_list.go), by name.
	listings map[string]*listing
}

type baseMsgRow struct {
	row  []eventlog.Value // nil: gone
	refs map[int]string
}

func (bt *baseTx) isCleared(table int) bool { return bt.all || bt.cleared[table] }

func (t *Tx) base(ctx context.Context, v eventlog.Version) (*versionTx, error) {
	vt, err := t.version(ctx, v)
	if err != nil {
		return nil, err
	}
	if vt.base == nil {
		s, err := t.log.ensureBaseStream(ctx, v)
		if err != nil {
			return nil, err
		}
		vt.base = &baseTx{cleared: map[int]bool{}, rows: map[int]map[string]*baseMsgRow{}, stream: s}
	}
	return vt, nil
}

// PutBase buffers base rows and the base position; see eventlog.Tx.
func (t *Tx) PutBase(ctx context.Context, v eventlog.Version, system string, lsn uint64, rows []eventlog.BaseRow) error {
	vt, err := t.base(ctx, v)
	if err != nil {
		return err
	}
	bt := vt.base
	for _, r := range rows {
		if bt.rows[r.Table] == nil {
			bt.rows[r.Table] = map[string]*baseMsgRow{}
		}
		e := &baseMsgRow{}
		if r.Row != nil {
			e.row = slices.Clone(r.Row)
			if e.row == nil {
				e.row = []eventlog.Value{}
			}
			e.refs = r.Refs
		}
		bt.rows[r.Table][r.Key] = e
	}
	bt.dirty = true
	vt.now.baseAt[system] = lsn
	return nil
}

// ClearBase empties a table of the base state, or all of them.
func (t *Tx) ClearBase(ctx context.Context, v eventlog.Version, table int) error {
	vt, err := t.base(ctx, v)
	if err != nil {
		return err
	}
	bt := vt.base
	if table < 0 {
		bt.all, bt.dirty = true, true
		bt.rows = map[int]map[string]*baseMsgRow{}
		return nil
	}
	bt.cleared[table], bt.dirty = true, true
	delete(bt.rows, table)
	return nil
}

// Base reads base rows by key: this append's first, then the stream's.
func (t *Tx) Base(ctx context.Context, v eventlog.Version, table int, keys []string) (map[string][]eventlog.Value, error) {
	out := map[string][]eventlog.Value{}
	if len(keys) == 0 {
		return out, nil
	}
	vt, err := t.base(ctx, v)
	if err != nil {
		return nil, err
	}
	bt := vt.base
	var ask []string
	for _, key := range keys {
		if e, ok := bt.rows[table][key]; ok {
			if e.row != nil {
				out[key] = e.row
			}
			continue
		}
		if !bt.isCleared(table) {
			ask = append(ask, key)
		}
	}
	committed, err := vt.committedRows(ctx, t.log, table, ask)
	if err != nil {
		return nil, err
	}
	for key, m := range committed {
		vals, err := eventlog.ParseKeyString(m.Row)
		if err != nil {
			return nil, errors.New("a base row of the event log does not read: " + err.Error())
		}
		out[key] = vals
	}
	return out, nil
}

// writeBase writes what the append changed of the base state, one
// message per subject, before the marker, and sets the committed
// sequence the marker records.
func (vt *versionTx) writeBase(ctx context.Context, t *Tx) error {
	bt := vt.base
	type out struct {
		subject string
		body    []byte // nil: a tombstone
	}
	var msgs []out
	at := map[string]int{}
	put := func(subject string, body []byte) {
		if i, ok := at[subject]; ok {
			msgs[i].body = body
			return
		}
		at[subject] = len(msgs)
		msgs = append(msgs, out{subject, body})
	}
	// What goes: every row of a cleared table, and the refs of every row
	// written again.
	drop := func(table int, b *baseMsg) {
		put(rowSubject(vt.v, table, b.Key), nil)
		for c, r := range b.Refs {
			put(refSubject(vt.v, table, c, r, b.Key), nil)
		}
	}
	if bt.all || len(bt.cleared) > 0 {
		filter := []string{basePrefix(vt.v) + ".r.>"}
		if !bt.all {
			filter = nil
			for table := range bt.cleared {
				filter = append(filter, basePrefix(vt.v)+".r."+strconv.Itoa(table)+".*")
			}
		}
		if err := vt.dropTables(ctx, t.log, filter, drop); err != nil {
			return err
		}
	}
	tables := slices.Sorted(func(yield func(int) bool) {
		for tab := range bt.rows {
			if !yield(tab) {
				return
			}
		}
	})
	for _, table := range tables {
		var old map[string]*baseMsg
		if !bt.isCleared(table) {
			keys := slices.Collect(maps.Keys(bt.rows[table]))
			var err error
			if old, err = vt.committedRows(ctx, t.log, table, keys); err != nil {
				return err
			}
		}
		for key, e := range bt.rows[table] {
			if b := old[key]; b != nil {
				drop(table, b)
			}
			if e.row == nil {
				continue
			}
			b, err := json.Marshal(baseMsg{Key: key, Row: eventlog.KeyString(e.row), Refs: e.refs})
			if err != nil {
				return err
			}
			put(rowSubject(vt.v, table, key), b)
			for c, r := range e.refs {
				rb, err := json.Marshal(baseMsg{Key: key, Ref: r})
				if err != nil {
					return err
				}
				put(refSubject(vt.v, table, c, r, key), rb)
			}
		}
	}
	// The stamp last: its sequence is the committed one, and batched
	// reads tell by it whether a replica has come that far (base_get.go).
	put(stampSubject(vt.v), []byte{})
	// Published in order, each expecting the one before: an append that
	// writes meanwhile fails one side.
	next := vt.now.baseNext
	futures := make([]jetstream.PubAckFuture, 0, len(msgs))
	for i, o := range msgs {
		m := newMsg(o.subject, o.body)
		if o.body == nil {
			m.Header.Set(hdrOp, "d")
		}
		f, err := t.log.js.PublishMsgAsync(m, jetstream.WithExpectLastSequence(next+uint64(i)))
		if err != nil {
			return err
		}
		futures = append(futures, f)
	}
	for _, f := range futures {
		select {
		case ack := <-f.Ok():
			next = max(next, ack.Sequence)
		case err := <-f.Err():
			if isWrongLastSequence(err) {
				return eventlog.ErrConcurrentAppend
			}
			return fmt.Errorf("cannot write the base state of %s version %d: %w", vt.v.Publication, vt.v.Number, err)
		case <-time.After(requestTimeout):
			return fmt.Errorf("cannot write the base state of %s version %d: no answer", vt.v.Publication, vt.v.Number)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	vt.now.baseSeq, vt.now.baseNext = next, next
	return nil
}

// dropTables drops every committed row under the filters (row subjects
// …r.<table>.<hash>) and its refs.
func (vt *versionTx) dropTables(ctx context.Context, l *Log, filters []string, drop func(int, *baseMsg)) error {
	prefix := basePrefix(vt.v) + ".r."
	return vt.listLast(ctx, l, filters, func(subject string, b *baseMsg) error {
		rest, _, _ := strings.Cut(subject[len(prefix):], ".")
		table, err := strconv.Atoi(rest)
		if err != nil {
			return fmt.Errorf("a base subject of the event log does not read: %s", subject)
		}
		drop(table, b)
		return nil
	})
}

// BaseAt reads a system's base position from the version's last marker.
func (l *Log) BaseAt(ctx context.Context, v eventlog.Version, system string) (uint64, bool, error) {
	s, ok, err := l.changeStreamOf(ctx, v)
	if err != nil || !ok {
		return 0, false, err
	}
	r, err := lastRun(ctx, s, v)
	if err != nil || r == nil {
		return 0, false, err
	}
	at, ok := r.baseAt[system]
	return at, ok, nil
}
