package capture

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// fillBase fills a join version's base states from the first fill's
// snapshot, in the log transaction of its public state: the columns each
// table gives the version, read as the publisher (under SET LOCAL ROLE:
// the columns are read by their types' output functions, which are
// Postgres's, so none of anyone's code runs), in the WAL's text form.
func (p *WALReader) fillBase(ctx context.Context, tx pgx.Tx, log eventlog.Tx, src *Source, point uint64) error {
	plan := src.Join
	if err := log.ClearBase(ctx, src.Version, -1); errors.Is(err, eventlog.ErrNoBaseStates) {
		return src.cannot(err, false)
	} else if err != nil {
		return fmt.Errorf("cannot append the first state: %w", err)
	}
	if err := actAs(ctx, tx, src.Role); err != nil {
		return src.readError(err)
	}
	defer actAs(context.WithoutCancel(ctx), tx, "none")
	for ti := range plan.tables {
		if err := p.fillBaseTable(ctx, tx, log, src, ti, point); err != nil {
			return err
		}
	}
	// The base position, even when every table is empty.
	if err := log.PutBase(ctx, src.Version, p.System, point, nil); err != nil {
		return fmt.Errorf("cannot append the first state: %w", err)
	}
	return nil
}

func (p *WALReader) fillBaseTable(ctx context.Context, tx pgx.Tx, log eventlog.Tx, src *Source, ti int, point uint64) error {
	plan := src.Join
	t := &plan.tables[ti]
	// A table, still: a view put in its place would run its owner's
	// code in this session.
	var table bool
	if err := tx.QueryRow(ctx, `SELECT coalesce((SELECT c.relkind IN ('r', 'p') FROM pg_catalog.pg_class c
		WHERE c.oid = pg_catalog.to_regclass($1)), false)`, t.name()).Scan(&table); err != nil {
		return src.readError(err)
	}
	if !table {
		return src.cannot(fmt.Errorf("%s, which it reads, is not a table (dropped, renamed or replaced)", t.name()), true)
	}
	from := t.name() + " AS t"
	if ti == 0 {
		from = src.table() + " AS t" // names as recorded (identity.go)
	}
	cols := make([]string, len(t.reads))
	for j, c := range t.reads {
		col := "t." + pgx.Identifier{c}.Sanitize()
		cols[j] = "CASE WHEN " + col + " IS NULL THEN NULL ELSE pg_catalog.format('%s', " + col + ") END"
	}
	rows, err := tx.Query(ctx, "SELECT ARRAY["+strings.Join(cols, ", ")+"]::text[] FROM "+from)
	if err != nil {
		return src.readError(err)
	}
	defer rows.Close()
	var batch []eventlog.BaseRow
	for rows.Next() {
		var vals []eventlog.Value
		if err := rows.Scan(&vals); err != nil {
			return src.readError(err)
		}
		batch = append(batch, plan.baseRow(ti, vals))
		if len(batch) >= fillChunk {
			if err := log.PutBase(ctx, src.Version, p.System, point, batch); err != nil {
				return fmt.Errorf("cannot append the first state: %w", err)
			}
			batch = batch[:0]
		}
	}
	if err := rows.Err(); err != nil {
		return src.readError(err)
	}
	if err := log.PutBase(ctx, src.Version, p.System, point, batch); err != nil {
		return fmt.Errorf("cannot append the first state: %w", err)
	}
	return nil
}
