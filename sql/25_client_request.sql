-- chat.client_request: every request type of docs/protocol.md and every error
-- frame (id echoed, SQLSTATE, condition name, message).
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS chat CASCADE;
CREATE EXTENSION chat;
-- req(user, device, request): the response frame, timestamps masked.
CREATE FUNCTION pg_temp.req(u bigint, d integer, r text) RETURNS text LANGUAGE sql AS $$
    SELECT regexp_replace(chat.client_request('gw1', u, d, r::jsonb)::text,
                          '"\d{4}-\d\d-\d\dT[^"]*"', '"<ts>"', 'g')
$$;

SELECT chat.upsert_user(i, 'user' || i) FROM generate_series(1, 5) i;
SELECT chat.register_device(i) FROM generate_series(1, 5) i;
SELECT chat.node_reset('gw1');
SELECT chat.connect('gw1', 1, 1), chat.connect('gw1', 2, 1);

-- Conversations.
SELECT pg_temp.req(1, 1, '{"id":1,"type":"direct","user":2}');
SELECT pg_temp.req(1, 1, '{"id":"g","type":"create_group","title":"team","members":[2,3]}');
SELECT pg_temp.req(1, 1, '{"id":3,"type":"add_member","conversation":2,"user":4,"role":"admin"}');
SELECT pg_temp.req(4, 1, '{"id":4,"type":"remove_member","conversation":2,"user":4}');

-- Messages.
SELECT pg_temp.req(1, 1, '{"id":10,"type":"send","conversation":1,"body":"hi","client_msg_id":"a1"}');
SELECT pg_temp.req(1, 1, '{"id":11,"type":"send","conversation":1,"body":"hi","client_msg_id":"a1"}');
SELECT pg_temp.req(2, 1, '{"id":12,"type":"send","conversation":"1","body":"re","reply_to":1}');
SELECT pg_temp.req(1, 1, '{"id":13,"type":"edit","conversation":1,"seq":1,"body":"hello"}');
SELECT pg_temp.req(2, 1, '{"id":14,"type":"delete","conversation":1,"seq":2}');
SELECT pg_temp.req(2, 1, '{"id":15,"type":"history","conversation":1}');
SELECT pg_temp.req(2, 1, '{"id":16,"type":"history","conversation":1,"before_seq":2,"limit":1}');
SELECT pg_temp.req(2, 1, '{"id":17,"type":"after","conversation":1,"after_seq":0,"limit":1}');
SELECT pg_temp.req(2, 1, '{"id":18,"type":"sync","limit":1}');
SELECT pg_temp.req(2, 1, '{"id":19,"type":"ack","conversation":1,"seq":2}');
SELECT pg_temp.req(2, 1, '{"id":20,"type":"read","conversation":1,"seq":2}');
SELECT pg_temp.req(2, 1, '{"id":21,"type":"typing","conversation":1}');
SELECT pg_temp.req(2, 1, '{"id":22,"type":"typing","conversation":1,"typing":false}');
SELECT pg_temp.req(2, 1, '{"id":23,"type":"conversations","limit":5}');
SELECT pg_temp.req(2, 1, '{"id":24,"type":"presence","users":[1,3,99]}');
-- ping is the gateway's (it answers pong itself): here an unknown type.
SELECT pg_temp.req(2, 1, '{"type":"ping"}');

-- A message object in a result has exactly the keys of the message event.
SELECT array_agg(k ORDER BY k) AS message_keys
  FROM jsonb_object_keys(chat.client_request('gw1', 2, 1,
       '{"id":1,"type":"after","conversation":1,"after_seq":0}') -> 'result' -> 'messages' -> 0) k;
