-- A mapped subscription's code must not reach the sidecar's role by the
-- two ways 012 left open (docs/security.md, "Mapped subscriptions").
--
-- The call's own expression. The sidecar calls pg_temp.rejot_map_…(text,
-- …) RETURNS void; code run as the role may drop that function and make
-- another of the same name, still its own and SECURITY DEFINER, whose
-- arguments are of a domain of its own (whose CHECK then runs in the
-- sidecar's statement, as the sidecar, when the text is coerced to it),
-- have defaults (evaluated in the caller) or are reached through an
-- implicit cast of its own. check_mapped now also holds the function to
-- the one signature the sidecar made: arguments all pg_catalog.text, no
-- defaults, not variadic, one pg_catalog.void result, a plain function.
CREATE OR REPLACE FUNCTION _rejot.check_mapped(fn text, role oid) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF (SELECT pg_catalog.count(*) FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = pg_catalog.pg_my_temp_schema() AND p.proname = fn) <> 1
       OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = pg_catalog.pg_my_temp_schema() AND p.proname = fn AND p.prosecdef AND p.proowner = role
          AND p.prokind = 'f' AND NOT p.proretset AND p.prorettype = 'pg_catalog.void'::pg_catalog.regtype
          AND p.provariadic = 0 AND p.pronargdefaults = 0
          AND p.proargtypes::pg_catalog.oid[] OPERATOR(pg_catalog.<@) ARRAY['pg_catalog.text'::pg_catalog.regtype::pg_catalog.oid]) THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = pg_catalog.format('the function of a mapped subscription (%s) was changed while it ran; the sidecar makes it again', fn),
            HINT = 'A mapped subscription''s statements must not create or change functions in pg_temp.';
    END IF;
END $$;
REVOKE ALL ON FUNCTION _rejot.check_mapped(text, oid) FROM PUBLIC;

-- The commit. Deferred trigger events are fired at COMMIT by whoever is
-- the current user then: the sidecar's role, not the role whose statement
-- queued them inside its SECURITY DEFINER function. Those that can run
-- code of a role are a deferrable constraint trigger (CREATE CONSTRAINT
-- TRIGGER … DEFERRABLE) and a deferrable exclusion constraint (its
-- recheck evaluates the index's expressions). A deferrable foreign key
-- (its checks run as the tables' owners, with Postgres's own code) and a
-- deferrable unique or primary key (plain columns, built-in comparisons)
-- cannot. check_mapped_commit, sent after each statement that ran a
-- mapped subscription's code (and the session's reset), before the commit,
-- refuses (42501) while any of the others exists on a table that is not
-- owned by a superuser or the sidecar's role: the transaction then rolls
-- back, and nothing queued is ever fired. Whether one was queued cannot
-- be known, so their mere presence is refused; they are read after the
-- statement, so one the statement made itself is seen (and the event of
-- one it dropped again is not fired: Postgres skips it).
CREATE FUNCTION _rejot.check_mapped_commit() RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    why text;
BEGIN
    SELECT pg_catalog.string_agg(pg_catalog.format('%s %I on %s',
            CASE WHEN k.contype = 'x' THEN 'exclusion constraint' ELSE 'constraint trigger' END,
            COALESCE(k.conname, t.tgname), t.tgrelid::pg_catalog.regclass), ', ')
        INTO why
        FROM pg_catalog.pg_trigger t
        JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
        JOIN pg_catalog.pg_roles o ON o.oid = c.relowner
        LEFT JOIN pg_catalog.pg_constraint k ON k.oid = t.tgconstraint
        WHERE t.tgdeferrable AND NOT o.rolsuper AND o.rolname <> current_user
          AND NOT (t.tgisinternal AND k.contype IN ('f', 'u', 'p'));
    IF why IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = pg_catalog.format('the sidecar will not commit a mapped subscription''s statements while this database has deferrable code its commit would run with the sidecar''s role: %s', why),
            HINT = 'Make them NOT DEFERRABLE (a constraint trigger, or an exclusion constraint, fires then at the end of each statement, as the role that subscribed).';
    END IF;
END $$;
REVOKE ALL ON FUNCTION _rejot.check_mapped_commit() FROM PUBLIC;

-- Acting for a role. claim accepted any role session_user is a MEMBER of;
-- from Postgres 16 a member may be granted a role WITH SET FALSE (and
-- INHERIT FALSE), which lets it neither become the role nor use its
-- privileges, yet pg_has_role(…, 'MEMBER') is true. A mapped subscription
-- recorded for such a role (by calling _rejot.insert_mapped_subscription
-- directly) would have the sidecar run the member's statements as the
-- role. There claim takes what SET ROLE takes: the SET option (a
-- superuser, or the role itself, has it). Before 16 membership is it.
CREATE OR REPLACE FUNCTION _rejot.claim(claimed name) RETURNS name
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF claimed IS NULL OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = claimed)
            OR NOT (CASE WHEN pg_catalog.current_setting('server_version_num')::int >= 160000
                THEN pg_catalog.pg_has_role(session_user, claimed, 'SET')
                ELSE pg_catalog.pg_has_role(session_user, claimed, 'MEMBER') END) THEN
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
