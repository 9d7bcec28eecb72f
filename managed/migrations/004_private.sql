-- _rejot is the sidecar's alone. Until now every role could write it, and
-- the sidecar acted on what it found with its own credentials. From here
-- on no role but the sidecar's (the owner of everything below, as the
-- role that runs the migrations) reads or writes its tables: a rejot call
-- records its intent through the SECURITY DEFINER functions below, still
-- in the caller's own transaction (so it takes effect only if that
-- commits), and each function checks that the intent is the caller's to
-- have — exactly what makes calling one directly, not through the
-- sidecar, harmless. Each names the role it acts for (the caller passes
-- current_user, evaluated in its own session) and the functions refuse a
-- role the session could not SET ROLE to; that role is recorded.
REVOKE ALL ON ALL TABLES IN SCHEMA _rejot FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA _rejot FROM PUBLIC;

ALTER TABLE _rejot.commands ADD COLUMN IF NOT EXISTS caller text;
ALTER TABLE _rejot.publications ADD COLUMN IF NOT EXISTS caller text;     -- who first recorded the version
ALTER TABLE _rejot.subscriptions ADD COLUMN IF NOT EXISTS caller text;

-- claim returns the role a call acts for, when the session may act as it.
CREATE FUNCTION _rejot.claim(claimed name) RETURNS name
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF claimed IS NULL OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = claimed)
            OR NOT pg_catalog.pg_has_role(session_user, claimed, 'MEMBER') THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = pg_catalog.format('role %I may not act as role %I', session_user, claimed),
            HINT = 'Make rejot calls through the sidecar (CALL rejot.publish(...) and the others): they act as the role that calls them.';
    END IF;
    RETURN claimed;
END $$;