SELECT (chat.client_request('gw1', 2, 1, '{"id":1,"type":"after","conversation":1,"after_seq":0}')
        #>> '{result,messages,0,created_at}') ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$' AS created_at_format;
SELECT chat.message_json(m) = (chat.client_request('gw1', 2, 1,
           '{"id":1,"type":"after","conversation":1,"after_seq":0}') #> '{result,messages,0}') AS same_shape
  FROM chat.get_message(2, 1, 1) m;

-- Malformed requests: 22P02 (not an object, no type, wrong field type) and
-- 22023 (unknown type, missing field).
SELECT pg_temp.req(1, 1, '[1,2]');
SELECT pg_temp.req(1, 1, '"send"');
SELECT pg_temp.req(1, 1, '{"id":30}');
SELECT pg_temp.req(1, 1, '{"id":31,"type":7}');
SELECT pg_temp.req(1, 1, '{"id":32,"type":"launch"}');
SELECT pg_temp.req(1, 1, '{"id":33,"type":"send","body":"x"}');
SELECT pg_temp.req(1, 1, '{"id":34,"type":"send","conversation":1}');
SELECT pg_temp.req(1, 1, '{"id":35,"type":"send","conversation":null,"body":"x"}');
SELECT pg_temp.req(1, 1, '{"id":36,"type":"send","conversation":"one","body":"x"}');
SELECT pg_temp.req(1, 1, '{"id":37,"type":"send","conversation":1.5,"body":"x"}');
SELECT pg_temp.req(1, 1, '{"id":38,"type":"send","conversation":1,"body":{"a":1}}');
SELECT pg_temp.req(1, 1, '{"id":39,"type":"typing","conversation":1,"typing":"yes"}');
SELECT pg_temp.req(1, 1, '{"id":40,"type":"presence","users":"1,2"}');
SELECT pg_temp.req(1, 1, '{"id":41,"type":"presence"}');
SELECT pg_temp.req(1, 1, '{"id":42,"type":"after","conversation":1}');
SELECT pg_temp.req(1, 1, '{"id":43,"type":"edit","conversation":1,"seq":1}');
SELECT pg_temp.req(1, 1, '{"id":44,"type":"create_group","title":"x","members":[1,"a"]}');

-- Errors of the functions behind: SQLSTATE and condition name.
SELECT pg_temp.req(3, 1, '{"id":50,"type":"send","conversation":1,"body":"intruder"}');   -- 42501
SELECT pg_temp.req(1, 1, '{"id":51,"type":"send","conversation":999,"body":"x"}');       -- P0002
SELECT pg_temp.req(1, 1, '{"id":52,"type":"send","conversation":1,"body":""}');          -- 22023
SET chat.max_body_bytes = 8;
SELECT pg_temp.req(1, 1, '{"id":53,"type":"send","conversation":1,"body":"123456789"}'); -- 22001
RESET chat.max_body_bytes;
SELECT pg_temp.req(1, 1, '{"id":54,"type":"edit","conversation":1,"seq":2,"body":"x"}'); -- not the sender
SELECT pg_temp.req(2, 1, '{"id":55,"type":"edit","conversation":1,"seq":2,"body":"x"}'); -- deleted: 55000
SET chat.edit_window = 0;
SELECT pg_temp.req(1, 1, '{"id":56,"type":"edit","conversation":1,"seq":1,"body":"late"}'); -- 55000
RESET chat.edit_window;
SET chat.max_group_members = 3;
SELECT pg_temp.req(1, 1, '{"id":57,"type":"add_member","conversation":2,"user":5}');       -- 54000
RESET chat.max_group_members;
SELECT pg_temp.req(1, 1, '{"id":58,"type":"direct","user":77}');                          -- P0002
SELECT pg_temp.req(3, 1, '{"id":59,"type":"typing","conversation":1}');                   -- 42501
SELECT pg_temp.req(1, 1, '{"id":60,"type":"typing","conversation":999}');                 -- P0002
SELECT pg_temp.req(1, 1, '{"id":61,"type":"conversations","before":"yesterday-ish"}');

-- A failed request leaves the caller's transaction usable.
BEGIN;
SELECT pg_temp.req(3, 1, '{"id":70,"type":"send","conversation":1,"body":"no"}');
SELECT pg_temp.req(1, 1, '{"id":71,"type":"send","conversation":1,"body":"yes"}');
COMMIT;
SELECT seq, body FROM chat.messages WHERE conversation_id = 1 ORDER BY seq;

-- The condition names come from PostgreSQL's errcodes.
SELECT chat.condition_name('42501'), chat.condition_name('P0002'), chat.condition_name('zzzzz');
