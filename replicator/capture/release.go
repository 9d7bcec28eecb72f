package capture

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/rejot-dev/rejot/internal/pgerr"
)

// release drops the system's replication slot and Postgres publication
// when the owner's record leaves nothing to capture (every version
// retired, or their tables dropped): a slot nobody reads keeps every byte
// of WAL written after it, in every database of the server, for ever. A
// later publish creates both again, and its version's first state is
// filled from a snapshot, so nothing a live version needs is lost (a
// version that comes back with its table, which a new slot has not seen,
// is filled again: see WALReader.Run).
//
// A slot that is active is left alone and looked at again at the next
// check: it is either this capture's own session still ending (its
// walsender outlives the connection by a moment) or another process's,
// which is never dropped from under it. Only a slot of this database is
// ever dropped.
func (c *Runner) release(ctx context.Context) {
	if c.conn == nil || c.Problem() != "" {
		return // unreadable, or nothing the sidecar could drop anyway
	}
	slot := SlotName(c.System)
	var active bool
	var pid *int32
	err := c.conn.QueryRow(ctx, `SELECT active, active_pid FROM pg_catalog.pg_replication_slots
		WHERE slot_name = $1 AND database = current_database()`, slot).Scan(&active, &pid)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		c.Logger.Warn().Err(err).Str("system", c.System).Str("slot", slot).Msg("cannot look at the replication slot; looked at again at the next check")
		return
	case active:
		// Usually this capture's own session, ending: said at info only
		// when the same session still holds it at the next check.
		var holder int32
		if pid != nil {
			holder = *pid
		}
		if holder == c.busyPID && !c.busyLogged {
			c.busyLogged = true
			c.Logger.Info().Str("system", c.System).Str("slot", slot).Int32("pid", holder).
				Msg("nothing left to capture, but the replication slot is in use by another session: not dropped, looked at again at every check")
		} else if holder != c.busyPID {
			c.busyPID, c.busyLogged = holder, false
		}
		return
	default:
		if _, err := c.conn.Exec(ctx, "SELECT pg_catalog.pg_drop_replication_slot($1)", slot); err != nil {
			if !pgerr.Is(err, pgerr.ObjectInUse) && !pgerr.Is(err, pgerr.UndefinedObject) {
				c.Logger.Warn().Err(err).Str("system", c.System).Str("slot", slot).Msg("cannot drop the replication slot; tried again at the next check")
			}
			return // in use since we looked (or gone): the next check sees
		}
		c.Logger.Info().Str("system", c.System).Str("slot", slot).Msg("nothing left to capture: replication slot dropped")
	}
	c.busyPID, c.busyLogged = 0, false
	forgetSlot(slot)
	var exists bool
	if err := c.conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1)", slot).Scan(&exists); err != nil || !exists {
		return
	}
	if _, err := c.conn.Exec(ctx, "DROP PUBLICATION IF EXISTS "+pgx.Identifier{slot}.Sanitize()); err != nil {
		c.Logger.Warn().Err(err).Str("system", c.System).Str("publication", slot).Msg("cannot drop the Postgres publication; tried again at the next check")
		return
	}
	c.Logger.Info().Str("system", c.System).Str("publication", slot).Msg("nothing left to capture: Postgres publication dropped")
}

// forgetSlot removes a slot's series from the capture's metrics: a slot
// that is gone keeps no WAL and lags behind nothing.
func forgetSlot(slot string) {
	metricSlotRetained.DeleteLabelValues(slot)
	metricCaptureLagBytes.DeleteLabelValues(slot)
	metricCaptureLagSeconds.DeleteLabelValues(slot)
}

// endFormerHolder ends the session holding the system's slot, if any,
// when this process has just taken the lease (Exclusive): it belongs to
// an instance that lost the lease and may not have noticed (hung, or cut
// off from this database), which would keep the slot for
// wal_sender_timeout. What that instance was appending is de-duplicated
// by the log, and the slot restarts from its confirmed position.
func (c *Runner) endFormerHolder(ctx context.Context) {
	if c.conn == nil {
		return
	}
	slot := SlotName(c.System)
	var pid int32
	var ended bool
	err := c.conn.QueryRow(ctx, `SELECT active_pid, pg_catalog.pg_terminate_backend(active_pid)
		FROM pg_catalog.pg_replication_slots
		WHERE slot_name = $1 AND database = current_database() AND active AND active_pid <> pg_catalog.pg_backend_pid()`, slot).Scan(&pid, &ended)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		c.Logger.Warn().Err(err).Str("system", c.System).Str("slot", slot).Msg("cannot end the former holder of the replication slot; waiting for it to let go")
	case ended:
		c.Logger.Info().Str("system", c.System).Str("slot", slot).Int32("pid", pid).Msg("ended the former lease holder's session on the replication slot")
	}
}
