package capture

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// joinChunk is how many root rows a join version recomputes at a time:
// what bounds its memory whatever a change fans out to.
const joinChunk = 2000

// joinAppend applies each source transaction's changes to a join
// version's base state and appends, in tx, the public rows they touched,
// in commit order (see join.go). Transactions for which skip is true are
// in the base state already.
func (s *session) joinAppend(ctx context.Context, tx eventlog.Tx, src *Source, txns []*transaction, skip func(*transaction) bool) error {
	plan := src.Join
	if plan.tables[0].types == nil {
		if err := plan.joinTypes(ctx, s.conn, src); err != nil {
			return err
		}
	}
	var run []*transaction // consecutive transactions that change only root rows
	for _, t := range txns {
		if skip(t) {
			continue
		}
		if s.rootOnly(src, t) {
			run = append(run, t)
			continue
		}
		if err := s.rootRun(ctx, tx, src, run); err != nil {
			return err
		}
		run = nil
		if err := s.joinTransaction(ctx, tx, src, t); err != nil {
			return err
		}
	}
	return s.rootRun(ctx, tx, src, run)
}

// rootOnly says whether a transaction changes, of a join version's
// tables, only rows of the root (no truncate, no value left out): the
// rows of the joined tables are then as the base state has them, and
// the public rows it changes are those of its own root rows.
func (s *session) rootOnly(src *Source, t *transaction) bool {
	for ei := range t.events {
		e := &t.events[ei]
		r := s.rels[e.rel]
		if r == nil {
			continue
		}
		pos := src.Join.positions(r.schema, r.table)
		if len(pos) == 0 {
			continue
		}
		if len(pos) > 1 || pos[0] != 0 || e.op == 'T' || slices.Contains(e.toasted, true) {
			return false
		}
	}
	return true
}

// rootRun appends what a run of root-only transactions did, with one
// write of base rows, one read of the joined rows and one evaluation per
// chunk of root rows for the whole run, each transaction's group holding
// its own root rows as it left them.
func (s *session) rootRun(ctx context.Context, tx eventlog.Tx, src *Source, run []*transaction) error {
	if len(run) == 0 {
		return nil
	}
	rows, entries, err := s.runRows(ctx, tx, src, run)
	if err != nil {
		return err
	}
	if err := tx.PutBase(ctx, src.Version, s.p.System, run[len(run)-1].commitLSN, rows); err != nil {
		return fmt.Errorf("cannot append to the event log: %w", err)
	}
	for start := 0; start < len(entries); start += joinChunk {
		if err := s.appendRun(ctx, tx, src, run, entries[start:min(start+joinChunk, len(entries))]); err != nil {
			return err
		}
	}
	return nil
}

// runEntry is a root row a transaction of a run left as it is: row nil
// when it is gone.
type runEntry struct {
	txn int
	key string
	row []eventlog.Value
}

// runRows are a run's base rows, in order, and its entries: per
// transaction, each root row it changed, as it left it.
func (s *session) runRows(ctx context.Context, tx eventlog.Tx, src *Source, run []*transaction) ([]eventlog.BaseRow, []runEntry, error) {
	var rows []eventlog.BaseRow
	var entries []runEntry
	for ti, t := range run {
		last := map[string]int{} // the transaction's rows, by key: the last change of each counts
		for ei := range t.events {
			e := &t.events[ei]
			r := s.rels[e.rel]
			if r == nil || len(src.Join.positions(r.schema, r.table)) == 0 {
				continue
			}
			changed, err := s.baseChange(ctx, tx, src, 0, r, e, nil)
			if err != nil {
				return nil, nil, err
			}
			for _, b := range changed {
				if at, ok := last[b.Key]; ok {
					entries[at].row = b.Row
				} else {
					last[b.Key] = len(entries)
					entries = append(entries, runEntry{txn: ti, key: b.Key, row: b.Row})
				}
			}
			rows = append(rows, changed...)
		}
	}
	return rows, entries, nil
}

