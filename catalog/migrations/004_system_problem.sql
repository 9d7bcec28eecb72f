-- rejot.systems says what is wrong with a system's setup (for example a
-- server whose wal_level is not logical), or NULL when nothing is.
CREATE OR REPLACE VIEW rejot.systems AS
    SELECT system, database, address, version, last_seen, problem
      FROM rejot_catalog.systems;
