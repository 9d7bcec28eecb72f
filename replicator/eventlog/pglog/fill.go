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
// when no subscriber reads the version yet, the changes are not kept in
// the change log: new subscribers copy the state (a subscriber that
// starts meanwhile waits on the version's row until this commits).
func (t *Tx) Fill(ctx context.Context, g eventlog.Group) error {
	return t.appendVersion(ctx, g.Version, []*eventlog.Group{&g}, true)
}

// FillStart begins a first state that arrives as COPY data (FillCopy):
// possible when nobody reads the version yet, so the log keeps only the
// compacted state. It replaces the version's state table with an empty
// one, its key left unindexed (the first compaction indexes it, in one
// sort, when there are changes to fold in: a subscriber's copy does not
// need it); ok is false when the first state must go through Fill.
func (t *Tx) FillStart(ctx context.Context, g eventlog.Group) (bool, error) {
	vt, err := t.version(ctx, g.Version, true)
	if err != nil || !vt.unread || len(vt.groups) > 0 {
		return false, err
	}
	gts, err := t.sortOut(ctx, vt, g.Version, []*eventlog.Group{&g})
	if err != nil {
		return false, err
	}
	if gts[0].skip {
		return false, nil
	}
	if err := t.newState(ctx, vt, g.Layout, false); err != nil {
		return false, err
	}
	return true, nil
}

// FillCopy reads a first state's rows in COPY text format, one column per
// value, into the version's new state table. The table was made in this
// transaction, so the rows go in frozen: nobody vacuums them later.
func (t *Tx) FillCopy(ctx context.Context, g eventlog.Group, r io.Reader) (int64, error) {
	vt := t.versions[g.Version]
	tag, err := t.tx.Conn().PgConn().CopyFrom(ctx, r, "COPY "+stateTable(vt.id)+" ("+strings.Join(columns(vt.layout.Columns), ", ")+") FROM STDIN WITH (FREEZE)")
	return tag.RowsAffected(), err
}

// FillEnd records the first state FillCopy read: a group of a truncate
// and one upsert per row.
func (t *Tx) FillEnd(ctx context.Context, g eventlog.Group, rows int64) error {
	vt := t.versions[g.Version]
	var head int64
	if err := t.tx.QueryRow(ctx, "UPDATE rejot_log.streams SET head = head + $2 WHERE id = $1 RETURNING head", vt.id, rows+1).Scan(&head); err != nil {
		return err
	}
	gt := t.groups[groupID{g.Version, g.System, g.CommitLSN}]
	gt.first, gt.last = head-rows, head
	vt.groups = append(vt.groups, gt)
	vt.head = head
	return nil
}

// Filled returns where and with what definition system last filled v. A
// version filled before definitions were recorded has its first group's
// LSN and an empty definition.
func (l *Log) Filled(ctx context.Context, v eventlog.Version, system string) (uint64, string, bool, error) {
	var lsn, definition *string
	err := l.pool.QueryRow(ctx, `SELECT CASE WHEN s.filled_system = $3 THEN s.filled_lsn::text
			ELSE (SELECT min(g.commit_lsn)::text FROM rejot_log.groups g WHERE g.stream = s.id AND g.system = $3) END,
			CASE WHEN s.filled_system = $3 THEN s.definition END
		FROM rejot_log.streams s WHERE s.publication = $1 AND s.version = $2`, v.Publication, v.Number, system).Scan(&lsn, &definition)
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

// SetFilled records what a version's state is filled from.
func (t *Tx) SetFilled(ctx context.Context, v eventlog.Version, system, definition string, lsn uint64) error {
	id, err := versionID(ctx, t.tx, v)
	if err != nil {
		return err
	}
	_, err = t.tx.Exec(ctx, "UPDATE rejot_log.streams SET definition = $2, filled_system = $3, filled_lsn = $4 WHERE id = $1",
		id, definition, system, pglogrepl.LSN(lsn).String())
	return err
}
