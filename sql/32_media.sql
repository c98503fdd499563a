-- Media (issue 13): upload, media_url, sends with attachments, cleanup and
-- the deletion queue; every rejection with its SQLSTATE and no partial
-- state after one.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS chat CASCADE;
CREATE EXTENSION chat;
CREATE EXTENSION IF NOT EXISTS pgcrypto;
SET chat.token_secret = 'regress media secret';
CREATE FUNCTION pg_temp.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
-- The request frame of client_request without its id.
CREATE FUNCTION pg_temp.req(u bigint, r jsonb) RETURNS jsonb LANGUAGE sql AS $$
    SELECT chat.client_request('n1', u, 1, r) - 'id'
$$;
-- What a rejection must leave alone.
CREATE FUNCTION pg_temp.state() RETURNS text LANGUAGE sql AS $$
    SELECT 'attachments=' || (SELECT count(*) FROM chat.attachments)
        || ' ready=' || (SELECT count(*) FROM chat.attachments WHERE state = 'ready')
        || ' sent=' || (SELECT count(*) FROM chat.attachments WHERE message_seq IS NOT NULL)
        || ' messages=' || (SELECT count(*) FROM chat.messages)
        || ' deletions=' || (SELECT count(*) FROM chat.media_deletions)
$$;
-- Checks a signed URL against the key the byte server derives itself.
CREATE FUNCTION pg_temp.url_ok(url text, op text, u bigint) RETURNS boolean LANGUAGE sql AS $$
    SELECT substring(url from 's=([0-9a-f]{64})$')
         = encode(hmac(convert_to(op || E'\n' || substring(url from '/media/([0-9a-f-]{36})')
                                  || E'\n' || u || E'\n' || substring(url from 'e=([0-9]+)'), 'UTF8'),
                       hmac('chat-media'::bytea, 'regress media secret'::bytea, 'sha256'),
                       'sha256'), 'hex')
$$;

SELECT chat.upsert_user(i, 'user' || i) FROM generate_series(1, 3) i;
SELECT chat.register_device(i) FROM generate_series(1, 3) i;
SELECT chat.create_group(1, 'g', ARRAY[2]::bigint[]) AS g;   -- 1: members 1, 2; 3 is not

SHOW chat.media_limits;
SHOW chat.media_url_ttl;

-- upload ---------------------------------------------------------------
SELECT pg_temp.req(1, '{"type":"upload","conversation":1,"mime":"image/png","size":1000,
    "sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","name":"cat.png"}') AS r \gset
