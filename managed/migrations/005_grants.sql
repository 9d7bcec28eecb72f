-- Who may subscribe to a version, as its owner decides (rejot.grant and
-- rejot.revoke). The owner's record keeps it, and each change is sent to
-- the catalog, which judges subscriptions by it, as a grant or revoke
-- command carrying the whole list. A version is open to every system
-- until its first grant; from then on only its granted systems may
-- subscribe (none, once the last is revoked) until it is granted to '*'.
ALTER TABLE _rejot.publications ADD COLUMN IF NOT EXISTS restricted boolean NOT NULL DEFAULT false;

CREATE TABLE IF NOT EXISTS _rejot.grants (
    publication text NOT NULL,
    version     int NOT NULL,
    system      text NOT NULL,
    caller      text NOT NULL,           -- the role that granted it
    granted_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (publication, version, system),
    FOREIGN KEY (publication, version) REFERENCES _rejot.publications ON DELETE CASCADE
);
REVOKE ALL ON _rejot.grants FROM PUBLIC;

-- set_access grants (grant_it) or revokes system sys access to a version
-- and records the command; it returns who may subscribe afterwards.
-- Changing it takes what changing the version takes: membership in the
-- owner of its table and in the role that recorded it.
-- managed.SetAccess.
CREATE FUNCTION _rejot.set_access(claimed name, pub text, ver int, sys text, grant_it boolean)
RETURNS TABLE (restricted boolean, granted text[])
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    r record;
    now_restricted boolean;
    now_granted text[];
BEGIN
    PERFORM _rejot.claim(claimed);
    SELECT p.source, p.caller INTO r FROM _rejot.publications p WHERE p.publication = pub AND p.version = ver;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_object',
            MESSAGE = pg_catalog.format('publication %s version %s does not exist in this system', pub, ver);
    END IF;
    PERFORM _rejot.require_version_owner(claimed, pub, ver, r.source, r.caller);
    IF sys IS NULL OR sys = '' OR pg_catalog.octet_length(sys) > 200 OR grant_it IS NULL OR (sys = '*' AND NOT grant_it) THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = pg_catalog.format('invalid system %L: name a system, or grant to ''*'' for every system', sys);
    END IF;
    SELECT p.status, p.restricted INTO r FROM _rejot.publications p WHERE p.publication = pub AND p.version = ver FOR UPDATE;
    IF r.status = 'retired' THEN
        RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = pg_catalog.format('publication %s version %s is retired', pub, ver);
    END IF;
    IF NOT grant_it AND NOT r.restricted THEN
        RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = pg_catalog.format('publication %s version %s is open to every system: there is no grant to revoke', pub, ver),
            HINT = 'Grant it to the systems that may subscribe (rejot.grant): from the first grant on, only they may.';
    END IF;
    IF sys = '*' THEN
        DELETE FROM _rejot.grants g WHERE g.publication = pub AND g.version = ver;
        now_restricted := false;
    ELSIF grant_it THEN
        INSERT INTO _rejot.grants (publication, version, system, caller) VALUES (pub, ver, sys, claimed)
            ON CONFLICT (publication, version, system) DO NOTHING;
        now_restricted := true;
    ELSE
        DELETE FROM _rejot.grants g WHERE g.publication = pub AND g.version = ver AND g.system = sys;
        now_restricted := true;
    END IF;
    UPDATE _rejot.publications p SET restricted = now_restricted, updated_at = now() WHERE p.publication = pub AND p.version = ver;
    now_granted := ARRAY(SELECT g.system FROM _rejot.grants g WHERE g.publication = pub AND g.version = ver ORDER BY g.system);
    PERFORM _rejot.command(CASE WHEN grant_it THEN 'grant' ELSE 'revoke' END,
        pg_catalog.jsonb_build_object('publication', pub, 'version', ver, 'system', sys, 'restricted', now_restricted,
            'granted', pg_catalog.to_jsonb(now_granted), 'caller', claimed::text), claimed);
    RETURN QUERY SELECT now_restricted, now_granted;
END $$;

REVOKE ALL ON FUNCTION _rejot.set_access(name, text, int, text, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION _rejot.set_access(name, text, int, text, boolean) TO PUBLIC;
