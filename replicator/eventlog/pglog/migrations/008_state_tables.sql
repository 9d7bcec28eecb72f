-- The compacted state of each stream moves to a table of its own,
-- rejot_log.state_<stream id>, with one text column per value (v0, v1, …)
-- and the public key's values as its primary key: a first state is
-- copied in as plain columns and its key indexed once at the end, apply
-- and subscribers read columns rather than parsing JSON, and each
-- stream's index holds only its own keys. streams.state_columns and
-- streams.state_key say how the table is laid out (NULL: no state yet).
ALTER TABLE rejot_log.streams
    ADD COLUMN state_columns int,
    ADD COLUMN state_key int[];

-- Carry over what the shared table holds. The key's positions are in the
-- stream's recorded definition (…/[0 2]); a stream whose definition does
-- not say them is filled again by its owner (its definition is cleared).
DO $$
DECLARE
    s     record;
    n     int;
    key   int[];
    cols  text;
    vals  text;
BEGIN
    FOR s IN SELECT id, definition FROM rejot_log.streams ORDER BY id LOOP
        SELECT max(jsonb_array_length(st.row)) INTO n FROM rejot_log.state st WHERE st.stream = s.id;
        IF n IS NULL THEN
            CONTINUE; -- an empty state: the next append lays the table out
        END IF;
        key := string_to_array((regexp_match(coalesce(s.definition, ''), '/\[([0-9 ]+)\]$'))[1], ' ')::int[];
        IF key IS NULL OR EXISTS (SELECT 1 FROM unnest(key) k WHERE k >= n) THEN
            UPDATE rejot_log.streams SET definition = NULL WHERE id = s.id;
            CONTINUE;
        END IF;
        SELECT string_agg(format('v%s text COLLATE "C"', i), ', ' ORDER BY i),
               string_agg(format('st.row->>%s', i), ', ' ORDER BY i)
          INTO cols, vals FROM generate_series(0, n - 1) AS i;
        EXECUTE format('CREATE TABLE rejot_log.state_%s (%s)', s.id, cols);
        EXECUTE format('INSERT INTO rejot_log.state_%s SELECT %s FROM rejot_log.state st WHERE st.stream = %s', s.id, vals, s.id);
        EXECUTE format('ALTER TABLE rejot_log.state_%s ADD PRIMARY KEY (%s)', s.id,
            (SELECT string_agg(format('v%s', k), ', ' ORDER BY o) FROM unnest(key) WITH ORDINALITY AS u(k, o)));
        UPDATE rejot_log.streams SET state_columns = n, state_key = key WHERE id = s.id;
    END LOOP;
END
$$;

DROP TABLE rejot_log.state;

-- The state is compacted in bulk, not on every append: appends only add
-- to the change log, and rejot_log.compact folds the changes after the
-- position a stream's state is at into it — before a subscriber copies
-- the state, before changes are pruned, and periodically. First states
-- write the state directly. Compactions and first states of a stream take
-- the same advisory lock (see compactLock in pglog.go), so neither sees
-- the other half done.
CREATE TABLE rejot_log.compactions (
    stream   int PRIMARY KEY,
    position bigint NOT NULL   -- the state holds every change up to here
);
INSERT INTO rejot_log.compactions (stream, position) SELECT id, head FROM rejot_log.streams;

CREATE FUNCTION rejot_log.compact(stream_id int) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    s        record;
    done     bigint;
    upto     bigint;
    cut      bigint;
    keyed    text;
    matched  text;
    cols     text;
    vals     text;
    sets     text;
