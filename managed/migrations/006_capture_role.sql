-- The capture and the first fill evaluate each version's projection as the
-- role that recorded it (its caller), so recording a version takes a
-- caller the sidecar's role can become; and the publish command names the
-- database it was recorded in (current_database()), not what the caller
-- said: owner_database is kept in the signature for the callers, and
-- ignored.
CREATE OR REPLACE FUNCTION _rejot.record_published(claimed name, pub text, ver int, new_minor int, new_query text, new_source text,
        new_key_columns text[], new_columns jsonb, new_description text, owner_system text, owner_database text)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel oid := pg_catalog.to_regclass(new_source);
    t record;
    old record;
    src text;
BEGIN
    PERFORM _rejot.claim(claimed);
    SELECT c.relkind, c.relpersistence, n.nspname, c.relname INTO t
        FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = rel;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_table', MESSAGE = pg_catalog.format('table %s does not exist', new_source);
    END IF;
    IF t.relkind NOT IN ('r', 'p') OR t.relpersistence = 't' THEN
        RAISE EXCEPTION USING ERRCODE = 'wrong_object_type', MESSAGE = pg_catalog.format('%s is not a table that can be published', new_source);
    END IF;
    PERFORM _rejot.require_owner(claimed, rel, 'publish it');
    -- the capture and first fill run as the caller: the sidecar's role
    -- (this function's owner, current_user here) must be able to become it
    IF NOT pg_catalog.pg_has_role(current_user, claimed, 'MEMBER') THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = pg_catalog.format('the sidecar''s role %I cannot act as role %I, and a publication is captured as the role that publishes it', current_user, claimed),
            HINT = pg_catalog.format('Have an administrator grant it (GRANT %I TO %I), or publish as a role the sidecar''s role is a member of.', claimed, current_user);
    END IF;
    IF ver IS NULL OR ver < 1 OR new_minor IS NULL OR new_minor < 0 OR pub IS NULL OR pub = ''
            OR new_query IS NULL OR pg_catalog.jsonb_typeof(new_columns) IS DISTINCT FROM 'array'
            OR pg_catalog.cardinality(new_key_columns) IS NOT DISTINCT FROM 0 OR new_key_columns IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value', MESSAGE = 'invalid record of a publication version';
    END IF;
    -- stored as the sidecar names it (pgx.Identifier), resolved: never
    -- the text the caller gave
    src := '"' || pg_catalog.replace(t.nspname, '"', '""') || '"."' || pg_catalog.replace(t.relname, '"', '""') || '"';
    SELECT p.source, p.caller, p.status INTO old FROM _rejot.publications p WHERE p.publication = pub AND p.version = ver;
    IF FOUND THEN
        PERFORM _rejot.require_version_owner(claimed, pub, ver, old.source, old.caller);
        IF old.status = 'retired' THEN
            RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
                MESSAGE = pg_catalog.format('publication %s version %s is retired', pub, ver);
        END IF;
    END IF;
    INSERT INTO _rejot.publications AS p
            (publication, version, minor, query, source, key_columns, columns, description, caller, updated_at)
        VALUES (pub, ver, new_minor, new_query, src, new_key_columns, new_columns, coalesce(new_description, ''), claimed, now())
        ON CONFLICT (publication, version) DO UPDATE SET minor = EXCLUDED.minor, query = EXCLUDED.query,
            source = EXCLUDED.source, key_columns = EXCLUDED.key_columns, columns = EXCLUDED.columns,
            description = EXCLUDED.description, caller = coalesce(p.caller, EXCLUDED.caller), updated_at = now();
    RETURN _rejot.command('publish', pg_catalog.jsonb_build_object('publication', pub, 'version', ver,
        'minor', new_minor, 'owner', owner_system, 'database', pg_catalog.current_database(), 'query', new_query, 'source', src,
        'key_columns', pg_catalog.to_jsonb(new_key_columns), 'columns', new_columns,
        'description', coalesce(new_description, ''), 'caller', claimed::text), claimed);
END $$;
