// Package pglog is the event log kept in Postgres: per publication version
// an ordered change log and the compacted state (a table per version,
// compacted from the change log in bulk; reads fold in what is not
// compacted yet), so a new subscriber copies the state at a position and
// streams from there without touching the owner's database. Appends
// notify listeners on the channel rejot_log. docs/capture.md has the
// layout and the reasons.
package pglog

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rejot-dev/rejot/internal/migrate"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

//go:embed migrations/*.sql
var files embed.FS

var migrations = migrate.Set{Files: files, Dir: "migrations", Table: "rejot_log.schema_migrations", Lock: 7_265_106_113}

// Channel is the LISTEN channel appends notify; the payload is
// "<publication>/<version>/<head position>".
const Channel = "rejot_log"

// Log is an open event log.
type Log struct {
	pool       *pgxpool.Pool
	ctx        context.Context // ends when the log closes
	cancel     context.CancelFunc
	notifyOnce sync.Once
	notify     *notifier

	// What appends learned of streams, so the next one need not ask: a
	// stream's id and state layout, and the last commit LSN each system
	// appended to it. Only committed facts go in; an append that fails
	// makes the log forget (its commit may or may not have happened).
	mu    sync.Mutex
	known map[eventlog.Version]*knownStream
}

type knownStream struct {
	id       int
	layout   eventlog.Layout
	appended map[string]uint64
}

// learn records committed facts about a stream.
func (l *Log) learn(s eventlog.Version, id int, layout *eventlog.Layout, system string, lsn uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.known == nil {
		l.known = map[eventlog.Version]*knownStream{}
	}
	k := l.known[s]
	if k == nil || k.id != id {
		k = &knownStream{id: id, appended: map[string]uint64{}}
		l.known[s] = k
	}
	if layout != nil {
		k.layout = eventlog.Layout{Columns: layout.Columns, Key: slices.Clone(layout.Key)}
	}
	if system != "" {
		k.appended[system] = max(k.appended[system], lsn)
	}
}

// Forget drops what appends remembered: the next ones ask the log. A
// publisher calls it when it starts (another process may have appended
// for its system since), and an append whose commit failed does (the
// commit may or may not have happened).
func (l *Log) Forget() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.known = nil
}

// knownAppended is the last commit LSN system appended to s, if known.
func (l *Log) knownAppended(s eventlog.Version, system string) (uint64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if k := l.known[s]; k != nil {
		lsn, ok := k.appended[system]
		return lsn, ok
	}
	return 0, false
}

var _ eventlog.Log = (*Log)(nil)

// Open connects to the event log at url and migrates its schema.
func Open(ctx context.Context, url string) (*Log, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("cannot open the event log: %w", err)
	}
	// The slot is confirmed once an append commits, and a subscriber's
	// position lets changes go: commits must be durable by then,
	// whatever the server's default.
	cfg.ConnConfig.RuntimeParams["synchronous_commit"] = "on"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("cannot open the event log: %w", err)
	}
	err = pool.AcquireFunc(ctx, func(c *pgxpool.Conn) error { return migrations.Run(ctx, c.Conn()) })
	if err != nil {
		pool.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Log{pool: pool, ctx: ctx, cancel: cancel}, nil
}

// Close closes the log's connections.
func (l *Log) Close() {
	l.cancel()
	l.pool.Close()
}

// Append appends groups in one transaction. Groups of several source
// transactions may come together: each stays whole, and per stream the
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
	return &Tx{log: l, tx: tx, streams: map[eventlog.Version]*streamTx{}, groups: map[groupID]*groupTx{}}, nil
}

// Tx is an append in progress: one transaction of the log database.
type Tx struct {
	log     *Log
	tx      pgx.Tx
	streams map[eventlog.Version]*streamTx
	order   []eventlog.Version
	groups  map[groupID]*groupTx
	added   int
}

type streamTx struct {
	id     int
	head   int64
	groups []*groupTx      // new groups, in order
	fill   bool            // a first state (Fill)
	unread bool            // no subscriber reads it yet: a fill keeps no change log
	layout eventlog.Layout // of its state table; no columns: no table yet
	locked bool            // holds the stream's compaction lock
}

// compactLock is the first key of the advisory lock a stream's first
// state and its compactions (rejot_log.compact) take; the second is the
// stream's id.
const compactLock = 1919251314

// lockState keeps compactions off a stream's state until the append
// commits: a first state replaces what they would fold changes into.
func (t *Tx) lockState(ctx context.Context, st *streamTx) error {
	if st.locked {
		return nil
	}
	if _, err := t.tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1, $2)", compactLock, st.id); err != nil {
		return err
	}
	st.locked = true
	return nil
}

type groupID struct {
	stream eventlog.Version
	system string
	lsn    uint64
}

