-- Users' queries over the catalog relations run as rejot_catalog_reader,
-- which may read the rejot views and nothing else (no server files, no
-- other tables), inside read-only transactions. A sidecar whose catalog
-- role may not create roles runs them as its own role instead.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rejot_catalog_reader') THEN
        CREATE ROLE rejot_catalog_reader NOLOGIN;
    END IF;
EXCEPTION WHEN insufficient_privilege OR duplicate_object OR unique_violation THEN
    NULL;
END $$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rejot_catalog_reader') THEN
        GRANT USAGE ON SCHEMA rejot TO rejot_catalog_reader;
        GRANT SELECT ON ALL TABLES IN SCHEMA rejot TO rejot_catalog_reader;
        IF NOT pg_has_role(current_user, 'rejot_catalog_reader', 'MEMBER') THEN
            EXECUTE format('GRANT rejot_catalog_reader TO %I', current_user);
        END IF;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    NULL;
END $$;
