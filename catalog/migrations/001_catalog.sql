-- The shared catalog: systems, publications with their versions and
-- columns, subscriptions. Tables live in rejot_catalog; the relations users
-- query (rejot.publications, ...) are views over them in schema rejot.

CREATE SCHEMA IF NOT EXISTS rejot_catalog;
CREATE SCHEMA IF NOT EXISTS rejot;

CREATE TABLE rejot_catalog.systems (
    system      text PRIMARY KEY,
    database    text NOT NULL,
    address     text NOT NULL DEFAULT '',
    version     text NOT NULL DEFAULT '',
    last_seen   timestamptz NOT NULL DEFAULT now(),
    -- what is wrong with the system's setup, e.g. wal_level not logical
    problem     text
);

-- A publication name belongs to the system that first published it.
CREATE TABLE rejot_catalog.publication_names (
    publication text PRIMARY KEY,
    owner       text NOT NULL REFERENCES rejot_catalog.systems,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE rejot_catalog.publications (
    publication text NOT NULL REFERENCES rejot_catalog.publication_names,
    version     int NOT NULL CHECK (version > 0),
    minor       int NOT NULL DEFAULT 0,
    owner       text NOT NULL REFERENCES rejot_catalog.systems,
    database    text NOT NULL,
    query       text NOT NULL,
    source      text NOT NULL,            -- the table read, schema-qualified
    key_columns text[] NOT NULL,
    description text NOT NULL DEFAULT '',
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'deprecated', 'retired')),
    sunset      date,
    note        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (publication, version)
);

CREATE TABLE rejot_catalog.columns (
    publication text NOT NULL,
    version     int NOT NULL,
    position    int NOT NULL,
    name        text NOT NULL,
    type        text NOT NULL,
    type_oid    oid NOT NULL,
    type_mod    int NOT NULL DEFAULT -1,
    is_key      boolean NOT NULL,
    nullable    boolean NOT NULL,
    since_minor int NOT NULL DEFAULT 0,
    PRIMARY KEY (publication, version, position),
    UNIQUE (publication, version, name),
    FOREIGN KEY (publication, version) REFERENCES rejot_catalog.publications ON DELETE CASCADE
);

CREATE TABLE rejot_catalog.subscriptions (
    target           text NOT NULL,
    system           text NOT NULL REFERENCES rejot_catalog.systems,
    publication      text NOT NULL,
    version          int NOT NULL,
    status           text NOT NULL DEFAULT 'copying' CHECK (status IN ('copying', 'streaming', 'stopped', 'failed')),
    copied_rows      bigint NOT NULL DEFAULT 0,
    applied_position bigint,
    lag_seconds      double precision,
    last_applied_at  timestamptz,
    error            text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (system, target),
    FOREIGN KEY (publication, version) REFERENCES rejot_catalog.publications
);

-- Commands of each system's outbox already applied: applying is idempotent.
CREATE TABLE rejot_catalog.applied_commands (
    system     text NOT NULL,
    command_id bigint NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    outcome    text NOT NULL DEFAULT 'applied',
    PRIMARY KEY (system, command_id)
);

CREATE VIEW rejot.publications AS
    SELECT publication, version, minor, owner, database, query, key_columns, description,
           status, sunset, created_at, updated_at
      FROM rejot_catalog.publications;

CREATE VIEW rejot.columns AS
    SELECT publication, version, position, name, type, is_key, nullable, since_minor
      FROM rejot_catalog.columns;

CREATE VIEW rejot.subscriptions AS
    SELECT target, system, publication, version, status, copied_rows, applied_position,
           lag_seconds, last_applied_at, error, created_at
      FROM rejot_catalog.subscriptions;

CREATE VIEW rejot.systems AS
    SELECT system, database, address, version, last_seen
      FROM rejot_catalog.systems;
