-- chat.client_request is C (request.c); chat.dispatch_request keeps the
-- plpgsql reference of every request type.  Each request below runs twice,
-- each time rolled back: through client_request, and through ref(), the
-- plpgsql client_request it replaced (dispatch_request in BEGIN/EXCEPTION).
-- Both frames must be equal, timestamps masked: the field rules (order,
-- SQLSTATEs, messages), the results and the message objects.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS chat CASCADE;
CREATE EXTENSION chat;

CREATE FUNCTION pg_temp.ref(node text, user_id bigint, device_id integer, request jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    rid jsonb;
    state text;
    msg text;
BEGIN
    IF request IS NULL OR jsonb_typeof(request) <> 'object' THEN
        RETURN jsonb_build_object('id', NULL, 'type', 'error', 'code', '22P02',
                                  'error', 'invalid_text_representation',
                                  'message', 'request is not a JSON object');
    END IF;
    rid := coalesce(request -> 'id', 'null');
    IF jsonb_typeof(request -> 'type') IS DISTINCT FROM 'string' THEN
        RETURN jsonb_build_object('id', rid, 'type', 'error', 'code', '22P02',
                                  'error', 'invalid_text_representation',
                                  'message', 'request has no type');
    END IF;
    RETURN jsonb_build_object('id', rid, 'type', 'ok',
                              'result', chat.dispatch_request(node, user_id, device_id, request));
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
    RETURN jsonb_build_object('id', rid, 'type', 'error', 'code', state,
                              'error', coalesce(chat.condition_name(state), 'error'),
                              'message', msg);
END
$$;

-- The frame of fn for the request, timestamps masked, and the state it
-- left (watermarks, device cursors, last_seqs); its work rolled back.
CREATE FUNCTION pg_temp.undone(fn text, u bigint, d integer, r jsonb, OUT frame text, OUT state text)
LANGUAGE plpgsql AS $$
DECLARE
    f jsonb;
BEGIN
    BEGIN
        EXECUTE format('SELECT %s($1, $2, $3, $4)', fn) INTO f USING 'gw1', u, d, r;
        SELECT concat_ws(' ',
                   (SELECT string_agg(format('m%s/%s:%s,%s,%s', conversation_id, user_id, delivered_seq,
                                             read_seq, last_sent_seq), ' ' ORDER BY conversation_id, user_id)
                      FROM chat.members),
                   (SELECT string_agg(format('d%s/%s/%s:%s', user_id, device_id, conversation_id, acked_seq),
                                      ' ' ORDER BY user_id, device_id, conversation_id)
                      FROM chat.device_cursors),
                   (SELECT string_agg(format('c%s:%s', id, last_seq), ' ' ORDER BY id) FROM chat.conversations))
          INTO state;
        RAISE EXCEPTION 'undo' USING ERRCODE = 'XX999';
    EXCEPTION WHEN SQLSTATE 'XX999' THEN
    END;
    frame := regexp_replace(f::text, '"\d{4}-\d\d-\d\dT[^"]*"', '"<ts>"', 'g');
END
$$;

-- The C frame, and "same" when the reference's frame and state are equal
-- (else the reference's frame and state).
CREATE FUNCTION pg_temp.cmp(u bigint, d integer, r text) RETURNS TABLE(frame text, ref text)
LANGUAGE sql AS $$
    SELECT c.frame, CASE WHEN (c.frame, c.state) = (p.frame, p.state) THEN 'same'
                         ELSE p.frame || ' ' || p.state || ' (C: ' || c.state || ')' END
      FROM pg_temp.undone('chat.client_request', u, d, r::jsonb) c,
           pg_temp.undone('pg_temp.ref', u, d, r::jsonb) p
$$;

SELECT chat.upsert_user(i, 'user' || i) FROM generate_series(1, 4) i;
SELECT chat.register_device(i) FROM generate_series(1, 4) i;
SELECT chat.node_reset('gw1');
SELECT chat.connect('gw1', 1, 1), chat.connect('gw1', 2, 1);
SELECT chat.direct_conversation(1, 2);
SELECT count(*) FROM generate_series(1, 5) i,
  LATERAL chat.send_message(1 + i % 2, 1, 'm' || i, 'c' || i) AS s;
SELECT chat.edit_message(2, 1, 5, 'm5 edited');
SELECT chat.delete_message(1, 1, 4);

-- The envelope and the id.
SELECT * FROM pg_temp.cmp(1, 1, 'null');
SELECT * FROM pg_temp.cmp(1, 1, '3');
SELECT * FROM pg_temp.cmp(1, 1, '{"id":{"a":[1,"x"]},"type":null}');
SELECT * FROM pg_temp.cmp(1, 1, '{"id":1.50,"type":"typing","conversation":1}');
SELECT * FROM pg_temp.cmp(1, 1, '{"id":null,"type":"typing","conversation":1}');
SELECT * FROM pg_temp.cmp(1, 1, '{"id":"\u00e9\"","type":"Send","conversation":1}');
-- send: fields in the reference's order, every JSON type of each.
SELECT * FROM pg_temp.cmp(1, 1, '{"id":1,"type":"send","conversation":1,"body":"hi"}');
SELECT * FROM pg_temp.cmp(1, 1, '{"id":2,"type":"send","conversation":1,"body":"hi","client_msg_id":"c1"}');
SELECT * FROM pg_temp.cmp(1, 1, '{"id":3,"type":"send","conversation":1,"body":"hi","client_msg_id":12}');
SELECT * FROM pg_temp.cmp(1, 1, '{"id":4,"type":"send","conversation":1,"body":"hi","client_msg_id":""}');
SELECT * FROM pg_temp.cmp(1, 1, '{"id":5,"type":"send","conversation":1,"body":"hi","client_msg_id":true}');
SELECT * FROM pg_temp.cmp(1, 1, '{"id":6,"type":"send","conversation":1,"body":"hi","reply_to":0}');
SELECT * FROM pg_temp.cmp(1, 1, '{"id":7,"type":"send","conversation":1,"body":"hi","reply_to":"3"}');
SELECT * FROM pg_temp.cmp(1, 1, '{"id":8,"type":"send","conversation":1,"body":"hi","reply_to":99}');
SELECT * FROM pg_temp.cmp(1, 1, '{"id":9,"type":"send","conversation":1,"body":"hi","reply_to":-1}');
SELECT * FROM pg_temp.cmp(1, 1, '{"id":10,"type":"send","conversation":1,"body":"hi","reply_to":[1]}');
SELECT * FROM pg_temp.cmp(1, 1, '{"id":11,"type":"send","conversation":1,"body":7}');
SELECT * FROM pg_temp.cmp(1, 1, '{"id":12,"type":"send","conversation":1,"body":null}');
SELECT * FROM pg_temp.cmp(1, 1, '{"id":13,"type":"send","conversation":"x","body":5}');
SELECT * FROM pg_temp.cmp(1, 1, '{"id":14,"type":"send","conversation":9999999999999999999,"body":"hi"}');
SELECT * FROM pg_temp.cmp(1, 1, '{"id":15,"type":"send","conversation":"-0001","body":"hi"}');
SELECT * FROM pg_temp.cmp(1, 1, '{"id":16,"type":"send","conversation":" 1","body":"hi"}');
SELECT * FROM pg_temp.cmp(1, 1, '{"id":17,"type":"send","conversation":1e0,"body":"hi"}');
SELECT * FROM pg_temp.cmp(1, 1, '{"id":18,"type":"send","conversation":12345678901234567890,"body":"hi"}');
SELECT * FROM pg_temp.cmp(1, 1, '{"id":19,"type":"send","conversation":false,"body":"hi"}');
SELECT * FROM pg_temp.cmp(3, 1, '{"id":20,"type":"send","conversation":1,"body":"hi"}');
SELECT * FROM pg_temp.cmp(1, 1, '{"id":21,"type":"send","conversation":1,"body":"hi","client_msg_id":"c2"}');
-- ack and read.
SELECT * FROM pg_temp.cmp(2, 1, '{"id":30,"type":"ack","conversation":1,"seq":3}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":31,"type":"ack","conversation":1,"seq":99}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":32,"type":"ack","conversation":1,"seq":-1}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":33,"type":"ack","conversation":1}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":34,"type":"ack","seq":"x"}');
SELECT * FROM pg_temp.cmp(3, 1, '{"id":35,"type":"ack","conversation":1,"seq":1}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":36,"type":"read","conversation":1,"seq":3}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":37,"type":"read","conversation":1,"seq":1.5}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":38,"type":"read","conversation":2,"seq":1}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":39,"type":"read","conversation":1,"seq":99}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":44,"type":"read","conversation":1,"seq":0}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":45,"type":"ack","conversation":1,"seq":0}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":46,"type":"ack","conversation":1,"seq":7}');
-- typing.
SELECT * FROM pg_temp.cmp(2, 1, '{"id":40,"type":"typing","conversation":1,"typing":true}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":41,"type":"typing","conversation":1,"typing":null}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":42,"type":"typing","conversation":1,"typing":0}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":43,"type":"typing","conversation":[1]}');
-- sync, history and after: message objects and limits.
SELECT * FROM pg_temp.cmp(2, 1, '{"id":50,"type":"sync"}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":51,"type":"sync","limit":2}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":52,"type":"sync","limit":0}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":53,"type":"sync","limit":2147483648}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":54,"type":"sync","limit":"7"}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":55,"type":"history","conversation":1}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":56,"type":"history","conversation":1,"before_seq":4,"limit":2}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":57,"type":"history","conversation":1,"before_seq":"z"}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":58,"type":"history","conversation":1,"limit":1001}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":59,"type":"history","conversation":1,"limit":-2147483649}');
SELECT * FROM pg_temp.cmp(3, 1, '{"id":60,"type":"history","conversation":1}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":61,"type":"after","conversation":1,"after_seq":2}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":62,"type":"after","conversation":1,"after_seq":0,"limit":1}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":63,"type":"after","conversation":1,"after_seq":null}');
SELECT * FROM pg_temp.cmp(2, 1, '{"id":64,"type":"after","conversation":77,"after_seq":0}');
-- Types that stay in SQL behind the C dispatcher.
SELECT * FROM pg_temp.cmp(1, 1, '{"id":70,"type":"conversations"}');
SELECT * FROM pg_temp.cmp(1, 1, '{"id":71,"type":"edit","conversation":1,"seq":1,"body":"x"}');
SELECT * FROM pg_temp.cmp(1, 1, '{"id":72,"type":"presence","users":[2]}');
SELECT * FROM pg_temp.cmp(1, 1, '{"id":73,"type":"nope"}');

-- 600 random requests of the hot types: fields of every JSON type, present
-- or not; every frame and state must equal the reference's (prints 0).
SELECT setseed(0.26);
CREATE TEMP TABLE fuzz AS
SELECT i, (SELECT jsonb_object_agg(k, v)
             FROM (SELECT k, (ARRAY['null', 'true', '0', '1', '2', '-1', '1.5', '"1"', '"2"',
                                    '"x"', '""', '[]', '{}', '[1]', '7', '99999999999999999999',
                                    '2147483648', '"-3"', '"body"', 'false'])[1 + floor(random() * 20)::int]::jsonb AS v
                     FROM unnest(ARRAY['conversation', 'seq', 'body', 'client_msg_id', 'reply_to',
                                       'typing', 'limit', 'before_seq', 'after_seq', 'id']) AS k
                    WHERE random() < 0.6 + 0 * i) f)
         || jsonb_build_object('type', (ARRAY['send', 'ack', 'read', 'typing', 'sync', 'history',
                                              'after'])[1 + floor(random() * 7)::int]) AS r
  FROM generate_series(1, 600) i;
SELECT count(*) AS differing
  FROM fuzz, LATERAL pg_temp.cmp(1 + i % 3, 1, coalesce(r, '{}')::text) c
 WHERE c.ref <> 'same';
SELECT count(DISTINCT c.frame) > 50 AS varied, count(*) FILTER (WHERE c.frame LIKE '%"ok"%') > 20 AS some_ok
  FROM fuzz, LATERAL pg_temp.cmp(1 + i % 3, 1, coalesce(r, '{}')::text) c;

-- An unknown device is raised, not answered (P0002), before any request
-- work; so are NULL caller ids.
\set VERBOSITY terse
SELECT chat.client_request('gw1', 1, 9, '{"id":1,"type":"send","conversation":1,"body":"x"}');
SELECT chat.client_request('gw1', NULL, NULL, '{"id":1,"type":"typing","conversation":1}');
SELECT chat.client_request('gw1', 1, 9, 'null');
\set VERBOSITY default

-- A failed request's work is undone and the caller's transaction goes on:
-- a send that fails after taking its row locks (reply_to beyond the last
-- seq), then a send in the same transaction.
BEGIN;
SELECT chat.client_request('gw1', 1, 1, '{"id":80,"type":"send","conversation":1,"body":"x","reply_to":99}') ->> 'code';
SELECT chat.client_request('gw1', 1, 1, '{"id":81,"type":"send","conversation":1,"body":"kept"}') -> 'result' ->> 'seq';
COMMIT;
SELECT seq, body FROM chat.messages WHERE conversation_id = 1 AND seq > 5 ORDER BY seq;