SELECT (:'r'::jsonb -> 'result') ?& ARRAY['upload', 'url', 'expires_at'] AS has_fields,
       (:'r'::jsonb #>> '{result,url}') ~ '^/media/[0-9a-f-]{36}\?u=1&e=[0-9]+&s=[0-9a-f]{64}$' AS url_shape,
       (:'r'::jsonb #>> '{result,expires_at}')::bigint - extract(epoch FROM now())::bigint BETWEEN 299 AND 300 AS short_expiry;
SELECT pg_temp.url_ok(:'r'::jsonb #>> '{result,url}', 'put', 1) AS put_url_verifies,
       pg_temp.url_ok(:'r'::jsonb #>> '{result,url}', 'get', 1) AS put_url_is_no_get_url,
       pg_temp.url_ok(:'r'::jsonb #>> '{result,url}', 'put', 2) AS bound_to_user;
SELECT :'r'::jsonb #>> '{result,upload}' AS up1 \gset
SELECT owner_id, conversation_id, mime, size, name, state, length(storage_key) AS key_len,
       storage_key <> id::text AS key_is_not_id
  FROM chat.attachments;
SELECT pg_temp.state();

-- every rejection, and nothing left behind
SELECT pg_temp.req(3, '{"type":"upload","conversation":1,"mime":"image/png","size":10,"sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}');
SELECT pg_temp.req(1, '{"type":"upload","conversation":99,"mime":"image/png","size":10,"sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}');
SELECT pg_temp.req(1, '{"type":"upload","conversation":1,"mime":"application/x-msdownload","size":10,"sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}');
SELECT pg_temp.req(1, '{"type":"upload","conversation":1,"mime":"image/png","size":16777217,"sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}');
SELECT pg_temp.req(1, '{"type":"upload","conversation":1,"mime":"audio/ogg","size":10485761,"sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}');
SELECT pg_temp.req(1, '{"type":"upload","conversation":1,"mime":"video/mp4","size":104857601,"sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}');
SELECT pg_temp.req(1, '{"type":"upload","conversation":1,"mime":"application/pdf","size":104857601,"sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}');
SELECT pg_temp.req(1, '{"type":"upload","conversation":1,"mime":"image/png","size":0,"sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}');
SELECT pg_temp.req(1, '{"type":"upload","conversation":1,"mime":"image/png","size":10,"sha256":"xyz"}');
SELECT pg_temp.req(1, '{"type":"upload","conversation":1,"size":10,"sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}');
SELECT pg_temp.req(1, '{"type":"upload","conversation":1,"mime":"image/png","size":"big","sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}');
SELECT pg_temp.state();
-- the limits are settings
SET chat.media_limits = '{"image": 100, "video": 100, "voice": 100, "document": 100}';
SELECT pg_temp.req(1, '{"type":"upload","conversation":1,"mime":"image/png","size":101,"sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}');
RESET chat.media_limits;
SET chat.media_types = 'image/png';
SELECT pg_temp.req(1, '{"type":"upload","conversation":1,"mime":"image/jpeg","size":10,"sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}');
RESET chat.media_types;
SELECT pg_temp.state();
-- no secret, no URL: nothing is stored
SET chat.token_secret = '';
SELECT pg_temp.req(1, '{"type":"upload","conversation":1,"mime":"image/png","size":10,"sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}');
SET chat.token_secret = 'regress media secret';
SELECT pg_temp.state();

-- the byte server's side: target, uploaded -----------------------------
SELECT mime, size, state, media_class FROM chat.media_upload_target(:'up1', 1);
SELECT count(*) AS other_users_target FROM chat.media_upload_target(:'up1', 2);

-- send with attachments -----------------------------------------------
-- not uploaded yet: 55000
SELECT pg_temp.req(1, jsonb_build_object('type', 'send', 'conversation', 1, 'body', 'look',
                                         'attachments', jsonb_build_array(:'up1')));
SELECT pg_temp.state();
SELECT chat.media_uploaded(:'up1', 640, 480, 'thumbkey1') AS first_put;
SELECT chat.media_uploaded(:'up1', 640, 480, 'thumbkey1') AS second_put_refused;
SELECT count(*) AS late_put_sees_ready FROM chat.media_upload_target(:'up1', 1) WHERE state = 'ready';
-- someone else's upload, another conversation's, a bad id, a bad list
SELECT pg_temp.req(2, jsonb_build_object('type', 'send', 'conversation', 1, 'body', 'mine',
                                         'attachments', jsonb_build_array(:'up1')));
SELECT pg_temp.req(1, '{"type":"send","conversation":1,"body":"x","attachments":["00000000-0000-0000-0000-000000000000"]}');
SELECT pg_temp.req(1, '{"type":"send","conversation":1,"body":"x","attachments":["nope"]}');
SELECT pg_temp.req(1, '{"type":"send","conversation":1,"body":"x","attachments":"nope"}');
SELECT pg_temp.req(1, '{"type":"send","conversation":1,"body":"x","attachments":[]}');
SELECT pg_temp.req(1, jsonb_build_object('type', 'send', 'conversation', 1, 'body', 'twice',
                                         'attachments', jsonb_build_array(:'up1', :'up1')));
SELECT pg_temp.state();
-- a ready upload of the sender, without a caption, idempotent
SELECT (pg_temp.req(1, jsonb_build_object('type', 'send', 'conversation', 1, 'client_msg_id', 'f1',
                                          'attachments', jsonb_build_array(:'up1'))) -> 'result') - 'created_at';
SELECT (pg_temp.req(1, jsonb_build_object('type', 'send', 'conversation', 1, 'client_msg_id', 'f1',
                                          'attachments', jsonb_build_array(:'up1'))) -> 'result') - 'created_at';
SELECT seq, body, jsonb_array_length(attachments) AS n,
       (attachments -> 0) - 'id' AS attachment, attachments #>> '{0,id}' = :'up1' AS same_id
  FROM chat.messages WHERE conversation_id = 1 AND attachments IS NOT NULL;
-- once sent it cannot go out again
SELECT pg_temp.req(1, jsonb_build_object('type', 'send', 'conversation', 1, 'body', 'again',
                                         'attachments', jsonb_build_array(:'up1')));
-- a send without attachments still needs a body
SELECT pg_temp.req(1, '{"type":"send","conversation":1}');
SELECT pg_temp.state();

-- media_url ------------------------------------------------------------
SELECT pg_temp.req(2, jsonb_build_object('type', 'media_url', 'attachment', :'up1')) AS g \gset
SELECT pg_temp.url_ok(:'g'::jsonb #>> '{result,url}', 'get', 2) AS get_url_verifies,
       pg_temp.url_ok(:'g'::jsonb #>> '{result,url}', 'get', 1) AS bound_to_user;
SELECT (pg_temp.req(2, jsonb_build_object('type', 'media_url', 'attachment', :'up1', 'thumbnail', true))
        #>> '{result,url}') ~ '/thumb\?' AS thumb_url;
SELECT storage_key = 'thumbkey1' AS thumb_key, mime FROM chat.media_download_target(:'up1', true);
SELECT pg_temp.req(3, jsonb_build_object('type', 'media_url', 'attachment', :'up1'));
SELECT pg_temp.req(2, '{"type":"media_url","attachment":"00000000-0000-0000-0000-000000000000"}');
SELECT pg_temp.req(2, '{"type":"media_url","attachment":"nope"}');
SELECT pg_temp.req(2, '{"type":"media_url"}');

-- a second upload without a thumbnail
SELECT pg_temp.req(1, '{"type":"upload","conversation":1,"mime":"application/pdf","size":5,"sha256":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","name":"a.pdf"}')
       #>> '{result,upload}' AS up2 \gset
SELECT chat.media_uploaded(:'up2');
SELECT pg_temp.req(1, jsonb_build_object('type', 'media_url', 'attachment', :'up2', 'thumbnail', true)) -> 'code';
-- the uploader may fetch its own upload before sending it; others not
SELECT pg_temp.req(1, jsonb_build_object('type', 'media_url', 'attachment', :'up2')) -> 'type';
SELECT pg_temp.req(2, jsonb_build_object('type', 'media_url', 'attachment', :'up2')) -> 'type';

-- readers see the attachments too (history, sync, after, get_message)
SELECT jsonb_path_query_array(pg_temp.req(2, '{"type":"history","conversation":1}'), 'strict $.**.attachments[*].mime') AS history,
       jsonb_path_query_array(pg_temp.req(2, '{"type":"sync"}'), 'strict $.**.attachments[*].name') AS sync,
       jsonb_path_query_array(pg_temp.req(2, '{"type":"after","conversation":1,"after_seq":1}'), 'strict $.**.attachments[*].width') AS after;
SELECT (chat.message_json(chat.get_message(2, 1, 2)) -> 'attachments') -> 0 ->> 'name' AS get_message;

-- deletion removes the bytes: the deletion queue -----------------------
SELECT chat.delete_message(1, 1, 2);
SELECT jsonb_path_query_array(pg_temp.req(2, '{"type":"history","conversation":1}'), 'strict $.**.attachments') AS after_delete;
SELECT count(*) AS attachments_of_deleted FROM chat.attachments WHERE id = :'up1';
SELECT storage_key = 'thumbkey1' OR length(storage_key) = 64 AS queued FROM chat.media_deletions ORDER BY id;
SELECT count(*) AS claimed FROM chat.media_claim_deletions(10);
SELECT count(*) AS queue_left FROM chat.media_deletions;
SELECT pg_temp.try($$SELECT chat.media_claim_deletions(0)$$);

-- cleanup of unfinished uploads ----------------------------------------
SELECT pg_temp.req(1, '{"type":"upload","conversation":1,"mime":"image/png","size":5,"sha256":"cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"}')
       #>> '{result,upload}' AS up3 \gset
SELECT chat.media_cleanup() AS fresh_kept;
UPDATE chat.attachments SET created_at = now() - interval '2 hours' WHERE id = :'up3';
SELECT chat.media_cleanup() AS stale_removed;
SELECT count(*) AS up2_kept FROM chat.attachments WHERE id = :'up2';
SELECT count(*) AS queued_for_stale FROM chat.media_deletions;

-- removing the conversation removes its files too
SELECT count(*) FROM chat.media_claim_deletions(10);
DELETE FROM chat.conversations WHERE id = 1;
SELECT count(*) AS queued_after_conversation_delete FROM chat.media_deletions;

-- pg_dump keeps uploads
SELECT c.relname FROM pg_extension e, unnest(e.extconfig) AS t(oid) JOIN pg_class c ON c.oid = t.oid
 WHERE e.extname = 'chat' AND (c.relname LIKE '%media%' OR c.relname = 'attachments') ORDER BY 1;
