-- Base states of join versions (eventlog.BaseRow): per stream and table of
-- its query, the columns the version reads of every source row, by the
-- row's key; and per row the rows of joined tables it meets (refs), so
-- that the rows meeting a changed row are an indexed lookup. base_at is,
-- per stream and owner system, the commit LSN of the last source
-- transaction applied: a replay after a crash skips what it has.
-- Hidden from subscribers: the read role has no grant on them.
CREATE TABLE rejot_log.base (
    stream int NOT NULL,
    tab    int NOT NULL,
    key    text NOT NULL,
    row    text NOT NULL, -- eventlog.KeyString of the values
    PRIMARY KEY (stream, tab, key)
);

CREATE TABLE rejot_log.base_refs (
    stream int NOT NULL,
    tab    int NOT NULL,
    child  int NOT NULL,
    ref    text NOT NULL,
    key    text NOT NULL,
    PRIMARY KEY (stream, tab, child, ref, key)
);
CREATE INDEX base_refs_row ON rejot_log.base_refs (stream, tab, key);

CREATE TABLE rejot_log.base_at (
    stream int NOT NULL,
    system text NOT NULL,
    lsn    pg_lsn NOT NULL,
    PRIMARY KEY (stream, system)
);
