-- Contract-safe DDL. A published version reads columns of its table; a DDL
-- statement that drops or retypes one of them, or drops or renames the
-- table, breaks the version for every subscriber (a rename of a column
-- does not: the capture binds columns by attribute number). Such a transaction
-- is refused when it commits (2BP01, as Postgres refuses to drop a column a
-- view depends on), unless the same transaction re-published the version
-- over the new schema (which records its columns anew) or retired it.
--
-- reads is what the version reads, recorded at publish as the table's
-- catalog says it then: [{attnum, name, type, typmod}], the table by oid in
-- source_oid. NULL for versions recorded before this migration: they are
-- checked from their next re-publish on.
ALTER TABLE _rejot.publications ADD COLUMN IF NOT EXISTS source_oid oid;
ALTER TABLE _rejot.publications ADD COLUMN IF NOT EXISTS reads jsonb;

-- record_reads records the columns a version reads (names as the caller's
-- validated query references them), resolved in the catalog of its table
-- as of the caller's transaction. Only who may change the version may.
CREATE FUNCTION _rejot.record_reads(claimed name, pub text, ver int, cols text[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    rel oid;
    got jsonb;
BEGIN
    PERFORM _rejot.claim(claimed);
    SELECT p.source, p.caller INTO r FROM _rejot.publications p WHERE p.publication = pub AND p.version = ver;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_object', MESSAGE = pg_catalog.format('publication %s version %s is not recorded', pub, ver);
    END IF;
    PERFORM _rejot.require_version_owner(claimed, pub, ver, r.source, r.caller);
    rel := pg_catalog.to_regclass(r.source);
    SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('attnum', a.attnum, 'name', a.attname::text,
            'type', a.atttypid::int8, 'typmod', a.atttypmod) ORDER BY a.attnum), '[]')
        INTO got
        FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped AND a.attname::text = ANY (cols);
    IF pg_catalog.jsonb_array_length(got) <> (SELECT count(DISTINCT c) FROM pg_catalog.unnest(cols) AS c) THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_column',
            MESSAGE = pg_catalog.format('publication %s version %s reads columns %s are not all in %s', pub, ver, cols, r.source);
    END IF;
    UPDATE _rejot.publications SET source_oid = rel, reads = got WHERE publication = pub AND version = ver;
END $$;

-- broken_versions: the versions not retired whose table or read columns
-- are no longer what was recorded, each with what changed and the fix.
CREATE FUNCTION _rejot.broken_versions() RETURNS TABLE (publication text, version int, problem text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT p.publication, p.version, w.problem
    FROM _rejot.publications p
    CROSS JOIN LATERAL (
        SELECT CASE
            WHEN c.oid IS NULL THEN pg_catalog.format('its table %s is dropped', p.source)
            WHEN '"' || pg_catalog.replace(n.nspname, '"', '""') || '"."' || pg_catalog.replace(c.relname, '"', '""') || '"' <> p.source
                THEN pg_catalog.format('its table %s is renamed to %I.%I', p.source, n.nspname, c.relname)
            ELSE (SELECT pg_catalog.string_agg(CASE
                        WHEN a.attrelid IS NULL THEN pg_catalog.format('column %I is dropped', r.name)
                        ELSE pg_catalog.format('column %I changes type from %s to %s', r.name,
                            pg_catalog.format_type(r.type, r.typmod), pg_catalog.format_type(a.atttypid, a.atttypmod))
                    END, ', ' ORDER BY r.attnum)
                FROM pg_catalog.jsonb_to_recordset(p.reads) AS r(attnum int2, name text, type oid, typmod int4)
                LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = p.source_oid AND a.attnum = r.attnum AND NOT a.attisdropped
                WHERE a.attrelid IS NULL OR a.atttypid <> r.type OR a.atttypmod <> r.typmod)
        END AS problem
        FROM (SELECT 1) AS one
        LEFT JOIN pg_catalog.pg_class c ON c.oid = p.source_oid
        LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    ) AS w
    WHERE p.status <> 'retired' AND p.reads IS NOT NULL AND w.problem IS NOT NULL
$$;

-- A transaction that runs DDL through the sidecar (or, where the sidecar's
-- role is a superuser, any DDL: the event trigger below) calls
-- guard_contract before it: the first call notes which versions were
-- broken already (those are not this transaction's doing, and must not
-- keep the owner from every other DDL), and the deferred constraint
-- trigger checks at commit, when the transaction has done all it will.
CREATE TABLE _rejot.contract_checks (
    xact          xid8 PRIMARY KEY,
    broken_before text[] NOT NULL
);

CREATE FUNCTION _rejot.guard_contract() RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO _rejot.contract_checks
        SELECT pg_catalog.pg_current_xact_id(), coalesce(pg_catalog.array_agg(b.publication || '/' || b.version), '{}')
        FROM _rejot.broken_versions() AS b
    ON CONFLICT (xact) DO NOTHING
$$;

CREATE FUNCTION _rejot.check_contract() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    b record;
BEGIN
    DELETE FROM _rejot.contract_checks WHERE xact = NEW.xact;
    SELECT * INTO b FROM _rejot.broken_versions() AS v
        WHERE v.publication || '/' || v.version <> ALL (NEW.broken_before)
        ORDER BY v.publication, v.version LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'dependent_objects_still_exist',
            MESSAGE = pg_catalog.format('cannot commit: publication %s version %s depends on what this transaction changes: %s',
                b.publication, b.version, b.problem),
            DETAIL = 'Its subscribers read that version''s columns; the transaction is rolled back.',
            HINT = pg_catalog.format('In the same transaction, re-publish version %s with a query over the new schema that gives the same public columns '
                '(CALL rejot.publish(%L, %s, $$SELECT ...$$)), or publish a new version and retire this one (CALL rejot.unpublish(%L, %s, force => true)).',
                b.version, b.publication, b.version, b.publication, b.version);
    END IF;
    RETURN NULL;
END $fn$;

CREATE CONSTRAINT TRIGGER check_contract AFTER INSERT ON _rejot.contract_checks
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION _rejot.check_contract();

REVOKE ALL ON FUNCTION _rejot.record_reads(name, text, int, text[]), _rejot.broken_versions(),
    _rejot.guard_contract(), _rejot.check_contract() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION _rejot.record_reads(name, text, int, text[]), _rejot.guard_contract() TO PUBLIC;

-- DDL that does not pass through the sidecar is guarded too where the
-- sidecar's role may make event triggers (a superuser). The trigger never
-- fails a statement itself: a guard it cannot set is a warning.
CREATE FUNCTION _rejot.guard_contract_event() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM _rejot.guard_contract();
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'rejot: cannot guard published versions against this DDL: %', SQLERRM;
END $$;
GRANT EXECUTE ON FUNCTION _rejot.guard_contract_event() TO PUBLIC;

DO $$
BEGIN
    IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        CREATE EVENT TRIGGER rejot_guard_contract ON ddl_command_start
            WHEN TAG IN ('ALTER TABLE', 'DROP TABLE', 'DROP SCHEMA', 'ALTER SCHEMA', 'DROP OWNED', 'DROP TYPE', 'ALTER TYPE',
                'DROP DOMAIN', 'ALTER DOMAIN')
            EXECUTE FUNCTION _rejot.guard_contract_event();
    END IF;
END $$;
