-- Out-of-line (TOAST) values of source rows, kept so an update that leaves
-- them out of the WAL (unchanged) can be projected exactly as of its
-- transaction. Only columns a projection reads, and only variable-length
-- ones, are kept; the key is the table's replica identity.
CREATE TABLE rejot_log.kept (
    system text NOT NULL,
    source text NOT NULL,   -- schema.table
    key    jsonb NOT NULL,
    vals   jsonb NOT NULL,  -- {"column": "text value" or null}
    PRIMARY KEY (system, source, key)
);
