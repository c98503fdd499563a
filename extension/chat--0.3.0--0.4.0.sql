-- chat 0.3.0 -> 0.4.0
--
-- complain if this script is sourced in psql rather than run by ALTER EXTENSION
\echo Use "ALTER EXTENSION chat UPDATE TO '0.4.0'" to load this file. \quit

-- Gateway at 100,000 (issue 11): connect batching
-- presence_audience in plpgsql (its plan kept; chat.connect calls it for every client)
CREATE OR REPLACE FUNCTION chat.presence_audience(user_id bigint)
RETURNS bigint[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- plpgsql, not sql: a SQL function is planned again on every call
    -- (about 1.5 ms here), and chat.connect calls this for every client
    -- of a connection storm; plpgsql keeps the plan for the session.
    RETURN (
    SELECT ARRAY(
        SELECT x FROM unnest(CASE u.presence_privacy
           WHEN 'everyone' THEN
               (SELECT coalesce(array_agg(DISTINCT p.user_id), '{}')
                  FROM chat.members m
                  JOIN chat.members p ON p.conversation_id = m.conversation_id
                                     AND p.left_at IS NULL AND p.user_id <> m.user_id
                 WHERE m.user_id = u.id AND m.left_at IS NULL)
           WHEN 'contacts' THEN ARRAY(SELECT chat.contacts(u.id))
           ELSE '{}'::bigint[] END) AS x
         WHERE NOT EXISTS (SELECT FROM chat.blocks k
                            WHERE (k.blocker = u.id AND k.blocked = x)
                               OR (k.blocker = x AND k.blocked = u.id)))
      FROM chat.users u
     WHERE u.id = presence_audience.user_id);
END
$$;

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
