-- Lag in changes (the log's head minus the applied position), beside lag
-- in seconds; and the subscriptions' view shows it.
ALTER TABLE rejot_catalog.subscriptions ADD COLUMN IF NOT EXISTS lag_changes bigint;

CREATE OR REPLACE VIEW rejot.subscriptions AS
    SELECT target, system, publication, version, status, copied_rows, applied_position,
           lag_seconds, last_applied_at, error, created_at, lag_changes
      FROM rejot_catalog.subscriptions;
