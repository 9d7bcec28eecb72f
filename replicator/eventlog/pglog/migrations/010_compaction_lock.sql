-- Compactions and first states of a version take a row lock on its row
-- of rejot_log.compactions, no longer an advisory lock: any role that can
-- connect to the log's database can take any advisory lock, and so could
-- stop a version's compactions, and every append of its first state,
-- for as long as it liked. Only the log's own roles can lock its rows.
-- The row is made, at position 0 (what a missing row meant), when a
-- version has none yet. compact is as in 008, but for its first lines.
CREATE OR REPLACE FUNCTION rejot_log.compact(stream_id int) RETURNS bigint
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
    INSERT INTO rejot_log.compactions (stream, position)
        SELECT stream_id, 0 WHERE EXISTS (SELECT 1 FROM rejot_log.streams st WHERE st.id = stream_id) ON CONFLICT DO NOTHING;
    PERFORM 1 FROM rejot_log.compactions c WHERE c.stream = stream_id FOR UPDATE;
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
