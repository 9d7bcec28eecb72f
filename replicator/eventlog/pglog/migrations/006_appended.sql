-- The last commit LSN each system appended to each stream: appends come
-- in commit order, so a group past it is new without looking it up.
CREATE TABLE rejot_log.appended (
    stream int NOT NULL,
    system text NOT NULL,
    lsn    pg_lsn NOT NULL,
    PRIMARY KEY (stream, system)
);
INSERT INTO rejot_log.appended (stream, system, lsn)
    SELECT stream, system, max(commit_lsn) FROM rejot_log.groups GROUP BY stream, system;
