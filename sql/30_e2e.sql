-- End-to-end encryption (30_e2e.sql): the key directory (keys_upload,
-- keys_query, keys_claim), the to-device inbox (to_device, sync,
-- to_device_ack), enable_e2e and the e2e rule of the send path; every
-- rejection with its SQLSTATE and no partial state after one.
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
-- What a rejected key call must leave alone.
CREATE FUNCTION pg_temp.keys() RETURNS text LANGUAGE sql AS $$
    SELECT coalesce(string_agg(user_id || '/' || device_id || ' ik=' || identity_key
                               || ' spk=' || (signed_prekey ->> 'id')
                               || ' fb=' || coalesce(fallback_key ->> 'id', '-')
                               || ' otk=' || (SELECT count(*) FROM chat.one_time_keys o
                                               WHERE o.user_id = k.user_id AND o.device_id = k.device_id),
                               '; ' ORDER BY user_id, device_id), 'none')
      FROM chat.device_keys k
$$;
CREATE FUNCTION pg_temp.inbox() RETURNS text LANGUAGE sql AS $$
    SELECT coalesce(string_agg(user_id || '/' || device_id || '<-' || from_user || '/' || from_device
                               || ':' || message_type || ':' || left(ciphertext, 12), ' ' ORDER BY id), 'empty')
      FROM chat.to_device
$$;
-- n one-time keys {"id": prefix || i, "key": "K" || prefix || i}
CREATE FUNCTION pg_temp.otks(prefix text, n integer) RETURNS jsonb LANGUAGE sql AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_object('id', prefix || i, 'key', 'K' || prefix || i) ORDER BY i), '[]')
      FROM generate_series(1, n) i
$$;

SELECT chat.upsert_user(i, 'user' || i) FROM generate_series(1, 6) i;
SELECT chat.register_device(i) FROM generate_series(1, 6) i;
SELECT chat.register_device(1) AS second_device_of_1;
-- Keys are claimed and envelopes sent between users who share a
-- conversation: group 1 (1, 2, 3), direct 2 (1, 2), group 3 (3, 4, 5, 2);
-- user 6 shares none.
SELECT chat.create_group(1, 'g', ARRAY[2, 3]::bigint[]) AS g;
SELECT chat.direct_conversation(1, 2) AS d;
SELECT chat.create_group(3, 'h', ARRAY[4, 5, 2]::bigint[]) AS h;

-- keys_upload ----------------------------------------------------------
SELECT pg_temp.try($$SELECT chat.keys_upload(1, 9, 'IK1', '{"id":1,"key":"S1","signature":"G1"}')$$) AS unknown_device;
SELECT pg_temp.try($$SELECT chat.keys_upload(1, 1, 'IK1')$$) AS first_without_spk;
SELECT pg_temp.try($$SELECT chat.keys_upload(1, 1, NULL, '{"id":1,"key":"S1","signature":"G1"}')$$) AS first_without_ik;
SELECT pg_temp.try($$SELECT chat.keys_upload(1, 1, 'not base64!', '{"id":1,"key":"S1","signature":"G1"}')$$) AS bad_ik;
SELECT pg_temp.try($$SELECT chat.keys_upload(1, 1, repeat('A', 1025), '{"id":1,"key":"S1","signature":"G1"}')$$) AS long_ik;
SELECT pg_temp.try($$SELECT chat.keys_upload(1, 1, 'IK1', '{"id":1,"key":"S1"}')$$) AS spk_no_signature;
SELECT pg_temp.try($$SELECT chat.keys_upload(1, 1, 'IK1', '"S1"')$$) AS spk_not_object;
SELECT pg_temp.try($$SELECT chat.keys_upload(1, 1, 'IK1', '{"id":"","key":"S1","signature":"G1"}')$$) AS spk_empty_id;
SELECT pg_temp.try($$SELECT chat.keys_upload(1, 1, 'IK1', '{"id":1,"key":"S 1","signature":"G1"}')$$) AS spk_bad_key;
SELECT pg_temp.try($$SELECT chat.keys_upload(1, 1, 'IK1', '{"id":1,"key":"S1","signature":"G1"}', '{"id":1}')$$) AS otks_not_array;
SELECT pg_temp.try($$SELECT chat.keys_upload(1, 1, 'IK1', '{"id":1,"key":"S1","signature":"G1"}', '[{"id":1}]')$$) AS otk_no_key;
SELECT pg_temp.try($$SELECT chat.keys_upload(1, 1, 'IK1', '{"id":1,"key":"S1","signature":"G1"}', '[{"id":1,"key":"#"}]')$$) AS otk_bad_key;
SELECT pg_temp.try($$SELECT chat.keys_upload(1, 1, 'IK1', '{"id":1,"key":"S1","signature":"G1"}', pg_temp.otks('a', 101))$$) AS otks_101;
SELECT pg_temp.try($$SELECT chat.keys_upload(1, 1, 'IK1', '{"id":1,"key":"S1","signature":"G1"}', NULL, '{"id":"f"}')$$) AS bad_fallback;
SELECT pg_temp.keys() AS after_rejections;

