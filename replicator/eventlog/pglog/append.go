package pglog

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strconv"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// Append appends groups in one transaction. Groups of several source
// transactions may come together: each stays whole, and per version the
// work is a handful of statements whatever the number of groups.
func (l *Log) Append(ctx context.Context, groups []eventlog.Group) (int, error) {
	return eventlog.Append(ctx, l, groups)
}

// Begin starts an append.
func (l *Log) Begin(ctx context.Context) (eventlog.Tx, error) {
	tx, err := l.pool.Begin(ctx) // durable at commit: see Open
	if err != nil {
		return nil, err
	}
	return &Tx{log: l, tx: tx, versions: map[eventlog.Version]*versionTx{}, groups: map[groupID]*groupTx{}}, nil
}

// Tx is an append in progress: one transaction of the log database.
type Tx struct {
	log      *Log
	tx       pgx.Tx
	versions map[eventlog.Version]*versionTx
	order    []eventlog.Version
	groups   map[groupID]*groupTx
	added    int
	baseIDs  map[eventlog.Version]int // versions whose base state it wrote
}

type versionTx struct {
	id     int
	head   int64
	groups []*groupTx      // new groups, in order
	fill   bool            // a first state (Fill)
	unread bool            // no subscriber reads it yet: a fill keeps no change log
	layout eventlog.Layout // of its state table; no columns: no table yet
	locked bool            // holds the version's compaction lock
}

type groupID struct {
	version eventlog.Version
	system  string
	lsn     uint64
}

type groupTx struct {
	skip        bool // already in the log
	marked      bool // its change at last is marked as the group's end
	first, last int64
	id          groupID
}

// Append appends groups in order; see eventlog.Tx.
func (t *Tx) Append(ctx context.Context, groups []eventlog.Group) error {
	byVersion := map[eventlog.Version][]*eventlog.Group{}
	var order []eventlog.Version
	for i := range groups {
		g := &groups[i]
		if _, ok := byVersion[g.Version]; !ok {
			order = append(order, g.Version)
		}
		byVersion[g.Version] = append(byVersion[g.Version], g)
	}
	for _, v := range order {
		if err := t.appendVersion(ctx, v, byVersion[v], false); err != nil {
			return err
		}
	}
	return nil
}

// version returns what this append knows of a version, looking it up (and
// locking its row) the first time.
func (t *Tx) version(ctx context.Context, v eventlog.Version, fill bool) (*versionTx, error) {
	if vt := t.versions[v]; vt != nil {
		return vt, nil
	}
	if !fill {
		// An append need not look the version up when an earlier one did:
		// its head update takes the row's lock all the same. (A first
		// state does: its upsert locks the row for the whole fill.)
		t.log.mu.Lock()
		k := t.log.known[v]
		var vt *versionTx
		if k != nil && k.layout.Columns > 0 {
			vt = &versionTx{id: k.id, layout: eventlog.Layout{Columns: k.layout.Columns, Key: slices.Clone(k.layout.Key)}}
		}
		t.log.mu.Unlock()
		if vt != nil {
			t.versions[v] = vt
			t.order = append(t.order, v)
			return vt, nil
		}
	}
	var key []int
	vt := &versionTx{fill: fill}
	err := t.tx.QueryRow(ctx, `INSERT INTO rejot_log.streams (publication, version) VALUES ($1, $2)
		ON CONFLICT (publication, version) DO UPDATE SET version = EXCLUDED.version
		RETURNING id, coalesce(state_columns, 0), coalesce(state_key, '{}')`, v.Publication, v.Number).Scan(&vt.id, &vt.layout.Columns, &key)
	if err != nil {
		return nil, err
	}
	vt.layout.Key = key
	if fill {
		var read bool
		if err := t.tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM rejot_log.readers WHERE stream = $1)", vt.id).Scan(&read); err != nil {
			return nil, err
		}
		vt.unread = !read
	}
	t.versions[v] = vt
	t.order = append(t.order, v)
	return vt, nil
}