type groupTx struct {
	skip        bool // already in the log
	marked      bool // its change at last is marked as the group's end
	first, last int64
	id          groupID
}

// Append appends groups in order; see eventlog.Tx.
func (t *Tx) Append(ctx context.Context, groups []eventlog.Group) error {
	byStream := map[eventlog.Version][]*eventlog.Group{}
	var order []eventlog.Version
	for i := range groups {
		g := &groups[i]
		if _, ok := byStream[g.Version]; !ok {
			order = append(order, g.Version)
		}
		byStream[g.Version] = append(byStream[g.Version], g)
	}
	for _, s := range order {
		if err := t.appendStream(ctx, s, byStream[s], false); err != nil {
			return err
		}
	}
	return nil
}

// Fill appends a version's first state: one group, a truncate then an
// upsert per row, in parts. The compacted state is written with COPY and,
// when no subscriber reads the stream yet, the changes are not kept in
// the change log: new subscribers copy the state (a subscriber that
// starts meanwhile waits on the stream's row until this commits).
func (t *Tx) Fill(ctx context.Context, g eventlog.Group) error {
	return t.appendStream(ctx, g.Version, []*eventlog.Group{&g}, true)
}

// streamTx returns what this append knows of a stream, looking it up (and
// locking its row) the first time.
func (t *Tx) stream(ctx context.Context, s eventlog.Version, fill bool) (*streamTx, error) {
	if st := t.streams[s]; st != nil {
		return st, nil
	}
	if !fill {
		// An append need not look the stream up when an earlier one did:
		// its head update takes the row's lock all the same. (A first
		// state does: its upsert locks the row for the whole fill.)
		t.log.mu.Lock()
		k := t.log.known[s]
		var st *streamTx
		if k != nil && k.layout.Columns > 0 {
			st = &streamTx{id: k.id, layout: eventlog.Layout{Columns: k.layout.Columns, Key: slices.Clone(k.layout.Key)}}
		}
		t.log.mu.Unlock()
		if st != nil {
			t.streams[s] = st
			t.order = append(t.order, s)
			return st, nil
		}
	}
	var key []int
	st := &streamTx{fill: fill}
	err := t.tx.QueryRow(ctx, `INSERT INTO rejot_log.streams (publication, version) VALUES ($1, $2)
		ON CONFLICT (publication, version) DO UPDATE SET version = EXCLUDED.version
		RETURNING id, coalesce(state_columns, 0), coalesce(state_key, '{}')`, s.Publication, s.Number).Scan(&st.id, &st.layout.Columns, &key)
	if err != nil {
		return nil, err
	}
	st.layout.Key = key
	if fill {
		var read bool
		if err := t.tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM rejot_log.readers WHERE stream = $1)", st.id).Scan(&read); err != nil {
			return nil, err
		}
		st.unread = !read
	}
	t.streams[s] = st
	t.order = append(t.order, s)
	return st, nil
}

// FillStart begins a first state that arrives as COPY data (FillCopy):
// possible when nobody reads the stream yet, so the log keeps only the
// compacted state. It replaces the stream's state table with an empty
// one, its key left unindexed (the first compaction indexes it, in one
// sort, when there are changes to fold in: a subscriber's copy does not
// need it); ok is false when the first state must go through Fill.
func (t *Tx) FillStart(ctx context.Context, g eventlog.Group) (bool, error) {
	st, err := t.stream(ctx, g.Version, true)
	if err != nil || !st.unread || len(st.groups) > 0 {
		return false, err
	}
	gts, err := t.sortOut(ctx, st, g.Version, []*eventlog.Group{&g})
	if err != nil {
		return false, err
	}
	if gts[0].skip {
		return false, nil
	}
	if err := t.newState(ctx, st, g.Layout, false); err != nil {
		return false, err
	}
	return true, nil
}

// FillCopy reads a first state's rows in COPY text format, one column per
// value, into the stream's new state table. The table was made in this
// transaction, so the rows go in frozen: nobody vacuums them later.
func (t *Tx) FillCopy(ctx context.Context, g eventlog.Group, r io.Reader) (int64, error) {
	st := t.streams[g.Version]
	tag, err := t.tx.Conn().PgConn().CopyFrom(ctx, r, "COPY "+stateTable(st.id)+" ("+strings.Join(columns(st.layout.Columns), ", ")+") FROM STDIN WITH (FREEZE)")
	return tag.RowsAffected(), err
}

// FillEnd records the first state FillCopy read: a group of a truncate
// and one upsert per row.
func (t *Tx) FillEnd(ctx context.Context, g eventlog.Group, rows int64) error {
	st := t.streams[g.Version]
	var head int64
	if err := t.tx.QueryRow(ctx, "UPDATE rejot_log.streams SET head = head + $2 WHERE id = $1 RETURNING head", st.id, rows+1).Scan(&head); err != nil {
		return err
	}
	gt := t.groups[groupID{g.Version, g.System, g.CommitLSN}]
	gt.first, gt.last = head-rows, head
	st.groups = append(st.groups, gt)
	st.head = head
	return nil
}

