-- The event log in Postgres: per publication version (stream) an ordered
-- change log with a monotonic position, and the compacted state (the
-- latest row per key), updated in the same transaction.
CREATE SCHEMA IF NOT EXISTS rejot_log;

CREATE TABLE rejot_log.streams (
    id          serial PRIMARY KEY,
    publication text NOT NULL,
    version     int NOT NULL,
    head        bigint NOT NULL DEFAULT 0,  -- position of the last change
    UNIQUE (publication, version)
);

-- One row per appended (source transaction, stream): appends are idempotent.
CREATE TABLE rejot_log.groups (
    stream         int NOT NULL REFERENCES rejot_log.streams,
    system         text NOT NULL,
    commit_lsn     pg_lsn NOT NULL,
    commit_time    timestamptz NOT NULL,
    first_position bigint NOT NULL,
    last_position  bigint NOT NULL,
    PRIMARY KEY (stream, system, commit_lsn)
);

-- Values are JSON arrays of strings (Postgres text form) or nulls: exact.
CREATE TABLE rejot_log.changes (
    stream      int NOT NULL,
    position    bigint NOT NULL,
    commit_lsn  pg_lsn NOT NULL,
    commit_time timestamptz NOT NULL,
    op          "char" NOT NULL,
    key         jsonb NOT NULL,
    row         jsonb,
    PRIMARY KEY (stream, position)
);

CREATE TABLE rejot_log.state (
    stream   int NOT NULL,
    key      jsonb NOT NULL,
    row      jsonb NOT NULL,
    position bigint NOT NULL,
    PRIMARY KEY (stream, key)
);
