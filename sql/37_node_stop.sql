-- Gateway shutdown: chat.node_stop forgets the node's sessions and removes
-- the node; a heartbeat that comes after (it was waiting for the row) does
-- not bring it back, while a heartbeat of a node that still has sessions
-- (its row removed by hand) does.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS chat CASCADE;
CREATE EXTENSION chat;
SET chat.token_secret = 'regress node stop secret';
CREATE FUNCTION pg_temp.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
SELECT chat.upsert_user(1, 'ann'), chat.register_device(1);
SELECT chat.node_reset('gw1'), chat.node_reset('gw2');
SELECT chat.connect('gw1', 1, 1);
SELECT node FROM chat.live_nodes ORDER BY 1;
SELECT chat.node_stop('gw1');
SELECT node FROM chat.nodes ORDER BY 1;
SELECT count(*) AS sessions FROM chat.sessions;
SELECT last_seen IS NOT NULL AS last_seen_set FROM chat.users WHERE id = 1;
-- a late heartbeat of the stopped node: it stays gone
SELECT chat.node_heartbeat('gw1');
SELECT node FROM chat.nodes ORDER BY 1;
-- again, and an unknown node: nothing to do
SELECT chat.node_stop('gw1'), chat.node_stop('gw9');
SELECT node FROM chat.nodes ORDER BY 1;
-- a node with sessions but no row (removed by hand) is written again
SELECT chat.connect('gw2', 1, 1);
DELETE FROM chat.nodes WHERE node = 'gw2';
SELECT chat.node_heartbeat('gw2');
SELECT node FROM chat.live_nodes ORDER BY 1;
-- bad names
SELECT pg_temp.try($$SELECT chat.node_stop('Bad Name')$$);
SELECT pg_temp.try($$SELECT chat.node_stop(NULL)$$);
SELECT node FROM chat.nodes ORDER BY 1;
