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

-- A stream's compacted state as arrays of text values, for tools and
-- tests: SELECT * FROM rejot_log.state_rows('orders', 1).
CREATE FUNCTION rejot_log.state_rows(publication text, version int) RETURNS SETOF text[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    s record;
BEGIN
    SELECT st.id, st.state_columns, st.state_key INTO s
      FROM rejot_log.streams st WHERE st.publication = $1 AND st.version = $2;
    IF s.state_columns IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE format('SELECT ARRAY[%s]::text[] FROM rejot_log.state_%s ORDER BY %s',
        (SELECT string_agg(format('v%s', i), ', ' ORDER BY i) FROM generate_series(0, s.state_columns - 1) AS i),
        s.id,
        (SELECT string_agg(format('v%s', k), ', ' ORDER BY o) FROM unnest(s.state_key) WITH ORDINALITY AS u(k, o)));
END
$$;
