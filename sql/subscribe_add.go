package sql

import (
	"context"
	"encoding/json"

	"github.com/rejot-dev/rejot/internal/pgerr"
	"github.com/rejot-dev/rejot/managed"
)

// addColumns is a subscribe of a target already subscribed to the same
// version: the columns of chosen it does not have yet (a newer minor
// added them) are recorded to be added; the sidecar's apply adds them to
// the table and fills them as of the subscription's position, in one
// transaction with it, and goes on streaming every column. Nothing to add
// is a no-op. Columns are only ever added: leaving some out of chosen
// removes none.
func addColumns(ctx context.Context, sess Session, t *target, sub *existing, chosen []managed.SubscribedColumn) ([][]any, error) {
	if err := checkTypes(ctx, sess, chosen); err != nil {
		return nil, err
	}
	wanted, err := json.Marshal(chosen)
	if err != nil {
		return nil, err
	}
	text := string(wanted)
	if _, err := sess.Query(ctx, managed.AddSubscribedColumns, &t.name, &text); err != nil {
		return nil, notManaged(err)
	}
	// rejot.columns and rejot.subscriptions show what follows: the
	// table's new columns appear filled, in one transaction.
	return [][]any{{t.name, sub.Publication, int32(sub.Version), sub.status}}, nil
}

// checkTypes refuses columns whose type this database does not have. The
// type comes from the catalog: only a name Postgres reads as a type of
// this database goes into a statement.
func checkTypes(ctx context.Context, sess Session, cols []managed.SubscribedColumn) error {
	for _, c := range cols {
		rows, err := sess.Query(ctx, "SELECT to_regtype($1)::text", &c.Type)
		if err != nil || rows.Values[0][0] == nil {
			return pgerr.Errorf(pgerr.UndefinedObject, "type %s of column %s does not exist in this database", c.Type, c.Name).
				WithHint("Create the type (with the definition the publisher's database has) before subscribing.")
		}
	}
	return nil
}
