-- The apply writes a subscription's target with the sidecar's role. Code
-- the table's owner attached to it runs then as the invoking role, which is
-- the sidecar's: triggers, rules, defaults and generated columns, CHECK
-- constraints, index expressions, row-level security policies, the checks
-- and casts of its column types, and whatever a delete cascades into. A
-- role with only LOGIN owning a target (rejot.subscribe creates it as the
-- caller) made itself superuser with a trigger. Postgres has no way to run
-- a statement as another role that the code it runs cannot undo, short of
-- a SECURITY DEFINER function, and in the sidecar's session even that code
-- would still act with session_user = the sidecar (_rejot.claim trusts
-- it), could DISCARD TEMP and replace the sidecar's temporary functions,
-- and could leave settings behind for the sidecar's next statement. So the
-- apply never runs such code: check_target, called in every transaction
-- that writes a target before it writes, refuses a target that carries any
-- of it, unless its owner is the sidecar's role or a superuser (whose code
-- it is their own business to run). The SHARE ROW EXCLUSIVE lock it takes
-- first on such a target (and its partitions) holds off every DDL that
-- could add code until the transaction ends: triggers, rules, indexes,
-- constraints, defaults, policies, new partitions or children. Functions
-- and types are not locked, which is why code is refused whoever wrote it,
-- not inspected. written are the columns the apply writes (defaults of
-- others are evaluated).
CREATE FUNCTION _rejot.check_target(rel oid, written text[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    owner_oid oid;
    quoted text;
    why text;
BEGIN
    SELECT c.relowner, pg_catalog.format('%I.%I', n.nspname, c.relname) INTO owner_oid, quoted
        FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = rel;
    IF owner_oid IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_table', MESSAGE = pg_catalog.format('the target table %s is gone', rel);
    END IF;
    -- ROW EXCLUSIVE (what the writes take) keeps the owner from changing.
    EXECUTE pg_catalog.format('LOCK TABLE %s IN ROW EXCLUSIVE MODE', quoted);
    IF owner_oid = (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = current_user)
            OR (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.oid = owner_oid) THEN
        RETURN;
    END IF;
    EXECUTE pg_catalog.format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', quoted);
    WITH RECURSIVE tree(oid) AS (
        SELECT rel UNION SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.oid
    ), found(what) AS (
        SELECT pg_catalog.format('%s is not a table', c.oid::regclass) FROM tree JOIN pg_catalog.pg_class c ON c.oid = tree.oid
            WHERE c.relkind NOT IN ('r', 'p')
        UNION ALL SELECT pg_catalog.format('%s has inheritance children', c.oid::regclass)
            FROM pg_catalog.pg_class c WHERE c.oid = rel AND c.relkind = 'r' AND EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i WHERE i.inhparent = rel)
        UNION ALL SELECT pg_catalog.format('trigger %I on %s', t.tgname, t.tgrelid::regclass)
            FROM pg_catalog.pg_trigger t JOIN tree ON t.tgrelid = tree.oid WHERE NOT t.tgisinternal
        UNION ALL SELECT pg_catalog.format('rule %I on %s', r.rulename, r.ev_class::regclass)
            FROM pg_catalog.pg_rewrite r JOIN tree ON r.ev_class = tree.oid
        UNION ALL SELECT pg_catalog.format('row-level security on %s', c.oid::regclass)
            FROM tree JOIN pg_catalog.pg_class c ON c.oid = tree.oid WHERE c.relrowsecurity
            AND NOT (SELECT r.rolsuper OR r.rolbypassrls FROM pg_catalog.pg_roles r WHERE r.rolname = current_user)
        UNION ALL SELECT pg_catalog.format('constraint %I on %s', k.conname, k.conrelid::regclass)
            FROM pg_catalog.pg_constraint k JOIN tree ON k.conrelid = tree.oid WHERE k.contype IN ('c', 't', 'x')
        UNION ALL SELECT pg_catalog.format('foreign key %I of %s, which refers to it', k.conname, k.conrelid::regclass)
            FROM pg_catalog.pg_constraint k JOIN tree ON k.confrelid = tree.oid WHERE k.contype = 'f'
        UNION ALL SELECT pg_catalog.format('index %s has expressions or a predicate', x.indexrelid::regclass)
            FROM pg_catalog.pg_index x JOIN tree ON x.indrelid = tree.oid WHERE x.indexprs IS NOT NULL OR x.indpred IS NOT NULL
        UNION ALL SELECT pg_catalog.format('column %I of %s has a default or is generated', a.attname, a.attrelid::regclass)
            FROM pg_catalog.pg_attribute a JOIN tree ON a.attrelid = tree.oid
            WHERE a.attnum > 0 AND NOT a.attisdropped AND (a.attgenerated <> '' OR a.atthasdef AND a.attname::text <> ALL (written))
        UNION ALL SELECT pg_catalog.format('column %I of %s is of type %s, not owned by the sidecar''s role or a superuser',
                a.attname, a.attrelid::regclass, pg_catalog.format_type(a.atttypid, NULL))
            FROM pg_catalog.pg_attribute a JOIN tree ON a.attrelid = tree.oid JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid
            WHERE a.attnum > 0 AND NOT a.attisdropped AND EXISTS (
                SELECT 1 FROM pg_catalog.pg_type u JOIN pg_catalog.pg_roles o ON o.oid = u.typowner
                WHERE u.oid IN (ty.oid, ty.typelem, ty.typbasetype) AND NOT o.rolsuper AND o.rolname <> current_user)
    )
    SELECT pg_catalog.string_agg(what, ', ') INTO why FROM found;
    IF why IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = pg_catalog.format('the sidecar will not write %s: it would run code of its owner %s with the sidecar''s role (%s)',
                quoted, pg_catalog.pg_get_userbyid(owner_oid), why),
            HINT = 'Drop them from the table, or have the table owned by the sidecar''s role; keep triggers and the like on another table, fed from this one by its owner.';
    END IF;
END $$;

REVOKE ALL ON FUNCTION _rejot.check_target(oid, text[]) FROM PUBLIC;
