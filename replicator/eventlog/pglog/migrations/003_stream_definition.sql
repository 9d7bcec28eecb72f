-- What each stream's state was last filled from: the definition of its
-- rows (expressions, filter, key) and the snapshot point. A changed
-- definition (a new minor, a new filter) fills the state again.
ALTER TABLE rejot_log.streams
    ADD COLUMN definition text,
    ADD COLUMN filled_system text,
    ADD COLUMN filled_lsn pg_lsn;
