-- Calls on one publication version, or on one subscription target, are
-- serialised by a row lock in _rejot, no longer by an advisory lock: any
-- role that can connect can take any advisory lock, and so could hold a
-- version or a target forever. Only the role that may make the call can
-- take its lock here, and holding it lets that role do nothing it could
-- not do anyway (publish the version first, make the table first).
CREATE TABLE _rejot.call_locks (
    kind text NOT NULL,     -- 'version' or 'target'
    name text NOT NULL,     -- publication/version, or the target's schema.table as format('%I.%I')
    PRIMARY KEY (kind, name)
);
REVOKE ALL ON _rejot.call_locks FROM PUBLIC;

-- lock_call takes the lock of (kind, lock_name) until the caller's
-- transaction ends.
CREATE FUNCTION _rejot.lock_call(lock_kind text, lock_name text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO _rejot.call_locks (kind, name) VALUES (lock_kind, lock_name) ON CONFLICT DO NOTHING;
    PERFORM 1 FROM _rejot.call_locks WHERE kind = lock_kind AND name = lock_name FOR UPDATE;
END $$;

-- lock_version serialises publishes of one version (managed.LockVersion):
-- for a caller that may publish from table new_source, or that may change
-- the version when it exists already.
CREATE FUNCTION _rejot.lock_version(claimed name, pub text, ver int, new_source text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    old record;
    rel oid := pg_catalog.to_regclass(new_source);
BEGIN
    PERFORM _rejot.claim(claimed);
    IF rel IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_table', MESSAGE = pg_catalog.format('table %s does not exist', new_source);
    END IF;
    PERFORM _rejot.require_owner(claimed, rel, 'publish it');
    SELECT p.source, p.caller INTO old FROM _rejot.publications p WHERE p.publication = pub AND p.version = ver;
    IF FOUND THEN
        PERFORM _rejot.require_version_owner(claimed, pub, ver, old.source, old.caller);
    END IF;
    PERFORM _rejot.lock_call('version', pub || '/' || ver);
END $$;

-- lock_target serialises subscribe, unsubscribe and resync of one target
-- (managed.LockTarget): for a caller that owns the table; while it does
-- not exist, for one that made its subscription, or with none, that may
-- create the table in its schema.
CREATE FUNCTION _rejot.lock_target(claimed name, target_schema text, target_table text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel oid := _rejot.target_table(target_schema, target_table);
    lock_key text := pg_catalog.format('%I.%I', target_schema, target_table);
    recorder text;
BEGIN
    PERFORM _rejot.claim(claimed);
    SELECT s.caller INTO recorder FROM _rejot.subscriptions s WHERE s.target = lock_key;
    IF rel IS NOT NULL THEN
        PERFORM _rejot.require_owner(claimed, rel, 'subscribe into it, or change its subscription');
    ELSIF FOUND THEN
        PERFORM _rejot.require_recorder(claimed, recorder, NULL, 'the subscription into ' || lock_key);
    ELSIF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n WHERE n.nspname = target_schema
                       AND pg_catalog.has_schema_privilege(claimed, n.oid, 'CREATE')) THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = pg_catalog.format('permission denied for schema %I', target_schema),
            HINT = 'Subscribing into a new table takes CREATE on its schema.';
    END IF;
    PERFORM _rejot.lock_call('target', lock_key);
END $$;

REVOKE ALL ON FUNCTION _rejot.lock_call(text, text), _rejot.lock_version(name, text, int, text),
    _rejot.lock_target(name, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION _rejot.lock_version(name, text, int, text), _rejot.lock_target(name, text, text) TO PUBLIC;
