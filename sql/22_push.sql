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
SELECT count(*) FILTER (WHERE next_attempt_at BETWEEN now() + interval '20 seconds' AND now() + interval '30 seconds') AS leased FROM chat.push_outbox;

-- complete_push removes delivered rows.
SELECT chat.complete_push(ARRAY[:first_id::bigint, -1]);
SELECT count(*) AS left_over FROM chat.push_outbox;

-- fail_push retries with exponential backoff, then gives up.
SET chat.push_max_attempts = 3;
SELECT id AS fid FROM chat.push_outbox ORDER BY id LIMIT 1 \gset
SELECT chat.fail_push(:fid, 'timeout') AS retry_1;
SELECT attempts, last_error,
       extract(epoch FROM next_attempt_at - now()) BETWEEN 14.9 AND 30.1 AS backoff_15_to_30_s
  FROM chat.push_outbox WHERE id = :fid;
UPDATE chat.push_outbox SET next_attempt_at = now() WHERE id = :fid;
SELECT count(*) AS claimed FROM chat.claim_push(1) WHERE id = :fid;
SELECT chat.fail_push(:fid, 'timeout again') AS retry_2;
SELECT attempts, extract(epoch FROM next_attempt_at - now()) BETWEEN 29.9 AND 60.1 AS backoff_30_to_60_s
  FROM chat.push_outbox WHERE id = :fid;
UPDATE chat.push_outbox SET next_attempt_at = now() WHERE id = :fid;
SELECT count(*) AS claimed FROM chat.claim_push(1) WHERE id = :fid;
SELECT chat.fail_push(:fid, 'gone for good') AS retry_3;
SELECT attempts, next_attempt_at = 'infinity' AS given_up, last_error FROM chat.push_outbox WHERE id = :fid;
-- The backoff is jittered: rows that fail together do not come back together.
INSERT INTO chat.push_outbox (user_id, device_id, push_token, conversation_id, seq, payload, attempts)
SELECT 999, 1, 'jitter', 1, g, '{}', 1 FROM generate_series(1, 20) AS g;
SELECT bool_and(r) AS all_retried FROM (SELECT chat.fail_push(id, 'x') AS r FROM chat.push_outbox
                                         WHERE push_token = 'jitter') f;
SELECT count(DISTINCT next_attempt_at) > 1 AS spread,
       bool_and(extract(epoch FROM next_attempt_at - now()) BETWEEN 14.9 AND 30.1) AS within_15_to_30_s
  FROM chat.push_outbox WHERE push_token = 'jitter';
DELETE FROM chat.push_outbox WHERE push_token = 'jitter';
SELECT count(*) AS never_claimed_again FROM chat.claim_push(10) WHERE id = :fid;
RESET chat.push_max_attempts;

-- Bad input.
SELECT pg_temp.try($$SELECT chat.claim_push(0)$$);
SELECT pg_temp.try($$SELECT chat.claim_push(NULL)$$);
SELECT pg_temp.try($$SELECT chat.fail_push(-5, 'x')$$);
SELECT chat.complete_push('{}');

-- register_push: a webpush subscription per device, fcm/apns tokens.
\set p256dh BKP6HVSMkZBcCk9pWzvAo-qCVnFB7gkOGf5ynTvJ5kxlvoFRG9I-xeEfDLWHw7dGySgaqMvL9vpB0SzpLNjcLUo
\set auth Yn1m9dob4TUgv4XUsLgi5A
DELETE FROM chat.push_outbox;
SELECT chat.register_push(2, 1, 'webpush', NULL, jsonb_build_object('endpoint', 'https://push.example/s/2',
       'expirationTime', NULL, 'keys', jsonb_build_object('p256dh', :'p256dh', 'auth', :'auth')));
SELECT chat.register_push(3, 1, 'fcm', 'fcm-token-3');
SELECT chat.register_push(3, 2, 'apns', 'apns-token-3');
SELECT user_id, device_id, platform, push_token, push_platform, push_subscription
  FROM chat.devices WHERE user_id IN (2, 3) ORDER BY 1, 2;
