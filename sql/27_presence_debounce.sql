-- Presence debounce (chat.presence_grace): the last device leaving notes the
-- user in chat.presence_pending instead of announcing it offline; coming
-- back within the grace removes the note silently; chat.presence_sweep (run
-- by chat.node_heartbeat) announces the notes older than the grace.  The
-- events themselves are checked by tests/realtime (test_presence_debounce)
-- and tests/gateway/25-presence-debounce.test.mjs.
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
CREATE FUNCTION pg_temp.pending() RETURNS text LANGUAGE sql AS $$
    SELECT coalesce(string_agg(user_id::text, ',' ORDER BY user_id), '-') FROM chat.presence_pending
$$;

SELECT chat.upsert_user(i, 'user' || i) FROM generate_series(1, 3) i;
SELECT chat.register_device(i) FROM generate_series(1, 3) i;
SELECT chat.register_device(1) AS second_device;
SELECT chat.direct_conversation(1, 2), chat.direct_conversation(1, 3);
SELECT chat.node_reset('gw1'), chat.node_reset('gw2');
SELECT chat.connect('gw1', 1, 1), chat.connect('gw1', 2, 1), chat.connect('gw1', 3, 1);

-- The default and the setting.
SHOW chat.presence_grace;
SELECT chat.presence_grace() AS grace_default;
SET chat.presence_grace = '1h';
SELECT chat.presence_grace() AS grace_set;
SELECT pg_temp.try($$SET chat.presence_grace = -1$$) AS negative;
SELECT pg_temp.try($$SET chat.presence_grace = '2h'$$) AS over_an_hour;
SHOW chat.presence_grace;

-- The last device leaves: noted, last_seen set, still online to viewers.
SELECT chat.disconnect('gw1', 1, 1);
SELECT pg_temp.pending() AS pending_after_leave;
SELECT online, last_seen > now() - interval '1 minute' AS last_seen_now FROM chat.presence(2, ARRAY[1]);
-- Back within the grace (on another node, another device): note removed.
SELECT chat.connect('gw2', 1, 2);
SELECT pg_temp.pending() AS pending_after_return;
SELECT online FROM chat.presence(2, ARRAY[1]);
-- One device of two leaving is no offline at all.
SELECT chat.connect('gw1', 1, 1), chat.disconnect('gw2', 1, 2);
SELECT pg_temp.pending() AS one_device_left;

-- Left for good: the sweep announces only notes older than the grace.
SELECT chat.disconnect('gw1', 1, 1);
SELECT chat.presence_sweep() AS announced_within_grace, pg_temp.pending() AS still_pending;
UPDATE chat.presence_pending SET since = now() - interval '61 minutes';
SELECT chat.presence_sweep() AS announced_after_grace, pg_temp.pending() AS pending_after_sweep;
SELECT online FROM chat.presence(2, ARRAY[1]);
SELECT chat.presence_sweep() AS announced_again;

-- Leaving again renews the note's time (a second leave within the grace).
SELECT chat.connect('gw1', 1, 1), chat.disconnect('gw1', 1, 1);
UPDATE chat.presence_pending SET since = now() - interval '30 minutes';
SELECT chat.connect('gw1', 1, 1), chat.disconnect('gw1', 1, 1);
SELECT since > now() - interval '1 minute' AS renewed FROM chat.presence_pending;

-- A note whose user has a live session again is dropped silently.
SELECT chat.connect('gw2', 1, 2);
INSERT INTO chat.presence_pending (user_id, since) VALUES (1, now() - interval '2 hours')
    ON CONFLICT (user_id) DO UPDATE SET since = EXCLUDED.since;
SELECT chat.presence_sweep() AS announced_with_live_session, pg_temp.pending() AS dropped;
SELECT chat.disconnect('gw2', 1, 2);

-- chat.node_heartbeat sweeps.
UPDATE chat.presence_pending SET since = now() - interval '2 hours';
SELECT chat.node_heartbeat('gw1');
SELECT pg_temp.pending() AS after_heartbeat;

-- A gateway restart (node_reset) notes its users instead of announcing them.
SELECT chat.connect('gw2', 3, 1);
SELECT chat.node_reset('gw1');
SELECT pg_temp.pending() AS after_reset;   -- 2 only: 3 is still on gw2
SELECT chat.connect('gw1', 2, 1);
SELECT pg_temp.pending() AS after_reconnect;

-- Grace 0: announced at once, nothing noted.
SET chat.presence_grace = 0;
SELECT chat.disconnect('gw1', 2, 1);
SELECT pg_temp.pending() AS grace_zero, online FROM chat.presence(1, ARRAY[2]);
RESET chat.presence_grace;

-- A deleted user's note goes with it.
SELECT chat.connect('gw2', 2, 1), chat.disconnect('gw2', 2, 1);
SELECT pg_temp.pending() AS before_delete;
DELETE FROM chat.users WHERE id = 2;
SELECT pg_temp.pending() AS after_delete;

-- Nobody but the owner runs these.
SELECT has_function_privilege('public', 'chat.presence_sweep()', 'EXECUTE') AS public_sweep,
       has_function_privilege('public', 'chat.presence_offline(bigint)', 'EXECUTE') AS public_offline,
       has_table_privilege('public', 'chat.presence_pending', 'SELECT') AS public_select;