BEGIN
    PERFORM pg_advisory_xact_lock(1919251314, stream_id);
    SELECT st.head, st.state_columns, st.state_key INTO s FROM rejot_log.streams st WHERE st.id = stream_id;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    SELECT c.position INTO done FROM rejot_log.compactions c WHERE c.stream = stream_id;
    done := coalesce(done, 0);
    -- Every change up to the committed head is committed: positions are
    -- taken under the stream's row lock.
    upto := s.head;
    IF upto > done AND s.state_columns IS NOT NULL THEN
        SELECT max(c.position) INTO cut FROM rejot_log.changes c
         WHERE c.stream = stream_id AND c.position > done AND c.position <= upto AND c.op = 't';
        IF cut IS NOT NULL THEN
            EXECUTE format('DELETE FROM rejot_log.state_%s', stream_id);
            done := cut;
        END IF;
        -- A first state copied in is indexed by the first compaction that
        -- has changes to fold in: in one sort, and not before a copy.
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index
                        WHERE indrelid = format('rejot_log.state_%s', stream_id)::regclass AND indisprimary) THEN
            EXECUTE format('ALTER TABLE rejot_log.state_%s ADD PRIMARY KEY (%s)', stream_id,
                (SELECT string_agg(format('v%s', k), ', ' ORDER BY o) FROM unnest(s.state_key) WITH ORDINALITY AS u(k, o)));
        END IF;
        SELECT string_agg(format('v%s', k), ', ' ORDER BY o),
               string_agg(format('s.v%s = l.key::jsonb->>%s', k, o - 1), ' AND ' ORDER BY o)
          INTO keyed, matched FROM unnest(s.state_key) WITH ORDINALITY AS u(k, o);
        SELECT string_agg(format('v%s', i), ', ' ORDER BY i),
               string_agg(format('l.row::jsonb->>%s', i), ', ' ORDER BY i),
               string_agg(format('v%s = EXCLUDED.v%s', i, i), ', ' ORDER BY i) FILTER (WHERE NOT i = ANY (s.state_key))
          INTO cols, vals, sets FROM generate_series(0, s.state_columns - 1) AS i;
        EXECUTE format($q$
            WITH l AS (
                SELECT DISTINCT ON (c.key) c.key, c.op, c.row FROM rejot_log.changes c
                 WHERE c.stream = %1$s AND c.position > %2$s AND c.position <= %3$s
                 ORDER BY c.key, c.position DESC),
            gone AS (
                DELETE FROM rejot_log.state_%1$s s USING l WHERE l.op = 'd' AND %4$s)
            INSERT INTO rejot_log.state_%1$s (%5$s) SELECT %6$s FROM l WHERE l.op = 'u'
            ON CONFLICT (%7$s) DO %8$s$q$,
            stream_id, done, upto, matched, cols, vals, keyed,
            CASE WHEN sets IS NULL THEN 'NOTHING' ELSE 'UPDATE SET ' || sets END);
    END IF;
    done := greatest(upto, coalesce((SELECT c.position FROM rejot_log.compactions c WHERE c.stream = stream_id), 0));
    INSERT INTO rejot_log.compactions (stream, position) VALUES (stream_id, done)
        ON CONFLICT (stream) DO UPDATE SET position = EXCLUDED.position;
    RETURN done;
END
$$;

-- A stream's compacted state as arrays of text values, for tools and
-- tests: SELECT * FROM rejot_log.state_rows('orders', 1). It compacts
-- the stream first.
CREATE FUNCTION rejot_log.state_rows(publication text, version int) RETURNS SETOF text[]
LANGUAGE plpgsql AS $$
DECLARE
    s record;
BEGIN
    SELECT st.id, st.state_columns, st.state_key INTO s
      FROM rejot_log.streams st WHERE st.publication = $1 AND st.version = $2;
    IF s.state_columns IS NULL THEN
        RETURN;
    END IF;
    PERFORM rejot_log.compact(s.id);
    RETURN QUERY EXECUTE format('SELECT ARRAY[%s]::text[] FROM rejot_log.state_%s ORDER BY %s',
        (SELECT string_agg(format('v%s', i), ', ' ORDER BY i) FROM generate_series(0, s.state_columns - 1) AS i),
        s.id,
        (SELECT string_agg(format('v%s', k), ', ' ORDER BY o) FROM unnest(s.state_key) WITH ORDINALITY AS u(k, o)));
END
$$;
