-- Connection storms (issue 11): chat.connect for many sessions in one call.
-- A gateway that sees thousands of clients come back at once (after its own
-- restart, a network blip) registers the sessions of one event-loop turn
-- together: one round trip and one commit for all of them instead of one
-- each.  Each session runs chat.connect itself, in its own subtransaction,
-- so presence, the presence debounce and every error are exactly those of
-- chat.connect, session by session: a removed device fails alone (P0002 in
-- its row) and the others are registered.  Sessions are taken in
-- (user_id, device_id) order, the same lock order in every batch, so two
-- gateways registering overlapping users cannot deadlock each other.
CREATE FUNCTION chat.connect_many(node text, user_ids bigint[], device_ids integer[])
RETURNS TABLE (idx integer, code text, message text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer := coalesce(cardinality(user_ids), 0);
    i integer;
BEGIN
    PERFORM chat.check_node(node);
    IF user_ids IS NULL OR device_ids IS NULL OR cardinality(device_ids) <> n THEN
        RAISE EXCEPTION 'user_ids (% elements) and device_ids (% elements) must be arrays of the same length',
            cardinality(user_ids), cardinality(device_ids)
            USING ERRCODE = '22023', HINT = 'Pass one user_id and one device_id per session.';
    END IF;
    IF n > 10000 THEN
        RAISE EXCEPTION 'connect_many got % sessions, at most 10000 per call', n
            USING ERRCODE = '54000', HINT = 'Split the sessions over several calls.';
    END IF;
    FOR i IN
        SELECT u.i FROM unnest(user_ids, device_ids) WITH ORDINALITY AS u(user_id, device_id, i)
         ORDER BY u.user_id, u.device_id, u.i
    LOOP
        idx := i;
        BEGIN
            PERFORM chat.connect(node, user_ids[i], device_ids[i]);
            code := '00000';
            message := NULL;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT;
        END;
        RETURN NEXT;
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION chat.connect_many(text, bigint[], integer[]) FROM PUBLIC;
COMMENT ON FUNCTION chat.connect_many(text, bigint[], integer[]) IS
    'chat.connect for many sessions in one call: one row per session (1-based idx, code: SQLSTATE 00000 or its error)';