SELECT chat.keys_upload(1, 1, 'IK1', '{"id":1,"key":"S1","signature":"G1"}', pg_temp.otks('a', 12),
                        '{"id":"f1","key":"F1","signature":"H1"}') AS otk_count;
SELECT chat.keys_upload(1, 1, NULL, NULL, pg_temp.otks('a', 12)) AS retried_upload_same_count;
SELECT chat.keys_upload(1, 1, 'IK1', NULL, pg_temp.otks('b', 3)) AS same_identity_more_keys;
SELECT chat.keys_upload(1, 2, 'IK1b', '{"id":7,"key":"S1b","signature":"G1b"}') AS second_device_no_otks;
SELECT chat.keys_upload(2, 1, 'IK2', '{"id":1,"key":"S2","signature":"G2"}', pg_temp.otks('c', 2)) AS user2;
SELECT pg_temp.keys();
-- The pool bound: 200 one-time keys; a rejected upload stores none.
SELECT chat.keys_upload(3, 1, 'IK3', '{"id":1,"key":"S3","signature":"G3"}', pg_temp.otks('d', 100));
SELECT chat.keys_upload(3, 1, NULL, NULL, pg_temp.otks('e', 100));
SELECT pg_temp.try($$SELECT chat.keys_upload(3, 1, NULL, NULL, pg_temp.otks('g', 1))$$) AS pool_full;
SELECT count(*) AS pool_of_3 FROM chat.one_time_keys WHERE user_id = 3;
DELETE FROM chat.one_time_keys WHERE user_id = 3;

-- keys_query -----------------------------------------------------------
SELECT pg_temp.try($$SELECT * FROM chat.keys_query(1, ARRAY[2, 99])$$) AS unknown_user;
SELECT pg_temp.try($$SELECT * FROM chat.keys_query(99, ARRAY[2])$$) AS unknown_actor;
SELECT pg_temp.try($$SELECT * FROM chat.keys_query(1, NULL)$$) AS null_users;
SELECT pg_temp.try($$SELECT * FROM chat.keys_query(1, ARRAY(SELECT generate_series(1, 1001)::bigint))$$) AS too_many;
SELECT * FROM chat.keys_query(2, ARRAY[1, 2, 4]);

