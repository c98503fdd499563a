-- Trust boundary of the extension: the token secret is never shown (not to
-- pg_read_all_settings / pg_monitor either), a node cannot register without
-- a secret (its notifications could not be signed), requests of a removed or
-- unknown device fail, chat.connect refuses such a device, and
-- remove_device announces the revocation to the nodes holding the device.
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

-- The secret itself is configured (postgresql.conf of the test cluster)...
SHOW chat.token_secret;
SELECT current_setting('chat.token_secret') AS as_superuser;
SELECT setting FROM pg_settings WHERE name = 'chat.token_secret';
-- ...and a session value is masked just the same.
SET chat.token_secret = 'do not print me';
SHOW chat.token_secret;
SELECT current_setting('chat.token_secret') ~ 'print' AS leaked;
SET chat.token_secret = '';
SELECT current_setting('chat.token_secret') = '' AS unset_shows_empty;
RESET chat.token_secret;

-- A pg_monitor member (so pg_read_all_settings) sees the mask, never the value.
DROP ROLE IF EXISTS chat_rt_monitor;
CREATE ROLE chat_rt_monitor IN ROLE pg_monitor;
SET ROLE chat_rt_monitor;
SELECT pg_has_role('pg_read_all_settings', 'member') AS reads_all_settings;
SHOW chat.token_secret;
SELECT current_setting('chat.token_secret') AS current_setting;
SELECT count(*) AS rows, bool_and(setting = '********') AS masked
  FROM pg_settings WHERE name = 'chat.token_secret';
-- pg_file_settings (the raw postgresql.conf lines) stays superuser-only.
SELECT pg_temp.try($$SELECT count(*) FROM pg_file_settings WHERE name = 'chat.token_secret'$$);
SELECT pg_temp.try($$SET chat.token_secret = 'mine'$$);
RESET ROLE;
DROP ROLE chat_rt_monitor;

-- node_reset refuses to register a node while no secret is set.
SET chat.token_secret = '';
SELECT pg_temp.try($$SELECT chat.node_reset('gw_nosecret')$$);
SELECT count(*) AS registered FROM chat.nodes WHERE node = 'gw_nosecret';
RESET chat.token_secret;
SELECT chat.node_reset('gw_id');

-- Devices: connect and client_request need a registered device.
SELECT chat.upsert_user(1, 'ann'), chat.upsert_user(2, 'ben');
SELECT chat.register_device(1), chat.register_device(1), chat.register_device(2);
SELECT chat.connect('gw_id', 1, 1), chat.connect('gw_id', 1, 2), chat.connect('gw_id', 2, 1);
SELECT pg_temp.try($$SELECT chat.connect('gw_id', 1, 9)$$) AS connect_unknown_device;
SELECT count(*) AS sessions_of_unknown FROM chat.sessions WHERE user_id = 1 AND device_id = 9;
SELECT chat.client_request('gw_id', 1, 1, '{"id":1,"type":"conversations"}') ->> 'type' AS known_device;
SELECT pg_temp.try($$SELECT chat.client_request('gw_id', 1, 9, '{"id":2,"type":"conversations"}')$$) AS unknown_device;
SELECT pg_temp.try($$SELECT chat.client_request('gw_id', 3, 1, '{"id":3,"type":"ping"}')$$) AS unknown_user;

-- remove_device: the device's requests fail from then on (a gateway that
-- missed the revoked event cannot act for it), its session is gone, and
-- the other device of the same user is untouched.
SELECT chat.direct_conversation(1, 2) AS conv \gset
SELECT chat.remove_device(1, 2);
SELECT pg_temp.try(format($$SELECT chat.client_request('gw_id', 1, 2, '{"id":4,"type":"send","conversation":%s,"body":"ghost"}')$$, :conv)) AS removed_device;
SELECT count(*) AS ghost_messages FROM chat.messages WHERE body = 'ghost';
SELECT user_id, device_id FROM chat.sessions ORDER BY 1, 2;
SELECT chat.client_request('gw_id', 1, 1, format('{"id":5,"type":"send","conversation":%s,"body":"still here"}', :conv)::jsonb) ->> 'type' AS other_device;
SELECT pg_temp.try($$SELECT chat.connect('gw_id', 1, 2)$$) AS reconnect_removed;
SELECT pg_temp.try($$SELECT chat.remove_device(1, 2)$$) AS remove_twice;