// appendRun evaluates a chunk of a run's entries over the joined rows
// they meet and appends them, in their transactions' groups.
func (s *session) appendRun(ctx context.Context, tx eventlog.Tx, src *Source, run []*transaction, chunk []runEntry) error {
	var present [][]eventlog.Value
	for _, e := range chunk {
		if e.row != nil {
			present = append(present, e.row)
		}
	}
	tables, err := s.joinedRows(ctx, tx, src, present)
	if err != nil {
		return err
	}
	projected, err := src.projectJoin(ctx, s.conn, tables)
	if err != nil {
		return src.fault(err, false)
	}
	var groups []eventlog.Group
	at := 0
	for _, e := range chunk {
		if t := run[e.txn]; len(groups) == 0 || groups[len(groups)-1].CommitLSN != t.commitLSN {
			groups = append(groups, eventlog.Group{Version: src.Version, System: s.p.System, CommitLSN: t.commitLSN,
				CommitTime: t.commitTime, Layout: src.Layout()})
		}
		g := &groups[len(groups)-1]
		change := eventlog.Change{Op: eventlog.OpDelete, Key: src.rootKey(e.key)}
		if e.row != nil {
			if p, ok := projected[at]; ok && p.Keep {
				change = eventlog.Change{Op: eventlog.OpUpsert, Key: keyFrom(src, p.Row), Row: p.Row}
			}
			at++
		}
		g.Changes = append(g.Changes, change)
	}
	if err := tx.Append(ctx, groups); err != nil {
		return fmt.Errorf("cannot append to the event log: %w", err)
	}
	metricCaptured.WithLabelValues(versionLabels(src.Version)...).Add(float64(len(chunk)))
	return nil
}

func keyFrom(src *Source, row []eventlog.Value) []eventlog.Value {
	key := make([]eventlog.Value, len(src.KeyCols))
	for j, c := range src.KeyCols {
		key[j] = row[c]
	}
	return key
}

// joinedRows are, for some root rows, the rows of each joined table they
// meet, read from the base state top-down (the root rows first).
func (s *session) joinedRows(ctx context.Context, tx eventlog.Tx, src *Source, roots [][]eventlog.Value) ([][][]eventlog.Value, error) {
	plan := src.Join
	tables := make([][][]eventlog.Value, len(plan.tables))
	tables[0] = roots
	for ti := 1; ti < len(plan.tables); ti++ {
		parent := plan.tables[ti].parent
		want := map[string]bool{}
		for _, r := range tables[parent] {
			if ref, ok := refOf(r, plan.tables[parent].refs[ti]); ok {
				want[ref] = true
			}
		}
		keys := make([]string, 0, len(want))
		for k := range want {
			keys = append(keys, k)
		}
		got, err := tx.Base(ctx, src.Version, ti, keys)
		if err != nil {
			return nil, fmt.Errorf("cannot read the event log: %w", err)
		}
		for _, k := range keys {
			if r, ok := got[k]; ok {
				tables[ti] = append(tables[ti], r)
			}
		}
	}
	return tables, nil
}

// touched are the rows of each table of a join a transaction changed
// (old and new keys), and the tables it truncated.
type touched struct {
	keys      []map[string]bool
	truncated []bool
}

func (s *session) joinTransaction(ctx context.Context, tx eventlog.Tx, src *Source, t *transaction) error {
	plan := src.Join
	tc := touched{keys: make([]map[string]bool, len(plan.tables)), truncated: make([]bool, len(plan.tables))}
	for i := range tc.keys {
		tc.keys[i] = map[string]bool{}
	}
	var rows []eventlog.BaseRow
	current := map[[2]string][]eventlog.Value{} // this transaction's rows so far, by table and key
	any := false
	for ei := range t.events {
		e := &t.events[ei]
		r := s.rels[e.rel]
		if r == nil {
			continue
		}
		for _, ti := range plan.positions(r.schema, r.table) {
			any = true
			if e.op == 'T' {
				if err := tx.PutBase(ctx, src.Version, s.p.System, t.commitLSN, rows); err != nil {
					return fmt.Errorf("cannot append to the event log: %w", err)
				}
				rows = nil
				clear(current)
				if err := tx.ClearBase(ctx, src.Version, ti); err != nil {
					return fmt.Errorf("cannot append to the event log: %w", err)
				}
				tc.truncated[ti] = true
				continue
			}
			changed, err := s.baseChange(ctx, tx, src, ti, r, e, current)
			if err != nil {
				return err
			}
			for _, b := range changed {
				tc.keys[ti][b.Key] = true
				current[[2]string{strconv.Itoa(ti), b.Key}] = b.Row
			}
			rows = append(rows, changed...)
		}
	}
	if !any {
		return nil
	}
	if err := tx.PutBase(ctx, src.Version, s.p.System, t.commitLSN, rows); err != nil {
		return fmt.Errorf("cannot append to the event log: %w", err)
	}
	return s.recompute(ctx, tx, src, t, &tc)
}

