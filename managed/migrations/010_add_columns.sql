-- A subscription gains the columns a newer minor of its version added when
-- its target's owner subscribes it again (rejot.subscribe on the same
-- target, publication and version). The call records the columns to add,
-- marked "adding", and starts a new generation of the subscription that
-- keeps its position; the apply then adds them to the table and fills
-- them as of that position, in one transaction with the position, and
-- clears the marks (managed.ColumnsAdded). The apply alters the table as
-- the sidecar's role, so that role must be able to (own the table, by
-- membership): refused here otherwise, while the caller can still be
-- told what to grant.
--
-- add_subscribed_columns(claimed, target, wanted) adds to the
-- subscription into target the columns of wanted ([{"name", "type",
-- "key", "index"}]) it does not have yet, and returns their names (none:
-- nothing changed). managed.AddSubscribedColumns.
CREATE FUNCTION _rejot.add_subscribed_columns(claimed name, sub_target text, wanted jsonb) RETURNS text[]
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s _rejot.subscriptions := _rejot.subscription_of(claimed, sub_target, 'subscribe into it');
    rel oid := _rejot.target_table(s.target_schema, s.target_table);
    added jsonb;
    names text[];
BEGIN
    IF rel IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_table',
            MESSAGE = pg_catalog.format('the target table %s is gone', sub_target),
            HINT = pg_catalog.format('Unsubscribe it (CALL rejot.unsubscribe(%L)) and subscribe again.', sub_target);
    END IF;
    IF pg_catalog.jsonb_typeof(wanted) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value', MESSAGE = 'the columns to add must be an array';
    END IF;
    SELECT pg_catalog.jsonb_agg(e.c || '{"adding": true}'::jsonb ORDER BY (e.c->>'index')::int), pg_catalog.array_agg(e.c->>'name')
        INTO added, names
        FROM pg_catalog.jsonb_array_elements(wanted) AS e(c)
        WHERE pg_catalog.jsonb_typeof(e.c) = 'object'
          AND NOT EXISTS (SELECT 1 FROM pg_catalog.jsonb_array_elements(s.columns) AS o(c) WHERE o.c->>'name' = e.c->>'name');
    IF added IS NULL THEN
        RETURN '{}';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.jsonb_array_elements(added) AS e(c)
            WHERE pg_catalog.jsonb_typeof(e.c->'name') IS DISTINCT FROM 'string' OR e.c->>'name' = ''
               OR pg_catalog.jsonb_typeof(e.c->'type') IS DISTINCT FROM 'string'
               OR e.c->'key' IS DISTINCT FROM 'false'::jsonb
               OR pg_catalog.jsonb_typeof(e.c->'index') IS DISTINCT FROM 'number' OR (e.c->>'index') !~ '^[0-9]{1,9}$'
               OR EXISTS (SELECT 1 FROM pg_catalog.jsonb_array_elements(s.columns) AS o(c) WHERE o.c->'index' = e.c->'index')
               OR EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = rel AND a.attnum > 0
                    AND NOT a.attisdropped AND a.attname::text = e.c->>'name'))
            OR (SELECT pg_catalog.count(DISTINCT e.c->>'name') FROM pg_catalog.jsonb_array_elements(added) AS e(c))
                <> pg_catalog.jsonb_array_length(added) THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = pg_catalog.format('invalid columns to add to %s: each must be a new column of the version, not in the table yet, and not of its key', sub_target);
    END IF;
    IF NOT pg_catalog.pg_has_role(current_user, (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = rel), 'USAGE') THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = pg_catalog.format('the sidecar''s role %I cannot add columns to %s, which role %I owns',
                current_user, sub_target, (SELECT pg_catalog.pg_get_userbyid(c.relowner) FROM pg_catalog.pg_class c WHERE c.oid = rel)),
            HINT = pg_catalog.format('Have an administrator grant it (GRANT %I TO %I), or subscribe into a new table.',
                (SELECT pg_catalog.pg_get_userbyid(c.relowner) FROM pg_catalog.pg_class c WHERE c.oid = rel), current_user);
    END IF;
    UPDATE _rejot.subscriptions SET columns = s.columns || added, generation = generation + 1, error = NULL, updated_at = now()
        WHERE target = sub_target;
    PERFORM pg_catalog.pg_notify('rejot_subscriptions', sub_target);
    RETURN names;
END $$;

REVOKE ALL ON FUNCTION _rejot.add_subscribed_columns(name, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION _rejot.add_subscribed_columns(name, text, jsonb) TO PUBLIC;
