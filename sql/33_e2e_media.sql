-- E2E with media (issues 12 and 13): an e2e message may carry attachments,
-- which are encrypted files (application/octet-stream, no name: no
-- thumbnail, type and name inside the ciphertext).  Uploads of anything
-- else to an e2e conversation, and e2e sends of such files announced
-- before the switch, are refused (22023) and leave nothing behind; the
-- push rows of an e2e message with files carry no body.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS chat CASCADE;
CREATE EXTENSION chat;
SET chat.token_secret = 'regress e2e media secret';
-- The request frame of client_request without its id.
CREATE FUNCTION pg_temp.req(u bigint, r jsonb) RETURNS jsonb LANGUAGE sql AS $$
    SELECT chat.client_request('n1', u, 1, r) - 'id'
$$;
-- What a rejection must leave alone.
CREATE FUNCTION pg_temp.state() RETURNS text LANGUAGE sql AS $$
    SELECT 'attachments=' || (SELECT count(*) FROM chat.attachments)
        || ' sent=' || (SELECT count(*) FROM chat.attachments WHERE message_seq IS NOT NULL)
        || ' messages=' || (SELECT count(*) FROM chat.messages)
        || ' pushes=' || (SELECT count(*) FROM chat.push_outbox)
$$;
-- An upload request of user u to conversation c.
CREATE FUNCTION pg_temp.up(u bigint, c bigint, mime text, name text DEFAULT NULL) RETURNS jsonb LANGUAGE sql AS $$
    SELECT pg_temp.req(u, jsonb_strip_nulls(jsonb_build_object('type', 'upload', 'conversation', c,
        'mime', mime, 'size', 100, 'sha256', repeat('c', 64), 'name', name)))
$$;

SELECT chat.upsert_user(i, 'user' || i) FROM generate_series(1, 3) i;
SELECT chat.register_device(i) FROM generate_series(1, 3) i;
-- conversation 1: plain group; conversation 2: the group made e2e below.
SELECT chat.create_group(1, 'plain', ARRAY[2, 3]::bigint[]) AS plain;
SELECT chat.create_group(1, 'secret', ARRAY[2, 3]::bigint[]) AS secret;
-- user 3 is offline with a push token: it gets push rows
UPDATE chat.devices SET push_token = 'tok3', push_platform = 'fcm' WHERE user_id = 3;

-- A plaintext picture announced and uploaded before the switch.
SELECT pg_temp.up(1, 2, 'image/png', 'before.png') #>> '{result,upload}' AS before \gset
SELECT chat.media_uploaded(:'before', 64, 48, 'thumbbefore') AS before_ready;
SELECT chat.enable_e2e(1, 2) AS switched;

-- Plain conversations are unchanged: any allowed type, with a name.
SELECT (pg_temp.up(1, 1, 'image/png', 'cat.png') -> 'result') ? 'upload' AS plain_picture_ok;
SELECT pg_temp.state();

-- In the e2e conversation: a type the server would decode, or a name: 22023.
SELECT pg_temp.up(1, 2, 'image/png');
SELECT pg_temp.up(1, 2, 'application/pdf');
SELECT pg_temp.up(1, 2, 'application/octet-stream', 'secret plan.pdf');
SELECT pg_temp.up(1, 2, 'APPLICATION/OCTET-STREAM', 'x');
SELECT pg_temp.state();

-- An encrypted file: opaque bytes without a name.
SELECT pg_temp.up(1, 2, 'Application/Octet-Stream') #>> '{result,upload}' AS enc \gset
SELECT mime, name, state FROM chat.attachments WHERE id = :'enc';
SELECT chat.media_uploaded(:'enc') AS enc_ready;

-- kind text with it: refused by the e2e rule (22023), nothing sent.
SELECT pg_temp.req(1, jsonb_build_object('type', 'send', 'conversation', 2, 'body', 'plain caption',
                                         'attachments', jsonb_build_array(:'enc')));
-- kind e2e with the plaintext picture of before the switch: 22023.
SELECT pg_temp.req(1, jsonb_build_object('type', 'send', 'conversation', 2, 'body', 'CIPHERTEXT0', 'kind', 'e2e',
                                         'attachments', jsonb_build_array(:'before')));
SELECT pg_temp.req(1, jsonb_build_object('type', 'send', 'conversation', 2, 'body', 'CIPHERTEXT0', 'kind', 'e2e',
                                         'attachments', jsonb_build_array(:'enc', :'before')));
SELECT pg_temp.state();

-- kind e2e with the encrypted file: stored, attached, idempotent.
SELECT (pg_temp.req(1, jsonb_build_object('type', 'send', 'conversation', 2, 'body', 'CIPHERTEXT1', 'kind', 'e2e',
                                          'client_msg_id', 'ef1', 'attachments', jsonb_build_array(:'enc'))) -> 'result')
       - 'created_at' AS e2e_with_file;
SELECT (pg_temp.req(1, jsonb_build_object('type', 'send', 'conversation', 2, 'body', 'CIPHERTEXT1', 'kind', 'e2e',
                                          'client_msg_id', 'ef1', 'attachments', jsonb_build_array(:'enc'))) -> 'result')
       - 'created_at' AS retry;
SELECT seq, kind, body, (attachments -> 0) - 'id' AS attachment, attachments #>> '{0,id}' = :'enc' AS same_id
  FROM chat.messages WHERE conversation_id = 2 AND attachments IS NOT NULL;
SELECT message_seq FROM chat.attachments WHERE id = :'enc';
-- Readers get it with its attachment (history of user 2).
SELECT kind, body, attachments #>> '{0,mime}' AS mime
  FROM chat.history(2, 2) WHERE attachments IS NOT NULL;
-- The push row of user 3: no body (ciphertext never goes to a push service).
SELECT seq, payload ? 'body' AS has_body, payload::text LIKE '%CIPHERTEXT%' AS has_ciphertext
  FROM chat.push_outbox WHERE user_id = 3 AND conversation_id = 2 ORDER BY id;
SELECT payload ? 'body' AS notification_has_body, payload ->> 'seq' AS seq
  FROM chat.claim_push_notifications(10) WHERE topic = 'c2';
SELECT pg_temp.state();