-- Bad shapes are 22023 and change nothing.
CREATE TEMP TABLE devices_before AS SELECT * FROM chat.devices;
SELECT pg_temp.try(format($$SELECT chat.register_push(2, 1, %L, NULL, %L)$$, p, s)) AS rejected
  FROM (VALUES
    ('gcm', '{"endpoint":"https://a.example/x","keys":{"p256dh":"' || :'p256dh' || '","auth":"' || :'auth' || '"}}'),
    (NULL, NULL),
    ('webpush', NULL),
    ('webpush', '[]'),
    ('webpush', '{"endpoint":"https://a.example/x"}'),
    ('webpush', '{"endpoint":"http://a.example/x","keys":{"p256dh":"' || :'p256dh' || '","auth":"' || :'auth' || '"}}'),
    ('webpush', '{"endpoint":"http://127.0.0.1.evil.example/x","keys":{"p256dh":"' || :'p256dh' || '","auth":"' || :'auth' || '"}}'),
    ('webpush', '{"endpoint":"https://a.example/x y","keys":{"p256dh":"' || :'p256dh' || '","auth":"' || :'auth' || '"}}'),
    ('webpush', '{"endpoint":"https://a.example/x","keys":{"p256dh":"BAAA","auth":"' || :'auth' || '"}}'),
    ('webpush', '{"endpoint":"https://a.example/x","keys":{"p256dh":"' || repeat('A', 87) || '","auth":"' || :'auth' || '"}}'),
    ('webpush', '{"endpoint":"https://a.example/x","keys":{"p256dh":"+/' || substr(:'p256dh', 3) || '","auth":"' || :'auth' || '"}}'),
    ('webpush', '{"endpoint":"https://a.example/x","keys":{"p256dh":"' || :'p256dh' || '","auth":"AAAA"}}'),
    ('webpush', '{"endpoint":"https://a.example/x","keys":{"p256dh":"' || :'p256dh' || '","auth":7}}')
  ) AS t(p, s);
SELECT pg_temp.try($$SELECT chat.register_push(3, 1, 'webpush', 'tok', NULL)$$) AS token_for_webpush;
SELECT pg_temp.try($$SELECT chat.register_push(3, 1, 'fcm', NULL)$$) AS no_token;
SELECT pg_temp.try($$SELECT chat.register_push(3, 1, 'fcm', 'has space')$$) AS bad_token;
SELECT pg_temp.try($$SELECT chat.register_push(3, 1, 'apns', 'tok', '{}')$$) AS subscription_for_apns;
SELECT pg_temp.try($$SELECT chat.register_push(3, 9, 'fcm', 'tok')$$) AS no_device;
SELECT pg_temp.try($$SELECT chat.unregister_push(3, 9)$$) AS no_device;
SELECT count(*) AS changed FROM (SELECT * FROM chat.devices EXCEPT SELECT * FROM devices_before) x;
-- http is allowed on the loopback address only (tests).
SELECT pg_temp.try(format($$SELECT chat.register_push(4, 1, 'webpush', NULL, %L)$$,
       '{"endpoint":"http://127.0.0.1:9/p/4","keys":{"p256dh":"' || :'p256dh' || '","auth":"' || :'auth' || '"}}')) AS loopback;
-- A token registered again moves to the new device.
SELECT chat.register_push(5, 1, 'fcm', 'fcm-token-3');
SELECT user_id, device_id, push_token, push_platform FROM chat.devices WHERE push_token = 'fcm-token-3' OR user_id = 3 ORDER BY 1, 2;

-- A token set by register_device alone (no platform) is queued but never delivered.
SELECT chat.register_device(2, 'ios', 'legacy-2') AS legacy_device;
-- Sending queues rows (and NOTIFYs chat_push: tests/pusher, delivery within 2 s).
SELECT seq AS pushed_seq FROM chat.send_message(1, 1, 'for the pushers') \gset
SELECT user_id, device_id FROM chat.push_outbox ORDER BY 1, 2;
-- claim_push_deliveries: registered devices only (3/1 lost its token to 5, which
-- is online on a dead node, so offline; 2/2 has no platform), the payload of
-- PROTOCOL "Push registration".
SELECT id - :first_id > 0 AS new_id, attempts, platform, token, subscription -> 'endpoint' AS endpoint, topic,
       payload - 'conversation' AS payload, (payload -> 'conversation')::bigint = 1 AS conv_ok
  FROM chat.claim_push_deliveries(10) ORDER BY token;
SELECT count(*) AS unregistered_rows_dropped FROM chat.push_outbox p
 WHERE NOT EXISTS (SELECT FROM chat.devices d WHERE d.user_id = p.user_id AND d.device_id = p.device_id
                     AND d.push_platform IS NOT NULL);
