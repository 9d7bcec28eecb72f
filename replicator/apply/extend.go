package apply

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/managed"
)

// Columns a newer minor added reach a subscription when its target's
// owner subscribes it again (sql/subscribe_add.go): the subscription's
// columns then include them, marked Adding, in a new generation that
// keeps the position. Its worker adds them to the table and fills them in
// one destination transaction with the position, so a reader sees the
// table without them or with them filled, never half filled:
//
//   - the subscription is at P; the log's state is read as of its head H
//     (the key and the added columns only), and the changes (P, H] are
//     applied, as for any span, to the columns the table has;
//   - the table then holds the state at H in those columns, and every row
//     gets the added columns' values of the state at H;
//   - the position becomes H, and streaming goes on with every column.
//
// The state is read only once the owner has filled it with the new
// columns (eventlog.Reader.Width): before that it has none of their
// values. Meanwhile the worker follows the log with the columns the table
// has.

// errColumnsReady: the log has the columns to add; the worker starts over
// at once to add them.
var errColumnsReady = errors.New("the event log has the columns to add")

// addedColumns is the temporary table the added columns' state is copied
// into, in the transaction that fills them (dropped at its end).
const addedColumns = "pg_temp.rejot_added_columns"

// split divides a subscription's columns into those its table has and
// those it is to add.
func (s subscription) split() (present, adding []managed.SubscribedColumn) {
	for _, c := range s.columns {
		if c.Adding {
			adding = append(adding, c)
		} else {
			present = append(present, c)
		}
	}
	return present, adding
}

// addColumns adds the columns the subscription is to add, when the log
// has them. It returns the context to follow the log with: one that ends
// (errColumnsReady) once the log has them, when it does not yet; stop
// releases it.
func (w *worker) addColumns(ctx context.Context, conn *pgx.Conn) (follow context.Context, stop func(), err error) {
	_, adding := w.sub.split()
	if len(adding) == 0 {
		return ctx, func() {}, nil
	}
	width := 0
	for _, c := range adding {
		width = max(width, c.Index+1)
	}
	n, err := w.s.Log.Width(ctx, w.sub.version)
	if err != nil {
		return nil, nil, err
	}
	if n < width {
		w.log().Info().Int("width", n).Int("needed", width).Msg("waiting for the owner to fill the new columns; following the log with the columns the table has")
		follow, stop := w.untilWidth(ctx, width)
		return follow, stop, nil
	}
	position, err := w.fillAdded(ctx, conn, adding)
	if err != nil {
		return nil, nil, fmt.Errorf("cannot add columns %s: %w", columnNames(adding), err)
	}
	for i := range w.sub.columns {
		w.sub.columns[i].Adding = false
	}
	if position != nil {
		if err := w.s.Log.SetReader(ctx, w.sub.version, w.reader(), *position); err != nil {
			w.log().Warn().Err(err).Msg("cannot record the subscription's place in the event log")
		}
	}
	w.log().Info().Str("columns", columnNames(adding)).Msg("columns added and filled")
	return ctx, func() {}, nil
}

// untilWidth is ctx until the version's rows have width values; stop
// ends it and waits for the goroutine that watches.
func (w *worker) untilWidth(ctx context.Context, width int) (follow context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			if n, err := w.s.Log.Width(ctx, w.sub.version); err == nil && n >= width {
				cancel(errColumnsReady)
				return
			}
			w.s.Log.Wait(ctx, w.sub.version, time.Second)
		}
	}()
	return ctx, func() {
		cancel(context.Canceled)
		<-done
	}
}

