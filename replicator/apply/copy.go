package apply

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/managed"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// copyState copies the version's compacted state into the target, in one
// destination transaction that also stores the position it is at.
func (w *worker) copyState(ctx context.Context, conn *pgx.Conn, t *target) (int64, error) {
	log := w.log()
	// Hold the log's changes from now on: what follows the state must be
	// there to stream.
	if err := w.s.Log.SetReader(ctx, w.sub.version, w.reader(), 0); err != nil {
		return 0, err
	}
	w.status.Store(&workerStatus{Status: "copying"})
	w.copied.Store(0)
	if t.mapped != nil && w.sub.copy {
		if err := w.awaitFirstState(ctx); err != nil {
			return 0, err
		}
	}
	start := time.Now()
	var position int64
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) (err error) {
		position, err = w.fill(ctx, tx, t)
		return err
	})
	if err != nil {
		return 0, err
	}
	if err := w.s.Log.SetReader(ctx, w.sub.version, w.reader(), position); err != nil {
		log.Warn().Err(err).Msg("cannot record the subscription's place in the event log")
	}
	metricCopiedRows.WithLabelValues(w.labels()...).Set(float64(w.copied.Load()))
	log.Info().Int64("rows", w.copied.Load()).Int64("position", position).Dur("took", time.Since(start)).Msg("copied; streaming")
	return position, nil
}

// fill makes the target hold the version's state in tx, and the
// subscription's position the state's, and returns it. A subscription
// that does not copy streams from the log's head over what the table
// holds.
func (w *worker) fill(ctx context.Context, tx pgx.Tx, t *target) (int64, error) {
	if _, err := tx.Exec(ctx, "SET LOCAL synchronous_commit = on"); err != nil {
		return 0, err
	}
	if p, err := w.lock(ctx, tx); err != nil {
		return 0, err
	} else if p != nil {
		return 0, errSubscriptionMoved
	}
	if !w.sub.copy {
		head, err := w.s.Log.Head(ctx, w.sub.version)
		if err != nil {
			return 0, err
		}
		return head, managed.StartStreaming(ctx, tx, w.sub.target, w.sub.generation, head)
	}
	if t.mapped != nil {
		return w.fillMapped(ctx, tx, t)
	}
	if err := t.check(ctx, tx); err != nil {
		return 0, err
	}
	// The target becomes exactly the state (MVCC-safe: readers see
	// the old rows or the new ones).
	if err := execOne(ctx, tx.Conn(), t.clear); err != nil {
		return 0, err
	}
	position, err := w.pipeInto(ctx, tx, t.copySQL, t.elements())
	if err != nil {
		return 0, err
	}
	return position, managed.Copied(ctx, tx, w.sub.target, w.sub.generation, position, w.copied.Load())
}

// pipeInto copies the given elements of the version's state from the log
// into the table of copySQL (a COPY … FROM STDIN) and returns its
// position. The log's server renders the rows in COPY format
// and the target's reads them: the sidecar only passes bytes along, from
// a goroutine that reads the log to the COPY FROM, which it waits for.
func (w *worker) pipeInto(ctx context.Context, tx pgx.Tx, copySQL string, elements []int) (int64, error) {
	pr, pw := io.Pipe()
	var position int64
	read := make(chan error, 1)
	go func() {
		var err error
		position, err = w.readState(ctx, elements, pw)
		pw.CloseWithError(err)
		read <- err
	}()
	_, err := tx.Conn().PgConn().CopyFrom(ctx, pr, copySQL)
	pr.CloseWithError(err)
	if rerr := <-read; rerr != nil && !errors.Is(rerr, io.ErrClosedPipe) {
		return 0, fmt.Errorf("cannot read the event log's state: %w", rerr)
	}
	if err != nil {
		return 0, fmt.Errorf("cannot copy the state: %w", err)
	}
	return position, nil
}

// readState writes the version's state to w in COPY format, counting its
// rows, and returns its position.
func (w *worker) readState(ctx context.Context, elements []int, out io.Writer) (int64, error) {
	log := w.log()
	counted := eventlog.NewCopyProgress(out, &w.copied, metricCopiedRows.WithLabelValues(w.labels()...), func(rows int64) {
		log.Info().Int64("rows", rows).Msg("copying")
	})
	// COPY TO hands over a row at a time: gather them, so the pipe and the
	// COPY FROM move large pieces.
	buf := bufio.NewWriterSize(counted, 256<<10)
	position, err := w.s.Log.CopyState(ctx, w.sub.version, elements, buf)
	if err == nil {
		err = buf.Flush()
	}
	return position, err
}
