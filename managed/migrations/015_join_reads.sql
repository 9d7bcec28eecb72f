-- Contract-safe DDL for join projections (docs/join-projections.md). A
-- join version reads columns of every table it joins, not only of its
-- root (record_reads, migration 009, keeps the root's). The capture
-- matches a joined table's columns to the WAL by name, so for a joined
-- table a rename of a column it reads breaks the version as a drop or an
-- incompatible retype does, and so does a rename of the table.
--
-- joined_reads is what the version reads of its joined tables, recorded
-- at publish as their catalog says then:
-- [{table, oid, attnum, name, type, typmod}], table as recorded in
-- tables. NULL for a one-table version, or a join version recorded
-- before this migration (checked from its next re-publish on).
ALTER TABLE _rejot.publications ADD COLUMN IF NOT EXISTS joined_reads jsonb;

-- record_joined_reads records, for each joined table of a recorded join
-- version (reads: [{table, columns: [name, …]}], tables as the record has
-- them), the columns the caller's validated query reads, resolved in the
-- catalog as of the caller's transaction; [] for a one-table version
-- (which clears what a join version of the same number recorded). Only
-- who may change the version may.
CREATE FUNCTION _rejot.record_joined_reads(claimed name, pub text, ver int, reads jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    e record;
    rel oid;
    cols text[];
    got jsonb := '[]';
    part jsonb;
BEGIN
    PERFORM _rejot.claim(claimed);
    SELECT p.source, p.caller, p.tables INTO r FROM _rejot.publications p WHERE p.publication = pub AND p.version = ver;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_object', MESSAGE = pg_catalog.format('publication %s version %s is not recorded', pub, ver);
    END IF;
    PERFORM _rejot.require_version_owner(claimed, pub, ver, r.source, r.caller);
    IF pg_catalog.jsonb_typeof(reads) IS DISTINCT FROM 'array'
            OR pg_catalog.jsonb_array_length(reads) > 64 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = pg_catalog.format('invalid record of what publication %s version %s reads of its joined tables', pub, ver);
    END IF;
    FOR e IN SELECT x.value FROM pg_catalog.jsonb_array_elements(reads) AS x LOOP
        IF pg_catalog.jsonb_typeof(e.value -> 'table') IS DISTINCT FROM 'string' OR pg_catalog.jsonb_typeof(e.value -> 'columns') IS DISTINCT FROM 'array'
                OR NOT (e.value ->> 'table') = ANY (r.tables) THEN
            RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
                MESSAGE = pg_catalog.format('invalid record of what publication %s version %s reads of its joined tables', pub, ver);
        END IF;
        rel := pg_catalog.to_regclass(e.value ->> 'table');
        cols := ARRAY(SELECT pg_catalog.jsonb_array_elements_text(e.value -> 'columns'));
        SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('table', e.value ->> 'table', 'oid', rel::int8,
                'attnum', a.attnum, 'name', a.attname::text, 'type', a.atttypid::int8, 'typmod', a.atttypmod) ORDER BY a.attnum), '[]')
            INTO part
            FROM pg_catalog.pg_attribute a
            WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped AND a.attname::text = ANY (cols);
        IF rel IS NULL OR pg_catalog.jsonb_array_length(part) <> (SELECT count(DISTINCT c) FROM pg_catalog.unnest(cols) AS c) THEN
            RAISE EXCEPTION USING ERRCODE = 'undefined_column',
                MESSAGE = pg_catalog.format('publication %s version %s reads columns %s are not all in %s', pub, ver, cols, e.value ->> 'table');
        END IF;
        got := got || part;
    END LOOP;
    UPDATE _rejot.publications SET joined_reads = NULLIF(got, '[]'::jsonb) WHERE publication = pub AND version = ver;
END $$;

-- broken_versions, as in 009, and also the join versions whose joined
-- tables or the columns they read of them are no longer what was
-- recorded: dropped, renamed (a table or a column), or retyped.
CREATE OR REPLACE FUNCTION _rejot.broken_versions() RETURNS TABLE (publication text, version int, problem text)
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
    UNION ALL
    SELECT p.publication, p.version, j.problem
    FROM _rejot.publications p
    CROSS JOIN LATERAL (
        SELECT pg_catalog.string_agg(t.problem, ', ' ORDER BY t.tbl) AS problem
        FROM (
            SELECT r.tbl, CASE
                WHEN c.oid IS NULL THEN pg_catalog.format('its joined table %s is dropped', r.tbl)
                WHEN '"' || pg_catalog.replace(n.nspname, '"', '""') || '"."' || pg_catalog.replace(c.relname, '"', '""') || '"' <> r.tbl
                    THEN pg_catalog.format('its joined table %s is renamed to %I.%I', r.tbl, n.nspname, c.relname)
                ELSE (SELECT pg_catalog.string_agg(CASE
                            WHEN a.attrelid IS NULL THEN pg_catalog.format('column %I of %s is dropped', x.name, r.tbl)
                            WHEN a.attname::text <> x.name THEN pg_catalog.format('column %I of %s is renamed to %I', x.name, r.tbl, a.attname)
                            ELSE pg_catalog.format('column %I of %s changes type from %s to %s', x.name, r.tbl,
                                pg_catalog.format_type(x.type, x.typmod), pg_catalog.format_type(a.atttypid, a.atttypmod))
                        END, ', ' ORDER BY x.attnum)
                    FROM pg_catalog.jsonb_to_recordset(p.joined_reads) AS x("table" text, oid oid, attnum int2, name text, type oid, typmod int4)
                    LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = x.oid AND a.attnum = x.attnum AND NOT a.attisdropped
                    WHERE x."table" = r.tbl AND (a.attrelid IS NULL OR a.attname::text <> x.name OR a.atttypid <> x.type OR a.atttypmod <> x.typmod))
            END AS problem
            FROM (SELECT DISTINCT x."table" AS tbl, x.oid
                  FROM pg_catalog.jsonb_to_recordset(p.joined_reads) AS x("table" text, oid oid)) AS r
            LEFT JOIN pg_catalog.pg_class c ON c.oid = r.oid
            LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        ) AS t
        WHERE t.problem IS NOT NULL
    ) AS j
    WHERE p.status <> 'retired' AND p.joined_reads IS NOT NULL AND j.problem IS NOT NULL
$$;

REVOKE ALL ON FUNCTION _rejot.record_joined_reads(name, text, int, jsonb), _rejot.broken_versions() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION _rejot.record_joined_reads(name, text, int, jsonb) TO PUBLIC;