-- require_owner refuses claimed unless it is a member of the role that
-- owns table rel (Postgres's own rule for CREATE PUBLICATION and for
-- changing a table).
CREATE FUNCTION _rejot.require_owner(claimed name, rel oid, action text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    owner_oid oid;
    owner_name text;
    rel_name text;
BEGIN
    SELECT c.relowner, pg_catalog.pg_get_userbyid(c.relowner), pg_catalog.format('%I.%I', n.nspname, c.relname)
        INTO owner_oid, owner_name, rel_name
        FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = rel;
    IF owner_oid IS NULL OR NOT pg_catalog.pg_has_role(claimed, owner_oid, 'MEMBER') THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = pg_catalog.format('only members of role %I, which owns %s, may %s', owner_name, rel_name, action),
            HINT = pg_catalog.format('Call as %I (SET ROLE %I), or have it granted to you (GRANT %I TO %I).',
                owner_name, owner_name, owner_name, claimed);
    END IF;
END $$;

-- require_recorder refuses claimed unless it is a member of the role that
-- recorded a version or a subscription; when that role is unknown (gone,
-- or recorded before callers were) and so is the table (rel NULL), only
-- the sidecar's role and its members may.
CREATE FUNCTION _rejot.require_recorder(claimed name, recorder text, rel oid, what text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF recorder IS NOT NULL AND EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = recorder) THEN
        IF NOT pg_catalog.pg_has_role(claimed, recorder::name, 'MEMBER') THEN
            RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
                MESSAGE = pg_catalog.format('%s was made by role %I: only its members may change it', what, recorder),
                HINT = pg_catalog.format('Call as %I, or have it granted to you (GRANT %I TO %I).', recorder, recorder, claimed);
        END IF;
    ELSIF rel IS NULL AND NOT pg_catalog.pg_has_role(claimed, current_user, 'MEMBER') THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = pg_catalog.format('the table of %s is gone and so is the role that made it: only members of the sidecar''s role %I may change it', what, current_user);
    END IF;
END $$;

-- require_version_owner: changing a recorded version takes membership in
-- the owner of its table (when it is still there) and in the role that
-- recorded it.
CREATE FUNCTION _rejot.require_version_owner(claimed name, pub text, ver int, source text, recorder text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel oid := pg_catalog.to_regclass(source);
    what text := pg_catalog.format('publication %s version %s', pub, ver);
BEGIN
    IF rel IS NOT NULL THEN
        PERFORM _rejot.require_owner(claimed, rel, 'change ' || what);
    END IF;
    PERFORM _rejot.require_recorder(claimed, recorder, rel, what);
END $$;

-- target_table returns the table a subscription names, NULL when gone.
CREATE FUNCTION _rejot.target_table(target_schema text, target_table text) RETURNS oid
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = target_schema AND c.relname = target_table
$$;

-- require_target_owner: changing a subscription takes membership in the
-- owner of its target (when it is still there; else in the role that made
-- the subscription).
CREATE FUNCTION _rejot.require_target_owner(claimed name, target text, target_schema text, target_table text, recorder text, action text)
RETURNS void LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel oid := _rejot.target_table(target_schema, target_table);
BEGIN
    IF rel IS NOT NULL THEN
        PERFORM _rejot.require_owner(claimed, rel, action);
    ELSE
        PERFORM _rejot.require_recorder(claimed, recorder, NULL, 'the subscription into ' || target);
    END IF;
END $$;

-- command appends a command to the outbox and wakes the outbox applier
-- (channel rejot_commands, managed.ChannelCommands).
CREATE FUNCTION _rejot.command(cmd_kind text, cmd_payload jsonb, claimed name) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_id bigint;
BEGIN
    INSERT INTO _rejot.commands (kind, payload, caller) VALUES (cmd_kind, cmd_payload, claimed) RETURNING id INTO new_id;
    PERFORM pg_catalog.pg_notify('rejot_commands', new_id::text);
    RETURN new_id;
END $$;

-- lock_published locks the record of a version and returns it (no row:
-- never published); managed.LockPublished.
CREATE FUNCTION _rejot.lock_published(claimed name, pub text, ver int)
RETURNS TABLE (minor int, query text, columns text, description text, latest int, status text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    r record;
BEGIN
    PERFORM _rejot.claim(claimed);
    SELECT p.source, p.caller INTO r FROM _rejot.publications p WHERE p.publication = pub AND p.version = ver;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- checked before locking: a refused caller holds no lock
    PERFORM _rejot.require_version_owner(claimed, pub, ver, r.source, r.caller);
    RETURN QUERY SELECT p.minor, p.query, p.columns::text, p.description,
            (SELECT max(q.version) FROM _rejot.publications q WHERE q.publication = pub), p.status
        FROM _rejot.publications p WHERE p.publication = pub AND p.version = ver FOR UPDATE;
END $$;

-- record_published records a version (new, or re-published) and its
-- publish command, whose payload is what was recorded; it returns the
-- command's id. managed.RecordPublished.
CREATE FUNCTION _rejot.record_published(claimed name, pub text, ver int, new_minor int, new_query text, new_source text,
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
        'minor', new_minor, 'owner', owner_system, 'database', owner_database, 'query', new_query, 'source', src,
        'key_columns', pg_catalog.to_jsonb(new_key_columns), 'columns', new_columns,
        'description', coalesce(new_description, ''), 'caller', claimed::text), claimed);
END $$;

-- lock_published_status locks the record of a version and returns its
-- status (no row: never published); managed.LockPublishedStatus.
CREATE FUNCTION _rejot.lock_published_status(claimed name, pub text, ver int) RETURNS TABLE (status text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    r record;
BEGIN
    PERFORM _rejot.claim(claimed);
    SELECT p.source, p.caller INTO r FROM _rejot.publications p WHERE p.publication = pub AND p.version = ver;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM _rejot.require_version_owner(claimed, pub, ver, r.source, r.caller);
    RETURN QUERY SELECT p.status FROM _rejot.publications p WHERE p.publication = pub AND p.version = ver FOR UPDATE;
END $$;

-- set_lifecycle deprecates or retires a version (new_status 'deprecated'
-- or 'retired') and records the command (deprecate or unpublish); it
-- returns the sunset as text. Retirement is permanent.
-- managed.SetLifecycle.
CREATE FUNCTION _rejot.set_lifecycle(claimed name, pub text, ver int, new_status text, new_sunset date, new_note text)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    cmd_kind text := CASE new_status WHEN 'retired' THEN 'unpublish' WHEN 'deprecated' THEN 'deprecate' END;
    cmd_payload jsonb;
BEGIN
    PERFORM _rejot.claim(claimed);
    IF cmd_kind IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = pg_catalog.format('invalid status %L: a version is deprecated or retired', new_status);
    END IF;
    SELECT p.source, p.caller INTO r FROM _rejot.publications p WHERE p.publication = pub AND p.version = ver;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_object',
            MESSAGE = pg_catalog.format('publication %s version %s does not exist in this system', pub, ver);
    END IF;
    PERFORM _rejot.require_version_owner(claimed, pub, ver, r.source, r.caller);
    SELECT p.status INTO r FROM _rejot.publications p WHERE p.publication = pub AND p.version = ver FOR UPDATE;
    IF r.status = 'retired' THEN
        RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = pg_catalog.format('publication %s version %s is retired', pub, ver);
    END IF;
    UPDATE _rejot.publications SET status = new_status, sunset = new_sunset, note = coalesce(new_note, ''), updated_at = now()
        WHERE publication = pub AND version = ver;
    cmd_payload := pg_catalog.jsonb_build_object('publication', pub, 'version', ver, 'status', new_status, 'caller', claimed::text);
    IF new_sunset IS NOT NULL THEN
        cmd_payload := cmd_payload || pg_catalog.jsonb_build_object('sunset', new_sunset::text);
    END IF;
    IF coalesce(new_note, '') <> '' THEN
        cmd_payload := cmd_payload || pg_catalog.jsonb_build_object('note', new_note);
    END IF;
    PERFORM _rejot.command(cmd_kind, cmd_payload, claimed);
    RETURN new_sunset::text;
END $$;

-- lock_subscription locks the subscription into target and returns it
-- (no row: not subscribed); managed.LockSubscriptionRecord.
CREATE FUNCTION _rejot.lock_subscription(claimed name, sub_target text)
RETURNS TABLE (publication text, version int, status text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    r record;
BEGIN
    PERFORM _rejot.claim(claimed);
    SELECT s.target_schema, s.target_table, s.caller INTO r FROM _rejot.subscriptions s WHERE s.target = sub_target;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM _rejot.require_target_owner(claimed, sub_target, r.target_schema, r.target_table, r.caller, 'change its subscription');
    RETURN QUERY SELECT s.publication, s.version, s.status FROM _rejot.subscriptions s WHERE s.target = sub_target FOR UPDATE;
END $$;

-- subscription_command records a subscription's command and wakes this
-- database's subscriber (channel rejot_subscriptions,
-- managed.ChannelSubscriptions).
CREATE FUNCTION _rejot.subscription_command(cmd_kind text, sub_target text, pub text, ver int, claimed name) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_id bigint := _rejot.command(cmd_kind, pg_catalog.jsonb_build_object('target', sub_target, 'publication', pub,
        'version', ver, 'caller', claimed::text), claimed);
BEGIN
    PERFORM pg_catalog.pg_notify('rejot_subscriptions', sub_target);
    RETURN new_id;
END $$;

-- insert_subscription records a new subscription into an existing table
-- the caller owns, named exactly as resolved (sub_target is its quoted
-- schema.table), and its subscribe command; it returns the command's id.
-- managed.InsertSubscription.
CREATE FUNCTION _rejot.insert_subscription(claimed name, sub_target text, sub_schema text, sub_table text,
        pub text, ver int, sub_columns jsonb, sub_copy boolean)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel oid := _rejot.target_table(sub_schema, sub_table);
    t record;
    resolved text;
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
    IF pub IS NULL OR pub = '' OR ver IS NULL OR ver < 1 OR sub_copy IS NULL
            OR pg_catalog.jsonb_typeof(sub_columns) IS DISTINCT FROM 'array' OR pg_catalog.jsonb_array_length(sub_columns) = 0
            OR EXISTS (SELECT 1 FROM pg_catalog.jsonb_array_elements(sub_columns) AS e(c)
                WHERE pg_catalog.jsonb_typeof(e.c) IS DISTINCT FROM 'object'
                   OR pg_catalog.jsonb_typeof(e.c->'key') IS DISTINCT FROM 'boolean'
                   OR pg_catalog.jsonb_typeof(e.c->'index') IS DISTINCT FROM 'number'
                   OR (e.c->>'index') !~ '^[0-9]{1,9}$'
                   OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = rel AND a.attnum > 0
                        AND NOT a.attisdropped AND a.attname::text = e.c->>'name')) THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = pg_catalog.format('invalid subscription into %s: its columns must be columns of the table', resolved);
    END IF;
    INSERT INTO _rejot.subscriptions (target, target_schema, target_table, publication, version, columns, copy, caller)
        VALUES (resolved, t.nspname, t.relname, pub, ver, sub_columns, sub_copy, claimed);
    RETURN _rejot.subscription_command('subscribe', resolved, pub, ver, claimed);
END $$;

-- subscription_of returns the subscription into target once claimed may
-- change it (action, for the refusal: "unsubscribe it"); there is none:
-- undefined_object.
CREATE FUNCTION _rejot.subscription_of(claimed name, sub_target text, action text) RETURNS _rejot.subscriptions
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s _rejot.subscriptions;
BEGIN
    PERFORM _rejot.claim(claimed);
    SELECT * INTO s FROM _rejot.subscriptions WHERE target = sub_target;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_object',
            MESSAGE = pg_catalog.format('table %s is not subscribed to anything', sub_target);
    END IF;
    PERFORM _rejot.require_target_owner(claimed, sub_target, s.target_schema, s.target_table, s.caller, action);
    RETURN s;
END $$;

-- delete_subscription removes the subscription into target and records
-- the unsubscribe command; managed.DeleteSubscription.
CREATE FUNCTION _rejot.delete_subscription(claimed name, sub_target text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r _rejot.subscriptions := _rejot.subscription_of(claimed, sub_target, 'unsubscribe it');
BEGIN
    DELETE FROM _rejot.subscriptions WHERE target = sub_target;
    RETURN _rejot.subscription_command('unsubscribe', sub_target, r.publication, r.version, claimed);
END $$;

-- resync_subscription starts the subscription into target over (a new
-- generation, copying again) and records the resync command;
-- managed.ResyncSubscription.
CREATE FUNCTION _rejot.resync_subscription(claimed name, sub_target text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r _rejot.subscriptions := _rejot.subscription_of(claimed, sub_target, 'resync it');
BEGIN
    UPDATE _rejot.subscriptions SET status = 'copying', position = NULL, copied_rows = 0,
        generation = generation + 1, error = NULL, updated_at = now() WHERE target = sub_target;
    RETURN _rejot.subscription_command('resync', sub_target, r.publication, r.version, claimed);
END $$;

-- Only the intent functions are anyone's to call; the helpers run inside
-- them, as the sidecar's role.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA _rejot FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    _rejot.lock_published(name, text, int),
    _rejot.record_published(name, text, int, int, text, text, text[], jsonb, text, text, text),
    _rejot.lock_published_status(name, text, int),
    _rejot.set_lifecycle(name, text, int, text, date, text),
    _rejot.lock_subscription(name, text),
    _rejot.insert_subscription(name, text, text, text, text, int, jsonb, boolean),
    _rejot.delete_subscription(name, text),
    _rejot.resync_subscription(name, text)
TO PUBLIC;
