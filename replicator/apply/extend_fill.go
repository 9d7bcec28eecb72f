package apply

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/replicator/eventlog"
)

// catchUp fills the added columns of t (old is the table as it was, at
// position p) in tx: it copies the key and the added columns of the
// log's state at its head H, applies the changes (p, H] to old's columns,
// and sets the added columns of every row from the state. It returns H.
func (w *worker) catchUp(ctx context.Context, tx pgx.Tx, old, t *target, p int64) (*int64, error) {
	var added []int // places in t.cols of the columns to fill
	for i, c := range w.sub.columns {
		if c.Adding {
			added = append(added, i)
		}
	}
	var defs []string
	var els []int
	for o, k := range t.keys {
		els = append(els, t.cols[k].Index)
		defs = append(defs, "k"+strconv.Itoa(o)+" text")
	}
	for o, i := range added {
		els = append(els, t.cols[i].Index)
		defs = append(defs, "a"+strconv.Itoa(o)+" text")
	}
	if err := execOne(ctx, tx.Conn(), "CREATE TEMP TABLE "+addedColumns+" ("+strings.Join(defs, ", ")+") ON COMMIT DROP"); err != nil {
		return nil, err
	}
	head, err := w.copyAdded(ctx, tx, els)
	if err != nil {
		return nil, err
	}
	if head < p {
		return nil, fmt.Errorf("the event log's state is at %d, before the subscription's position %d", head, p)
	}
	if head > p {
		err := w.s.Log.Read(ctx, w.sub.version, eventlog.Span{After: p, Upto: head}, func(recs []eventlog.Entry) error {
			for _, st := range changeStatements(old, recs) {
				if err := execOne(ctx, tx.Conn(), st.sql, st.args...); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("cannot apply changes %d to %d: %w", p+1, head, err)
		}
	}
	if err := execOne(ctx, tx.Conn(), fillAddedSQL(t, added)); err != nil {
		return nil, err
	}
	return &head, nil
}

// fillAddedSQL sets the added columns of every row of t from the copied
// state, matched by key.
func fillAddedSQL(t *target, added []int) string {
	var sets, conds []string
	for o, i := range added {
		sets = append(sets, fmt.Sprintf("%s = s.a%d::%s", pgx.Identifier{t.cols[i].Name}.Sanitize(), o, t.types[i]))
	}
	for o, k := range t.keys {
		conds = append(conds, fmt.Sprintf("t.%s = s.k%d::%s", pgx.Identifier{t.cols[k].Name}.Sanitize(), o, t.types[k]))
	}
	return "UPDATE " + t.name + " AS t SET " + strings.Join(sets, ", ") + " FROM " + addedColumns + " AS s WHERE " + strings.Join(conds, " AND ")
}

// copyAdded copies the given elements of the log's state into the
// temporary table, as pipeState copies a whole state, and returns the
// state's position.
func (w *worker) copyAdded(ctx context.Context, tx pgx.Tx, elements []int) (int64, error) {
	pr, pw := io.Pipe()
	var position int64
	read := make(chan error, 1)
	go func() {
		var err error
		position, err = w.s.Log.CopyState(ctx, w.sub.version, elements, pw)
		pw.CloseWithError(err)
		read <- err
	}()
	_, err := tx.Conn().PgConn().CopyFrom(ctx, pr, "COPY "+addedColumns+" FROM STDIN")
	pr.CloseWithError(err)
	if rerr := <-read; rerr != nil && !errors.Is(rerr, io.ErrClosedPipe) {
		return 0, fmt.Errorf("cannot read the event log's state: %w", rerr)
	}
	if err != nil {
		return 0, fmt.Errorf("cannot copy the added columns' state: %w", err)
	}
	return position, nil
}
