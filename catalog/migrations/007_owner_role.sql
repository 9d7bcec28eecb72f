-- The role a version was first published as, which its capture runs as
-- (DESIGN: rejot.publications.owner_role): the owner's _rejot keeps it,
-- and its publish commands carry it. Appended to the view, whose grants
-- to other sidecars' roles CREATE OR REPLACE keeps.
ALTER TABLE rejot_catalog.publications ADD COLUMN IF NOT EXISTS owner_role text;

CREATE OR REPLACE VIEW rejot.publications AS
    SELECT p.publication, p.version, p.minor, p.owner, p.database, p.query, p.key_columns, p.description,
           p.status, p.sunset, p.created_at, p.updated_at,
           CASE WHEN NOT p.restricted THEN 'open' ELSE coalesce(g.listed, 'none') END AS access,
           coalesce(g.systems, '{}') AS granted_to,
           p.owner_role
      FROM rejot_catalog.publications p
      LEFT JOIN LATERAL (SELECT pg_catalog.array_agg(x.system ORDER BY x.system) AS systems,
                                pg_catalog.string_agg(x.system, ', ' ORDER BY x.system) AS listed
                           FROM rejot_catalog.grants x
                          WHERE x.publication = p.publication AND x.version = p.version) g ON true;