-- keys_claim -----------------------------------------------------------
SELECT pg_temp.try($$SELECT * FROM chat.keys_claim(2, 1, '{"user":1}')$$) AS not_array;
SELECT pg_temp.try($$SELECT * FROM chat.keys_claim(2, 1, '[{"user":1}]')$$) AS no_device;
SELECT pg_temp.try($$SELECT * FROM chat.keys_claim(2, 1, '[{"user":"1","device":1}]')$$) AS user_string;
SELECT pg_temp.try($$SELECT * FROM chat.keys_claim(2, 1, '[{"user":1,"device":1.5}]')$$) AS device_fraction;
SELECT pg_temp.try($$SELECT * FROM chat.keys_claim(2, 9, '[{"user":1,"device":1}]')$$) AS unknown_claimer;
-- An unknown device anywhere in the list: P0002, and no key of the
-- earlier entries is used up.
SELECT pg_temp.try($$SELECT * FROM chat.keys_claim(2, 1, '[{"user":1,"device":1},{"user":4,"device":1}]')$$) AS no_keys;
SELECT pg_temp.try($$SELECT * FROM chat.keys_claim(2, 1, (SELECT jsonb_agg('{"user":1,"device":1}'::jsonb) FROM generate_series(1, 1001)))$$) AS too_many;
SELECT pg_temp.try($$SELECT * FROM chat.keys_claim(6, 1, '[{"user":1,"device":1}]')$$) AS stranger_claims;
SELECT pg_temp.keys() AS after_rejections;
SELECT * FROM chat.keys_claim(2, 1, '[{"user":1,"device":1},{"user":1,"device":2},{"user":2,"device":1}]');
-- Each claim takes the oldest key left; 15 keys: 14 more, then the fallback.
SELECT string_agg(one_time_key ->> 'id', ',') AS ids, bool_or(fallback) AS any_fallback
  FROM generate_series(1, 14) g,
       LATERAL chat.keys_claim(2, 1, jsonb_build_array(jsonb_build_object('user', 1, 'device', 1 + 0 * g)));
SELECT one_time_key, fallback FROM chat.keys_claim(2, 1, '[{"user":1,"device":1}]');
SELECT one_time_key, fallback FROM chat.keys_claim(2, 1, '[{"user":1,"device":1}]') AS again;
SELECT pg_temp.keys();

-- A new identity key: needs a signed prekey; drops the old keys.
SELECT chat.keys_upload(2, 1, NULL, NULL, pg_temp.otks('h', 2));
SELECT pg_temp.try($$SELECT chat.keys_upload(2, 1, 'IK2new')$$) AS new_identity_without_spk;
SELECT chat.keys_upload(2, 1, 'IK2new', '{"id":2,"key":"S2n","signature":"G2n"}') AS new_identity_pool;
SELECT pg_temp.keys();

-- to_device ------------------------------------------------------------
SELECT pg_temp.try($$SELECT chat.to_device(1, 1, '[{"user":2,"device":1,"type":"olm","ciphertext":"c"}]', NULL)$$) AS null_txn;
SELECT pg_temp.try($$SELECT chat.to_device(1, 1, '[{"user":2,"device":1,"type":"olm","ciphertext":"c"}]', repeat('t', 129))$$) AS long_txn;
SELECT pg_temp.try($$SELECT chat.to_device(1, 1, '[]', 't0')$$) AS empty;
SELECT pg_temp.try($$SELECT chat.to_device(1, 1, '{}', 't0')$$) AS not_array;
SELECT pg_temp.try($$SELECT chat.to_device(1, 9, '[{"user":2,"device":1,"type":"olm","ciphertext":"c"}]', 't0')$$) AS unknown_sender;
SELECT pg_temp.try($$SELECT chat.to_device(1, 1, '[{"user":2,"device":1,"type":"olm","ciphertext":"c"}, {"user":2,"device":1,"type":"olm"}]', 't0')$$) AS no_ciphertext;
SELECT pg_temp.try($$SELECT chat.to_device(1, 1, '[{"user":2,"device":1,"type":"","ciphertext":"c"}]', 't0')$$) AS empty_type;
SELECT pg_temp.try($$SELECT chat.to_device(1, 1, '[{"user":2,"device":1,"type":"olm","ciphertext":""}]', 't0')$$) AS empty_ciphertext;
SELECT pg_temp.try($$SELECT chat.to_device(1, 1, '[{"user":2,"device":1,"type":"olm","ciphertext":"ünï\"cöde"}]', 't0')$$) AS not_base64;
SELECT pg_temp.try($$SELECT chat.to_device(1, 1, '[{"user":2,"device":1,"type":"o l m","ciphertext":"c"}]', 't0')$$) AS bad_type;
SELECT pg_temp.try($$SELECT chat.to_device(1, 1, jsonb_build_array(jsonb_build_object('user',2,'device',1,'type','olm','ciphertext',repeat('x', 6001))), 't0')$$) AS long_ciphertext;
SELECT pg_temp.try($$SELECT chat.to_device(1, 1, '[{"user":2,"device":1,"type":"olm","ciphertext":"c"}, {"user":2,"device":7,"type":"olm","ciphertext":"c"}]', 't0')$$) AS unknown_recipient;
SELECT pg_temp.try($$SELECT chat.to_device(1, 1, (SELECT jsonb_agg('{"user":2,"device":1,"type":"olm","ciphertext":"c"}'::jsonb) FROM generate_series(1, 1025)), 't0')$$) AS too_many;
SELECT pg_temp.try($$SELECT chat.to_device(6, 1, '[{"user":2,"device":1,"type":"olm","ciphertext":"c"}]', 't0')$$) AS stranger_sends,
       pg_temp.try($$SELECT chat.to_device(1, 1, '[{"user":2,"device":1,"type":"olm","ciphertext":"c"}, {"user":6,"device":1,"type":"olm","ciphertext":"c"}]', 't0')$$) AS to_a_stranger;
