-- Gateway shutdown (node_stop): a stopped gateway leaves no node behind.
--
-- node_reset at shutdown kept the node's row with a fresh heartbeat_at, so
-- a stopped gateway looked alive for chat.node_timeout; and a heartbeat
-- that was still waiting for the row when the gateway stopped could write
-- it again afterwards.  node_stop forgets the sessions as node_reset does
-- and removes the row; node_heartbeat (20_realtime.sql) no longer brings
-- back the row of a node without sessions.

-- Gateway shutdown: the node's sessions are forgotten (users online only
-- there go offline, as with node_reset) and its row is removed.
CREATE FUNCTION chat.node_stop(node text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM chat.node_reset(node);
    DELETE FROM chat.nodes n WHERE n.node = node_stop.node;
END
$$;

REVOKE ALL ON FUNCTION chat.node_stop(text) FROM PUBLIC;
COMMENT ON FUNCTION chat.node_stop(text) IS
    'gateway shutdown: forgets the node''s sessions (as node_reset) and removes the node';