// appendVersion appends one version's groups (in order), skipping those
// already appended.
func (t *Tx) appendVersion(ctx context.Context, v eventlog.Version, groups []*eventlog.Group, fill bool) error {
	vt, err := t.version(ctx, v, fill)
	if err != nil {
		return err
	}
	gts, err := t.sortOut(ctx, vt, v, groups)
	if err != nil {
		return err
	}
	f := freshOf(groups, gts)
	if f.count == 0 {
		return nil
	}
	if !fill {
		if err := t.appendable(ctx, vt, f.groups[0]); err != nil {
			return err
		}
	}
	var head int64
	if err := t.tx.QueryRow(ctx, "UPDATE rejot_log.streams SET head = head + $2 WHERE id = $1 RETURNING head", vt.id, f.count).Scan(&head); err != nil {
		return err
	}
	first, unmark := vt.place(f, head)
	if !(vt.fill && vt.unread) {
		if err := t.logChanges(ctx, vt, f, first, unmark); err != nil {
			return err
		}
	}
	if vt.fill {
		var all []eventlog.Change
		for _, g := range f.groups {
			all = append(all, g.Changes...)
		}
		return t.fillState(ctx, vt, f.groups[0].Layout, all)
	}
	// The state catches up in bulk (rejot_log.compact), not here.
	for _, g := range f.groups {
		for _, c := range g.Changes {
			if err := fits(vt.layout, c.Row); err != nil {
				return err
			}
		}
	}
	return nil
}

// fresh is what an append adds to a version: the groups with changes
// that the log does not have yet, what the append knows of each, and how
// many changes they hold.
type fresh struct {
	groups []*eventlog.Group
	txs    []*groupTx
	count  int
}

func freshOf(groups []*eventlog.Group, gts []*groupTx) fresh {
	var f fresh
	for i, g := range groups {
		if gt := gts[i]; !gt.skip && len(g.Changes) > 0 {
			f.groups, f.txs = append(f.groups, g), append(f.txs, gt)
			f.count += len(g.Changes)
		}
	}
	return f
}

// place gives fresh groups their positions, the last of them head, and
// returns the first; a part of a group whose earlier part this append
// placed extends it, and the earlier part's end, if marked, is returned
// in unmark.
func (vt *versionTx) place(f fresh, head int64) (first int64, unmark []int64) {
	first = head - int64(f.count) + 1
	pos := first
	for i, g := range f.groups {
		gt := f.txs[i]
		if gt.first == 0 {
			gt.first = pos
			vt.groups = append(vt.groups, gt)
		} else if gt.marked {
			unmark = append(unmark, gt.last)
		}
		pos += int64(len(g.Changes))
		gt.last = pos - 1
	}
	vt.head = head
	return first, unmark
}

// logChanges adds fresh groups' changes to the change log from position
// first, each group marked at its end, and takes the marks off the ends
// in unmark: a group's end is where its last part ends.
func (t *Tx) logChanges(ctx context.Context, vt *versionTx, f fresh, first int64, unmark []int64) error {
	if err := insertChanges(ctx, t.tx, vt.id, first, f.groups, f.count); err != nil {
		return err
	}
	for _, gt := range f.txs {
		gt.marked = true
	}
	if len(unmark) > 0 {
		if _, err := t.tx.Exec(ctx, "UPDATE rejot_log.changes SET last = false WHERE stream = $1 AND position = ANY ($2)", vt.id, unmark); err != nil {
			return err
		}
	}
	return nil
}

