-- Commands are known to the catalog by a random id: command ids restart
-- when _rejot is reinstalled or the database is restored to the past.
ALTER TABLE _rejot.commands ADD COLUMN IF NOT EXISTS uid uuid NOT NULL DEFAULT gen_random_uuid();