// baseChange is what one WAL event does to the base rows of table ti: the
// row under its old key gone (a delete, or an update of the key), the row
// under its new key as it is now. Values the WAL left out (unchanged
// TOAST) are the base row's.
func (s *session) baseChange(ctx context.Context, tx eventlog.Tx, src *Source, ti int, r *relation, e *event, current map[[2]string][]eventlog.Value) ([]eventlog.BaseRow, error) {
	plan := src.Join
	jt := &plan.tables[ti]
	cols := r.cols
	if ti == 0 && jt.schema == src.Schema && jt.table == src.Table {
		c, err := r.columnsFor(src)
		if err != nil {
			return nil, src.cannot(err, true)
		}
		cols = c
	}
	at := make([]int, len(jt.reads))
	for j, name := range jt.reads {
		at[j] = -1
		for k, c := range cols {
			if c.Name == name {
				at[j] = k
			}
		}
		if at[j] < 0 {
			return nil, src.cannot(fmt.Errorf("column %s of %s, which it reads, is gone (dropped, or renamed)", pgx.Identifier{name}.Sanitize(), jt.name()), true)
		}
	}
	pick := func(tuple []eventlog.Value) []eventlog.Value {
		vals := make([]eventlog.Value, len(at))
		for j, k := range at {
			if k < len(tuple) {
				vals[j] = tuple[k]
			}
		}
		return vals
	}
	var out []eventlog.BaseRow
	var oldKey string
	if e.old != nil {
		oldKey = keyOf(pick(e.old), jt.key)
	}
	if e.op == 'D' {
		return append(out, eventlog.BaseRow{Table: ti, Key: oldKey}), nil
	}
	row := plan.baseRow(ti, pick(e.new))
	if e.op == 'U' && e.old != nil && oldKey != row.Key {
		out = append(out, eventlog.BaseRow{Table: ti, Key: oldKey})
	}
	if err := s.keepUnchanged(ctx, tx, src, ti, at, e, &row, oldKey, current); err != nil {
		return nil, err
	}
	return append(out, row), nil
}

// keepUnchanged fills the values an update left out (unchanged TOAST)
// from the row's base state: as of this transaction, the row's last
// values.
func (s *session) keepUnchanged(ctx context.Context, tx eventlog.Tx, src *Source, ti int, at []int, e *event, row *eventlog.BaseRow, oldKey string, current map[[2]string][]eventlog.Value) error {
	var left []int
	for j, k := range at {
		if k < len(e.toasted) && e.toasted[k] {
			left = append(left, j)
		}
	}
	if len(left) == 0 {
		return nil
	}
	key := row.Key
	if oldKey != "" {
		key = oldKey
	}
	before, ok := current[[2]string{strconv.Itoa(ti), key}]
	if !ok {
		got, err := tx.Base(ctx, src.Version, ti, []string{key})
		if err != nil {
			return fmt.Errorf("cannot read the event log: %w", err)
		}
		before = got[key]
	}
	if before == nil {
		return src.fault(fmt.Errorf("an unchanged out-of-line value of %s is not in its base state", src.Join.tables[ti].name()), false)
	}
	for _, j := range left {
		row.Row[j] = before[j]
	}
	*row = src.Join.baseRow(ti, row.Row)
	return nil
}

