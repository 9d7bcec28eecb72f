-- The checks that every subscription report, command and grant makes run
-- as PL/pgSQL, with the same bodies as in 006: a SQL function with a SET
-- clause is never inlined and is planned again at every call, where
-- PL/pgSQL keeps its plans for the session (a sidecar's connections are
-- long-lived). Sixteen subscribers' reports each second spent most of
-- their time planning these (BENCHMARKS.md, fan-out run 7).
CREATE OR REPLACE FUNCTION rejot_catalog.access_refusal(pub text, ver int, sys text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (SELECT pg_catalog.format('system %s has no grant for publication %s version %s: ask its owner, system %s, to grant it'
                                     || ' (CALL rejot.grant(%L, %s, %L) through that system''s sidecar)',
                                     sys, pub, ver, p.owner, pub, ver, sys)
              FROM rejot_catalog.publications p
             WHERE p.publication = pub AND p.version = ver AND p.restricted AND p.owner IS DISTINCT FROM sys
               AND NOT EXISTS (SELECT 1 FROM rejot_catalog.grants g
                                WHERE g.publication = pub AND g.version = ver AND g.system = sys));
END $$;

CREATE OR REPLACE FUNCTION rejot_catalog.may_act_as(role text) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = role)
                THEN pg_catalog.pg_has_role(current_user, role::name, 'MEMBER')
                ELSE (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) END;
END $$;

CREATE OR REPLACE FUNCTION rejot_catalog.may_act_for(sys text) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN coalesce((SELECT s.catalog_role IS NULL OR rejot_catalog.may_act_as(s.catalog_role)
                       FROM rejot_catalog.systems s WHERE s.system = sys), false);
END $$;