SELECT pg_temp.inbox() AS after_rejections, (SELECT count(*) FROM chat.to_device_txns) AS txns;
-- The txn of a rejected call is free: the retry stores everything.
SELECT chat.to_device(1, 1, '[{"user":2,"device":1,"type":"olm","ciphertext":"for-2-1"}, {"user":1,"device":2,"type":"olm","ciphertext":"for-1-2"}]', 't0');
SELECT chat.to_device(1, 1, '[{"user":2,"device":1,"type":"olm","ciphertext":"for-2-1"}, {"user":1,"device":2,"type":"olm","ciphertext":"for-1-2"}]', 't0') AS repeated_txn;
SELECT chat.to_device(2, 1, '[{"user":2,"device":1,"type":"megolm","ciphertext":"to-self"}]', 't0') AS same_txn_other_sender;
SELECT pg_temp.inbox();
SELECT jsonb_array_length(chat.to_device_pending(2, 1)) AS pending_2_1,
       (chat.to_device_pending(1, 2) -> 0) - 'id' AS first_of_1_2,
       chat.to_device_pending(1, 1) AS pending_1_1;
-- Sync returns the inbox until it is acked; ack deletes up to an id only.
SELECT (chat.client_request('n1', 2, 1, '{"id":1,"type":"sync"}') -> 'result' -> 'to_device') #- '{0,id}' #- '{1,id}' AS sync_2_1;
SELECT (chat.client_request('n1', 3, 1, '{"id":1,"type":"sync"}') -> 'result') - 'messages' AS sync_empty_inbox;
SELECT pg_temp.try($$SELECT chat.to_device_ack(2, 1, -1)$$) AS negative_ack;
SELECT pg_temp.try($$SELECT chat.to_device_ack(2, 9, 1)$$) AS unknown_device;
SELECT chat.to_device_ack(2, 1, (SELECT min(id) FROM chat.to_device WHERE user_id = 2)) AS acked_first;
SELECT pg_temp.inbox();
SELECT chat.to_device_ack(2, 1, (SELECT max(id) FROM chat.to_device)) AS acked_rest,
       chat.to_device_ack(2, 1, (SELECT max(id) FROM chat.to_device)) AS acked_again;