// sortOut learns, for groups not seen before in this append, whether the
// log already has them (same system and commit LSN), and returns what
// this append knows of each group, in order.
func (t *Tx) sortOut(ctx context.Context, vt *versionTx, v eventlog.Version, groups []*eventlog.Group) ([]*groupTx, error) {
	gts := make([]*groupTx, len(groups))
	var unseen []int
	for i, g := range groups {
		id := groupID{v, g.System, g.CommitLSN}
		if gts[i] = t.groups[id]; gts[i] == nil {
			gts[i] = &groupTx{id: id}
			t.groups[id] = gts[i]
			unseen = append(unseen, i)
		}
	}
	// A system appends its transactions in commit order (one capture
	// per system), so a group at or before the last one it appended to
	// the version is a replay — already in the log, or skipped on purpose
	// — and one past it is new. No lookup: the groups themselves may be
	// pruned.
	last := map[string]uint64{}
	for _, i := range unseen {
		g := groups[i]
		if vt.fill {
			// A first state is never a replay: it is the state as of
			// its point, and whatever the system appended before (say,
			// from a primary that failed over, whose WAL went further
			// than its successor's) is behind it (recordAppended).
			continue
		}
		l, ok := last[g.System]
		if !ok {
			l, ok = t.log.knownAppended(v, g.System)
		}
		if !ok {
			var lsn *string
			err := t.tx.QueryRow(ctx, "SELECT lsn::text FROM rejot_log.appended WHERE stream = $1 AND system = $2",
				vt.id, g.System).Scan(&lsn)
			if err != nil && !errors.Is(err, pgx.ErrNoRows) {
				return nil, err
			}
			if lsn != nil {
				parsed, err := pglogrepl.ParseLSN(*lsn)
				if err != nil {
					return nil, err
				}
				l = uint64(parsed)
			}
			t.log.learn(v, vt.id, nil, g.System, l) // committed: true whatever becomes of this append
		}
		last[g.System] = l
		if g.CommitLSN <= l {
			gts[i].skip = true
		}
	}
	return gts, nil
}

// Commit records the new groups, notifies listeners and commits.
func (t *Tx) Commit(ctx context.Context) (int, error) {
	added, err := t.commit(ctx)
	if err != nil {
		// Whether the commit happened is not known: ask the log next time.
		t.log.Forget()
		return 0, err
	}
	for _, v := range t.order {
		vt := t.versions[v]
		if vt.fill && len(vt.groups) > 0 {
			t.log.forgetVersion(v) // its last LSNs are the fill's now, lower or not
		}
		t.log.learn(v, vt.id, &vt.layout, "", 0)
		for _, g := range vt.groups {
			t.log.learn(v, vt.id, nil, g.id.system, g.id.lsn)
		}
	}
	return added, nil
}

func (t *Tx) commit(ctx context.Context) (int, error) {
	added := 0
	for _, v := range t.order {
		vt := t.versions[v]
		if len(vt.groups) == 0 {
			continue
		}
		if vt.fill {
			// A first state is the whole state as of its group: nothing
			// before it is left to compact.
			if _, err := t.tx.Exec(ctx, `INSERT INTO rejot_log.compactions (stream, position) VALUES ($1, $2)
				ON CONFLICT (stream) DO UPDATE SET position = EXCLUDED.position`, vt.id, vt.head); err != nil {
				return 0, err
			}
		}
		if err := recordAppended(ctx, t.tx, vt.id, vt.groups, vt.fill,
			v.Publication+"/"+strconv.Itoa(v.Number)+"/"+strconv.FormatInt(vt.head, 10)); err != nil {
			return 0, err
		}
		added += len(vt.groups)
	}
	if err := t.tx.Commit(ctx); err != nil {
		return 0, err
	}
	return added, nil
}

// Rollback abandons the append.
func (t *Tx) Rollback(ctx context.Context) error {
	err := t.tx.Rollback(ctx)
	if errors.Is(err, pgx.ErrTxClosed) {
		return nil
	}
	return err
}

