-- A mapped subscription's columns are its statements' parameters, fixed
-- when it subscribes (a subscribe on its target is refused: unsubscribe
-- and subscribe again with new statements). add_subscribed_columns
-- refuses it too, so that a direct call cannot add columns its
-- statements never name, nor have the apply alter the consumer's own
-- table. The checks and the change stay in add_columns_unmapped (010),
-- which only this function calls.
ALTER FUNCTION _rejot.add_subscribed_columns(name, text, jsonb) RENAME TO add_columns_unmapped;
REVOKE ALL ON FUNCTION _rejot.add_columns_unmapped(name, text, jsonb) FROM PUBLIC;

CREATE FUNCTION _rejot.add_subscribed_columns(claimed name, sub_target text, wanted jsonb) RETURNS text[]
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s _rejot.subscriptions := _rejot.subscription_of(claimed, sub_target, 'subscribe into it');
BEGIN
    IF s.mapping IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'duplicate_object',
            MESSAGE = pg_catalog.format('table %s has a mapped subscription to %s version %s: its columns are its statements'' parameters', sub_target, s.publication, s.version),
            HINT = pg_catalog.format('Unsubscribe it first (CALL rejot.unsubscribe(%L)) and subscribe again with statements that name the new columns.', sub_target);
    END IF;
    RETURN _rejot.add_columns_unmapped(claimed, sub_target, wanted);
END $$;

REVOKE ALL ON FUNCTION _rejot.add_subscribed_columns(name, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION _rejot.add_subscribed_columns(name, text, jsonb) TO PUBLIC;