// stateTable names a stream's compacted state.
func stateTable(stream int) string { return "rejot_log.state_" + strconv.Itoa(stream) }

// column names the state table's column of a row's i-th value.
func column(i int) string { return "v" + strconv.Itoa(i) }

// columns names the state table's first n columns.
func columns(n int) []string {
	cols := make([]string, n)
	for i := range cols {
		cols[i] = column(i)
	}
	return cols
}

func keyColumns(l eventlog.Layout) string {
	cols := make([]string, len(l.Key))
	for i, k := range l.Key {
		cols[i] = column(k)
	}
	return strings.Join(cols, ", ")
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

// newState replaces a stream's state table with an empty one laid out as
// l, its key indexed at once or (indexed false) left for later.
func (t *Tx) newState(ctx context.Context, st *streamTx, l eventlog.Layout, indexed bool) error {
	if err := checkLayout(l); err != nil {
		return err
	}
	if err := t.lockState(ctx, st); err != nil {
		return err
	}
	cols := columns(l.Columns)
	for i := range cols {
		cols[i] += ` text COLLATE "C"`
	}
	if indexed {
		cols = append(cols, "PRIMARY KEY ("+keyColumns(l)+")")
	}
	table := stateTable(st.id)
	if _, err := t.tx.Exec(ctx, "DROP TABLE IF EXISTS "+table); err != nil {
		return err
	}
	if _, err := t.tx.Exec(ctx, "CREATE TABLE "+table+" ("+strings.Join(cols, ", ")+")"); err != nil {
		return err
	}
	if err := t.grantAsChanges(ctx, table); err != nil {
		return err
	}
	if _, err := t.tx.Exec(ctx, "UPDATE rejot_log.streams SET state_columns = $2, state_key = $3 WHERE id = $1", st.id, l.Columns, l.Key); err != nil {
		return err
	}
	st.layout = eventlog.Layout{Columns: l.Columns, Key: slices.Clone(l.Key)}
	return nil
}

// grantAsChanges lets whoever may read the change log read a new state
// table too: sidecars that share the log under roles of their own are
// granted the log's tables once (see docs/guide.md), and the tables the
// log makes later follow rejot_log.changes.
func (t *Tx) grantAsChanges(ctx context.Context, table string) error {
	rows, err := t.tx.Query(ctx, `SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END
		FROM pg_catalog.pg_class c, aclexplode(c.relacl) AS a
		LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
		WHERE c.oid = 'rejot_log.changes'::regclass AND a.privilege_type = 'SELECT' AND a.grantee <> c.relowner`)
	if err != nil {
		return err
	}
	grantees, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(grantees) == 0 {
		return err
	}
	_, err = t.tx.Exec(ctx, "GRANT SELECT ON "+table+" TO "+strings.Join(grantees, ", "))
	return err
}

// clearState empties a stream's state for a first state laid out as l:
// the rows go (MVCC-safe: a subscriber copying meanwhile still sees the
// old ones), or the table is made anew when the layout changed.
func (t *Tx) clearState(ctx context.Context, st *streamTx, l eventlog.Layout) error {
	if st.layout.Columns > 0 && sameLayout(st.layout, l) {
		if err := t.lockState(ctx, st); err != nil {
			return err
		}
		_, err := t.tx.Exec(ctx, "DELETE FROM "+stateTable(st.id))
		return err
	}
	return t.newState(ctx, st, l, true)
}

// appendable makes sure a stream has a state table for g's rows.
func (t *Tx) appendable(ctx context.Context, st *streamTx, g *eventlog.Group) error {
	if st.layout.Columns == 0 {
		return t.newState(ctx, st, g.Layout, true)
	}
	if g.Layout.Columns > 0 && !sameLayout(st.layout, g.Layout) {
		return fmt.Errorf("%s version %d: rows laid out as %+v, its state as %+v (a changed definition needs a new first state)",
			g.Version.Publication, g.Version.Number, g.Layout, st.layout)
	}
	return nil
}

// appendStream appends one stream's groups (in order), skipping those
// already appended.
func (t *Tx) appendStream(ctx context.Context, s eventlog.Version, groups []*eventlog.Group, fill bool) error {
	st, err := t.stream(ctx, s, fill)
	if err != nil {
		return err
	}
	gts, err := t.sortOut(ctx, st, s, groups)
	if err != nil {
		return err
	}
	var fresh []*eventlog.Group
	var freshTx []*groupTx
	count := 0
	for i, g := range groups {
		if gt := gts[i]; !gt.skip && len(g.Changes) > 0 {
			fresh, freshTx = append(fresh, g), append(freshTx, gt)
			count += len(g.Changes)
		}
	}
	if count == 0 {
		return nil
	}
	if !fill {
		if err := t.appendable(ctx, st, fresh[0]); err != nil {
			return err
		}
	}
	var head int64
	if err := t.tx.QueryRow(ctx, "UPDATE rejot_log.streams SET head = head + $2 WHERE id = $1 RETURNING head", st.id, count).Scan(&head); err != nil {
		return err
	}
	first := head - int64(count) + 1
	pos := first
	var unmark []int64 // group ends marked by an earlier part of the same group
	for i, g := range fresh {
		gt := freshTx[i]
		if gt.first == 0 {
			gt.first = pos
			st.groups = append(st.groups, gt)
		} else if gt.marked {
			unmark = append(unmark, gt.last)
		}
		pos += int64(len(g.Changes))
		gt.last = pos - 1
	}
	st.head = head
	if !(st.fill && st.unread) {
		if err := insertChanges(ctx, t.tx, st.id, first, fresh, count); err != nil {
			return err
		}
		for _, gt := range freshTx {
			gt.marked = true
		}
		if len(unmark) > 0 {
			if _, err := t.tx.Exec(ctx, "UPDATE rejot_log.changes SET last = false WHERE stream = $1 AND position = ANY ($2)", st.id, unmark); err != nil {
				return err
			}
		}
	}
	if st.fill {
		var all []eventlog.Change
		for _, g := range fresh {
			all = append(all, g.Changes...)
		}
		return t.fillState(ctx, st, fresh[0].Layout, all)
	}
	// The state catches up in bulk (rejot_log.compact), not here.
	for _, g := range fresh {
		for _, c := range g.Changes {
			if err := fits(st.layout, c.Row); err != nil {
				return err
			}
		}
	}
	return nil
}

// fillState writes a first state's part: a truncate clears the state, and
// the rows (each key once: a table's rows) are copied in.
func (t *Tx) fillState(ctx context.Context, st *streamTx, l eventlog.Layout, changes []eventlog.Change) error {
	var rows [][]any
	for _, c := range changes {
		switch c.Op {
		case eventlog.OpTruncate:
			if err := t.clearState(ctx, st, l); err != nil {
				return err
			}
			rows = rows[:0]
		case eventlog.OpUpsert:
			row, err := stateRow(st.layout, c.Row)
			if err != nil {
				return err
			}
			vals := make([]any, len(row))
			for i, v := range row {
				vals[i] = v
			}
			rows = append(rows, vals)
		default:
			return fmt.Errorf("a first state holds upserts only, not %q", c.Op)
		}
	}
	if len(rows) == 0 {
		return nil
	}
	if st.layout.Columns == 0 {
		return errors.New("a first state must start with a truncate")
	}
	_, err := t.tx.CopyFrom(ctx, pgx.Identifier{"rejot_log", "state_" + strconv.Itoa(st.id)}, columns(st.layout.Columns), pgx.CopyFromRows(rows))
	return err
}

// fits refuses a row with more values than the state has columns.
func fits(l eventlog.Layout, row []eventlog.Value) error {
	if len(row) > l.Columns {
		return fmt.Errorf("a row of %d values does not fit a state of %d", len(row), l.Columns)
	}
	return nil
}

// stateRow is a row's values as the state table holds them: a value a row
// lacks (laid out before a column was added) is NULL.
func stateRow(l eventlog.Layout, row []eventlog.Value) ([]eventlog.Value, error) {
	if err := fits(l, row); err != nil {
		return nil, err
	}
	if len(row) < l.Columns {
		row = append(slices.Clone(row), make([]eventlog.Value, l.Columns-len(row))...)
	}
	return row, nil
}

// sortOut learns, for groups not seen before in this append, whether the
// log already has them (same system and commit LSN), and returns what
// this append knows of each group, in order.
func (t *Tx) sortOut(ctx context.Context, st *streamTx, s eventlog.Version, groups []*eventlog.Group) ([]*groupTx, error) {
	gts := make([]*groupTx, len(groups))
	var unseen []int
	for i, g := range groups {
		id := groupID{s, g.System, g.CommitLSN}
		if gts[i] = t.groups[id]; gts[i] == nil {
			gts[i] = &groupTx{id: id}
			t.groups[id] = gts[i]
			unseen = append(unseen, i)
		}
	}
	// A system appends its transactions in commit order (one capture
	// per system), so a group at or before the last one it appended to
	// the stream is a replay — already in the log, or skipped on purpose
	// — and one past it is new. No lookup: the groups themselves may be
	// pruned.
	last := map[string]uint64{}
	for _, i := range unseen {
		g := groups[i]
		l, ok := last[g.System]
		if !ok {
			l, ok = t.log.knownAppended(s, g.System)
		}
		if !ok {
			var lsn *string
			err := t.tx.QueryRow(ctx, "SELECT lsn::text FROM rejot_log.appended WHERE stream = $1 AND system = $2",
				st.id, g.System).Scan(&lsn)
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
			t.log.learn(s, st.id, nil, g.System, l) // committed: true whatever becomes of this append
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
	for _, s := range t.order {
		st := t.streams[s]
		t.log.learn(s, st.id, &st.layout, "", 0)
		for _, g := range st.groups {
			t.log.learn(s, st.id, nil, g.id.system, g.id.lsn)
		}
	}
	return added, nil
}

func (t *Tx) commit(ctx context.Context) (int, error) {
	added := 0
	for _, s := range t.order {
		st := t.streams[s]
		if len(st.groups) == 0 {
			continue
		}
		if st.fill {
			// A first state is the whole state as of its group: nothing
			// before it is left to compact.
			if _, err := t.tx.Exec(ctx, `INSERT INTO rejot_log.compactions (stream, position) VALUES ($1, $2)
				ON CONFLICT (stream) DO UPDATE SET position = EXCLUDED.position`, st.id, st.head); err != nil {
				return 0, err
			}
		}
		if err := recordAppended(ctx, t.tx, st.id, st.groups,
			s.Publication+"/"+strconv.Itoa(s.Number)+"/"+strconv.FormatInt(st.head, 10)); err != nil {
			return 0, err
		}
		added += len(st.groups)
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
// stream (what tells a replay from a new transaction, see sortOut), and
// notifies listeners with payload on commit: one statement.
func recordAppended(ctx context.Context, tx pgx.Tx, stream int, groups []*groupTx, payload string) error {
	last := map[string]uint64{}
	for _, g := range groups {
		last[g.id.system] = max(last[g.id.system], g.id.lsn)
	}
	systems, lsns := make([]string, 0, len(last)), make([]string, 0, len(last))
	for system, lsn := range last {
		systems, lsns = append(systems, system), append(lsns, string(appendLSN(nil, lsn)))
	}
	_, err := tx.Exec(ctx, `WITH a AS (
			INSERT INTO rejot_log.appended (stream, system, lsn) SELECT $1, s, l FROM unnest($2::text[], $3::pg_lsn[]) AS u(s, l)
			ON CONFLICT (stream, system) DO UPDATE SET lsn = greatest(rejot_log.appended.lsn, EXCLUDED.lsn))
		SELECT pg_notify($4, $5)`, stream, systems, lsns, Channel, payload)
	return err
}

func streamID(ctx context.Context, tx pgx.Tx, s eventlog.Version) (int, error) {
	var id int
	err := tx.QueryRow(ctx, `INSERT INTO rejot_log.streams (publication, version) VALUES ($1, $2)
		ON CONFLICT (publication, version) DO UPDATE SET version = EXCLUDED.version RETURNING id`,
		s.Publication, s.Number).Scan(&id)
	return id, err
}

func encode(values []eventlog.Value) ([]byte, error) {
	if values == nil {
		return nil, nil
	}
	return appendJSON(make([]byte, 0, 16*len(values)+2), values), nil
}

// appendJSON renders values as a JSON array exactly as Postgres prints it
// as jsonb (["a", null, "b"]), so keys written now equal keys stored as
// jsonb before, byte for byte.
func appendJSON(b []byte, values []eventlog.Value) []byte {
	return appendJSONAs(b, values, false)
}

// appendJSONAs is appendJSON, for COPY's text format when forCopy: JSON's
// escapes are its only backslashes (control characters are escaped, so
// no tab or newline is left to end a field or a row), and COPY reads
// each backslash doubled.
func appendJSONAs(b []byte, values []eventlog.Value, forCopy bool) []byte {
	const hex = "0123456789abcdef"
	esc := []byte{'\\'}
	if forCopy {
		esc = []byte{'\\', '\\'}
	}
	b = append(b, '[')
	for i, v := range values {
		if i > 0 {
			b = append(b, ',', ' ')
		}
		if v == nil {
			b = append(b, "null"...)
			continue
		}
		b = append(b, '"')
		for j := 0; j < len(*v); j++ {
			c := (*v)[j]
			var e byte
			switch c {
			case '"', '\\':
				e = c
			case '\b':
				e = 'b'
			case '\f':
				e = 'f'
			case '\n':
				e = 'n'
			case '\r':
				e = 'r'
			case '\t':
				e = 't'
			default:
				if c < 0x20 {
					b = append(b, esc...)
					b = append(b, 'u', '0', '0', hex[c>>4], hex[c&15])
				} else {
					b = append(b, c)
				}
				continue
			}
			b = append(b, esc...)
			if e == '\\' {
				b = append(b, esc...) // the escaped backslash, doubled as well for COPY
			} else {
				b = append(b, e)
			}
		}
		b = append(b, '"')
	}
	return append(b, ']')
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

// copyBuffers hold the COPY data of appends, reused: a catch-up renders
// megabytes a second. One larger than maxKeptCopyBuffer is left to the
// collector.
var copyBuffers = sync.Pool{New: func() any { return new([]byte) }}

const maxKeptCopyBuffer = 16 << 20

// appendTime appends t in UTC to the microsecond, as timestamptz input
// ("2006-01-02 15:04:05.000000Z"): time.AppendFormat took a tenth of the
// capture's CPU in a catch-up, once per transaction. Years past 9999 fall
// back to it.
func appendTime(b []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		return t.AppendFormat(b, "2006-01-02 15:04:05.999999Z07:00")
	}
	hour, minute, sec := t.Clock()
	b = appendDigits(b, year, 4)
	b = append(b, '-')
	b = appendDigits(b, int(month), 2)
	b = append(b, '-')
	b = appendDigits(b, day, 2)
	b = append(b, ' ')
	b = appendDigits(b, hour, 2)
	b = append(b, ':')
	b = appendDigits(b, minute, 2)
	b = append(b, ':')
	b = appendDigits(b, sec, 2)
	b = append(b, '.')
	b = appendDigits(b, t.Nanosecond()/1000, 6)
	return append(b, 'Z')
}

// appendDigits appends n (0 ≤ n < 10^width) in width decimal digits.
func appendDigits(b []byte, n, width int) []byte {
	b = append(b, make([]byte, width)...)
	for i := len(b) - 1; i >= len(b)-width; i-- {
		b[i] = byte('0' + n%10)
		n /= 10
	}
	return b
}

// appendLSN appends an LSN as Postgres prints it (%X/%X).
func appendLSN(b []byte, lsn uint64) []byte {
	b = strconv.AppendUint(b, lsn>>32, 16)
	b = append(b, '/')
	b = strconv.AppendUint(b, lsn&0xFFFFFFFF, 16)
	return b
}

// Filled returns where and with what definition system last filled s. A
// stream filled before definitions were recorded has its first group's
// LSN and an empty definition.
func (l *Log) Filled(ctx context.Context, s eventlog.Version, system string) (uint64, string, bool, error) {
	var lsn, definition *string
	err := l.pool.QueryRow(ctx, `SELECT CASE WHEN s.filled_system = $3 THEN s.filled_lsn::text
			ELSE (SELECT min(g.commit_lsn)::text FROM rejot_log.groups g WHERE g.stream = s.id AND g.system = $3) END,
			CASE WHEN s.filled_system = $3 THEN s.definition END
		FROM rejot_log.streams s WHERE s.publication = $1 AND s.version = $2`, s.Publication, s.Number, system).Scan(&lsn, &definition)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && lsn == nil) {
		return 0, "", false, nil
	}
	if err != nil {
		return 0, "", false, err
	}
	parsed, err := pglogrepl.ParseLSN(*lsn)
	if err != nil {
		return 0, "", false, err
	}
	def := ""
	if definition != nil {
		def = *definition
	}
	return uint64(parsed), def, true, nil
}

// SetFilled records what a stream's state is filled from.
func (t *Tx) SetFilled(ctx context.Context, s eventlog.Version, system, definition string, lsn uint64) error {
	id, err := streamID(ctx, t.tx, s)
	if err != nil {
		return err
	}
	_, err = t.tx.Exec(ctx, "UPDATE rejot_log.streams SET definition = $2, filled_system = $3, filled_lsn = $4 WHERE id = $1",
		id, definition, system, pglogrepl.LSN(lsn).String())
	return err
}

// State calls fn for every row of a stream's compacted state, in key
// order, as of one consistent moment, and returns the position that state
// is at: a subscriber that copies it continues with the changes after it.
func (l *Log) State(ctx context.Context, s eventlog.Version, fn func(row []eventlog.Value) error) (int64, error) {
	var at int64
	err := l.readState(ctx, s, func(tx pgx.Tx, st stateAt) error {
		at = st.head
		if st.layout.Columns == 0 {
			return nil
		}
		elements := make([]int, st.layout.Columns)
		for i := range elements {
			elements[i] = i
		}
		q, err := st.query(ctx, tx, elements)
		if err != nil {
			return err
		}
		order := make([]string, len(st.layout.Key))
		for i, k := range st.layout.Key {
			order[i] = "m.c" + strconv.Itoa(k)
		}
		cols := make([]string, len(elements))
		for i := range cols {
			cols[i] = "m.c" + strconv.Itoa(i)
		}
		rows, err := tx.Query(ctx, "SELECT ARRAY["+strings.Join(cols, ", ")+"]::text[] FROM ("+q+") AS m ORDER BY "+strings.Join(order, ", "))
		if err != nil {
			return err
		}
		var row []eventlog.Value
		_, err = pgx.ForEachRow(rows, []any{&row}, func() error { return fn(row) })
		return err
	})
	return at, err
}

// stateAt is what a read of a stream's state sees in its snapshot: the
// state table as compacted up to compacted, and the changes after it up
// to head.
type stateAt struct {
	id              int
	layout          eventlog.Layout
	compacted, head int64
}

// readState calls fn in a read-only snapshot with what the stream's state
// is there; fn is not called when the stream does not exist. Reading
// writes nothing: a subscriber's role needs no more than to read the log.
func (l *Log) readState(ctx context.Context, s eventlog.Version, fn func(pgx.Tx, stateAt) error) error {
	return pgx.BeginTxFunc(ctx, l.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var st stateAt
		err := tx.QueryRow(ctx, `SELECT s.id, coalesce(s.state_columns, 0), coalesce(s.state_key, '{}'), coalesce(c.position, 0), s.head
			FROM rejot_log.streams s LEFT JOIN rejot_log.compactions c ON c.stream = s.id
			WHERE s.publication = $1 AND s.version = $2`, s.Publication, s.Number).
			Scan(&st.id, &st.layout.Columns, &st.layout.Key, &st.compacted, &st.head)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		return fn(tx, st)
	})
}

// query is a SELECT of the state at head, the given elements of each row
// as columns c0, c1, …: the state table's rows whose key no later change
// touched, and the last upsert of each key the changes after the
// compaction touched — all of them after their last truncate, with none
// of the table's rows when there is one. What the compaction would write,
// computed without writing it.
func (st stateAt) query(ctx context.Context, tx pgx.Tx, elements []int) (string, error) {
	from := st.compacted
	withState := true
	if st.head > st.compacted {
		var cut *int64
		err := tx.QueryRow(ctx, `SELECT max(position) FROM rejot_log.changes
			WHERE stream = $1 AND position > $2 AND position <= $3 AND op = 't'`, st.id, st.compacted, st.head).Scan(&cut)
		if err != nil {
			return "", err
		}
		if cut != nil {
			from, withState = *cut, false
		}
	}
	id := strconv.Itoa(st.id)
	stateCols, changeCols := make([]string, len(elements)), make([]string, len(elements))
	for i, e := range elements {
		name := " AS c" + strconv.Itoa(i)
		stateCols[i], changeCols[i] = "NULL::text"+name, "r.j->>"+strconv.Itoa(e)+name
		if e < st.layout.Columns {
			stateCols[i] = "s." + column(e) + name
		}
	}
	matched := make([]string, len(st.layout.Key))
	for o, k := range st.layout.Key {
		matched[o] = "s." + column(k) + " = l.key::jsonb->>" + strconv.Itoa(o)
	}
	last := "(SELECT DISTINCT ON (c.key) c.key, c.op, c.row FROM rejot_log.changes c WHERE c.stream = " + id +
		" AND c.position > " + strconv.FormatInt(from, 10) + " AND c.position <= " + strconv.FormatInt(st.head, 10) +
		" ORDER BY c.key, c.position DESC)"
	changed := "SELECT " + strings.Join(changeCols, ", ") + " FROM " + last + " AS l, LATERAL (SELECT l.row::jsonb AS j) AS r WHERE l.op = 'u'"
	if !withState {
		return changed, nil
	}
	q := "SELECT " + strings.Join(stateCols, ", ") + " FROM " + stateTable(st.id) + " AS s"
	if st.head > from {
		q += " WHERE NOT EXISTS (SELECT 1 FROM " + last + " AS l WHERE " + strings.Join(matched, " AND ") + ")" +
			" UNION ALL " + changed
	}
	return q, nil
}

// Changes returns up to limit records of a stream after position.
func (l *Log) Changes(ctx context.Context, s eventlog.Version, after int64, limit int) ([]eventlog.Entry, error) {
	recs, _, err := l.changes(ctx, s, after, limit)
	return recs, err
}

// changes returns up to limit records of a stream after position, and
// which of them end a group.
func (l *Log) changes(ctx context.Context, s eventlog.Version, after int64, limit int) ([]eventlog.Entry, []bool, error) {
	rows, err := l.pool.Query(ctx, `SELECT c.position, (c.commit_lsn - '0/0')::int8, c.commit_time, c.op::text, c.key::text, c.row::text, c.last
		FROM rejot_log.changes c JOIN rejot_log.streams s ON s.id = c.stream
		WHERE s.publication = $1 AND s.version = $2 AND c.position > $3
		ORDER BY c.position LIMIT $4`, s.Publication, s.Number, after, limit)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	var recs []eventlog.Entry
	var ends []bool
	for rows.Next() {
		r, last, err := scanRecord(rows)
		if err != nil {
			return nil, nil, err
		}
		recs, ends = append(recs, r), append(ends, last)
	}
	return recs, ends, rows.Err()
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

// Keep records out-of-line values of source rows, in order; see
// eventlog.Kept.
func (t *Tx) Keep(ctx context.Context, system string, kept []eventlog.Kept) error {
	type pending struct {
		table   string
		key     string
		vals    map[string]eventlog.Value
		gone    bool // delete what is kept before storing vals
		missing bool
	}
	var order []*pending
	byKey := map[string]*pending{}
	flush := func() error {
		if len(order) == 0 {
			return nil
		}
		var goneT, goneK, putT, putK, putV []string
		var putMissing []bool
		for _, p := range order {
			if p.gone {
				goneT, goneK = append(goneT, p.table), append(goneK, p.key)
			}
			if p.vals != nil {
				v, err := json.Marshal(p.vals)
				if err != nil {
					return err
				}
				putT, putK, putV = append(putT, p.table), append(putK, p.key), append(putV, string(v))
				putMissing = append(putMissing, p.missing)
			}
		}
		order, byKey = nil, map[string]*pending{}
		if len(goneT) > 0 {
			if _, err := t.tx.Exec(ctx, `DELETE FROM rejot_log.kept k USING unnest($2::text[], $3::jsonb[]) AS u(source, key)
				WHERE k.system = $1 AND k.source = u.source AND k.key = u.key`, system, goneT, goneK); err != nil {
				return err
			}
		}
		for _, missing := range []bool{false, true} {
			var tables, keys, vals []string
			for i := range putT {
				if putMissing[i] == missing {
					tables, keys, vals = append(tables, putT[i]), append(keys, putK[i]), append(vals, putV[i])
				}
			}
			if len(tables) == 0 {
				continue
			}
			merge := "rejot_log.kept.vals || EXCLUDED.vals" // newer values win
			if missing {
				merge = "EXCLUDED.vals || rejot_log.kept.vals" // kept values win
			}
			_, err := t.tx.Exec(ctx, `INSERT INTO rejot_log.kept (system, source, key, vals)
				SELECT $1, s, k, v FROM unnest($2::text[], $3::jsonb[], $4::jsonb[]) AS u(s, k, v)
				ON CONFLICT (system, source, key) DO UPDATE SET vals = `+merge, system, tables, keys, vals)
			if err != nil {
				return err
			}
		}
		return nil
	}
	for _, k := range kept {
		if k.Key == nil { // every row of the table
			if err := flush(); err != nil {
				return err
			}
			if _, err := t.tx.Exec(ctx, "DELETE FROM rejot_log.kept WHERE system = $1 AND source = $2", system, k.Table); err != nil {
				return err
			}
			continue
		}
		enc, err := encode(k.Key)
		if err != nil {
			return err
		}
		id := k.Table + "\x00" + string(enc)
		p := byKey[id]
		if p == nil || p.missing != k.Missing {
			if p != nil {
				if err := flush(); err != nil {
					return err
				}
			}
			p = &pending{table: k.Table, key: string(enc), missing: k.Missing}
			byKey[id] = p
			order = append(order, p)
		}
		if k.Gone {
			p.gone, p.vals = true, nil
			continue
		}
		if p.vals == nil {
			p.vals = map[string]eventlog.Value{}
		}
		for c, v := range k.Values {
			p.vals[c] = v
		}
	}
	return flush()
}

// Recall returns the values kept for rows of a source table.
func (t *Tx) Recall(ctx context.Context, system, table string, keys [][]eventlog.Value) (map[string]map[string]eventlog.Value, error) {
	out := map[string]map[string]eventlog.Value{}
	if len(keys) == 0 {
		return out, nil
	}
	enc := make([]string, len(keys))
	for i, k := range keys {
		e, err := encode(k)
		if err != nil {
			return nil, err
		}
		enc[i] = string(e)
	}
	rows, err := t.tx.Query(ctx, `SELECT key::text, vals::text FROM rejot_log.kept
		WHERE system = $1 AND source = $2 AND key = ANY ($3::jsonb[])`, system, table, enc)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var rawKey, rawVals string
		if err := rows.Scan(&rawKey, &rawVals); err != nil {
			return nil, err
		}
		var key []eventlog.Value
		vals := map[string]eventlog.Value{}
		if err := json.Unmarshal([]byte(rawKey), &key); err != nil {
			return nil, err
		}
		if err := json.Unmarshal([]byte(rawVals), &vals); err != nil {
			return nil, err
		}
		out[eventlog.KeyString(key)] = vals
	}
	return out, rows.Err()
}
