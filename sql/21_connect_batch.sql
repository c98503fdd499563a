-- chat.connect_many (issue 11, connection storms): many sessions in one call,
-- each exactly as chat.connect would register it, errors per session.
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
CREATE FUNCTION pg_temp.sessions() RETURNS text LANGUAGE sql AS $$
    SELECT coalesce(string_agg(node || ':' || user_id || '/' || device_id, ' ' ORDER BY node, user_id, device_id), '-')
      FROM chat.sessions
$$;

SELECT chat.upsert_user(i, 'user' || i) FROM generate_series(1, 4) i;
SELECT chat.register_device(i) FROM generate_series(1, 4) i;
SELECT chat.register_device(1) AS second_device;
SELECT chat.direct_conversation(1, 2);
SELECT chat.node_reset('gw1');

-- Three good sessions (two devices of user 1) and one unknown device among
-- them: one row per session, in (user, device) order; the bad one fails
-- alone with chat.connect's own SQLSTATE and message.
SELECT idx, code, message
  FROM chat.connect_many('gw1', ARRAY[2, 1, 9, 1]::bigint[], ARRAY[1, 2, 1, 1]);
SELECT pg_temp.sessions() AS after_batch;
-- The same as chat.connect: online, last_active set, nothing pending.
SELECT online FROM chat.presence(2, ARRAY[1]);
SELECT count(*) AS active FROM chat.devices WHERE last_active > now() - interval '1 minute';
SELECT count(*) AS pending FROM chat.presence_pending;

-- Again (a reconnect): idempotent, no second row.
SELECT idx, code FROM chat.connect_many('gw1', ARRAY[1, 2]::bigint[], ARRAY[1, 1]);
SELECT pg_temp.sessions() AS after_repeat;

-- Back within the grace: the pending offline note goes, silently, as with chat.connect.
SELECT chat.disconnect('gw1', 3, 1) AS not_connected;
SELECT idx, code FROM chat.connect_many('gw1', ARRAY[3]::bigint[], ARRAY[1]);
SELECT chat.disconnect('gw1', 3, 1);
SELECT count(*) AS pending_after_leave FROM chat.presence_pending WHERE user_id = 3;
SELECT idx, code FROM chat.connect_many('gw1', ARRAY[3]::bigint[], ARRAY[1]);
SELECT count(*) AS pending_after_return FROM chat.presence_pending WHERE user_id = 3;

-- Nothing to do.
SELECT count(*) AS empty FROM chat.connect_many('gw1', '{}'::bigint[], '{}'::integer[]);
-- NULL elements fail per session like any unknown device.
SELECT idx, code FROM chat.connect_many('gw1', ARRAY[NULL, 4]::bigint[], ARRAY[1, NULL]);

-- Whole-call errors leave nothing behind.
SELECT pg_temp.try($$SELECT * FROM chat.connect_many('gw1', ARRAY[4]::bigint[], ARRAY[1, 2])$$) AS length_mismatch;
SELECT pg_temp.try($$SELECT * FROM chat.connect_many('gw1', NULL, ARRAY[1])$$) AS null_users;
SELECT pg_temp.try($$SELECT * FROM chat.connect_many('gw1', ARRAY[4]::bigint[], NULL)$$) AS null_devices;
SELECT pg_temp.try($$SELECT * FROM chat.connect_many('Bad Node', ARRAY[4]::bigint[], ARRAY[1])$$) AS bad_node;
SELECT pg_temp.try($$SELECT * FROM chat.connect_many('gw1', array_fill(4::bigint, ARRAY[10001]), array_fill(1, ARRAY[10001]))$$) AS too_many;
SELECT pg_temp.sessions() AS unchanged;

-- Not for PUBLIC.
CREATE ROLE chat_cb_nobody;
GRANT USAGE ON SCHEMA chat TO chat_cb_nobody;
SET ROLE chat_cb_nobody;
SELECT pg_temp.try($$SELECT * FROM chat.connect_many('gw1', ARRAY[4]::bigint[], ARRAY[1])$$) AS public_call;
RESET ROLE;
REVOKE USAGE ON SCHEMA chat FROM chat_cb_nobody;
DROP ROLE chat_cb_nobody;
