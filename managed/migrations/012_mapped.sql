-- Mapped subscriptions: the consumer's own statements, run instead of the
-- mirror upsert and delete (docs/security.md, "Mapped subscriptions").
--
-- mapping holds the statements as the sidecar rewrote them at subscribe
-- time: {"upsert": …, "delete": …, "truncate": … or null, "upsert_params":
-- [column index, …], "delete_params": […], "search_path": …}; NULL for a
-- mirror subscription. mapped_role is the role that subscribed (by oid):
-- the apply runs the statements as that role, never as the sidecar's.
-- copied_before: the subscription has copied the state once (a later
-- copy — a resync, or a log pruned past it — starts with the truncate
-- statement, and fails without one).
ALTER TABLE _rejot.subscriptions ADD COLUMN IF NOT EXISTS mapping jsonb;
ALTER TABLE _rejot.subscriptions ADD COLUMN IF NOT EXISTS mapped_role oid;
ALTER TABLE _rejot.subscriptions ADD COLUMN IF NOT EXISTS copied_before boolean NOT NULL DEFAULT false;

-- The sessions of the sidecar's apply that run a mapped subscription's
-- statements. There, code of the subscribing role runs (inside a SECURITY
-- DEFINER function it owns) in a session whose session_user is the
-- sidecar's role; claim, which trusts session_user, must not let that
-- code act for the sidecar's role (or any role the sidecar's may become)
-- by calling _rejot's intent functions. A session is known by its
-- backend's pid and start time; nobody but the sidecar's role can write
-- this table, so code running in the session cannot take its mark off.
CREATE TABLE IF NOT EXISTS _rejot.apply_sessions (
    pid     int PRIMARY KEY,
    started timestamptz NOT NULL
);
REVOKE ALL ON _rejot.apply_sessions FROM PUBLIC;

CREATE OR REPLACE FUNCTION _rejot.claim(claimed name) RETURNS name
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF claimed IS NULL OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = claimed)
            OR NOT pg_catalog.pg_has_role(session_user, claimed, 'MEMBER') THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = pg_catalog.format('role %I may not act as role %I', session_user, claimed),
            HINT = 'Make rejot calls through the sidecar (CALL rejot.publish(...) and the others): they act as the role that calls them.';
    END IF;
    IF EXISTS (SELECT 1 FROM _rejot.apply_sessions a JOIN pg_catalog.pg_stat_activity s ON s.pid = a.pid
               WHERE a.pid = pg_catalog.pg_backend_pid() AND s.backend_start = a.started) THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = 'a mapped subscription''s statements may not make rejot calls',
            HINT = 'Make rejot calls through the sidecar, in a session of your own.';
    END IF;
    RETURN claimed;
END $$;
REVOKE ALL ON FUNCTION _rejot.claim(name) FROM PUBLIC;

-- check_mapped refuses (42501) to call a mapped subscription's function
-- fn (in the session's own temporary schema) unless it is still the
-- only function of that name there, SECURITY DEFINER and owned by role:
-- the statements run as that role may replace it, and the sidecar calls
-- it only as that role. Nothing but code the sidecar calls runs in its
-- session, and other sessions cannot reach its temporary schema, so the
-- check holds until the call (managed.CheckMapped).
CREATE FUNCTION _rejot.check_mapped(fn text, role oid) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF (SELECT pg_catalog.count(*) FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = pg_catalog.pg_my_temp_schema() AND p.proname = fn) <> 1
       OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = pg_catalog.pg_my_temp_schema() AND p.proname = fn AND p.prosecdef AND p.proowner = role) THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = pg_catalog.format('the function of a mapped subscription (%s) was changed while it ran; the sidecar makes it again', fn),
            HINT = 'A mapped subscription''s statements must not create or change functions in pg_temp.';
    END IF;
END $$;
REVOKE ALL ON FUNCTION _rejot.check_mapped(text, oid) FROM PUBLIC;

-- insert_mapped_subscription records a new mapped subscription into an
-- existing table the caller owns, named exactly as resolved, and its
-- subscribe command (mapped: true); it returns the command's id, or NULL
-- when the same subscription (publication, version and statements) is
-- there already. The sidecar's role must be able to become the caller:
-- the statements run as the caller. managed.InsertMappedSubscription.
CREATE FUNCTION _rejot.insert_mapped_subscription(claimed name, sub_target text, sub_schema text, sub_table text,
        pub text, ver int, sub_columns jsonb, sub_copy boolean, sub_mapping jsonb)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel oid := _rejot.target_table(sub_schema, sub_table);
    t record;
    s record;
    resolved text;
    new_id bigint;
