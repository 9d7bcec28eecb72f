-- What a sidecar installs in the database it manages, in its private
-- schema _rejot: the outbox of rejot calls (written in the caller's own
-- transaction, so a call takes effect only if that transaction commits),
-- and the owner's record of its own publications, against which new
-- versions are checked for compatibility even when the catalog is down.
CREATE SCHEMA IF NOT EXISTS _rejot;

CREATE TABLE IF NOT EXISTS _rejot.commands (
    id         bigserial PRIMARY KEY,
    kind       text NOT NULL,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    applied_at timestamptz,
    error      text
);

CREATE TABLE IF NOT EXISTS _rejot.publications (
    publication text NOT NULL,
    version     int NOT NULL,
    minor       int NOT NULL DEFAULT 0,
    query       text NOT NULL,
    source      text NOT NULL,
    key_columns text[] NOT NULL,
    columns     jsonb NOT NULL,
    description text NOT NULL DEFAULT '',
    status      text NOT NULL DEFAULT 'active',
    sunset      date,
    note        text NOT NULL DEFAULT '',
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (publication, version)
);

-- Calls run in the caller's session, as the caller's role.
GRANT USAGE ON SCHEMA _rejot TO PUBLIC;
GRANT SELECT, INSERT, UPDATE ON _rejot.commands, _rejot.publications TO PUBLIC;
GRANT USAGE ON SEQUENCE _rejot.commands_id_seq TO PUBLIC;
