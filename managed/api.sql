-- Schema rejot in a managed database: the ReJot API as psql sees it.
-- InstallAPI runs this in the schema it has just made (see
-- migrations/011_api.sql for why, and docs/sql-reference.md). The sidecar
-- answers every call and every query of the catalog relations itself; in
-- the database each object here only raises 0A000, with the hint to
-- connect to the sidecar. They run as their caller (SECURITY INVOKER),
-- with a fixed search_path, and hold no dynamic SQL: calling one can do
-- nothing but fail.
--
-- The arguments are those the sidecar's sql package accepts, in its order,
-- and the views' columns those of the catalog's relations: a test
-- (tests/psql_api_test.go, TestAPISignposts) fails when they drift apart.
-- A change here changes the digest InstallAPI records, and the schema is
-- rebuilt when the sidecar next connects.

COMMENT ON SCHEMA rejot IS 'The ReJot API. The ReJot sidecar answers its calls and its catalog relations itself; these objects show the API to psql, and when called in the database itself (not through the sidecar) raise 0A000 with the hint to connect to the sidecar.';

CREATE PROCEDURE rejot.publish(name text, version integer, query text, description text DEFAULT NULL)
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'feature_not_supported',
        MESSAGE = 'rejot.publish() is answered by the ReJot sidecar, not by the database',
        HINT = 'Connect to the sidecar (its host and port, by default 6432) instead of to the database, and call it again.';
END $$;
COMMENT ON PROCEDURE rejot.publish(text, integer, text, text) IS 'Publishes version "version" of the public schema "name": the rows of "query", one SELECT over a table of this database. Returns publication, version, minor, columns. Answered by the ReJot sidecar: call it through the sidecar.';

CREATE PROCEDURE rejot.unpublish(name text, version integer, force boolean DEFAULT false)
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'feature_not_supported',
        MESSAGE = 'rejot.unpublish() is answered by the ReJot sidecar, not by the database',
        HINT = 'Connect to the sidecar (its host and port, by default 6432) instead of to the database, and call it again.';
END $$;
COMMENT ON PROCEDURE rejot.unpublish(text, integer, boolean) IS 'Retires a publication version; refused while it has subscriptions unless "force". Returns publication, version, status. Answered by the ReJot sidecar: call it through the sidecar.';

CREATE PROCEDURE rejot.deprecate(name text, version integer, sunset date DEFAULT NULL, note text DEFAULT NULL)
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'feature_not_supported',
        MESSAGE = 'rejot.deprecate() is answered by the ReJot sidecar, not by the database',
        HINT = 'Connect to the sidecar (its host and port, by default 6432) instead of to the database, and call it again.';
END $$;
COMMENT ON PROCEDURE rejot.deprecate(text, integer, date, text) IS 'Marks a publication version deprecated, with an optional sunset date and a note for its subscribers. Returns publication, version, status, sunset. Answered by the ReJot sidecar: call it through the sidecar.';

CREATE PROCEDURE rejot.grant(publication text, version integer, system text)
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'feature_not_supported',
        MESSAGE = 'rejot.grant() is answered by the ReJot sidecar, not by the database',
        HINT = 'Connect to the sidecar (its host and port, by default 6432) instead of to the database, and call it again.';
END $$;
COMMENT ON PROCEDURE rejot.grant(text, integer, text) IS 'Lets "system" subscribe to a publication version (''*'': every system); from the first grant on, only granted systems may. Returns publication, version, access. Answered by the ReJot sidecar: call it through the sidecar.';

CREATE PROCEDURE rejot.revoke(publication text, version integer, system text)
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'feature_not_supported',
        MESSAGE = 'rejot.revoke() is answered by the ReJot sidecar, not by the database',
        HINT = 'Connect to the sidecar (its host and port, by default 6432) instead of to the database, and call it again.';
