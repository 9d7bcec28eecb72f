-- lock_at locks a subscription's row (sub_target, gen) for the transaction
-- that applies the span of the log after position "after", and fails
-- (SQLSTATE RJ001) when the row is not at that position: resynced,
-- removed or moved on meanwhile. The check is the server's, so the
-- applying transaction's COMMIT goes in the same pipeline as its changes:
-- a span that must not apply aborts the transaction before anything
-- commits, and a span that may costs one round trip, not two.
CREATE FUNCTION _rejot.lock_at(sub_target text, gen int, after bigint) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p bigint;
BEGIN
    SELECT s.position INTO p FROM _rejot.subscriptions s WHERE s.target = sub_target AND s.generation = gen FOR UPDATE;
    IF NOT FOUND OR p IS DISTINCT FROM after THEN
        RAISE EXCEPTION USING ERRCODE = 'RJ001',
            MESSAGE = pg_catalog.format('subscription %s generation %s is not at position %s: it was resynced, removed or moved on', sub_target, gen, after);
    END IF;
END $$;
REVOKE ALL ON FUNCTION _rejot.lock_at(text, int, bigint) FROM PUBLIC;
