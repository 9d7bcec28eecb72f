-- A publication version that cannot be computed (its table lost a column
-- it reads, changed a published column's type, was dropped or renamed
-- away; its role lost a privilege; its projection errors) is failed: its
-- owner's sidecar records why, and the fix, in problem (NULL when it can
-- be computed), and clears it once the version's state is filled again.
-- The views show such a version as status 'failed' (the lifecycle status
-- it keeps, active or deprecated, comes back with the mend) and its
-- subscriptions as failed with the problem as their error. Columns are
-- appended to the views, whose grants CREATE OR REPLACE keeps.
ALTER TABLE rejot_catalog.publications ADD COLUMN IF NOT EXISTS problem text;

CREATE OR REPLACE VIEW rejot.publications AS
    SELECT p.publication, p.version, p.minor, p.owner, p.database, p.query, p.key_columns, p.description,
           CASE WHEN p.problem IS NOT NULL AND p.status <> 'retired' THEN 'failed' ELSE p.status END AS status,
           p.sunset, p.created_at, p.updated_at,
           CASE WHEN NOT p.restricted THEN 'open' ELSE coalesce(g.listed, 'none') END AS access,
           coalesce(g.systems, '{}') AS granted_to,
           p.owner_role,
           CASE WHEN p.status <> 'retired' THEN p.problem END AS problem
      FROM rejot_catalog.publications p
      LEFT JOIN LATERAL (SELECT pg_catalog.array_agg(x.system ORDER BY x.system) AS systems,
                                pg_catalog.string_agg(x.system, ', ' ORDER BY x.system) AS listed
                           FROM rejot_catalog.grants x
                          WHERE x.publication = p.publication AND x.version = p.version) g ON true;

CREATE OR REPLACE VIEW rejot.subscriptions AS
    SELECT s.target, s.system, s.publication, s.version,
           CASE WHEN p.problem IS NOT NULL AND p.status <> 'retired' AND s.status NOT IN ('stopped', 'failed')
                THEN 'failed' ELSE s.status END AS status,
           s.copied_rows, s.applied_position, s.lag_seconds, s.last_applied_at,
           CASE WHEN p.problem IS NOT NULL AND p.status <> 'retired' AND s.status NOT IN ('stopped', 'failed')
                THEN 'publication ' || s.publication || ' version ' || s.version || ' failed at its owner: ' || p.problem
                ELSE s.error END AS error,
           s.created_at, s.lag_changes
      FROM rejot_catalog.subscriptions s
      LEFT JOIN rejot_catalog.publications p ON p.publication = s.publication AND p.version = s.version;