BEGIN
    PERFORM _rejot.claim(claimed);
    SELECT c.relkind, c.relpersistence, n.nspname, c.relname INTO t
        FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = rel;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_table',
            MESSAGE = pg_catalog.format('table %I.%I does not exist', sub_schema, sub_table);
    END IF;
    resolved := pg_catalog.format('%I.%I', t.nspname, t.relname);
    IF t.relkind NOT IN ('r', 'p') OR t.relpersistence = 't' THEN
        RAISE EXCEPTION USING ERRCODE = 'wrong_object_type', MESSAGE = pg_catalog.format('%s is not a table', resolved);
    END IF;
    PERFORM _rejot.require_owner(claimed, rel, 'subscribe into it');
    IF sub_target IS DISTINCT FROM resolved THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = pg_catalog.format('target %s is not the name of table %s', sub_target, resolved);
    END IF;
    IF NOT pg_catalog.pg_has_role(current_user, claimed, 'MEMBER') THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = pg_catalog.format('the sidecar''s role %I cannot act as role %I, and a mapped subscription''s statements run as the role that subscribes', current_user, claimed),
            HINT = pg_catalog.format('Have an administrator grant it (GRANT %I TO %I), or subscribe as a role the sidecar''s role is a member of.', claimed, current_user);
    END IF;
    IF pub IS NULL OR pub = '' OR ver IS NULL OR ver < 1 OR sub_copy IS NULL
            OR pg_catalog.jsonb_typeof(sub_columns) IS DISTINCT FROM 'array' OR pg_catalog.jsonb_array_length(sub_columns) = 0
            OR pg_catalog.jsonb_typeof(sub_mapping) IS DISTINCT FROM 'object'
            OR pg_catalog.jsonb_typeof(sub_mapping->'upsert') IS DISTINCT FROM 'string'
            OR pg_catalog.jsonb_typeof(sub_mapping->'delete') IS DISTINCT FROM 'string'
            OR pg_catalog.length(sub_mapping::text) > 1000000 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = pg_catalog.format('invalid mapped subscription into %s', resolved);
    END IF;
    SELECT x.publication, x.version, x.mapping INTO s FROM _rejot.subscriptions x WHERE x.target = resolved;
    IF FOUND THEN
        IF s.publication = pub AND s.version = ver AND s.mapping = sub_mapping THEN
            RETURN NULL; -- already so
        END IF;
        RAISE EXCEPTION USING ERRCODE = 'duplicate_object',
            MESSAGE = pg_catalog.format('table %s is already subscribed to %s version %s', resolved, s.publication, s.version),
            HINT = pg_catalog.format('Unsubscribe it first (CALL rejot.unsubscribe(''%s'')) to subscribe it again with other statements.', resolved);
    END IF;
    INSERT INTO _rejot.subscriptions (target, target_schema, target_table, publication, version, columns, copy, caller, mapping, mapped_role)
        VALUES (resolved, t.nspname, t.relname, pub, ver, sub_columns, sub_copy, claimed, sub_mapping,
                (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = claimed));
    new_id := _rejot.command('subscribe', pg_catalog.jsonb_build_object('target', resolved, 'publication', pub,
        'version', ver, 'caller', claimed::text, 'mapped', true), claimed);
    PERFORM pg_catalog.pg_notify('rejot_subscriptions', resolved);
    RETURN new_id;
END $$;

-- subscription_mapped says whether the subscription into target (which
-- claimed may change) is mapped; managed.SubscriptionMapped.
CREATE FUNCTION _rejot.subscription_mapped(claimed name, sub_target text) RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r _rejot.subscriptions := _rejot.subscription_of(claimed, sub_target, 'unsubscribe it');
BEGIN
    RETURN r.mapping IS NOT NULL;
END $$;

REVOKE ALL ON FUNCTION _rejot.insert_mapped_subscription(name, text, text, text, text, int, jsonb, boolean, jsonb),
    _rejot.subscription_mapped(name, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION _rejot.insert_mapped_subscription(name, text, text, text, text, int, jsonb, boolean, jsonb),
    _rejot.subscription_mapped(name, text) TO PUBLIC;
