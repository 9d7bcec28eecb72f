-- Who may subscribe to a version, and whose a system name is.
--
-- A version is open to every system until its owner first grants it to
-- one (rejot.grant): from then on it is restricted, and only the owner's
-- own system and the granted ones may subscribe. Revoking the last grant
-- leaves it restricted (to nobody else); granting it to '*' opens it
-- again. The owner's sidecar sends its whole access list with each grant
-- and revoke command, so applying one sets the catalog to exactly that.
ALTER TABLE rejot_catalog.publications ADD COLUMN IF NOT EXISTS restricted boolean NOT NULL DEFAULT false;

CREATE TABLE IF NOT EXISTS rejot_catalog.grants (
    publication text NOT NULL,
    version     int NOT NULL,
    system      text NOT NULL,           -- may not be registered yet
    granted_by  text,                    -- the owner's role that granted it
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (publication, version, system),
    FOREIGN KEY (publication, version) REFERENCES rejot_catalog.publications ON DELETE CASCADE
);

-- access_refusal says why system sys may not read publication pub version
-- ver (NULL when it may): the catalog is the judge of subscribe and
-- resync commands, of the subscriptions' status, and of a subscriber's
-- apply, which asks before it copies and while it streams.
CREATE OR REPLACE FUNCTION rejot_catalog.access_refusal(pub text, ver int, sys text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.format('system %s has no grant for publication %s version %s: ask its owner, system %s, to grant it'
                             || ' (CALL rejot.grant(%L, %s, %L) through that system''s sidecar)',
                             sys, pub, ver, p.owner, pub, ver, sys)
      FROM rejot_catalog.publications p
     WHERE p.publication = pub AND p.version = ver AND p.restricted AND p.owner IS DISTINCT FROM sys
       AND NOT EXISTS (SELECT 1 FROM rejot_catalog.grants g
                        WHERE g.publication = pub AND g.version = ver AND g.system = sys)
$$;

-- A system name belongs to the catalog role that first registered it:
-- only that role and its members may change or remove the system's row
-- (its address, its database), enforced here so that a direct UPDATE
-- by another role with privileges on the table is refused as well. Rows
-- registered before this migration have no role: the next registration
-- claims them.
ALTER TABLE rejot_catalog.systems ADD COLUMN IF NOT EXISTS catalog_role text;

-- may_act_as: the current role is role, or a member of it; a role that no
-- longer exists leaves its systems to superusers.
CREATE OR REPLACE FUNCTION rejot_catalog.may_act_as(role text) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = role)
                THEN pg_catalog.pg_has_role(current_user, role::name, 'MEMBER')
                ELSE (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) END
$$;

-- may_act_for: the current role may act on behalf of system sys (apply
-- its commands, report its subscriptions).
CREATE OR REPLACE FUNCTION rejot_catalog.may_act_for(sys text) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT s.catalog_role IS NULL OR rejot_catalog.may_act_as(s.catalog_role)
                       FROM rejot_catalog.systems s WHERE s.system = sys), false)
$$;

CREATE OR REPLACE FUNCTION rejot_catalog.guard_system() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.catalog_role := current_user;
        RETURN NEW;
    END IF;
    IF OLD.catalog_role IS NOT NULL AND NOT rejot_catalog.may_act_as(OLD.catalog_role) THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = pg_catalog.format('system %s belongs to catalog role %I: role %I may not register or change it',
                OLD.system, OLD.catalog_role, current_user),
            HINT = pg_catalog.format('Give this sidecar another system name (--name), or connect it to the catalog as %I or a member of it (GRANT %I TO %I).',
                OLD.catalog_role, OLD.catalog_role, current_user);
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    NEW.catalog_role := coalesce(OLD.catalog_role, current_user); -- never given away by an update
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS guard_system ON rejot_catalog.systems;
CREATE TRIGGER guard_system BEFORE INSERT OR UPDATE OR DELETE ON rejot_catalog.systems
    FOR EACH ROW EXECUTE FUNCTION rejot_catalog.guard_system();

-- The relations show the access (open, the granted systems, or none) and
-- the role a system belongs to, after the columns they had.
CREATE OR REPLACE VIEW rejot.publications AS
    SELECT p.publication, p.version, p.minor, p.owner, p.database, p.query, p.key_columns, p.description,
           p.status, p.sunset, p.created_at, p.updated_at,
           CASE WHEN NOT p.restricted THEN 'open' ELSE coalesce(g.listed, 'none') END AS access,
           coalesce(g.systems, '{}') AS granted_to
      FROM rejot_catalog.publications p
      LEFT JOIN LATERAL (SELECT pg_catalog.array_agg(x.system ORDER BY x.system) AS systems,
                                pg_catalog.string_agg(x.system, ', ' ORDER BY x.system) AS listed
                           FROM rejot_catalog.grants x
                          WHERE x.publication = p.publication AND x.version = p.version) g ON true;

CREATE OR REPLACE VIEW rejot.systems AS
    SELECT system, database, address, version, last_seen, problem, catalog_role
      FROM rejot_catalog.systems;
