-- Keys compared as bytes, not as jsonb: half the cost of writing the
-- compacted state. The text is what jsonb prints (["1", "x"]), which is
-- how the sidecar writes keys from now on. The change log's keys and rows
-- are only ever read back whole: text, with nothing to parse on write.
ALTER TABLE rejot_log.state ALTER COLUMN key TYPE text COLLATE "C" USING key::text;
ALTER TABLE rejot_log.changes ALTER COLUMN key TYPE text USING key::text,
                              ALTER COLUMN row TYPE text USING row::text;
