package capture

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// fillChunk is how many rows the first fill appends at a time.
const fillChunk = 5000

// fill gives publication versions new to the log their first state: the
// rows their table holds, projected, read in a snapshot exported by a
// temporary slot — consistent with a point C of the WAL, without locking
// the table. The state is appended as one group at C-1 (no commit record
// can start there), in chunks of one log transaction that commits at the
// end, and the publisher then skips, for those versions, transactions that
// committed before C: the snapshot has them. It returns each source's
// "since": changes at or before it are already in the log. A version whose
// rows are defined anew (a new minor, a changed query) is filled again the
// same way: its subscribers see the old state replaced in one group.
func (p *WALReader) fill(ctx context.Context) (map[eventlog.Version]uint64, error) {
	since := map[eventlog.Version]uint64{}
	var todo []*Source
	mending := map[eventlog.Version]bool{}
	for i := range p.Sources {
		src := &p.Sources[i]
		lsn, definition, ok, err := p.Log.Filled(ctx, src.Version, p.System)
		if err != nil {
			return nil, err
		}
		if ok && definition == src.Definition() && !p.fillAll {
			since[src.Version] = lsn
			if src.Join != nil {
				// Its base state may be ahead: transactions appended
				// since are in it (a replay must not apply them again).
				at, ok, err := p.Log.BaseAt(ctx, src.Version, p.System)
				if err != nil {
					return nil, err
				}
				if ok {
					since[src.Version] = max(lsn, at)
				}
			}
			continue
		}
		if ok && strings.HasPrefix(definition, failedMark) {
			mending[src.Version] = true
			p.Logger.Info().Str("system", p.System).Str("publication", src.Version.Publication).Int("version", src.Version.Number).
				Msg("the version had failed and can be computed again: filling its state again from a snapshot")
		} else if ok && p.fillAll {
			p.Logger.Info().Str("system", p.System).Str("publication", src.Version.Publication).Int("version", src.Version.Number).
				Msg("the replication slot is new and may have missed changes of the version: filling its state again")
		} else if ok {
			p.Logger.Info().Str("system", p.System).Str("publication", src.Version.Publication).Int("version", src.Version.Number).
				Msg("the version's rows are defined anew (a new minor or query): filling its state again")
		}
		todo = append(todo, src)
	}
	point, todo, err := p.snapshotEach(ctx, todo)
	if err != nil {
		return nil, err
	}
	for _, src := range todo {
		since[src.Version] = point
		if mending[src.Version] {
			p.Logger.Info().Str("system", p.System).Str("publication", src.Version.Publication).Int("version", src.Version.Number).
				Msg("the failed version is filled again")
		}
	}
	// Every source this reader captures has a whole state in the log now:
	// the log records every version whose changes were ever skipped (it
	// is filled again above), so one that failed for a moment — say a
	// verify that read an old record against a new table — and was heard
	// of by the runner but never skipped is whole as well.
	if p.Mended != nil {
		for i := range p.Sources {
			p.Mended(p.Sources[i].Version)
		}
	}
	return since, nil
}

