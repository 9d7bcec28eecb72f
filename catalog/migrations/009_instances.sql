-- Several sidecars may front one database (high availability): each is an
-- instance of the system, with a random id it makes at start. Exactly one
-- is active (it holds the system's lease in the managed database and runs
-- the capture and the applies); the others are standby (they relay
-- traffic, answer rejot calls and wait for the lease). Each instance
-- heartbeats its own row; an instance that has not for a while is removed
-- by the others' heartbeats, and the one that becomes active removes the
-- row of the active it replaced. rejot.systems' address is the active
-- instance's.
CREATE TABLE IF NOT EXISTS rejot_catalog.instances (
    instance    uuid PRIMARY KEY,
    system      text NOT NULL REFERENCES rejot_catalog.systems ON DELETE CASCADE,
    address     text NOT NULL DEFAULT '',
    role        text NOT NULL CHECK (role IN ('active', 'standby')),
    version     text NOT NULL DEFAULT '',
    started_at  timestamptz NOT NULL,
    last_seen   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS instances_system ON rejot_catalog.instances (system);

-- An instance's row is its system's, as the system's row is: only the
-- catalog role the system belongs to (or a member) may add, change or
-- remove it, whatever privileges another role has on the table.
CREATE OR REPLACE FUNCTION rejot_catalog.guard_instance() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    sys text := CASE WHEN TG_OP = 'DELETE' THEN OLD.system ELSE NEW.system END;
BEGIN
    IF NOT rejot_catalog.may_act_for(sys) OR (TG_OP = 'UPDATE' AND NOT rejot_catalog.may_act_for(OLD.system)) THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = pg_catalog.format('role %I may not record instances of system %s', current_user, sys),
            HINT = 'Connect the sidecar to the catalog as the role the system belongs to (rejot.systems.catalog_role), or a member of it.';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS guard_instance ON rejot_catalog.instances;
CREATE TRIGGER guard_instance BEFORE INSERT OR UPDATE OR DELETE ON rejot_catalog.instances
    FOR EACH ROW EXECUTE FUNCTION rejot_catalog.guard_instance();

CREATE OR REPLACE VIEW rejot.instances AS
    SELECT system, address, role, version, started_at, last_seen, instance
      FROM rejot_catalog.instances;

-- The same grant the other relations have (002_reader_role.sql).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rejot_catalog_reader') THEN
        GRANT SELECT ON rejot.instances TO rejot_catalog_reader;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    NULL;
END $$;
