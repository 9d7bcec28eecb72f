-- Applied commands are keyed by the command's random id (see the managed
-- schema): outbox ids restart when a database is restored or reinstalled.
ALTER TABLE rejot_catalog.applied_commands ADD COLUMN command_uid uuid;
UPDATE rejot_catalog.applied_commands SET command_uid = gen_random_uuid() WHERE command_uid IS NULL;
ALTER TABLE rejot_catalog.applied_commands ALTER COLUMN command_uid SET NOT NULL;
ALTER TABLE rejot_catalog.applied_commands DROP CONSTRAINT applied_commands_pkey;
ALTER TABLE rejot_catalog.applied_commands ADD PRIMARY KEY (system, command_uid);