SELECT pg_temp.inbox();
-- The inbox bound: 1000 envelopes per device; then 54000, nothing stored.
SELECT chat.to_device(3, 1, (SELECT jsonb_agg(jsonb_build_object('user',4,'device',1,'type','olm','ciphertext','n' || i)) FROM generate_series(1, 1000) i), 'fill');
SELECT pg_temp.try($$SELECT chat.to_device(3, 1, '[{"user":5,"device":1,"type":"olm","ciphertext":"c"}, {"user":4,"device":1,"type":"olm","ciphertext":"c"}]', 'over')$$) AS inbox_full;
SELECT count(*) FILTER (WHERE user_id = 4) AS inbox_4, count(*) FILTER (WHERE user_id = 5) AS inbox_5
  FROM chat.to_device;
SELECT (chat.client_request('n1', 4, 1, '{"id":1,"type":"sync"}') -> 'result' ->> 'more') AS more_with_full_inbox;
SELECT chat.to_device_ack(4, 1, (SELECT max(id) FROM chat.to_device)) AS acked_all;

-- enable_e2e and the send path (group 1, direct 2) ----------------------
SELECT seq FROM chat.send_message(1, 2, 'before', 'm-before');
SELECT pg_temp.try($$SELECT chat.enable_e2e(4, 1)$$) AS not_member;
SELECT pg_temp.try($$SELECT chat.enable_e2e(2, 1)$$) AS plain_member;
SELECT pg_temp.try($$SELECT chat.enable_e2e(1, 99)$$) AS unknown_conversation;
SELECT pg_temp.try($$SELECT chat.enable_e2e(NULL, 1)$$) AS null_actor;
SELECT pg_temp.try($$SELECT * FROM chat.send_e2e(1, 2, 'ciphertext')$$) AS e2e_in_plain;
SELECT pg_temp.try($$SELECT chat.client_request('n1', 1, 1, '{"id":1,"type":"send","conversation":2,"body":"x","kind":"html"}')$$) AS bad_kind_frame,
       chat.client_request('n1', 1, 1, '{"id":1,"type":"send","conversation":2,"body":"x","kind":"html"}') ->> 'code' AS bad_kind;
SELECT id, settings, last_seq FROM chat.conversations ORDER BY id;
SELECT chat.enable_e2e(2, 2) AS direct_by_either_member;
SELECT chat.enable_e2e(1, 1) AS group_by_owner;
SELECT chat.enable_e2e(1, 1) AS again_nothing_more;
SELECT conversation_id, seq, sender_id, kind, body FROM chat.messages WHERE kind = 'system' AND body LIKE '%e2e%' ORDER BY 1, 2;
SELECT pg_temp.try($$SELECT * FROM chat.send_message(1, 2, 'plaintext')$$) AS plain_in_e2e;
SELECT chat.client_request('n1', 1, 1, '{"id":1,"type":"send","conversation":2,"body":"plaintext"}') - 'id' AS plain_frame;
SELECT chat.client_request('n1', 1, 1, '{"id":1,"type":"send","conversation":2,"body":"plaintext","kind":"text"}') ->> 'code' AS text_kind;
-- A retry of a send made before the switch keeps its answer.
SELECT seq, duplicate FROM chat.send_message(1, 2, 'before', 'm-before');
SELECT seq, duplicate FROM chat.send_e2e(1, 2, 'CIPHERTEXT1', 'e1', NULL, 1);
SELECT seq, duplicate FROM chat.send_e2e(1, 2, 'CIPHERTEXT1', 'e1', NULL, 1) AS retry;
SELECT (chat.client_request('n1', 2, 1, '{"id":1,"type":"send","conversation":2,"body":"CIPHERTEXT2","kind":"e2e"}') -> 'result') - 'created_at' AS e2e_frame;
SELECT seq, kind, body FROM chat.messages WHERE conversation_id = 2 ORDER BY seq;
SELECT pg_temp.try($$SELECT chat.edit_message(1, 2, 4, 'edited plaintext')$$) AS edit_in_e2e;
SELECT chat.delete_message(2, 2, 4) AS delete_still_allowed;
SELECT (chat.client_request('n1', 1, 1, '{"id":1,"type":"conversations"}') -> 'result' -> 'conversations')
       @? '$[*] ? (@.conversation == 2 && @.e2e == true)' AS listed_e2e,
       (chat.client_request('n1', 4, 1, '{"id":1,"type":"conversations"}') -> 'result' -> 'conversations')
       @? '$[*] ? (@.e2e == true)' AS nothing_for_4;