// recompute appends the public rows of every root row that meets a row
// the transaction touched, in chunks, as one group.
func (s *session) recompute(ctx context.Context, tx eventlog.Tx, src *Source, t *transaction, tc *touched) error {
	plan := src.Join
	group := eventlog.Group{Version: src.Version, System: s.p.System, CommitLSN: t.commitLSN, CommitTime: t.commitTime, Layout: src.Layout()}
	emit := func(changes []eventlog.Change) error {
		if len(changes) == 0 {
			return nil
		}
		group.Changes = changes
		if err := tx.Append(ctx, []eventlog.Group{group}); err != nil {
			return fmt.Errorf("cannot append to the event log: %w", err)
		}
		metricCaptured.WithLabelValues(versionLabels(src.Version)...).Add(float64(len(changes)))
		return nil
	}
	if slices.Contains(tc.truncated[1:], true) || tc.truncated[0] {
		// Every public row may change: the state starts again from the
		// base rows.
		if err := emit([]eventlog.Change{{Op: eventlog.OpTruncate}}); err != nil {
			return err
		}
		return s.recomputeAll(ctx, tx, src, emit)
	}
	// Walk up from the touched rows of each table to the root rows that
	// meet them, a page at a time: only the transaction's own rows are
	// held, whatever they fan out to. A root row reached twice (changed
	// itself and meeting a changed row) is recomputed twice, the same.
	evaluate := func(roots []string) error {
		changes, err := s.evaluateRoots(ctx, tx, src, roots, false)
		if err != nil {
			return err
		}
		return emit(changes)
	}
	for ti := range plan.tables {
		keys := make([]string, 0, len(tc.keys[ti]))
		for k := range tc.keys[ti] {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		if err := s.reach(ctx, tx, src, ti, keys, evaluate); err != nil {
			return err
		}
	}
	return nil
}

// reach calls fn with pages (at most joinChunk) of the keys of the root
// rows that meet rows of table ti (keys), walking up the joins.
func (s *session) reach(ctx context.Context, tx eventlog.Tx, src *Source, ti int, keys []string, fn func([]string) error) error {
	for start := 0; start < len(keys); start += joinChunk {
		part := keys[start:min(start+joinChunk, len(keys))]
		if ti == 0 {
			if err := fn(part); err != nil {
				return err
			}
			continue
		}
		parent, cursor := src.Join.tables[ti].parent, ""
		for {
			page, next, err := tx.Referrers(ctx, src.Version, parent, ti, part, cursor, joinChunk)
			if err != nil {
				return fmt.Errorf("cannot read the event log: %w", err)
			}
			if err := s.reach(ctx, tx, src, parent, page, fn); err != nil {
				return err
			}
			if next == "" {
				break
			}
			cursor = next
		}
	}
	return nil
}

// recomputeAll upserts the public row of every root row there is (after
// a truncate).
func (s *session) recomputeAll(ctx context.Context, tx eventlog.Tx, src *Source, emit func([]eventlog.Change) error) error {
	cursor := ""
	for {
		keys, next, err := tx.Referrers(ctx, src.Version, 0, -1, nil, cursor, joinChunk)
		if err != nil {
			return fmt.Errorf("cannot read the event log: %w", err)
		}
		changes, err := s.evaluateRoots(ctx, tx, src, keys, true)
		if err != nil {
			return err
		}
		if err := emit(changes); err != nil {
			return err
		}
		if next == "" {
			return nil
		}
		cursor = next
	}
}

// evaluateRoots computes the public rows of some root rows from the base
// state: an upsert for each that is there, meets the rows its inner joins
// need and passes the filter, else a delete (none when onlyPresent).
func (s *session) evaluateRoots(ctx context.Context, tx eventlog.Tx, src *Source, roots []string, onlyPresent bool) ([]eventlog.Change, error) {
	if len(roots) == 0 {
		return nil, nil
	}
	rootRows, err := tx.Base(ctx, src.Version, 0, roots)
	if err != nil {
		return nil, fmt.Errorf("cannot read the event log: %w", err)
	}
	present := make([]string, 0, len(rootRows))
	var presentRows [][]eventlog.Value
	for _, k := range roots {
		if r, ok := rootRows[k]; ok {
			present = append(present, k)
			presentRows = append(presentRows, r)
		}
	}
	tables, err := s.joinedRows(ctx, tx, src, presentRows)
	if err != nil {
		return nil, err
	}
	projected, err := src.projectJoin(ctx, s.conn, tables)
	if err != nil {
		return nil, src.fault(err, false)
	}
	var out []eventlog.Change
	for i, k := range present {
		if p, ok := projected[i]; ok && p.Keep {
			out = append(out, eventlog.Change{Op: eventlog.OpUpsert, Key: keyFrom(src, p.Row), Row: p.Row})
			continue
		}
		if !onlyPresent {
			out = append(out, eventlog.Change{Op: eventlog.OpDelete, Key: src.rootKey(k)})
		}
	}
	if !onlyPresent {
		for _, k := range roots {
			if _, ok := rootRows[k]; !ok {
				out = append(out, eventlog.Change{Op: eventlog.OpDelete, Key: src.rootKey(k)})
			}
		}
	}
	return out, nil
}

// rootKey is the public key of the root row with base key k.
func (s *Source) rootKey(k string) []eventlog.Value {
	vals, err := eventlog.ParseKeyString(k)
	if err != nil || len(vals) != len(s.KeyCols) {
		return make([]eventlog.Value, len(s.KeyCols))
	}
	root := &s.Join.tables[0]
	for i, j := range root.key {
		if j >= 0 && j < len(root.types) {
			vals[i] = TextForm(root.types[j], vals[i])
		}
	}
	return vals
}

// projectJoin evaluates a join version's query over base rows (per table,
// values in its reads order) as its publisher, inside its evaluator (see
// publisher.go), and returns the projected row of each root row that
// gives one, by its index in rows[0].
func (s *Source) projectJoin(ctx context.Context, q Querier, rows [][][]eventlog.Value) (map[int]Projected, error) {
	plan := s.Join
	out := map[int]Projected{}
	if len(rows[0]) == 0 {
		return out, nil
	}
	var args []any
	ords := make([]int32, len(rows[0]))
	for i := range ords {
		ords[i] = int32(i)
	}
	args = append(args, ords)
	for ti, t := range plan.tables {
		for j := range t.reads {
			col := make([]eventlog.Value, len(rows[ti]))
			for i, r := range rows[ti] {
				if j < len(r) {
					col[i] = r[j]
				}
			}
			args = append(args, col)
		}
	}
	cols := make([]SourceColumn, len(args)-1) // the evaluator's text[] parameters
	err := s.Projection.evaluate(ctx, q, joinSQL(s), cols, args, func(r pgx.Rows) error {
		for r.Next() {
			var ord int32
			var keep bool
			vals := make([]eventlog.Value, len(s.Exprs))
			dest := []any{&ord, &keep}
			for i := range vals {
				dest = append(dest, &vals[i])
			}
			if err := r.Scan(dest...); err != nil {
				return err
			}
			out[int(ord)] = Projected{Keep: keep, Row: vals}
		}
		return r.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("cannot project %s version %d as role %q: %w", s.Version.Publication, s.Version.Number, s.Role, err)
	}
	return out, nil
}

// joinSQL builds the query of a join version over its base rows: each
// table an unnest of its columns' arrays, under the alias the stored
// query gives it, joined as it joins them.
//
//	SELECT o.rejot_ord, coalesce((filter), false), (expr1)::text, ...
//	FROM (SELECT u.rejot_ord, u.c0::type AS "col", ... FROM unnest($1::int4[], $2::text[], ...) AS u(...)) AS "o"
//	JOIN (SELECT u.c0::type AS "col", ... FROM unnest($5::text[], ...) AS u(...)) AS "c" ON "c"."id" = "o"."customer_id"
func joinSQL(s *Source) string {
	plan := s.Join
	var b strings.Builder
	filter := "true"
	if s.Filter != "" {
		filter = "coalesce((" + s.Filter + "), false)"
	}
	root := pgx.Identifier{plan.tables[0].alias}.Sanitize()
	fmt.Fprintf(&b, "SELECT %s.rejot_ord, %s", root, filter)
	for _, e := range s.Exprs {
		fmt.Fprintf(&b, ", (%s)::text", e)
	}
	param := 2
	for ti, t := range plan.tables {
		var sel, arrays, names []string
		if ti == 0 {
			sel, arrays, names = append(sel, "u.rejot_ord"), append(arrays, "$1::int4[]"), append(names, "rejot_ord")
		}
		for j, c := range t.reads {
			sel = append(sel, fmt.Sprintf("u.c%d::%s AS %s", j, t.types[j], pgx.Identifier{c}.Sanitize()))
			arrays = append(arrays, "$"+strconv.Itoa(param)+"::text[]")
			names = append(names, "c"+strconv.Itoa(j))
			param++
		}
		table := fmt.Sprintf("(SELECT %s FROM unnest(%s) AS u(%s)) AS %s", strings.Join(sel, ", "), strings.Join(arrays, ", "),
			strings.Join(names, ", "), pgx.Identifier{t.alias}.Sanitize())
		if ti == 0 {
			b.WriteString(" FROM " + table)
			continue
		}
		join := " JOIN "
		if t.left {
			join = " LEFT JOIN "
		}
		var on []string
		parent := pgx.Identifier{plan.tables[t.parent].alias}.Sanitize()
		for _, pair := range t.on {
			on = append(on, pgx.Identifier{t.alias}.Sanitize()+"."+pgx.Identifier{pair.Column}.Sanitize()+" = "+parent+"."+pgx.Identifier{pair.ParentColumn}.Sanitize())
		}
		b.WriteString(join + table + " ON " + strings.Join(on, " AND "))
	}
	return b.String()
}