-- No body for a deleted message; renew_push extends leases in flight only.
SELECT chat.delete_message(1, 1, :pushed_seq);
UPDATE chat.push_outbox SET next_attempt_at = now();
SELECT DISTINCT payload ? 'body' AS has_body FROM chat.claim_push_deliveries(10);
UPDATE chat.push_outbox SET next_attempt_at = now() + interval '5 seconds' WHERE device_id = 1;
SELECT chat.renew_push(ARRAY(SELECT id FROM chat.push_outbox)) AS renewed;
SELECT count(*) FILTER (WHERE next_attempt_at > now() + interval '20 seconds') AS leased FROM chat.push_outbox;
SELECT chat.next_push_due() BETWEEN now() + interval '20 seconds' AND now() + interval '30 seconds' AS next_due;
-- forget_push: the endpoint is gone; the registration goes when it is still that token.
SELECT id AS wid FROM chat.push_outbox WHERE user_id = 2 AND device_id = 1 \gset
SELECT chat.forget_push(:wid, 'https://push.example/s/other') AS forgot_other;
SELECT push_token FROM chat.devices WHERE user_id = 2 ORDER BY device_id;
SELECT chat.send_message(1, 1, 'again') IS NOT NULL AS sent;
SELECT id AS wid FROM chat.push_outbox WHERE user_id = 2 AND device_id = 1 \gset
SELECT chat.forget_push(:wid, 'https://push.example/s/2') AS forgot;
SELECT push_token, push_platform, push_subscription FROM chat.devices WHERE user_id = 2 ORDER BY device_id;
SELECT count(*) AS rows_of_2 FROM chat.push_outbox WHERE user_id = 2 AND device_id = 1;
SELECT regexp_replace(pg_temp.try(format('SELECT chat.forget_push(%s, %L)', :wid, 'x')), '[0-9]+', 'N', 'g') AS forgotten_twice;
-- unregister_push drops the registration and the pending rows.
SELECT count(*) > 0 AS rows_of_5 FROM chat.push_outbox WHERE user_id = 5;
SELECT chat.unregister_push(5, 1);
SELECT push_token, push_platform FROM chat.devices WHERE user_id = 5;
SELECT count(*) AS rows_of_5 FROM chat.push_outbox WHERE user_id = 5;

-- Through client_request.
SELECT chat.client_request('gw1', 4, 1, jsonb_build_object('id', 1, 'type', 'register_push', 'platform', 'webpush',
       'subscription', jsonb_build_object('endpoint', 'https://push.example/s/4',
                                          'keys', jsonb_build_object('p256dh', :'p256dh', 'auth', :'auth'))));
SELECT push_token, push_platform FROM chat.devices WHERE user_id = 4;
SELECT chat.client_request('gw1', 4, 1, '{"id":2,"type":"register_push","platform":"webpush","subscription":"x"}');
SELECT chat.client_request('gw1', 4, 1, '{"id":3,"type":"register_push","platform":"apns","token":"a b"}');
SELECT chat.client_request('gw1', 4, 1, '{"id":4,"type":"register_push"}');
SELECT chat.client_request('gw1', 4, 1, '{"id":5,"type":"unregister_push"}');
SELECT push_token, push_platform FROM chat.devices WHERE user_id = 4;

-- fail_push with the push service's Retry-After.
SELECT seq FROM chat.send_message(1, 1, 'retry me') \gset
SELECT id AS rid FROM chat.push_outbox WHERE seq = :seq ORDER BY id LIMIT 1 \gset
SELECT chat.fail_push(:rid, '503', interval '7 seconds') AS retry;
SELECT round(extract(epoch FROM next_attempt_at - now())) AS retry_after_s, last_error FROM chat.push_outbox WHERE id = :rid;
SELECT pg_temp.try(format($$SELECT chat.fail_push(%s, 'x', interval '0 seconds')$$, :rid)) AS too_soon;
SELECT pg_temp.try(format($$SELECT chat.fail_push(%s, 'x', interval '2 hours')$$, :rid)) AS too_late;
SELECT round(extract(epoch FROM next_attempt_at - now())) AS unchanged_s FROM chat.push_outbox WHERE id = :rid;

-- Never a body for an e2e message (its body is ciphertext).
DELETE FROM chat.push_outbox;
SELECT chat.register_push(3, 2, 'apns', 'apns-token-3');
SELECT seq AS eseq FROM chat.send_message(1, 1, 'ciphertext...') \gset
UPDATE chat.messages SET kind = 'e2e' WHERE conversation_id = 1 AND seq = :eseq;
SELECT platform, payload ? 'body' AS has_body, payload ->> 'seq' = :'eseq' AS seq_ok FROM chat.claim_push_deliveries(10);

-- push_queue_stats: due rows and the age of the oldest, pending, given up.
DELETE FROM chat.push_outbox;
SELECT * FROM chat.push_queue_stats();
SELECT chat.send_message(1, 1, 'stats') IS NOT NULL AS sent;
UPDATE chat.push_outbox SET created_at = now() - interval '42 seconds';
SELECT due, round(oldest_due_age) AS oldest_due_age, pending, given_up FROM chat.push_queue_stats();
UPDATE chat.push_outbox SET next_attempt_at = 'infinity';
SELECT due, oldest_due_age, pending, given_up FROM chat.push_queue_stats();
