-- Join projections (docs/join-projections.md): a version may read several
-- tables of the database, its root first. tables records every table it
-- reads (schema-qualified, quoted, as resolved when it was recorded;
-- NULL for a version recorded before this migration: it reads its source
-- alone), and the publish command carries them for the catalog. The
-- caller must be a member of the role that owns each of them, as for the
-- root (Postgres's rule for CREATE PUBLICATION). record_published with
-- tables is the 11-argument one of migration 006 with new_tables last.
ALTER TABLE _rejot.publications ADD COLUMN IF NOT EXISTS tables text[];

CREATE OR REPLACE FUNCTION _rejot.record_published(claimed name, pub text, ver int, new_minor int, new_query text, new_source text,
        new_key_columns text[], new_columns jsonb, new_description text, owner_system text, owner_database text, new_tables text[])
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cmd bigint;
    name text;
    rel oid;
    t record;
    resolved text[] := '{}';
BEGIN
    IF new_tables IS NULL OR pg_catalog.cardinality(new_tables) = 0 OR pg_catalog.cardinality(new_tables) > 64 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value', MESSAGE = 'invalid record of a publication version: its tables';
    END IF;
    FOREACH name IN ARRAY new_tables LOOP
        rel := pg_catalog.to_regclass(name);
        SELECT c.relkind, c.relpersistence, n.nspname, c.relname INTO t
            FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = rel;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'undefined_table', MESSAGE = pg_catalog.format('table %s does not exist', name);
        END IF;
        IF t.relkind NOT IN ('r', 'p') OR t.relpersistence = 't' THEN
            RAISE EXCEPTION USING ERRCODE = 'wrong_object_type', MESSAGE = pg_catalog.format('%s is not a table that can be published', name);
        END IF;
        PERFORM _rejot.claim(claimed);
        PERFORM _rejot.require_owner(claimed, rel, 'publish it');
        name := '"' || pg_catalog.replace(t.nspname, '"', '""') || '"."' || pg_catalog.replace(t.relname, '"', '""') || '"';
        IF NOT name = ANY (resolved) THEN
            resolved := resolved || name;
        END IF;
    END LOOP;
    cmd := _rejot.record_published(claimed, pub, ver, new_minor, new_query, new_source, new_key_columns, new_columns,
        new_description, owner_system, owner_database);
    IF (SELECT p.source FROM _rejot.publications p WHERE p.publication = pub AND p.version = ver) <> resolved[1] THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value', MESSAGE = 'invalid record of a publication version: its first table is its source';
    END IF;
    UPDATE _rejot.publications SET tables = resolved WHERE publication = pub AND version = ver;
    UPDATE _rejot.commands SET payload = payload || pg_catalog.jsonb_build_object('tables', pg_catalog.to_jsonb(resolved)) WHERE id = cmd;
    RETURN cmd;
END $$;

REVOKE ALL ON FUNCTION _rejot.record_published(name, text, int, int, text, text, text[], jsonb, text, text, text, text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION _rejot.record_published(name, text, int, int, text, text, text[], jsonb, text, text, text, text[]) TO PUBLIC;