// fillAdded adds and fills the columns in one transaction, and returns
// the subscription's position after it (nil: it has not copied yet, and
// its copy will fill every column).
func (w *worker) fillAdded(ctx context.Context, conn *pgx.Conn, adding []managed.SubscribedColumn) (*int64, error) {
	present, _ := w.sub.split()
	var position *int64
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL synchronous_commit = on"); err != nil {
			return err
		}
		p, err := w.lock(ctx, tx)
		if err != nil {
			return err
		}
		old, err := w.targetOf(ctx, tx, present)
		if err != nil {
			return err
		}
		if err := old.check(ctx, tx); err != nil {
			return err
		}
		if err := alterTarget(ctx, tx, old, adding); err != nil {
			return err
		}
		all := cleared(w.sub.columns)
		t, err := w.targetOf(ctx, tx, all)
		if err != nil {
			return err
		}
		if err := t.check(ctx, tx); err != nil {
			return err
		}
		if p != nil {
			if p, err = w.catchUp(ctx, tx, old, t, *p); err != nil {
				return err
			}
		}
		position = p
		return managed.ColumnsAdded(ctx, tx, w.sub.target, w.sub.generation, p, all)
	})
	return position, err
}

// targetOf is the subscription's table as it is in tx, to hold cols.
func (w *worker) targetOf(ctx context.Context, tx pgx.Tx, cols []managed.SubscribedColumn) (*target, error) {
	tbl, err := resolveTarget(ctx, tx.Conn(), w.sub)
	if err != nil {
		return nil, err
	}
	t, err := newTarget(tbl.schema, tbl.table, cols, tbl.types)
	if err != nil {
		return nil, err
	}
	t.oid = tbl.oid
	return t, nil
}

// alterTarget adds the columns to the table, nullable (its rows get their
// values in the same transaction). Each type is one this database reads
// as a type, owned by a superuser or the sidecar's role: adding a column
// runs its type's code (a domain's default and checks) as the sidecar.
func alterTarget(ctx context.Context, tx pgx.Tx, t *target, adding []managed.SubscribedColumn) error {
	var adds []string
	for _, c := range adding {
		if err := validName(c.Name); err != nil {
			return fmt.Errorf("a column name %s", err)
		}
		var ok, trusted bool
		err := tx.QueryRow(ctx, addedTypeCheck, c.Type).Scan(&ok, &trusted)
		switch {
		case err != nil:
			return fmt.Errorf("the type %s of column %s: %w", c.Type, c.Name, err)
		case !ok:
			return fmt.Errorf("the type %s of column %s does not exist in this database: create it (as the publisher's database has it) and subscribe again", c.Type, c.Name)
		case !trusted:
			return fmt.Errorf("the type %s of column %s is not owned by the sidecar's role or a superuser: the sidecar will not run its code", c.Type, c.Name)
		}
		adds = append(adds, "ADD COLUMN "+pgx.Identifier{c.Name}.Sanitize()+" "+c.Type)
	}
	return execOne(ctx, tx.Conn(), "ALTER TABLE "+t.name+" "+strings.Join(adds, ", "))
}

// addedTypeCheck: $1 resolves as a type (only then is it put in a
// statement), and it and its element and base types are owned by a
// superuser or the sidecar's role.
const addedTypeCheck = `SELECT x.t IS NOT NULL, NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type u
		JOIN pg_catalog.pg_roles o ON o.oid = u.typowner
		WHERE u.oid IN (ty.oid, ty.typelem, ty.typbasetype) AND NOT o.rolsuper AND o.rolname <> current_user)
	FROM (SELECT pg_catalog.to_regtype($1) AS t) AS x LEFT JOIN pg_catalog.pg_type ty ON ty.oid = x.t`

// cleared is cols without Adding marks.
func cleared(cols []managed.SubscribedColumn) []managed.SubscribedColumn {
	out := make([]managed.SubscribedColumn, len(cols))
	for i, c := range cols {
		c.Adding = false
		out[i] = c
	}
	return out
}

func columnNames(cols []managed.SubscribedColumn) string {
	names := make([]string, len(cols))
	for i, c := range cols {
		names[i] = c.Name
	}
	return strings.Join(names, ", ")
}