// snapshot appends the sources' rows as of a fresh consistent point.
func (p *WALReader) snapshot(ctx context.Context, todo []*Source) (uint64, error) {
	repl, _, err := p.replicationConn(ctx)
	if err != nil {
		return 0, err
	}
	defer repl.Close(context.WithoutCancel(ctx))
	slot, err := pglogrepl.CreateReplicationSlot(ctx, repl, SlotName(p.System)+"_fill", "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Temporary: true, Mode: pglogrepl.LogicalReplication, SnapshotAction: "EXPORT_SNAPSHOT"})
	if err != nil {
		return 0, fmt.Errorf("cannot export a snapshot for the first state: %w", err)
	}
	c, err := pglogrepl.ParseLSN(slot.ConsistentPoint)
	if err != nil {
		return 0, err
	}
	point := uint64(c) - 1
	conn, err := connectOwner(ctx, p.URL)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	// Made before the snapshot's transaction, which is read-only.
	evaluators := map[*Source]*evaluator{}
	for _, src := range todo {
		if evaluators[src], err = fillEvaluator(ctx, conn, src); err != nil {
			return 0, src.readError(err)
		}
	}
	log, err := p.Log.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer log.Rollback(context.WithoutCancel(ctx))
	err = pgx.BeginTxFunc(ctx, conn, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET TRANSACTION SNAPSHOT '"+strings.ReplaceAll(slot.SnapshotName, "'", "''")+"'"); err != nil {
			return err
		}
		tables := map[[2]string]bool{}
		for _, src := range todo {
			if err := p.fillSource(ctx, tx, slot.SnapshotName, log, src, evaluators[src], point); err != nil {
				return err
			}
			if src.Join != nil {
				if err := p.fillBase(ctx, tx, log, src, point); err != nil {
					return err
				}
			}
			tables[[2]string{src.Schema, src.Table}] = true
		}
		for t := range tables {
			if err := p.fillKept(ctx, tx, log, t[0], t[1]); err != nil {
				return err
			}
		}
		for _, src := range todo {
			if err := log.SetFilled(ctx, src.Version, p.System, src.Definition(), point); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	if _, err := log.Commit(ctx); err != nil {
		return 0, fmt.Errorf("cannot append the first state: %w", err)
	}
	for _, src := range todo {
		p.Logger.Info().Str("system", p.System).Str("publication", src.Version.Publication).Int("version", src.Version.Number).
			Str("lsn", pglogrepl.LSN(point).String()).Msg("first state captured")
	}
	return point, nil
}

// fillSource appends a source's projected rows in chunks, logging its
// progress every few seconds. The rows are read as the source's role:
// through e when the projection can run code (see publisher.go), else
// under SET LOCAL ROLE, reset once they are read.
func (p *WALReader) fillSource(ctx context.Context, tx pgx.Tx, snapshot string, log eventlog.Tx, src *Source, e *evaluator, point uint64) (err error) {
	if e == nil {
		if err := actAs(ctx, tx, src.Role); err != nil {
			return src.readError(err)
		}
		defer actAs(context.WithoutCancel(ctx), tx, "none")
	} else {
		// The publisher's code ran in this session: what it set for the
		// session would outlast the transaction, which commits.
		defer func() {
			if rerr := reset(context.WithoutCancel(ctx), tx); err == nil {
				err = rerr
			}
		}()
	}
	group := eventlog.Group{Version: src.Version, System: p.System, CommitLSN: point, CommitTime: time.Now(), Layout: src.Layout()}
	can, err := log.FillStart(ctx, group)
	if err != nil {
		return fmt.Errorf("cannot append the first state: %w", err)
	}
	if can {
		return p.copyFill(ctx, tx, snapshot, log, src, e, group)
	}
	q := "SELECT ARRAY[" + strings.Join(src.textExprs(), ", ") + "]" + src.rowsFrom()
	if e != nil {
		q = "SELECT ARRAY[" + strings.Join(e.columns(len(src.Exprs)), ", ") + "] FROM " + e.name() + "()"
	}
	// Reading the owner's rows and writing the log's go on at once: a
	// writer appends each chunk while the next is read.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	chunks := make(chan []eventlog.Change, 2)
	written := make(chan error, 1)
	progress := metricFillRows.WithLabelValues(versionLabels(src.Version)...)
	captured := metricCaptured.WithLabelValues(versionLabels(src.Version)...)
	go func() {
		group := eventlog.Group{Version: src.Version, System: p.System, CommitLSN: point, CommitTime: time.Now(), Layout: src.Layout()}
		total, lastReport := 0, time.Now()
		for chunk := range chunks {
			group.Changes = chunk
			if err := log.Fill(ctx, group); err != nil {
				cancel()
				for range chunks {
				}
				written <- fmt.Errorf("cannot append the first state: %w", err)
				return
			}
			captured.Add(float64(len(chunk)))
			for _, c := range chunk {
				if c.Op == eventlog.OpUpsert {
					total++
				}
			}
			progress.Set(float64(total))
			if time.Since(lastReport) > 5*time.Second {
				lastReport = time.Now()
				p.Logger.Info().Str("system", p.System).Str("publication", src.Version.Publication).Int("version", src.Version.Number).
					Int("rows", total).Msg("first state in progress")
			}
		}
		written <- nil
	}()
	err = readChunks(ctx, tx, q, src, chunks)
	close(chunks)
	if werr := <-written; werr != nil {
		return werr
	}
	if err != nil {
		return src.readError(err)
	}
	return nil
}

// copyFill passes a source's projected rows from the owner's server to the
// log's as COPY data: Postgres renders them (each public column as text)
// and Postgres reads them; the sidecar only moves bytes. A large table is
// read in two halves at once (by block ranges, a second session in the
// same snapshot): rendering the rows is the slow side.
func (p *WALReader) copyFill(ctx context.Context, tx pgx.Tx, snapshot string, fc eventlog.Tx, src *Source, e *evaluator, group eventlog.Group) error {
	parts := []string{""} // an evaluator reads the whole table
	if e == nil {
		var err error
		if parts, err = p.fillParts(ctx, tx, src); err != nil {
			return src.readError(err)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	gauge := metricFillRows.WithLabelValues(versionLabels(src.Version)...)
	gauge.Set(0)
	progress := eventlog.NewCopyProgress(nil, new(atomic.Int64), gauge, func(rows int64) {
		p.Logger.Info().Str("system", p.System).Str("publication", src.Version.Publication).Int("version", src.Version.Number).
			Int64("rows", rows).Msg("first state in progress")
	})
	out := &rowsOut{w: io.MultiWriter(pw, progress)}
	partDone := make(chan error, len(parts))
	for i, where := range parts {
		go func() {
			q := "COPY (SELECT " + strings.Join(src.textExprs(), ", ") + src.rowsWhere(where) + ") TO STDOUT"
			if e != nil {
				q = "COPY (SELECT * FROM " + e.name() + "()) TO STDOUT"
			}
			conn := tx.Conn()
			if i > 0 {
				c, err := snapshotConn(ctx, p.URL, snapshot)
				if err == nil {
					err = actAs(ctx, c, src.Role)
				}
				if err != nil {
					if c != nil {
						c.Close(context.WithoutCancel(ctx))
					}
					partDone <- err
					return
				}
				defer c.Close(context.WithoutCancel(ctx))
				conn = c
			}
			buf := &rowBuffer{out: out}
			_, err := conn.PgConn().CopyTo(ctx, buf, q)
			if err == nil {
				err = buf.flush()
			}
			partDone <- err
		}()
	}
	read := make(chan error, 1)
	go func() {
		var first error
		for range parts {
			if err := <-partDone; err != nil && first == nil {
				first = err
				cancel() // the other part stops too
			}
		}
		pw.CloseWithError(first) // nil: the log reads to the end
		read <- first
	}()
	rows, err := fc.FillCopy(ctx, group, pr)
	pr.CloseWithError(err)
	rerr := <-read
	if rerr != nil && !errors.Is(rerr, io.ErrClosedPipe) { // the log's COPY fails when the rows stop coming
		return src.readError(rerr)
	}
	if err != nil {
		return fmt.Errorf("cannot append the first state: %w", err)
	}
	if err := fc.FillEnd(ctx, group, rows); err != nil {
		return fmt.Errorf("cannot append the first state: %w", err)
	}
	gauge.Set(float64(rows))
	metricCaptured.WithLabelValues(versionLabels(src.Version)...).Add(float64(rows + 1))
	return nil
}

// fillEvaluator makes on conn the evaluator that reads a source's
// projected rows as its role, when the projection can run code (see
// publisher.go); nil when it cannot, and the rows are read plainly under
// SET LOCAL ROLE.
func fillEvaluator(ctx context.Context, conn *pgx.Conn, src *Source) (*evaluator, error) {
	code := src.Filter != "" || src.Join != nil
	for _, name := range src.Sources {
		code = code || name == ""
	}
	if !code {
		// Columns of a type that is not Postgres's may have casts, and
		// domains checks, of someone's.
		err := conn.QueryRow(ctx, `SELECT coalesce(bool_or(t.typnamespace <> 'pg_catalog'::regnamespace), false)
			FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
			WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND a.attname = ANY ($2)`,
			pgx.Identifier{src.Schema, src.Table}.Sanitize(), src.nowNames()).Scan(&code)
		if err != nil || !code {
			return nil, err
		}
	}
	returns := make([]string, len(src.Exprs))
	for i := range returns {
		returns[i] = "rejot_" + strconv.Itoa(i) + " text"
	}
	e := &evaluator{role: src.Role, returns: strings.Join(returns, ", "),
		body: "SELECT " + strings.Join(src.textExprs(), ", ") + src.rowsFrom()}
	return e, e.make(ctx, conn)
}

// fillSplitPages is the default WALReader.FillSplitPages.
const fillSplitPages = 2048

// fillParts are the conditions that split a source's rows for reading in
// parallel: two block ranges of a large table on Postgres 14 and later
// (TID range scans), else the whole table.
func (p *WALReader) fillParts(ctx context.Context, tx pgx.Tx, src *Source) ([]string, error) {
	var version int
	var pages int64
	err := tx.QueryRow(ctx, `SELECT current_setting('server_version_num')::int,
		pg_catalog.pg_relation_size($1::regclass) / current_setting('block_size')::int`,
		pgx.Identifier{src.Schema, src.Table}.Sanitize()).Scan(&version, &pages)
	if err != nil {
		return nil, err
	}
	split := p.FillSplitPages
	if split <= 0 {
		split = fillSplitPages
	}
	if version < 140000 || pages < split {
		return []string{""}, nil
	}
	// Rows the snapshot sees are in blocks that existed when it was
	// taken; the second range is open-ended all the same.
	half := pages / 2
	return []string{fmt.Sprintf("ctid < '(%d,0)'::tid", half), fmt.Sprintf("ctid >= '(%d,0)'::tid", half)}, nil
}

// snapshotConn opens a session of the owner's database in an exported
// snapshot.
func snapshotConn(ctx context.Context, url, snapshot string) (*pgx.Conn, error) {
	conn, err := connectOwner(ctx, url)
	if err != nil {
		return nil, err
	}
	for _, q := range []string{"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
		"SET TRANSACTION SNAPSHOT '" + strings.ReplaceAll(snapshot, "'", "''") + "'"} {
		if _, err := conn.Exec(ctx, q); err != nil {
			conn.Close(context.WithoutCancel(ctx))
			return nil, err
		}
	}
	return conn, nil
}

// rowsOut takes whole rows of COPY data from several readers.
type rowsOut struct {
	mu sync.Mutex
	w  io.Writer
}

// rowBuffer gathers one reader's COPY data — whole rows: a COPY's data
// message holds one row — and passes it on in large writes, so rows of
// several readers never interleave.
type rowBuffer struct {
	out *rowsOut
	buf []byte
}

func (b *rowBuffer) Write(p []byte) (int, error) {
	b.buf = append(b.buf, p...)
	if len(b.buf) >= 256<<10 {
		return len(p), b.flush()
	}
	return len(p), nil
}

func (b *rowBuffer) flush() error {
	if len(b.buf) == 0 {
		return nil
	}
	b.out.mu.Lock()
	defer b.out.mu.Unlock()
	_, err := b.out.w.Write(b.buf)
	b.buf = b.buf[:0]
	return err
}

// readChunks reads a source's projected rows as upserts, in chunks; the
// first chunk starts with a truncate (the state is exactly the snapshot),
// and an empty table still gives that one.
func readChunks(ctx context.Context, tx pgx.Tx, q string, src *Source, chunks chan<- []eventlog.Change) error {
	rows, err := tx.Query(ctx, q)
	if err != nil {
		return err
	}
	defer rows.Close()
	chunk := []eventlog.Change{{Op: eventlog.OpTruncate}}
	for rows.Next() {
		var row []eventlog.Value
		if err := rows.Scan(&row); err != nil {
			return err
		}
		key := make([]eventlog.Value, len(src.KeyCols))
		for i, k := range src.KeyCols {
			key[i] = row[k]
		}
		chunk = append(chunk, eventlog.Change{Op: eventlog.OpUpsert, Key: key, Row: row})
		if len(chunk) >= fillChunk {
			select {
			case chunks <- chunk:
			case <-ctx.Done():
				return ctx.Err()
			}
			chunk = make([]eventlog.Change, 0, fillChunk)
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if len(chunk) > 0 {
		select {
		case chunks <- chunk:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// tableColumns reads a table's columns in order: their names, which are
// in its replica identity and which are of variable length.
func tableColumns(ctx context.Context, tx pgx.Tx, name string) (names []string, key, varlena, builtin []bool, err error) {
	// A type made at initdb has an OID below FirstNormalObjectId (16384),
	// and only those are built in (see asText).
	rows, err := tx.Query(ctx, `SELECT a.attname, a.attlen = -1,
			c.relreplident = 'f' OR coalesce(a.attnum = ANY (i.indkey::int2[]), false), a.atttypid < 16384
		FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
		LEFT JOIN pg_catalog.pg_index i ON i.indrelid = c.oid
			AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))
		WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`, name)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	var n string
	var v, k, b bool
	_, err = pgx.ForEachRow(rows, []any{&n, &v, &k, &b}, func() error {
		names, varlena, key, builtin = append(names, n), append(varlena, v), append(key, k), append(builtin, b)
		return nil
	})
	return names, key, varlena, builtin, err
}

// fillKept records, for a table's rows as of the snapshot, the out-of-line
// values the log keeps (see Kept) — only where it keeps none yet: what it
// has is as of the capture's position, which a replay after the snapshot
// point must find.
func (p *WALReader) fillKept(ctx context.Context, tx pgx.Tx, log eventlog.Tx, schema, table string) error {
	name := pgx.Identifier{schema, table}.Sanitize()
	names, key, varlena, builtin, err := tableColumns(ctx, tx, name)
	if err != nil {
		return err
	}
	kept := keepColumns(p.Sources, schema, table, names, key, varlena)
	if !anyTrue(kept) || !anyTrue(key) {
		return nil
	}
	// A table whose TOAST relation is empty (checked after the snapshot
	// was taken) has no out-of-line value in any row the snapshot sees:
	// nothing to keep, and no need to read the table twice.
	var toasted int64
	if err := tx.QueryRow(ctx, `SELECT coalesce(pg_catalog.pg_relation_size(NULLIF(reltoastrelid, 0)), 0)
		FROM pg_catalog.pg_class WHERE oid = $1::regclass`, name).Scan(&toasted); err != nil {
		return err
	}
	if toasted == 0 {
		return nil
	}
	var keyCols, keptCols, sel []string
	for i, c := range names {
		if key[i] {
			keyCols = append(keyCols, asText(c, builtin[i]))
		}
		if kept[i] {
			keptCols = append(keptCols, c)
			sel = append(sel, asText(c, builtin[i]))
		}
	}
	// Only rows that may hold out-of-line values (see mayBeToasted).
	rows, err := tx.Query(ctx, "SELECT ARRAY["+strings.Join(keyCols, ", ")+"], ARRAY["+strings.Join(sel, ", ")+"] FROM "+name+" AS t"+
		" WHERE pg_catalog.pg_column_size(t.*) + "+strconv.Itoa(16*len(names))+" >= "+strconv.Itoa(toastFloor))
	if err != nil {
		return err
	}
	defer rows.Close()
	table = schema + "." + table
	var batch []eventlog.Kept
	for rows.Next() {
		var k, vals []eventlog.Value
		if err := rows.Scan(&k, &vals); err != nil {
			return err
		}
		m := make(map[string]eventlog.Value, len(vals))
		for i, c := range keptCols {
			m[c] = vals[i]
		}
		batch = append(batch, eventlog.Kept{Table: table, Key: k, Values: m, Missing: true})
		if len(batch) >= fillChunk {
			if err := log.Keep(ctx, p.System, batch); err != nil {
				return err
			}
			batch = batch[:0]
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return log.Keep(ctx, p.System, batch)
}