END $$;
COMMENT ON PROCEDURE rejot.revoke(text, integer, text) IS 'Takes back a grant of a publication version; the system''s subscriptions to it stop, with the reason. Returns publication, version, access. Answered by the ReJot sidecar: call it through the sidecar.';

CREATE PROCEDURE rejot.subscribe(publication text, version integer, target text, columns text DEFAULT NULL, copy boolean DEFAULT true,
    upsert text DEFAULT NULL, delete text DEFAULT NULL, truncate text DEFAULT NULL)
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'feature_not_supported',
        MESSAGE = 'rejot.subscribe() is answered by the ReJot sidecar, not by the database',
        HINT = 'Connect to the sidecar (its host and port, by default 6432) instead of to the database, and call it again.';
END $$;
COMMENT ON PROCEDURE rejot.subscribe(text, integer, text, text, boolean, text, text, text) IS 'Subscribes table "target" of this database to a publication version: creates it if missing, copies the rows (unless not "copy"), then streams changes; "columns" chooses some of the version''s columns. With "upsert" (and "delete", "truncate"), a mapped subscription: your own statements, with :column parameters, run as you for every change instead. Returns target, publication, version, status. Answered by the ReJot sidecar: call it through the sidecar.';

CREATE PROCEDURE rejot.unsubscribe(target text, drop_table boolean DEFAULT false)
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'feature_not_supported',
        MESSAGE = 'rejot.unsubscribe() is answered by the ReJot sidecar, not by the database',
        HINT = 'Connect to the sidecar (its host and port, by default 6432) instead of to the database, and call it again.';
END $$;
COMMENT ON PROCEDURE rejot.unsubscribe(text, boolean) IS 'Stops the subscription of table "target"; keeps the table unless "drop_table". Returns target, publication, version, status. Answered by the ReJot sidecar: call it through the sidecar.';

CREATE PROCEDURE rejot.resync(target text)
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'feature_not_supported',
        MESSAGE = 'rejot.resync() is answered by the ReJot sidecar, not by the database',
        HINT = 'Connect to the sidecar (its host and port, by default 6432) instead of to the database, and call it again.';
END $$;
COMMENT ON PROCEDURE rejot.resync(text) IS 'Copies every row of the subscription of table "target" again, then streams. Returns target, publication, version, status. Answered by the ReJot sidecar: call it through the sidecar.';

CREATE FUNCTION rejot.version() RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'feature_not_supported',
        MESSAGE = 'rejot.version() is answered by the ReJot sidecar, not by the database',
        HINT = 'Connect to the sidecar (its host and port, by default 6432) instead of to the database, and call it again.';
END $$;
COMMENT ON FUNCTION rejot.version() IS 'The version of the ReJot sidecar. Answered by the sidecar: call it through the sidecar.';

-- The catalog relations: their columns, in the catalog's order and types,
-- and no rows. Read in the database itself they raise; the sidecar
-- answers a query of them with the catalog's rows.
CREATE VIEW rejot.publications AS
SELECT NULL::text AS publication, NULL::integer AS version, NULL::integer AS minor, NULL::text AS owner,
       NULL::text AS database, NULL::text AS query, NULL::text[] AS key_columns, NULL::text AS description,
       NULL::text AS status, NULL::date AS sunset, NULL::timestamptz AS created_at, NULL::timestamptz AS updated_at,
       NULL::text AS access, NULL::text[] AS granted_to, NULL::text AS owner_role, NULL::text AS problem,
       NULL::text[] AS tables
