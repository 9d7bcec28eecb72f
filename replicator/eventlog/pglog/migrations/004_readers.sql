-- Subscribers read whole groups in order.
CREATE INDEX IF NOT EXISTS groups_by_position ON rejot_log.groups (stream, first_position);

-- Where each subscriber of a stream is: changes at or before every
-- reader's position (and, with no reader, all of them: the compacted
-- state serves new subscribers) may be pruned.
CREATE TABLE rejot_log.readers (
    stream     int NOT NULL REFERENCES rejot_log.streams,
    reader     text NOT NULL,      -- system/target
    position   bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, reader)
);
