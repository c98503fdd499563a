-- Push outbox: rows for members with no online device (not muted, or
-- mentioned), claim_push / complete_push / fail_push with retries.
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

SELECT chat.upsert_user(i, 'user' || i) FROM generate_series(1, 5) i;
SELECT chat.register_device(1), chat.register_device(2, 'ios', 'tok-2');
SELECT chat.register_device(3, 'ios', 'tok-3a'), chat.register_device(3, 'android', 'tok-3b');
SELECT chat.register_device(4, 'ios', 'tok-4'), chat.register_device(5, 'ios', 'tok-5');
SELECT chat.create_group(1, 'g', ARRAY[2, 3, 4, 5]::bigint[]) AS g;
DELETE FROM chat.push_outbox;           -- system messages never push anyway
-- 2 is muted, 4 is online (on a live node), 5 is online on a dead node.
UPDATE chat.members SET muted_until = now() + interval '1 day' WHERE user_id = 2;
SELECT chat.node_reset('gw1'), chat.node_reset('gone');
SELECT chat.connect('gw1', 4, 1), chat.connect('gone', 5, 1);
UPDATE chat.nodes SET heartbeat_at = now() - interval '1 hour' WHERE node = 'gone';

SELECT seq FROM chat.send_message(1, 1, 'hello');
SELECT user_id, device_id, push_token, conversation_id, seq, payload ->> 'body' AS body, attempts
  FROM chat.push_outbox ORDER BY user_id, device_id;

-- A mention of the muted member still pushes.
SELECT seq FROM chat.send_message(1, 1, '@user2 look');
UPDATE chat.messages SET mentions = ARRAY[2::bigint] WHERE conversation_id = 1 AND seq = 3;
DELETE FROM chat.push_outbox WHERE seq = 3;
SELECT chat.fanout_message(1, 3);
SELECT user_id, device_id, seq FROM chat.push_outbox WHERE seq = 3 ORDER BY user_id, device_id;
-- An expired mute no longer silences.
UPDATE chat.members SET muted_until = now() - interval '1 minute' WHERE user_id = 2;
SELECT seq FROM chat.send_message(1, 1, 'mute is over');
SELECT user_id, device_id FROM chat.push_outbox WHERE seq = 4 ORDER BY user_id, device_id;
-- A large body is pushed by reference.
SELECT seq FROM chat.send_message(1, 1, repeat('z', 5000));
SELECT DISTINCT payload ? 'body' AS has_body, payload -> 'ref' AS ref FROM chat.push_outbox WHERE seq = 5;

-- With chat.fanout_mode off nothing is notified, but pushes still queue.
SET chat.fanout_mode = off;
SELECT seq FROM chat.send_message(1, 1, 'quiet');
SELECT user_id, device_id FROM chat.push_outbox WHERE seq = 6 ORDER BY user_id, device_id;
RESET chat.fanout_mode;

-- claim_push hands out due rows oldest first and leases them.
DELETE FROM chat.push_outbox WHERE seq <> 2;
SELECT id AS first_id FROM chat.push_outbox ORDER BY id LIMIT 1 \gset
SELECT id - :first_id AS rel_id, user_id, device_id, attempts FROM chat.claim_push(2);
SELECT id - :first_id AS rel_id, user_id, device_id, attempts FROM chat.claim_push(10);
SELECT count(*) AS nothing_due FROM chat.claim_push(10);
SELECT count(*) FILTER (WHERE next_attempt_at > now() + interval '4 minutes') AS leased FROM chat.push_outbox;

-- complete_push removes delivered rows.
SELECT chat.complete_push(ARRAY[:first_id::bigint, -1]);
SELECT count(*) AS left_over FROM chat.push_outbox;

-- fail_push retries with exponential backoff, then gives up.
SET chat.push_max_attempts = 3;
SELECT id AS fid FROM chat.push_outbox ORDER BY id LIMIT 1 \gset
SELECT chat.fail_push(:fid, 'timeout') AS retry_1;
SELECT attempts, last_error, round(extract(epoch FROM next_attempt_at - now())) AS backoff_s
  FROM chat.push_outbox WHERE id = :fid;
UPDATE chat.push_outbox SET next_attempt_at = now() WHERE id = :fid;
SELECT count(*) AS claimed FROM chat.claim_push(1) WHERE id = :fid;
SELECT chat.fail_push(:fid, 'timeout again') AS retry_2;
SELECT attempts, round(extract(epoch FROM next_attempt_at - now())) AS backoff_s
  FROM chat.push_outbox WHERE id = :fid;
UPDATE chat.push_outbox SET next_attempt_at = now() WHERE id = :fid;
SELECT count(*) AS claimed FROM chat.claim_push(1) WHERE id = :fid;
SELECT chat.fail_push(:fid, 'gone for good') AS retry_3;
SELECT attempts, next_attempt_at = 'infinity' AS given_up, last_error FROM chat.push_outbox WHERE id = :fid;
SELECT count(*) AS never_claimed_again FROM chat.claim_push(10) WHERE id = :fid;
RESET chat.push_max_attempts;

-- Bad input.
SELECT pg_temp.try($$SELECT chat.claim_push(0)$$);
SELECT pg_temp.try($$SELECT chat.claim_push(NULL)$$);
SELECT pg_temp.try($$SELECT chat.fail_push(-5, 'x')$$);
SELECT chat.complete_push('{}');
