-- chat 0.2.0 -> 0.3.0
--
-- complain if this script is sourced in psql rather than run by ALTER EXTENSION
\echo Use "ALTER EXTENSION chat UPDATE TO '0.3.0'" to load this file. \quit

-- PL/Proxy partitions (issue 16): conversation ids carry their partition.
CREATE FUNCTION chat.new_conversation_id()
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    -- missing_ok: a session that has not loaded the library yet (it is not
    -- in shared_preload_libraries) has no chat.* settings defined so far.
    n integer := coalesce(current_setting('chat.partitions', true), '1')::integer;
    p integer := coalesce(current_setting('chat.partition', true), '0')::integer;
BEGIN
    IF n = 1 THEN
        RETURN nextval('chat.conversations_id_seq');
    END IF;
    IF n < 1 OR n & (n - 1) <> 0 THEN
        RAISE EXCEPTION 'chat.partitions % is not a power of two', n USING ERRCODE = '22023';
    END IF;
    IF p < 0 OR p >= n THEN
        RAISE EXCEPTION 'chat.partition % is not below chat.partitions %', p, n
            USING ERRCODE = '22023',
                  HINT = 'Set chat.partition of each partition database to its number, 0 .. chat.partitions - 1.';
    END IF;
    RETURN nextval('chat.conversations_id_seq') * n + p;
END
$$;
ALTER TABLE chat.conversations ALTER COLUMN id SET DEFAULT chat.new_conversation_id();
REVOKE ALL ON FUNCTION chat.new_conversation_id() FROM PUBLIC;
COMMENT ON FUNCTION chat.new_conversation_id() IS 'a new conversation id; partitioned: sequence value * chat.partitions + chat.partition (the low bits route)';
