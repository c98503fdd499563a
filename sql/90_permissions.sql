-- A gateway role and a pusher role with EXECUTE on their functions only
-- (no table rights) can run the realtime layer: the functions are
-- SECURITY DEFINER.
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
GRANT EXECUTE ON FUNCTION pg_temp.try(text) TO PUBLIC;

SELECT chat.upsert_user(1, 'ann'), chat.upsert_user(2, 'ben');
SELECT chat.register_device(1), chat.register_device(2, 'ios', 'tok-ben');
SELECT chat.direct_conversation(1, 2) AS conv;

DROP ROLE IF EXISTS chat_rt_gateway;
DROP ROLE IF EXISTS chat_rt_pusher;
CREATE ROLE chat_rt_gateway;
CREATE ROLE chat_rt_pusher;
GRANT USAGE ON SCHEMA chat TO chat_rt_gateway, chat_rt_pusher;
GRANT EXECUTE ON FUNCTION
    chat.node_reset(text), chat.node_heartbeat(text), chat.node_stop(text),
    chat.connect(text, bigint, integer), chat.disconnect(text, bigint, integer),
    chat.client_request(text, bigint, integer, jsonb), chat.get_message(bigint, bigint, bigint),
    chat.message_json(chat.message_view),
    chat.presence(bigint, bigint[]), chat.typing(bigint, bigint, boolean)
  TO chat_rt_gateway;
GRANT EXECUTE ON FUNCTION
    chat.claim_push(integer), chat.complete_push(bigint[]), chat.fail_push(bigint, text),
    chat.claim_push_deliveries(integer), chat.renew_push(bigint[]), chat.fail_push(bigint, text, interval),
    chat.forget_push(bigint, text), chat.next_push_due(), chat.push_queue_stats(),
    chat.claim_push_notifications(integer)
  TO chat_rt_pusher;

SET ROLE chat_rt_gateway;
SELECT pg_temp.try($$SELECT chat.node_reset('gw1')$$);
SELECT pg_temp.try($$SELECT chat.node_heartbeat('gw1')$$);
SELECT pg_temp.try($$SELECT chat.connect('gw1', 1, 1)$$);
SELECT chat.client_request('gw1', 1, 1, '{"id":1,"type":"send","conversation":1,"body":"hi"}') ->> 'type' AS send;
SELECT chat.client_request('gw1', 1, 1, '{"id":2,"type":"typing","conversation":1}') ->> 'type' AS typing;
SELECT pg_temp.try($$SELECT chat.typing(1, 1, false)$$);
SELECT user_id, online FROM chat.presence(2, ARRAY[1]);
SELECT (chat.get_message(2, 1, 1)).body;
SELECT chat.message_json(m) ->> 'body' AS ref_resolved FROM chat.get_message(2, 1, 1) m;
SELECT pg_temp.try($$SELECT chat.disconnect('gw1', 1, 1)$$);
-- but no table, and no internal helper
SELECT pg_temp.try($$SELECT count(*) FROM chat.sessions$$);
SELECT pg_temp.try($$SELECT chat.fanout_event(1, NULL, '{}')$$);
SELECT pg_temp.try($$SELECT chat.claim_push(1)$$);
RESET ROLE;

SET ROLE chat_rt_pusher;
SELECT user_id, device_id, seq, attempts, chat.complete_push(ARRAY[id]) AS completed
  FROM chat.claim_push(10);
SELECT pg_temp.try($$SELECT count(*) FROM chat.push_outbox$$);
RESET ROLE;
SELECT count(*) AS push_rows_left FROM chat.push_outbox;

-- chat-pusher's calls: a Web Push registration made through the gateway,
-- claimed (coalesced, as chat-pusher does) with the device's subscription,
-- renewed, failed, forgotten.
SET ROLE chat_rt_gateway;
SELECT chat.client_request('gw1', 2, 1, '{"id":3,"type":"register_push","platform":"webpush","subscription":{"endpoint":"https://push.example/ben","keys":{"p256dh":"BKP6HVSMkZBcCk9pWzvAo-qCVnFB7gkOGf5ynTvJ5kxlvoFRG9I-xeEfDLWHw7dGySgaqMvL9vpB0SzpLNjcLUo","auth":"Yn1m9dob4TUgv4XUsLgi5A"}}}') ->> 'type' AS register_push;
SELECT chat.client_request('gw1', 1, 1, '{"id":4,"type":"send","conversation":1,"body":"push me"}') ->> 'type' AS send;
RESET ROLE;
SET ROLE chat_rt_pusher;
SELECT ids[1] AS pid, token, subscription ->> 'endpoint' AS endpoint, topic, payload ->> 'body' AS body
  FROM chat.claim_push_notifications(10) \gset
SELECT :'token' AS token, :'endpoint' AS endpoint, :'topic' AS topic, :'body' AS body;
SELECT chat.renew_push(ARRAY[:pid]::bigint[]) AS renewed;
SELECT chat.fail_push(:pid, 'http 503', interval '1 second') AS retry;
SELECT chat.next_push_due() IS NOT NULL AS due_known;
SELECT pending FROM chat.push_queue_stats();
SELECT chat.forget_push(:pid, :'token') AS forgotten;
SELECT pg_temp.try($$SELECT chat.register_push(2, 1, 'fcm', 'x')$$) AS not_the_pushers;
RESET ROLE;
SELECT push_token, push_platform FROM chat.devices WHERE user_id = 2;

DROP OWNED BY chat_rt_gateway;
DROP OWNED BY chat_rt_pusher;
DROP ROLE chat_rt_gateway;
DROP ROLE chat_rt_pusher;
