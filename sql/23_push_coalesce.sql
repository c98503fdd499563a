-- Push coalescing (claim_push_notifications: one notification per device
-- and conversation, standing for every outbox row it covers) and the
-- per-user preview setting (set_push_previews).
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

SELECT chat.upsert_user(i, 'user' || i) FROM generate_series(1, 3) i;
SELECT chat.register_device(1), chat.register_device(2), chat.register_device(2), chat.register_device(3);
SELECT chat.register_push(2, 1, 'fcm', 'fcm-2a'), chat.register_push(2, 2, 'apns', 'apns-2b'),
       chat.register_push(3, 1, 'fcm', 'fcm-3');
SELECT chat.create_group(1, 'g', ARRAY[2, 3]::bigint[]) AS g \gset
SELECT chat.direct_conversation(1, 2) AS d \gset
DELETE FROM chat.push_outbox;
SELECT count(*) FROM (SELECT chat.send_message(1, :g, 'g' || i) FROM generate_series(1, 3) i) s;
SELECT count(*) FROM (SELECT chat.send_message(1, :d, 'd' || i) FROM generate_series(1, 2) i) s;
SELECT count(*) AS rows FROM chat.push_outbox;

-- A batch of 1 claims the oldest row and coalesces the due rows of its
-- device and conversation: 3 rows, one notification, newest seq, first_seq.
SELECT platform, token, topic = 'c' || :g AS topic_ok, array_length(ids, 1) AS nids,
       payload - 'conversation' AS payload
  FROM chat.claim_push_notifications(1);
-- They are leased (attempt counted); the others are untouched.
SELECT user_id, device_id, conversation_id = :g AS in_g, count(*), min(attempts), max(attempts),
       bool_and(next_attempt_at > now()) AS leased
  FROM chat.push_outbox GROUP BY 1, 2, 3 ORDER BY 1, 2, 3;
-- The rest: one notification per device and conversation; a lone message has no first_seq.
SELECT platform, token, array_length(ids, 1) AS nids, payload ->> 'seq' AS seq,
       payload ->> 'first_seq' AS first_seq, payload ->> 'body' AS body
  FROM chat.claim_push_notifications(100) ORDER BY token, topic;
SELECT count(*) AS due_left FROM chat.push_outbox WHERE next_attempt_at <= now();
-- Completing a notification's ids accounts for all its messages.
SELECT chat.complete_push(ARRAY(SELECT id FROM chat.push_outbox)) AS completed;

-- Two more messages of the direct conversation.
SELECT count(*) FROM (SELECT chat.send_message(1, :d, 'x' || i) FROM generate_series(1, 2) i) s;
SELECT count(*) AS rows FROM chat.push_outbox;

-- Previews: off, the payload has no body; on again, it has.
SELECT pg_temp.try('SELECT chat.set_push_previews(2, NULL)');
SELECT pg_temp.try('SELECT chat.set_push_previews(99, false)');
SELECT chat.set_push_previews(2, false);
SELECT push_previews FROM chat.users WHERE id = 2;
SELECT token, payload ? 'body' AS has_body, payload ->> 'first_seq' AS first_seq
  FROM chat.claim_push_notifications(100) ORDER BY token;
SELECT chat.client_request('t', 2, 1, '{"id":1,"type":"set_push_previews","previews":true}') ->> 'type' AS answer;
SELECT chat.client_request('t', 2, 1, '{"id":2,"type":"set_push_previews"}') ->> 'code' AS missing;
SELECT chat.client_request('t', 2, 1, '{"id":3,"type":"set_push_previews","previews":"no"}') ->> 'code' AS not_bool;
SELECT push_previews FROM chat.users WHERE id = 2;
UPDATE chat.push_outbox SET next_attempt_at = now();
SELECT token, payload ->> 'body' AS body FROM chat.claim_push_notifications(100) ORDER BY token;
-- The older function honours the setting too.
SELECT chat.set_push_previews(2, false);
UPDATE chat.push_outbox SET next_attempt_at = now();
SELECT DISTINCT payload ? 'body' AS has_body FROM chat.claim_push_deliveries(100);

-- A device without a registration: its rows are removed, not returned.
UPDATE chat.push_outbox SET next_attempt_at = now();
UPDATE chat.devices SET push_platform = NULL WHERE user_id = 2 AND device_id = 2;
SELECT count(*) AS claimed FROM chat.claim_push_notifications(100);
SELECT count(*) FROM chat.push_outbox WHERE device_id = 2 AND user_id = 2;
SELECT pg_temp.try('SELECT chat.claim_push_notifications(0)');

-- chat.push_coalesce_ms: a queued row waits that long before it may be
-- claimed (retries are not held: their created_at is older), and
-- next_push_due says when it may be.
DELETE FROM chat.push_outbox;
SET chat.push_coalesce_ms = 60000;
SELECT count(*) FROM (SELECT chat.send_message(1, :g, 'held' || i) FROM generate_series(1, 2) i) s;
SELECT count(*) AS claimed FROM chat.claim_push_notifications(100);
SELECT round(extract(epoch FROM chat.next_push_due() - max(created_at))) AS due_in_s FROM chat.push_outbox;
UPDATE chat.push_outbox SET created_at = created_at - interval '61 seconds';
SELECT token, array_length(ids, 1) AS nids, payload ->> 'first_seq' AS first_seq
  FROM chat.claim_push_notifications(100) ORDER BY token;
SELECT pg_temp.try('SET chat.push_coalesce_ms = 60001');
RESET chat.push_coalesce_ms;
SELECT chat.next_push_due() > now() AS leased_rows_wait;
