package managed

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Command is a committed rejot call in the outbox, waiting to be applied
// to the catalog.
type Command struct {
	ID      int64  // its place in the outbox, for messages and ordering
	UID     string // its random id, unique across reinstalls and restores
	Kind    string // one of the Kind constants
	Payload []byte // JSON: Published, Lifecycle or SubscriptionCommand
}

// ListenCommands makes conn hear of each new command (ChannelCommands).
func ListenCommands(ctx context.Context, conn *pgx.Conn) error {
	_, err := conn.Exec(ctx, "LISTEN "+ChannelCommands)
	return err
}

// PendingCommands returns up to limit commands not applied yet, oldest
// first.
func PendingCommands(ctx context.Context, conn *pgx.Conn, limit int) ([]Command, error) {
	// An error of the query is also the rows': CollectRows returns it.
	rows, _ := conn.Query(ctx, "SELECT id, uid::text, kind, payload FROM _rejot.commands WHERE applied_at IS NULL ORDER BY id LIMIT $1", limit)
	cmds, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Command, error) {
		var cmd Command
		return cmd, r.Scan(&cmd.ID, &cmd.UID, &cmd.Kind, &cmd.Payload)
	})
	if err != nil {
		return nil, fmt.Errorf("cannot read the outbox: %w", err)
	}
	return cmds, nil
}

// MarkApplied records that the catalog is done with command id: applied,
// or refused for the reason given (empty: it was applied).
func MarkApplied(ctx context.Context, conn *pgx.Conn, id int64, refusal string) error {
	_, err := conn.Exec(ctx, "UPDATE _rejot.commands SET applied_at = now(), error = NULLIF($2, '') WHERE id = $1", id, refusal)
	if err != nil {
		return fmt.Errorf("cannot mark command %d applied: %w", id, err)
	}
	return nil
}

// RecordedPublications are the names of the publications in the owner's
// record, whatever their versions' status.
func RecordedPublications(ctx context.Context, conn *pgx.Conn) ([]string, error) {
	rows, _ := conn.Query(ctx, "SELECT DISTINCT publication FROM _rejot.publications")
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("cannot read the owner's record: %w", err)
	}
	return names, nil
}