WHERE _rejot.api_unavailable('rejot.publications');
COMMENT ON VIEW rejot.publications IS 'The publication versions of the catalog, one row each. Answered by the ReJot sidecar: query it through the sidecar.';
COMMENT ON COLUMN rejot.publications.owner IS 'the system that owns the publication';
COMMENT ON COLUMN rejot.publications.owner_role IS 'the role that published the version';
COMMENT ON COLUMN rejot.publications.database IS 'the owner''s database';
COMMENT ON COLUMN rejot.publications.query IS 'the projection, as recorded';
COMMENT ON COLUMN rejot.publications.key_columns IS 'the public key';
COMMENT ON COLUMN rejot.publications.status IS 'active, deprecated, failed or retired';
COMMENT ON COLUMN rejot.publications.access IS 'open, or the systems granted';
COMMENT ON COLUMN rejot.publications.problem IS 'why the version cannot be computed, and the fix';
COMMENT ON COLUMN rejot.publications.tables IS 'every table the version reads, its root first';

CREATE VIEW rejot.columns AS
SELECT NULL::text AS publication, NULL::integer AS version, NULL::integer AS position, NULL::text AS name,
       NULL::text AS type, NULL::boolean AS is_key, NULL::boolean AS nullable, NULL::integer AS since_minor
WHERE _rejot.api_unavailable('rejot.columns');
COMMENT ON VIEW rejot.columns IS 'The public columns of each publication version. Answered by the ReJot sidecar: query it through the sidecar.';
COMMENT ON COLUMN rejot.columns.type IS 'the Postgres type name, e.g. numeric(12,2)';
COMMENT ON COLUMN rejot.columns.since_minor IS 'the minor version that added the column';

CREATE VIEW rejot.subscriptions AS
SELECT NULL::text AS target, NULL::text AS system, NULL::text AS publication, NULL::integer AS version,
       NULL::text AS status, NULL::bigint AS copied_rows, NULL::bigint AS applied_position,
       NULL::double precision AS lag_seconds, NULL::timestamptz AS last_applied_at, NULL::text AS error,
       NULL::timestamptz AS created_at, NULL::bigint AS lag_changes, NULL::boolean AS mapped
WHERE _rejot.api_unavailable('rejot.subscriptions');
COMMENT ON VIEW rejot.subscriptions IS 'The subscriptions of every system, with their progress. Answered by the ReJot sidecar: query it through the sidecar.';
COMMENT ON COLUMN rejot.subscriptions.system IS 'the subscribing system';
COMMENT ON COLUMN rejot.subscriptions.status IS 'copying, streaming, stalled, stopped or failed';
COMMENT ON COLUMN rejot.subscriptions.mapped IS 'true when the subscription runs its subscriber''s own statements (a mapped subscription)';
COMMENT ON COLUMN rejot.subscriptions.lag_seconds IS 'how far behind the event log''s head';

CREATE VIEW rejot.systems AS
SELECT NULL::text AS system, NULL::text AS database, NULL::text AS address, NULL::text AS version,
       NULL::timestamptz AS last_seen, NULL::text AS problem, NULL::text AS catalog_role
WHERE _rejot.api_unavailable('rejot.systems');
COMMENT ON VIEW rejot.systems IS 'The systems (one database and its sidecar each) known to the catalog. Answered by the ReJot sidecar: query it through the sidecar.';
COMMENT ON COLUMN rejot.systems.address IS 'the address of its active sidecar';
COMMENT ON COLUMN rejot.systems.version IS 'the version of its sidecar';

CREATE VIEW rejot.instances AS
SELECT NULL::text AS system, NULL::text AS address, NULL::text AS role, NULL::text AS version,
       NULL::timestamptz AS started_at, NULL::timestamptz AS last_seen, NULL::uuid AS instance
WHERE _rejot.api_unavailable('rejot.instances');
COMMENT ON VIEW rejot.instances IS 'The running sidecars of each system. Answered by the ReJot sidecar: query it through the sidecar.';
COMMENT ON COLUMN rejot.instances.role IS 'active (runs capture and apply) or standby (relays and waits)';

GRANT USAGE ON SCHEMA rejot TO PUBLIC;
GRANT SELECT ON ALL TABLES IN SCHEMA rejot TO PUBLIC;
GRANT EXECUTE ON ALL ROUTINES IN SCHEMA rejot TO PUBLIC;
