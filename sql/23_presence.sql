-- Nodes, sessions and presence: node life cycle, node timeout, last_seen,
-- chat.presence with each privacy setting, bad node names.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS chat CASCADE;
CREATE EXTENSION chat;
CREATE FUNCTION pg_temp.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

SELECT chat.upsert_user(i, 'user' || i) FROM generate_series(1, 4) i;
SELECT chat.register_device(i) FROM generate_series(1, 4) i;
SELECT chat.register_device(1) AS second_device;
-- 1 and 2 share a conversation; 3 shares none with anyone; 4 with 1.
SELECT chat.direct_conversation(1, 2), chat.direct_conversation(1, 4);

SELECT chat.node_reset('gw1'), chat.node_reset('gw2');
SELECT chat.connect('gw1', 1, 1), chat.connect('gw2', 1, 2), chat.connect('gw1', 3, 1);
SELECT node, user_id, device_id FROM chat.live_sessions ORDER BY 1, 2, 3;

-- Privacy: everyone (3), peers (2: 1 is a peer, 3 is not), nobody (4).
UPDATE chat.users SET presence_privacy = 'peers' WHERE id = 2;
UPDATE chat.users SET presence_privacy = 'nobody' WHERE id = 4;
SELECT chat.connect('gw1', 2, 1), chat.connect('gw1', 4, 1);
SELECT 'viewer 1' AS v, user_id, online, last_seen IS NOT NULL AS has_last_seen FROM chat.presence(1, ARRAY[1, 2, 3, 4, 99]);
SELECT 'viewer 3' AS v, user_id, online, last_seen IS NOT NULL AS has_last_seen FROM chat.presence(3, ARRAY[1, 2, 3, 4]);
SELECT 'viewer 4 (self)' AS v, user_id, online FROM chat.presence(4, ARRAY[4]);

-- Last device offline sets last_seen; one device of two does not.
SELECT chat.disconnect('gw1', 1, 1);
SELECT online, last_seen IS NULL AS no_last_seen_yet FROM chat.presence(3, ARRAY[1]);
SELECT chat.disconnect('gw2', 1, 2);
SELECT online, last_seen > now() - interval '1 minute' AS last_seen_now FROM chat.presence(3, ARRAY[1]);
SELECT chat.disconnect('gw2', 1, 2);   -- again: nothing happens

-- A node silent beyond chat.node_timeout: its sessions are offline.
UPDATE chat.nodes SET heartbeat_at = now() - interval '31 seconds' WHERE node = 'gw1';
SELECT user_id, online FROM chat.presence(1, ARRAY[2, 3]);
SET chat.node_timeout = '1min';
SELECT user_id, online FROM chat.presence(1, ARRAY[2, 3]);
RESET chat.node_timeout;
SELECT chat.node_heartbeat('gw1');
SELECT user_id, online FROM chat.presence(1, ARRAY[2, 3]);

-- node_reset forgets the node's sessions and sets last_seen.
SELECT chat.node_reset('gw1');
SELECT count(*) AS sessions_left FROM chat.sessions WHERE node = 'gw1';
SELECT id, last_seen IS NOT NULL AS has_last_seen FROM chat.users WHERE id IN (2, 3) ORDER BY id;
-- A heartbeat of an unknown node registers it.
SELECT chat.node_heartbeat('gw9');
SELECT node FROM chat.nodes ORDER BY node;

-- A heartbeat notices nodes silent beyond chat.node_timeout: their users
-- get last_seen (sessions stay, so a slow node comes back whole).
SELECT chat.connect('gw2', 3, 1);
UPDATE chat.users SET last_seen = NULL WHERE id = 3;
UPDATE chat.nodes SET heartbeat_at = now() - interval '1 hour' WHERE node = 'gw2';
SELECT chat.node_heartbeat('gw9');
SELECT node, gone_at IS NOT NULL AS gone FROM chat.nodes ORDER BY node;
SELECT last_seen IS NOT NULL AS last_seen_set FROM chat.users WHERE id = 3;
SELECT count(*) AS sessions_kept FROM chat.sessions WHERE node = 'gw2';
SELECT chat.node_heartbeat('gw2');
SELECT node, gone_at IS NOT NULL AS gone FROM chat.nodes ORDER BY node;
SELECT user_id, online FROM chat.presence(1, ARRAY[3]);

-- Bad input.
SELECT pg_temp.try($$SELECT chat.node_reset('GW1')$$);
SELECT pg_temp.try($$SELECT chat.node_heartbeat('')$$);
SELECT pg_temp.try($$SELECT chat.connect('gw-1', 1, 1)$$);
SELECT pg_temp.try($$SELECT chat.connect('gw1', 1, 9)$$);
SELECT pg_temp.try($$SELECT chat.connect('gw1', 42, 1)$$);
SELECT pg_temp.try($$SELECT chat.disconnect(repeat('a', 41), 1, 1)$$);
