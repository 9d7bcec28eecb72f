package replicator

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// fill gives publication versions new to the log their first state: the
// rows their table holds, projected, read in a snapshot exported by a
// temporary slot — consistent with a point C of the WAL, without locking
// the table. The state is appended as one group at C-1 (no commit record
// can start there), and the publisher then skips, for those versions,
// transactions that committed before C: the snapshot has them. It returns
// each source's "since": changes at or before it are already in the log.
func (p *Publisher) fill(ctx context.Context) (map[Stream]uint64, error) {
	since := map[Stream]uint64{}
	var todo []*Source
	for i := range p.Sources {
		src := &p.Sources[i]
		lsn, ok, err := p.Log.Since(ctx, src.Stream, p.System)
		if err != nil {
			return nil, err
		}
		if ok {
			since[src.Stream] = lsn
		} else {
			todo = append(todo, src)
		}
	}
	if len(todo) == 0 {
		return since, nil
	}
	point, groups, err := p.snapshot(ctx, todo)
	if err != nil {
		return nil, err
	}
	if _, err := p.Log.Append(ctx, groups); err != nil {
		return nil, fmt.Errorf("cannot append the first state: %w", err)
	}
	for _, src := range todo {
		since[src.Stream] = point
		p.Logger.Info().Str("publication", src.Stream.Publication).Int("version", src.Stream.Version).
			Str("lsn", pglogrepl.LSN(point).String()).Msg("first state captured")
	}
	return since, nil
}

// snapshot reads the sources' rows as of a fresh consistent point.
func (p *Publisher) snapshot(ctx context.Context, todo []*Source) (uint64, []Group, error) {
	repl, err := p.replicationConn(ctx)
	if err != nil {
		return 0, nil, err
	}
	defer repl.Close(context.WithoutCancel(ctx))
	slot, err := pglogrepl.CreateReplicationSlot(ctx, repl, SlotName(p.System)+"_fill", "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Temporary: true, Mode: pglogrepl.LogicalReplication, SnapshotAction: "EXPORT_SNAPSHOT"})
	if err != nil {
		return 0, nil, fmt.Errorf("cannot export a snapshot for the first state: %w", err)
	}
	c, err := pglogrepl.ParseLSN(slot.ConsistentPoint)
	if err != nil {
		return 0, nil, err
	}
	point := uint64(c) - 1
	conn, err := pgx.Connect(ctx, p.URL)
	if err != nil {
		return 0, nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var groups []Group
	err = pgx.BeginTxFunc(ctx, conn, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET TRANSACTION SNAPSHOT '"+strings.ReplaceAll(slot.SnapshotName, "'", "''")+"'"); err != nil {
			return err
		}
		for _, src := range todo {
			changes, err := readAll(ctx, tx, src)
			if err != nil {
				return err
			}
			groups = append(groups, Group{Stream: src.Stream, System: p.System, CommitLSN: point,
				CommitTime: time.Now(), Changes: changes})
		}
		return nil
	})
	return point, groups, err
}

// readAll projects every row of a source's table.
func readAll(ctx context.Context, tx pgx.Tx, src *Source) ([]Change, error) {
	exprs := make([]string, len(src.Exprs))
	for i, e := range src.Exprs {
		exprs[i] = "(" + e + ")::text"
	}
	q := "SELECT ARRAY[" + strings.Join(exprs, ", ") + "] FROM " + pgx.Identifier{src.Schema, src.Table}.Sanitize()
	if src.Filter != "" {
		q += " WHERE " + src.Filter
	}
	rows, err := tx.Query(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("cannot read %s.%s for its first state: %w", src.Schema, src.Table, err)
	}
	defer rows.Close()
	changes := []Change{{Op: OpTruncate}} // the state is exactly the snapshot
	for rows.Next() {
		var row []Value
		if err := rows.Scan(&row); err != nil {
			return nil, err
		}
		key := make([]Value, len(src.KeyCols))
		for i, k := range src.KeyCols {
			key[i] = row[k]
		}
		changes = append(changes, Change{Op: OpUpsert, Key: key, Row: row})
	}
	return changes, rows.Err()
}
