-- chat_proxy: the chat.* functions of the chat extension, served over 2^k
-- partition databases with PL/Proxy (docs/scaling.md).  Assembled by
-- proxy/gen-proxy.py from this head, the generated functions and
-- proxy/custom.sql.

\echo Use "CREATE EXTENSION chat_proxy CASCADE" to load this file. \quit

CREATE SCHEMA chat;
CREATE SCHEMA chat_proxy;
COMMENT ON SCHEMA chat IS 'pgchat through PL/Proxy: the chat.* functions, routed to the partitions';
COMMENT ON SCHEMA chat_proxy IS 'pgchat PL/Proxy routing helpers and configuration';

-- The partitions: a SQL/MED server of PL/Proxy's foreign data wrapper,
-- p0 .. p<n-1> the partitions' connection strings.  Replaces any earlier
-- configuration; a partition moved to another cluster is one more call
-- (or ALTER SERVER chat_partitions OPTIONS (SET p2 '...')).
CREATE FUNCTION chat_proxy.configure(partitions text[])
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer := coalesce(cardinality(partitions), 0);
    opts text := '';
BEGIN
    IF n < 1 OR n & (n - 1) <> 0 THEN
        RAISE EXCEPTION '% partitions is not a power of two', n
            USING ERRCODE = '22023', HINT = 'PL/Proxy needs 1, 2, 4, 8, ... partitions.';
    END IF;
    IF array_position(partitions, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'partition % has no connection string', array_position(partitions, NULL) - 1
            USING ERRCODE = '22023';
    END IF;
    FOR i IN 1 .. n LOOP
        opts := opts || format(', p%s %L', i - 1, partitions[i]);
    END LOOP;
    IF EXISTS (SELECT FROM pg_foreign_server WHERE srvname = 'chat_partitions') THEN
        DROP SERVER chat_partitions CASCADE;
    END IF;
    EXECUTE 'CREATE SERVER chat_partitions FOREIGN DATA WRAPPER plproxy OPTIONS ('
            || 'connection_lifetime ''1800''' || opts || ')';
    CREATE USER MAPPING FOR PUBLIC SERVER chat_partitions;
END
$$;

-- The partition that owns a conversation: its id's low bits (PL/Proxy takes
-- hash & (partitions - 1)).  NULL ids go to partition 0, whose chat
-- function then rejects them as they would be rejected unpartitioned.
CREATE FUNCTION chat_proxy.conversation_partition(conversation_id bigint)
RETURNS integer
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((conversation_id & 1073741823)::integer, 0)
$$;

-- A conversation's partition when there is one, else the user's home.
CREATE FUNCTION chat_proxy.conversation_or_home(conversation_id bigint, user_id bigint)
RETURNS integer
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN conversation_id IS NULL THEN hashint8(coalesce(user_id, 0))
                ELSE chat_proxy.conversation_partition(conversation_id) END
$$;

-- The partition where the direct conversation of a pair is created and
-- found: the same for (a, b) and (b, a).
CREATE FUNCTION chat_proxy.pair_partition(a bigint, b bigint)
RETURNS integer
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT hashtext(coalesce(LEAST(a, b), 0)::text || ':' || coalesce(GREATEST(a, b), 0)::text)
$$;

CREATE SEQUENCE chat_proxy.round_robin_seq CYCLE MAXVALUE 2147483647;

-- Round robin over the partitions for new groups (spreads them evenly).
CREATE FUNCTION chat_proxy.next_partition()
RETURNS integer
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT nextval('chat_proxy.round_robin_seq')::integer
$$;

-- A call that every partition ran answered differently on some: a
-- partition missed a write (it was down); refuse instead of guessing.
CREATE FUNCTION chat_proxy.disagree(fn text)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'the partitions answered chat.% differently', fn
        USING ERRCODE = 'XX001',
              HINT = 'A partition missed a user or device write; see docs/scaling.md "Repairing a partition".';
END
$$;

REVOKE ALL ON FUNCTION chat_proxy.configure(text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat_proxy.disagree(text) FROM PUBLIC;
REVOKE ALL ON SEQUENCE chat_proxy.round_robin_seq FROM PUBLIC;
COMMENT ON FUNCTION chat_proxy.configure(text[]) IS 'sets the partitions (2^k connection strings, partition 0 first) as SQL/MED server chat_partitions';
COMMENT ON FUNCTION chat_proxy.conversation_partition(bigint) IS 'partition hash of a conversation id: its low bits';
COMMENT ON FUNCTION chat_proxy.conversation_or_home(bigint, bigint) IS 'partition hash of a conversation, or of the user when the conversation is NULL';
COMMENT ON FUNCTION chat_proxy.pair_partition(bigint, bigint) IS 'partition hash of a user pair (direct conversations), symmetric';
COMMENT ON FUNCTION chat_proxy.next_partition() IS 'round-robin partition hash for new groups';
COMMENT ON FUNCTION chat_proxy.disagree(text) IS 'raises XX001: partitions answered a write to all of them differently';
COMMENT ON SEQUENCE chat_proxy.round_robin_seq IS 'round robin of chat_proxy.next_partition';
