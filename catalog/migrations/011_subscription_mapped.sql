-- A mapped subscription runs the consumer's own statements instead of
-- mirroring the version into a table of its shape: rejot.subscriptions
-- says which. The view keeps its columns in order and appends mapped.
ALTER TABLE rejot_catalog.subscriptions ADD COLUMN IF NOT EXISTS mapped boolean NOT NULL DEFAULT false;

CREATE OR REPLACE VIEW rejot.subscriptions AS
    SELECT s.target, s.system, s.publication, s.version,
           CASE WHEN p.problem IS NOT NULL AND p.status <> 'retired' AND s.status NOT IN ('stopped', 'failed')
                THEN 'failed' ELSE s.status END AS status,
           s.copied_rows, s.applied_position, s.lag_seconds, s.last_applied_at,
           CASE WHEN p.problem IS NOT NULL AND p.status <> 'retired' AND s.status NOT IN ('stopped', 'failed')
                THEN 'publication ' || s.publication || ' version ' || s.version || ' failed at its owner: ' || p.problem
                ELSE s.error END AS error,
           s.created_at, s.lag_changes, s.mapped
      FROM rejot_catalog.subscriptions s
      LEFT JOIN rejot_catalog.publications p ON p.publication = s.publication AND p.version = s.version;
