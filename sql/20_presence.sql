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

-- Offline at once (the debounce of chat.presence_grace: 27_presence_debounce).
SET chat.presence_grace = 0;

SELECT chat.upsert_user(i, 'user' || i) FROM generate_series(1, 4) i;
SELECT chat.register_device(i) FROM generate_series(1, 4) i;
SELECT chat.register_device(1) AS second_device;
-- 1 and 2 share a conversation; 3 shares none with anyone; 4 with 1.
SELECT chat.direct_conversation(1, 2), chat.direct_conversation(1, 4);

SELECT chat.node_reset('gw1'), chat.node_reset('gw2');
SELECT chat.connect('gw1', 1, 1), chat.connect('gw2', 1, 2), chat.connect('gw1', 3, 1);
SELECT node, user_id, device_id FROM chat.live_sessions ORDER BY 1, 2, 3;

-- Privacy: everyone (3), contacts (2: 1 is a contact, 3 is not), nobody (4).
-- 1 and 2 are contacts: both have sent a message in their direct conversation.
SELECT count(*) FROM chat.send_message(1, 1, 'hi 2') a, chat.send_message(2, 1, 'hi 1') b;
UPDATE chat.users SET presence_privacy = 'contacts' WHERE id = 2;
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
-- A heartbeat of an unknown node without sessions does not register it (a
-- node stopped by chat.node_stop stays gone: 37_node_stop.sql).
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

-- Contacts are made by talking, not by opening a conversation: a stranger
-- (3) who opens a direct conversation with 2 (privacy 'contacts') neither
-- sees 2's presence nor is in the audience of 2's presence events; after
-- 3 alone has written, still not; after both have written, both.
SELECT chat.direct_conversation(3, 2) AS stranger_conv;
SELECT chat.connect('gw9', 2, 1);
SELECT user_id, online, last_seen IS NOT NULL AS has_last_seen FROM chat.presence(3, ARRAY[2]);
SELECT chat.presence_audience(2) AS audience_of_2, ARRAY(SELECT chat.contacts(2)) AS contacts_of_2,
       chat.is_contact(2, 3) AS contact_2_3;
SELECT count(*) FROM chat.send_message(3, 3, 'hello? let me see you');
SELECT user_id, online FROM chat.presence(3, ARRAY[2]);
SELECT chat.presence_audience(2) AS audience_of_2, chat.is_contact(3, 2) AS contact_3_2;
SELECT count(*) FROM chat.send_message(2, 3, 'hello 3');
SELECT user_id, online FROM chat.presence(3, ARRAY[2]);
SELECT chat.presence_audience(2) AS audience_of_2, ARRAY(SELECT chat.contacts(2)) AS contacts_of_2,
       ARRAY(SELECT chat.contacts(3)) AS contacts_of_3, chat.is_contact(3, 2) AS contact_3_2;
-- A group shared with 4 makes 4 an audience of 'everyone' presence (3's), not of
-- 'contacts' presence (2's): groups make no contacts.
SELECT chat.create_group(2, 'g', ARRAY[3, 4]::bigint[]) > 0 AS group_made;
SELECT count(*) FROM chat.send_message(4, currval('chat.conversations_id_seq'), 'hi group') a,
                     chat.send_message(2, currval('chat.conversations_id_seq'), 'hi 4') b;
SELECT chat.presence_audience(3) AS audience_of_3, chat.presence_audience(2) AS audience_of_2,
       chat.presence_audience(4) AS audience_of_4_nobody;
SELECT user_id, online FROM chat.presence(4, ARRAY[2, 3]);
-- Only everyone, contacts and nobody are privacy levels.
SELECT pg_temp.try($$UPDATE chat.users SET presence_privacy = 'peers' WHERE id = 2$$);
SELECT presence_privacy FROM chat.users WHERE id = 2;

-- Bad input.
SELECT pg_temp.try($$SELECT chat.node_reset('GW1')$$);
SELECT pg_temp.try($$SELECT chat.node_heartbeat('')$$);
SELECT pg_temp.try($$SELECT chat.connect('gw-1', 1, 1)$$);
SELECT pg_temp.try($$SELECT chat.connect('gw1', 1, 9)$$);
SELECT pg_temp.try($$SELECT chat.connect('gw1', 42, 1)$$);
SELECT pg_temp.try($$SELECT chat.disconnect(repeat('a', 41), 1, 1)$$);

-- chat.typing checks membership as chat.require_member does (member.c):
-- 22023 null argument, P0002 unknown conversation or user, 42501 not a member.
SELECT pg_temp.try($$SELECT chat.typing(NULL, 1)$$) AS null_user;
SELECT pg_temp.try($$SELECT chat.typing(1, NULL)$$) AS null_conversation;
SELECT pg_temp.try($$SELECT chat.typing(1, 999)$$) AS unknown_conversation;
SELECT pg_temp.try($$SELECT chat.typing(999, 1)$$) AS unknown_user;
SELECT pg_temp.try($$SELECT chat.typing(4, 1)$$) AS not_a_member;
SELECT pg_temp.try($$SELECT chat.require_member(999, 1)$$) AS require_member_unknown_user;
SELECT pg_temp.try($$SELECT chat.require_member(4, 1)$$) AS require_member_not_a_member;
