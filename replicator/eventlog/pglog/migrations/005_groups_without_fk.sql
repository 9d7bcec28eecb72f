-- Streams are never deleted: the foreign key from groups only cost a
-- check per appended group.
ALTER TABLE rejot_log.groups DROP CONSTRAINT IF EXISTS groups_stream_fkey;
