-- Join projections: every table a version reads, its root (source) first
-- (DESIGN: rejot.publications.tables). A version recorded before reads its
-- source alone. The column is appended to the view, whose grants CREATE OR
-- REPLACE keeps.
ALTER TABLE rejot_catalog.publications ADD COLUMN IF NOT EXISTS tables text[];

CREATE OR REPLACE VIEW rejot.publications AS
    SELECT p.publication, p.version, p.minor, p.owner, p.database, p.query, p.key_columns, p.description,
           CASE WHEN p.problem IS NOT NULL AND p.status <> 'retired' THEN 'failed' ELSE p.status END AS status,
           p.sunset, p.created_at, p.updated_at,
           CASE WHEN NOT p.restricted THEN 'open' ELSE coalesce(g.listed, 'none') END AS access,
           coalesce(g.systems, '{}') AS granted_to,
           p.owner_role,
           CASE WHEN p.status <> 'retired' THEN p.problem END AS problem,
           coalesce(p.tables, ARRAY[p.source]) AS tables
      FROM rejot_catalog.publications p
      LEFT JOIN LATERAL (SELECT pg_catalog.array_agg(x.system ORDER BY x.system) AS systems,
                                pg_catalog.string_agg(x.system, ', ' ORDER BY x.system) AS listed
                           FROM rejot_catalog.grants x
                          WHERE x.publication = p.publication AND x.version = p.version) g ON true;
