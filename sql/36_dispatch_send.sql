-- The plpgsql dispatcher's send (chat.dispatch_request, the path of direct
-- SQL callers; client_request sends in C): attachments, mentions and kind
-- are passed like the C send's, with the same rejections (no partial
-- state after one); chat.send_message / send_e2e take attachments too.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS chat CASCADE;
CREATE EXTENSION chat;
SET chat.token_secret = 'regress dispatch secret';
CREATE FUNCTION pg_temp.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
-- dispatch_request's result without created_at, or its error
CREATE FUNCTION pg_temp.disp(u bigint, r jsonb) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    RETURN (chat.dispatch_request('n1', u, 1, r) - 'created_at')::text;
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
-- A ready upload of user u to conversation c.
CREATE FUNCTION pg_temp.ready_upload(u bigint, c bigint, mime text, name text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    id text := chat.upload(u, c, mime, 10, repeat('a', 64), name) ->> 'upload';
BEGIN
    PERFORM chat.media_uploaded(id::uuid, NULL, NULL, NULL);
    RETURN id;
END $$;
CREATE FUNCTION pg_temp.state() RETURNS text LANGUAGE sql AS $$
    SELECT 'messages=' || (SELECT count(*) FROM chat.messages)
        || ' bound=' || (SELECT count(*) FROM chat.attachments WHERE message_seq IS NOT NULL)
$$;

SELECT chat.upsert_user(i, 'u' || i) FROM generate_series(1, 3) i;
SELECT chat.register_device(i) FROM generate_series(1, 3) i;
SELECT chat.direct_conversation(1, 2) AS c12;          -- 1
SELECT chat.create_group(1, 'g', ARRAY[2]::bigint[]) AS g;   -- 2
SELECT chat.direct_conversation(1, 3) AS c13;          -- 3 (made e2e below)
SELECT pg_temp.ready_upload(1, 1, 'image/png', 'cat.png') AS up1 \gset
SELECT pg_temp.ready_upload(1, 1, 'application/pdf', 'doc.pdf') AS up2 \gset
SELECT (chat.upload(1, 1, 'image/png', 10, repeat('b', 64)) ->> 'upload') AS pending \gset
SELECT pg_temp.state();

-- Attachments without a caption: the message carries them, the uploads
-- are bound to it (before the fix: 22023 "body" missing).
SELECT pg_temp.disp(1, jsonb_build_object('type', 'send', 'conversation', 1,
                                           'attachments', jsonb_build_array(:'up1'), 'client_msg_id', 'd1'));
SELECT seq, body, attachments #>> '{0,id}' = :'up1' AS att, attachments #>> '{0,name}' AS name
  FROM chat.messages WHERE conversation_id = 1 ORDER BY seq;
SELECT message_seq FROM chat.attachments WHERE id = :'up1';
-- With a caption and mentions (before the fix the attachment was dropped).
SELECT pg_temp.disp(1, jsonb_build_object('type', 'send', 'conversation', 2, 'body', 'see @u2',
                                           'mentions', jsonb_build_array(2)));
SELECT pg_temp.ready_upload(1, 2, 'image/png', 'g.png') AS up3 \gset
SELECT pg_temp.disp(1, jsonb_build_object('type', 'send', 'conversation', 2, 'body', 'file for @u2',
                                           'mentions', jsonb_build_array(2), 'kind', 'text',
                                           'attachments', jsonb_build_array(:'up3')));
SELECT seq, kind, body, mentions, attachments #>> '{0,name}' AS name
  FROM chat.messages WHERE conversation_id = 2 AND kind = 'text' ORDER BY seq;
SELECT message_seq FROM chat.attachments WHERE id = :'up3';

-- Rejections: each the SQLSTATE of the C send (client_request), nothing stored.
SELECT pg_temp.state();
CREATE TEMP TABLE bad (n serial, r jsonb);
INSERT INTO bad (r) VALUES
    (jsonb_build_object('type', 'send', 'conversation', 1, 'attachments', 'nope')),
    (jsonb_build_object('type', 'send', 'conversation', 1, 'attachments', '[]'::jsonb)),
    (jsonb_build_object('type', 'send', 'conversation', 1, 'attachments', jsonb_build_array('not-a-uuid'))),
    (jsonb_build_object('type', 'send', 'conversation', 1, 'attachments', jsonb_build_array(:'pending'))),
    (jsonb_build_object('type', 'send', 'conversation', 1, 'attachments', jsonb_build_array(:'up1'))),
    (jsonb_build_object('type', 'send', 'conversation', 1, 'attachments', jsonb_build_array(:'up2', :'up2'))),
    (jsonb_build_object('type', 'send', 'conversation', 2, 'attachments', jsonb_build_array(:'up2'))),
    (jsonb_build_object('type', 'send', 'conversation', 1, 'body', 'x', 'attachments', jsonb_build_array(:'up2'),
                        'mentions', jsonb_build_array(3))),
    (jsonb_build_object('type', 'send', 'conversation', 1, 'body', 'x', 'attachments', jsonb_build_array(:'up2'),
                        'kind', 'bogus')),
    (jsonb_build_object('type', 'send', 'conversation', 1, 'body', 'x', 'attachments', jsonb_build_array(:'up2'),
                        'kind', 'e2e')),
    (jsonb_build_object('type', 'send', 'conversation', 1, 'body', 5)),
    (jsonb_build_object('type', 'send', 'conversation', 1)),
    (jsonb_build_object('type', 'send', 'conversation', 1, 'body', '')),
    (jsonb_build_object('type', 'send', 'conversation', 1, 'body', 'x', 'mentions', 'all')),
    (jsonb_build_object('type', 'send', 'body', 'x', 'attachments', jsonb_build_array(:'up2')));
SELECT b.n, left(pg_temp.disp(1, b.r), 5) AS plpgsql,
       chat.client_request('n1', 1, 1, b.r) ->> 'code' AS c
  FROM bad b ORDER BY b.n;
SELECT pg_temp.state();

-- kind e2e with an encrypted file (application/octet-stream, no name).
SELECT chat.enable_e2e(1, 3);
SELECT pg_temp.ready_upload(1, 3, 'application/octet-stream', NULL) AS up4 \gset
SELECT pg_temp.disp(1, jsonb_build_object('type', 'send', 'conversation', 3, 'body', 'Y2lwaGVy',
                                           'kind', 'e2e', 'attachments', jsonb_build_array(:'up4')));
SELECT seq, kind, body, jsonb_array_length(attachments) AS n
  FROM chat.messages WHERE conversation_id = 3 AND kind = 'e2e';

-- The SQL functions themselves.
SELECT pg_temp.ready_upload(2, 1, 'image/png', 'b.png') AS up5 \gset
SELECT seq, duplicate FROM chat.send_message(2, 1, NULL, 'sm1', NULL, 1, NULL, jsonb_build_array(:'up5'));
SELECT seq, duplicate FROM chat.send_message(2, 1, NULL, 'sm1', NULL, 1, NULL, jsonb_build_array(:'up5'));
SELECT body, attachments #>> '{0,name}' AS name FROM chat.messages WHERE conversation_id = 1 AND sender_id = 2;
SELECT pg_temp.try($$SELECT chat.send_message(2, 1, NULL, NULL, NULL, 1, NULL, '{"a":1}')$$);
SELECT pg_temp.try($$SELECT chat.send_message(2, 1, NULL)$$);
SELECT pg_temp.state();