// recordAppended notes, per system, the last commit LSN appended to a
// version (what tells a replay from a new transaction, see sortOut), and
// notifies listeners with payload on commit: one statement.
//
// It is also the fence between two processes appending for one system at
// once (an instance that lost the lease still finishing a batch while
// the new active one streams the same transactions again): the row it
// updates is locked until commit, and it refuses to move past another
// append that committed meanwhile, which its own replay check did not
// see. Such an append fails whole (ErrConcurrentAppend) and is tried
// again from the slot, where the check skips what the other appended.
//
// A first state (fill) sets the system's last LSN to its own point,
// lower or not: the version's state is as of that point, and only what
// commits after it is new. That matters when the owner's server failed
// over to a standby that had not received the last transactions the old
// primary sent: the new primary's LSNs restart below what was appended,
// its slot is new, the capture fills every version again, and from then
// on the new primary's transactions must count as new.
func recordAppended(ctx context.Context, tx pgx.Tx, stream int, groups []*groupTx, fill bool, payload string) error {
	first, last := map[string]uint64{}, map[string]uint64{}
	for _, g := range groups {
		last[g.id.system] = max(last[g.id.system], g.id.lsn)
		if f, ok := first[g.id.system]; !ok || g.id.lsn < f {
			first[g.id.system] = g.id.lsn
		}
	}
	systems, lsns, firsts := make([]string, 0, len(last)), make([]string, 0, len(last)), make([]string, 0, len(last))
	for system, lsn := range last {
		systems, lsns = append(systems, system), append(lsns, string(appendLSN(nil, lsn)))
		firsts = append(firsts, string(appendLSN(nil, first[system])))
	}
	var recorded int
	err := tx.QueryRow(ctx, `WITH u AS (SELECT * FROM unnest($2::text[], $3::pg_lsn[], $6::pg_lsn[]) AS u(s, l, f)),
		a AS (
			INSERT INTO rejot_log.appended (stream, system, lsn) SELECT $1, s, l FROM u
			ON CONFLICT (stream, system) DO UPDATE SET lsn = EXCLUDED.lsn
			WHERE $7 OR rejot_log.appended.lsn < (SELECT u.f FROM u WHERE u.s = EXCLUDED.system)
			RETURNING 1)
		SELECT count(*)::int FROM a, pg_notify($4, $5)`, stream, systems, lsns, Channel, payload, firsts, fill).Scan(&recorded)
	if err != nil {
		return err
	}
	if recorded != len(systems) {
		return ErrConcurrentAppend
	}
	return nil
}

// ErrConcurrentAppend: another process appended for the same system and
// version while this append ran; it is abandoned (rolled back), and
// appending again from the slot skips what the other one appended.
var ErrConcurrentAppend = eventlog.ErrConcurrentAppend

func versionID(ctx context.Context, tx pgx.Tx, v eventlog.Version) (int, error) {
	var id int
	err := tx.QueryRow(ctx, `INSERT INTO rejot_log.streams (publication, version) VALUES ($1, $2)
		ON CONFLICT (publication, version) DO UPDATE SET version = EXCLUDED.version RETURNING id`,
		v.Publication, v.Number).Scan(&id)
	return id, err
}

// insertChanges adds groups' changes to the change log, as COPY (text
// format, rendered here); each group's last change is marked: readers
// take whole groups, up to a mark.
func insertChanges(ctx context.Context, tx pgx.Tx, stream int, first int64, groups []*eventlog.Group, count int) error {
	buf := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(buf)
	b := (*buf)[:0]
	if n := count * 128; cap(b) < n {
		b = make([]byte, 0, n)
	}
	var commit []byte
	prefix := strconv.Itoa(stream) + "\t"
	pos := first
	for _, g := range groups {
		// The group's commit LSN and time, as every change carries them.
		commit = appendLSN(commit[:0], g.CommitLSN)
		commit = append(commit, '\t')
		commit = appendTime(commit, g.CommitTime)
		commit = append(commit, '\t')
		for i, c := range g.Changes {
			b = append(b, prefix...)
			b = strconv.AppendInt(b, pos, 10)
			b = append(b, '\t')
			b = append(b, commit...)
			b = append(b, byte(c.Op), '\t')
			if c.Key == nil {
				b = append(b, "[]"...)
			} else {
				b = appendJSONAs(b, c.Key, true)
			}
			b = append(b, '\t')
			if c.Op == eventlog.OpUpsert {
				b = appendJSONAs(b, c.Row, true)
			} else {
				b = append(b, '\\', 'N')
			}
			if i == len(g.Changes)-1 {
				b = append(b, "\tt\n"...)
			} else {
				b = append(b, "\tf\n"...)
			}
			pos++
		}
	}
	if cap(b) <= maxKeptCopyBuffer {
		*buf = b
	}
	_, err := tx.Conn().PgConn().CopyFrom(ctx, bytes.NewReader(b),
		"COPY rejot_log.changes (stream, position, commit_lsn, commit_time, op, key, row, last) FROM STDIN")
	return err
}
