-- The API made visible to psql. The sidecar answers rejot.publish(...) and
-- the catalog relations itself, so nothing in the database needs them; but
-- psql's \df, \d, \sf and tab completion read pg_catalog, and a call sent
-- to the database by mistake should say where to send it rather than
-- 'schema "rejot" does not exist'. The sidecar therefore keeps, in each
-- database it manages, a schema rejot of signposts (managed/api.sql):
-- procedures and a function with the API's arguments, and views with the
-- catalog relations' columns, each of which only raises. They are made by
-- managed.InstallAPI, not here, because it must leave alone a schema rejot
-- that is not the sidecar's, and rebuild its own when the API changes.
--
-- api records the schema rejot the sidecar made (by oid: a schema of the
-- same name made by anyone else, or restored from a dump, is not it) and
-- the digest of the signposts it holds. One row at most.
CREATE TABLE IF NOT EXISTS _rejot.api (
    one          boolean PRIMARY KEY DEFAULT true CHECK (one),
    schema_oid   oid NOT NULL,
    digest       text NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON _rejot.api FROM PUBLIC;

-- api_unavailable raises the error of a catalog relation read in the
-- database itself: the views of schema rejot call it. It only raises,
-- runs as its caller and reads nothing, so every role may call it (a
-- view's functions are called with the privileges of who reads it).
CREATE FUNCTION _rejot.api_unavailable(relation text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'feature_not_supported',
        MESSAGE = pg_catalog.format('%s is answered by the ReJot sidecar, not by the database', relation),
        HINT = 'Connect to the sidecar (its host and port, by default 6432) instead of to the database, and run the query again.';
END $$;
REVOKE ALL ON FUNCTION _rejot.api_unavailable(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION _rejot.api_unavailable(text) TO PUBLIC;
