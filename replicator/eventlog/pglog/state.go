package pglog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// lockState keeps compactions off a version's state until the append
// commits: a first state replaces what they would fold changes into. The
// lock is the version's row of rejot_log.compactions, which compactions
// (rejot_log.compact) lock too; only the log's roles can lock it, where
// any role that can connect could take an advisory lock.
func (t *Tx) lockState(ctx context.Context, vt *versionTx) error {
	if vt.locked {
		return nil
	}
	if _, err := t.tx.Exec(ctx, `INSERT INTO rejot_log.compactions (stream, position) VALUES ($1, 0) ON CONFLICT DO NOTHING`, vt.id); err != nil {
		return err
	}
	if _, err := t.tx.Exec(ctx, "SELECT 1 FROM rejot_log.compactions WHERE stream = $1 FOR UPDATE", vt.id); err != nil {
		return err
	}
	vt.locked = true
	return nil
}

// stateTable names a version's compacted state.
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

// newState replaces a version's state table with an empty one laid out as
// l, its key indexed at once or (indexed false) left for later.
func (t *Tx) newState(ctx context.Context, vt *versionTx, l eventlog.Layout, indexed bool) error {
	if err := checkLayout(l); err != nil {
		return err
	}
	if err := t.lockState(ctx, vt); err != nil {
		return err
	}
	cols := columns(l.Columns)
	for i := range cols {
		cols[i] += ` text COLLATE "C"`
	}
	if indexed {
		cols = append(cols, "PRIMARY KEY ("+keyColumns(l)+")")
	}
	table := stateTable(vt.id)
	if _, err := t.tx.Exec(ctx, "DROP TABLE IF EXISTS "+table); err != nil {
		return err
	}
	if _, err := t.tx.Exec(ctx, "CREATE TABLE "+table+" ("+strings.Join(cols, ", ")+")"); err != nil {
		return err
	}
	if err := t.grantAsChanges(ctx, table); err != nil {
		return err
	}
	if _, err := t.tx.Exec(ctx, "UPDATE rejot_log.streams SET state_columns = $2, state_key = $3 WHERE id = $1", vt.id, l.Columns, l.Key); err != nil {
		return err
	}
	vt.layout = eventlog.Layout{Columns: l.Columns, Key: slices.Clone(l.Key)}
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

// clearState empties a version's state for a first state laid out as l:
// the rows go (MVCC-safe: a subscriber copying meanwhile still sees the
// old ones), or the table is made anew when the layout changed.
func (t *Tx) clearState(ctx context.Context, vt *versionTx, l eventlog.Layout) error {
	if vt.layout.Columns > 0 && sameLayout(vt.layout, l) {
		if err := t.lockState(ctx, vt); err != nil {
			return err
		}
		_, err := t.tx.Exec(ctx, "DELETE FROM "+stateTable(vt.id))
		return err
	}
	return t.newState(ctx, vt, l, true)
}

// appendable makes sure a version has a state table for g's rows.
func (t *Tx) appendable(ctx context.Context, vt *versionTx, g *eventlog.Group) error {
	if vt.layout.Columns == 0 {
		return t.newState(ctx, vt, g.Layout, true)
	}
	if g.Layout.Columns > 0 && !sameLayout(vt.layout, g.Layout) {
		return fmt.Errorf("%s version %d: rows laid out as %+v, its state as %+v (a changed definition needs a new first state)",
			g.Version.Publication, g.Version.Number, g.Layout, vt.layout)
	}
	return nil
}

// fillState writes a first state's part: a truncate clears the state, and
// the rows (each key once: a table's rows) are copied in.
func (t *Tx) fillState(ctx context.Context, vt *versionTx, l eventlog.Layout, changes []eventlog.Change) error {
	var rows [][]any
	for _, c := range changes {
		switch c.Op {
		case eventlog.OpTruncate:
			if err := t.clearState(ctx, vt, l); err != nil {
				return err
			}
			rows = rows[:0]
		case eventlog.OpUpsert:
			row, err := stateRow(vt.layout, c.Row)
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
	if vt.layout.Columns == 0 {
		return errors.New("a first state must start with a truncate")
	}
	_, err := t.tx.CopyFrom(ctx, pgx.Identifier{"rejot_log", "state_" + strconv.Itoa(vt.id)}, columns(vt.layout.Columns), pgx.CopyFromRows(rows))
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

// State calls fn for every row of a version's compacted state, in key
// order, as of one consistent moment, and returns the position that state
// is at: a subscriber that copies it continues with the changes after it.
func (l *Log) State(ctx context.Context, v eventlog.Version, fn func(row []eventlog.Value) error) (int64, error) {
	var at int64
	err := l.readState(ctx, v, func(tx pgx.Tx, st stateAt) error {
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

// CopyState writes a version's compacted state to w in COPY's text format,
// the given elements of each row as columns (an element past a row's end,
// a column a later minor added, is NULL), as of one consistent moment,
// and returns the position that state is at: the version's head, with the
// changes not compacted yet folded in on the way. Postgres renders the
// rows: they pass through as bytes.
func (l *Log) CopyState(ctx context.Context, v eventlog.Version, elements []int, w io.Writer) (int64, error) {
	var at int64
	err := l.readState(ctx, v, func(tx pgx.Tx, st stateAt) error {
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

// stateAt is what a read of a version's state sees in its snapshot: the
// state table as compacted up to compacted, and the changes after it up
// to head.
type stateAt struct {
	id              int
	layout          eventlog.Layout
	compacted, head int64
}

// readState calls fn in a read-only snapshot with what the version's state
// is there; fn is not called when the version does not exist. Reading
// writes nothing: a subscriber's role needs no more than to read the log.
func (l *Log) readState(ctx context.Context, v eventlog.Version, fn func(pgx.Tx, stateAt) error) error {
	return pgx.BeginTxFunc(ctx, l.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var st stateAt
		err := tx.QueryRow(ctx, `SELECT s.id, coalesce(s.state_columns, 0), coalesce(s.state_key, '{}'), coalesce(c.position, 0), s.head
			FROM rejot_log.streams s LEFT JOIN rejot_log.compactions c ON c.stream = s.id
			WHERE s.publication = $1 AND s.version = $2`, v.Publication, v.Number).
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
