package pglog

import (
	"context"
	"errors"
	"io"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// Fill appends a version's first state: one group, a truncate then an
// upsert per row, in parts. The compacted state is written with COPY and,
// when no subscriber reads the stream yet, the changes are not kept in
// the change log: new subscribers copy the state (a subscriber that
// starts meanwhile waits on the stream's row until this commits).
func (t *Tx) Fill(ctx context.Context, g eventlog.Group) error {
	return t.appendStream(ctx, g.Version, []*eventlog.Group{&g}, true)
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
