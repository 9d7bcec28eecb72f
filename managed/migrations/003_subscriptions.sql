-- The subscriptions of this database, and how far each has applied the
-- event log: `position` is updated in the same transaction as the rows it
-- applied, which is what makes applying exactly-once.
CREATE TABLE IF NOT EXISTS _rejot.subscriptions (
    target          text PRIMARY KEY,        -- schema.table, as identifiers quoted
    target_schema   text NOT NULL,
    target_table    text NOT NULL,
    publication     text NOT NULL,
    version         int NOT NULL,
    -- the subscribed columns: [{"name", "type", "key", "index"}], index
    -- being the column's place in the version's rows
    columns         jsonb NOT NULL,
    copy            boolean NOT NULL DEFAULT true,
    status          text NOT NULL DEFAULT 'copying'
                    CHECK (status IN ('copying', 'streaming', 'stopped', 'failed')),
    position        bigint,                  -- NULL until the first copy is in
    generation      int NOT NULL DEFAULT 1,  -- bumped by resync
    copied_rows     bigint NOT NULL DEFAULT 0,
    last_applied_at timestamptz,
    last_commit_at  timestamptz,             -- source commit time of the last applied change
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

GRANT SELECT, INSERT, UPDATE, DELETE ON _rejot.subscriptions TO PUBLIC;
