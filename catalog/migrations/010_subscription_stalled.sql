-- A subscription that is behind its log and has not advanced for a while
-- (its target locked by another session, a statement that does not end)
-- is 'stalled', with why in error; one that is caught up stays
-- 'streaming' with lag_changes 0.
ALTER TABLE rejot_catalog.subscriptions DROP CONSTRAINT IF EXISTS subscriptions_status_check;
ALTER TABLE rejot_catalog.subscriptions ADD CONSTRAINT subscriptions_status_check
    CHECK (status IN ('copying', 'streaming', 'stalled', 'stopped', 'failed'));
