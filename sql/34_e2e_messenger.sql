-- E2E with the messenger features (issues 12 and 15): in an end-to-end
-- encrypted conversation mentions are member ids (the body is never parsed
-- for them) through send_e2e, the C client_request and the plpgsql
-- dispatcher; search never finds an e2e body; reactions are allowed (the
-- emoji is metadata the server sees, docs/e2e.md); disappearing messages
-- expire e2e messages too; push rows of e2e messages carry no body and a
-- mention still overrides mute; edits stay refused (0A000).
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
SELECT chat.upsert_user(i, 'user' || i) FROM generate_series(1, 4) i;
SELECT chat.register_device(i, 'web', 'tok' || i) FROM generate_series(1, 4) i;
SELECT chat.create_group(1, 'secret', ARRAY[2, 3]::bigint[]) AS g;   -- 1
SELECT chat.create_group(1, 'plain', ARRAY[2, 3]::bigint[]) AS p;    -- 2
SELECT chat.enable_e2e(1, 1);

-- mentions: ids in every send path, members only, no body parsing ----------
SELECT seq, duplicate FROM chat.send_e2e(1, 1, 'Q0lQSEVSMQ==', 'e1', NULL, 1, ARRAY[3, 2, 3]::bigint[]);
SELECT chat.client_request('n', 2, 1, '{"id":1,"type":"send","conversation":1,"body":"Q0lQSEVSMg==","kind":"e2e","mentions":[1]}') ->> 'type' AS c_send;
SELECT chat.dispatch_request('n', 3, 1, '{"id":2,"type":"send","conversation":1,"body":"Q0lQSEVSMw==","kind":"e2e","mentions":[2]}') ? 'seq' AS plpgsql_send;
SELECT chat.send_e2e(1, 1, 'Q0lQSEVSNA==', NULL, NULL, 1) IS NOT NULL AS no_mentions;
SELECT seq, kind, body, mentions FROM chat.messages WHERE conversation_id = 1 AND kind = 'e2e' ORDER BY seq;
-- a non-member mentioned: 22023, nothing written; plaintext mentions refused as before
SELECT last_seq AS before FROM chat.conversations WHERE id = 1 \gset
SELECT pg_temp.try($$SELECT chat.send_e2e(1, 1, 'Q0lQSEVS', NULL, NULL, 1, ARRAY[4]::bigint[])$$);
SELECT chat.client_request('n', 1, 1, '{"id":3,"type":"send","conversation":1,"body":"Q0lQSEVS","kind":"e2e","mentions":[4]}') ->> 'code' AS c_code;
SELECT pg_temp.try($$SELECT chat.dispatch_request('n', 1, 1, '{"id":4,"type":"send","conversation":1,"body":"Q0lQSEVS","kind":"e2e","mentions":[4]}')$$) AS plpgsql;
SELECT pg_temp.try($$SELECT chat.send_message(1, 1, 'hi @user2', NULL, NULL, 1, ARRAY[2]::bigint[])$$);
SELECT last_seq = :before AS nothing_written FROM chat.conversations WHERE id = 1;

-- search: e2e bodies are never searched ------------------------------------
SELECT chat.send_e2e(1, 1, 'zebra', NULL, NULL, 1) IS NOT NULL AS e2e_zebra;
SELECT chat.send_message(1, 2, 'zebra in the clear') IS NOT NULL AS plain_zebra;
SELECT conversation_id, kind, body FROM chat.search(2, 'zebra');
SELECT count(*) AS e2e_hits FROM chat.search(2, 'zebra', 1);

-- reactions: allowed on e2e messages (the emoji is metadata) ----------------
SELECT chat.react(2, 1, 3, '👍') IS NOT NULL AS reacted;
SELECT reactions FROM chat.messages WHERE conversation_id = 1 AND seq = 3;
SELECT kind, target, body FROM chat.messages WHERE conversation_id = 1 AND kind = 'reaction';

-- edits stay refused --------------------------------------------------------
SELECT pg_temp.try($$SELECT chat.edit_message(1, 1, 3, 'Q0lQSEVSMQ==')$$);

-- push: no body in e2e rows; a mention overrides mute ----------------------
SELECT chat.mute(3, 1, now() + interval '1 hour');
DELETE FROM chat.push_outbox;
SELECT seq AS plain FROM chat.send_e2e(1, 1, 'Q0lQSEVSNQ==', NULL, NULL, 1) \gset
SELECT seq AS mention FROM chat.send_e2e(1, 1, 'Q0lQSEVSNg==', NULL, NULL, 1, ARRAY[3]::bigint[]) \gset
SELECT user_id, seq = :mention AS mentioned, payload ? 'body' AS has_body, payload ->> 'kind' AS kind
  FROM chat.push_outbox ORDER BY seq, user_id;
SELECT count(*) AS bodies FROM chat.push_outbox WHERE payload::text LIKE '%Q0lQSEVS%';

-- disappearing messages: e2e messages expire like text ----------------------
SELECT chat.set_disappearing(1, 1, 60);
SELECT seq AS d1 FROM chat.send_e2e(2, 1, 'Q0lQSEVSNw==', NULL, NULL, 1, ARRAY[1]::bigint[]) \gset
SELECT kind, expires_at - created_at AS ttl FROM chat.messages WHERE conversation_id = 1 AND seq = :d1;
UPDATE chat.messages SET expires_at = now() - interval '1 s' WHERE conversation_id = 1 AND seq = :d1;
SELECT chat.expire_messages() >= 1 AS expired;
SELECT kind, body, mentions, deleted_at IS NOT NULL AS tombstone FROM chat.messages
 WHERE conversation_id = 1 AND seq = :d1;
