-- Users and devices: upsert_user, register_device, remove_device.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS chat CASCADE;
CREATE EXTENSION chat;
-- try(sql): runs sql and shows 'ok' or 'SQLSTATE: message'.
CREATE FUNCTION pg_temp.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

-- Happy paths.
SELECT chat.upsert_user(1, 'alice', 'Alice');
SELECT chat.upsert_user(2, 'bob');
SELECT chat.upsert_user(2, 'Bobby');                 -- rename keeps the display name (NULL)
SELECT chat.upsert_user(1, 'alice');                 -- NULL display_name keeps 'Alice'
SELECT id, handle, display_name, last_device_id FROM chat.users ORDER BY id;

SELECT chat.register_device(1) AS d1, chat.register_device(1, 'ios', 'tok-a') AS d2;
SELECT chat.register_device(2, 'android', 'tok-a') AS bob_d1;   -- the token moves to bob
SELECT user_id, device_id, platform, push_token FROM chat.devices ORDER BY 1, 2;

-- Device ids are never reused.
SELECT chat.remove_device(1, 2);
SELECT chat.register_device(1) AS d3;
SELECT user_id, device_id FROM chat.devices ORDER BY 1, 2;

-- remove_device drops cursors (and sessions and pending pushes).
SELECT chat.direct_conversation(1, 2) AS conv;
SELECT seq FROM chat.send_message(2, 1, 'hi');
SELECT chat.ack(1, 3, 1, 1);
SELECT chat.node_reset('gw1'), chat.connect('gw1', 1, 3);
SELECT count(*) AS cursors_before FROM chat.device_cursors WHERE user_id = 1 AND device_id = 3;
SELECT chat.remove_device(1, 3);
SELECT (SELECT count(*) FROM chat.device_cursors WHERE user_id = 1 AND device_id = 3) AS cursors,
       (SELECT count(*) FROM chat.sessions WHERE user_id = 1 AND device_id = 3) AS sessions;

-- Bad input: each error with its SQLSTATE, and nothing left behind.
SELECT pg_temp.try($$ SELECT chat.upsert_user(NULL, 'x') $$);
SELECT pg_temp.try($$ SELECT chat.upsert_user(3, NULL) $$);
SELECT pg_temp.try($$ SELECT chat.upsert_user(3, '  ') $$);
SELECT pg_temp.try($$ SELECT chat.upsert_user(3, repeat('x', 65)) $$);
SELECT pg_temp.try($$ SELECT chat.upsert_user(3, 'ALICE') $$);
SELECT pg_temp.try($$ SELECT chat.register_device(99) $$);
SELECT pg_temp.try($$ SELECT chat.register_device(NULL) $$);
SELECT pg_temp.try($$ SELECT chat.register_device(1, 'Bad Platform!') $$);
SELECT pg_temp.try($$ SELECT chat.register_device(1, 'web', '') $$);
SELECT pg_temp.try($$ SELECT chat.remove_device(1, 42) $$);
SELECT pg_temp.try($$ SELECT chat.remove_device(99, 1) $$);
SELECT (SELECT count(*) FROM chat.users) AS users,
       (SELECT count(*) FROM chat.devices) AS devices,
       (SELECT last_device_id FROM chat.users WHERE id = 1) AS alice_last_device;