SELECT pg_temp.try($$SELECT chat.client_request('n1', 2, 1, '{"id":1,"type":"enable_e2e","conversation":1}')$$) AS over_request,
       chat.client_request('n1', 2, 1, '{"id":1,"type":"enable_e2e","conversation":1}') ->> 'code' AS plain_member_code;

-- Push rows of e2e messages carry no body (user 3 is offline with a token).
UPDATE chat.devices SET push_token = 'tok3' WHERE user_id = 3;
SELECT seq FROM chat.send_e2e(1, 1, 'GROUPCIPHER', NULL, NULL, 1);
SELECT seq, payload ? 'body' AS has_body, payload ->> 'ref' AS ref, payload ->> 'kind' AS kind
  FROM chat.push_outbox WHERE user_id = 3 ORDER BY id;

-- client_request: the e2e request types ----------------------------------
SELECT chat.client_request('n1', 4, 1, '{"id":1,"type":"keys_upload","identity_key":"IK4","signed_prekey":{"id":1,"key":"S4","signature":"G4"},"one_time_keys":[{"id":"x1","key":"X1"},{"id":"x2","key":"X2"}],"fallback_key":{"id":"f","key":"F4","signature":"H4"}}') AS upload;
SELECT chat.client_request('n1', 4, 1, '{"id":2,"type":"keys_upload","one_time_keys":"x"}') - 'message' AS upload_bad;
SELECT chat.client_request('n1', 5, 1, '{"id":3,"type":"keys_query","users":[4,5]}') AS query;
SELECT chat.client_request('n1', 5, 1, '{"id":4,"type":"keys_query"}') - 'message' AS query_no_users;
SELECT chat.client_request('n1', 5, 1, '{"id":5,"type":"keys_claim","devices":[{"user":4,"device":1},{"user":4,"device":1},{"user":4,"device":1}]}') AS claim;
SELECT chat.client_request('n1', 5, 1, '{"id":6,"type":"keys_claim"}') - 'message' AS claim_no_devices;
SELECT chat.client_request('n1', 5, 1, '{"id":7,"type":"to_device","txn":"a","messages":[{"user":4,"device":1,"type":"olm","ciphertext":"Zm9v"}]}') AS to_device;
SELECT chat.client_request('n1', 5, 1, '{"id":8,"type":"to_device","messages":[]}') - 'message' AS to_device_no_txn;
SELECT (chat.client_request('n1', 4, 1, '{"id":9,"type":"sync"}') -> 'result' -> 'to_device' -> 0) - 'id' AS synced;
SELECT chat.client_request('n1', 4, 1, jsonb_build_object('id', 10, 'type', 'to_device_ack', 'up_to', (SELECT max(id) FROM chat.to_device))) AS ack;
SELECT chat.client_request('n1', 4, 1, '{"id":11,"type":"to_device_ack","up_to":"x"}') - 'message' AS ack_bad;
SELECT pg_temp.inbox();

-- Removing a device removes its keys and its inbox.
SELECT chat.to_device(2, 1, '[{"user":1,"device":2,"type":"olm","ciphertext":"bye"}]', 'bye');
SELECT chat.remove_device(1, 2);
SELECT pg_temp.keys(), pg_temp.inbox();

-- Every new table is dumped with the extension's data.
SELECT c.relname FROM pg_extension e, unnest(e.extconfig) AS t(oid) JOIN pg_class c ON c.oid = t.oid
 WHERE e.extname = 'chat' AND c.relname ~ 'key|to_device' ORDER BY 1;
