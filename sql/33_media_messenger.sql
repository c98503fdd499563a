-- Media (issue 13) together with the messenger features (issue 15): a send
-- carries attachments and mentions at once; reaction and edit entries never
-- carry the attachments of their target; search, report copies and the
-- chat list's last_message keep them; a message that expires or ages out
-- loses its attachments (their bytes queued for deletion) like a deleted one.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS chat CASCADE;
CREATE EXTENSION chat;
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
-- A ready upload (with a thumbnail) of user u in conversation conv.
CREATE FUNCTION pg_temp.ready(u bigint, conv bigint, name text) RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    id uuid;
BEGIN
    id := (pg_temp.req(u, jsonb_build_object('type', 'upload', 'conversation', conv, 'mime', 'image/png',
                                             'size', 10, 'sha256', repeat('a', 64), 'name', name))
           #>> '{result,upload}')::uuid;
    PERFORM chat.media_uploaded(id, 640, 480, 'thumb-' || name);
    RETURN id;
END $$;
-- What a rejection must leave alone.
CREATE FUNCTION pg_temp.state() RETURNS text LANGUAGE sql AS $$
    SELECT 'attachments=' || (SELECT count(*) FROM chat.attachments)
        || ' sent=' || (SELECT count(*) FROM chat.attachments WHERE message_seq IS NOT NULL)
        || ' messages=' || (SELECT count(*) FROM chat.messages)
        || ' deletions=' || (SELECT count(*) FROM chat.media_deletions)
$$;

SELECT chat.upsert_user(i, 'user' || i) FROM generate_series(1, 3) i;
SELECT chat.register_device(i) FROM generate_series(1, 3) i;
SELECT chat.create_group(1, 'g', ARRAY[2]::bigint[]) AS g;   -- 1: members 1, 2; 3 is not
SELECT pg_temp.ready(1, 1, 'cat.png') AS up1 \gset

-- a send with attachments and mentions -----------------------------------
-- a mention of a non-member is refused before the upload is bound
SELECT pg_temp.req(1, jsonb_build_object('type', 'send', 'conversation', 1, 'body', 'see @user3',
                                         'attachments', jsonb_build_array(:'up1'), 'mentions', '[3]'::jsonb)) - 'message';
SELECT pg_temp.state();
SELECT (pg_temp.req(1, jsonb_build_object('type', 'send', 'conversation', 1, 'body', 'see @user2',
                                          'client_msg_id', 'c1', 'attachments', jsonb_build_array(:'up1'),
                                          'mentions', '[2]'::jsonb)) -> 'result') - 'created_at';
-- its retry answers the first send
SELECT (pg_temp.req(1, jsonb_build_object('type', 'send', 'conversation', 1, 'body', 'see @user2',
                                          'client_msg_id', 'c1', 'attachments', jsonb_build_array(:'up1'),
                                          'mentions', '[2]'::jsonb)) -> 'result') - 'created_at';
SELECT seq, body, mentions, attachments #>> '{0,name}' AS attachment
  FROM chat.messages WHERE conversation_id = 1 AND kind = 'text';
SELECT pg_temp.state();
-- readers (C and SQL) return both
SELECT m -> 'mentions' AS mentions, m #>> '{attachments,0,name}' AS attachment
  FROM jsonb_array_elements(pg_temp.req(2, '{"type":"history","conversation":1}') #> '{result,messages}') m
 WHERE m ->> 'kind' = 'text';
SELECT chat.message_json(chat.get_message(2, 1, 2)) -> 'mentions' AS mentions,
       chat.message_json(chat.get_message(2, 1, 2)) #>> '{attachments,0,name}' AS attachment;

-- reaction and edit entries do not carry the target's attachments -------
SELECT chat.react(2, 1, 2, '👍') AS reaction_entry;
SELECT chat.edit_message(1, 1, 2, 'see @user2 again');
SELECT seq, kind, target, attachments IS NULL AS no_attachments FROM chat.messages
 WHERE conversation_id = 1 AND target IS NOT NULL ORDER BY seq;
SELECT m ->> 'seq' AS seq, m ->> 'kind' AS kind, m ? 'attachments' AS has_attachments,
       m -> 'reactions' AS reactions, m ->> 'emoji' AS emoji
  FROM jsonb_array_elements(pg_temp.req(2, '{"type":"history","conversation":1}') #> '{result,messages}') m
 WHERE m ->> 'kind' <> 'system' ORDER BY (m ->> 'seq')::bigint;
SELECT m ->> 'kind' AS kind, m ? 'attachments' AS has_attachments
  FROM chat.messages_after(2, 1, 2) x, chat.message_json(x) m ORDER BY x.seq;

-- search, the chat list and a report copy keep them ----------------------
SELECT pg_temp.req(2, '{"type":"search","query":"again"}') AS s \gset
SELECT :'s'::jsonb ->> 'type' AS type, :'s'::jsonb ->> 'code' AS code;
SELECT m ->> 'seq' AS seq, m -> 'mentions' AS mentions, m #>> '{attachments,0,name}' AS attachment,
       m -> 'reactions' AS reactions
  FROM jsonb_array_elements(:'s'::jsonb #> '{result,messages}') m;
SELECT x.seq, x.attachments #>> '{0,name}' AS attachment, x.mentions FROM chat.search(2, 'again') x;
SELECT r #>> '{last_message,seq}' AS last_seq, r #>> '{last_message,attachments,0,name}' AS attachment
  FROM jsonb_array_elements(pg_temp.req(2, '{"type":"conversations"}') #> '{result,conversations}') r;
SELECT chat.report(2, NULL, 1, 2, 'spam') IS NOT NULL AS reported;
SELECT message -> 'mentions' AS mentions, message #>> '{attachments,0,name}' AS attachment
  FROM chat.reports;

-- a disappearing message loses its attachments when it expires -----------
SELECT chat.set_disappearing(1, 1, 60);
SELECT pg_temp.ready(1, 1, 'dog.png') AS up2 \gset
SELECT (pg_temp.req(1, jsonb_build_object('type', 'send', 'conversation', 1, 'body', 'soon gone @user2',
                                          'attachments', jsonb_build_array(:'up2'),
                                          'mentions', '[2]'::jsonb)) #>> '{result,seq}')::bigint AS e1 \gset
SELECT chat.react(2, 1, :e1, '❤️') IS NOT NULL AS reacted;
SELECT expires_at - created_at AS ttl, attachments IS NOT NULL AS has_attachments
  FROM chat.messages WHERE conversation_id = 1 AND seq = :e1;
SELECT count(*) AS queued_before FROM chat.media_deletions;
SELECT (pg_temp.req(2, jsonb_build_object('type', 'media_url', 'attachment', :'up2')) #>> '{result,url}')
       IS NOT NULL AS url_before;
SELECT count(*) AS served_before FROM chat.media_download_target(:'up2', false);
UPDATE chat.messages SET expires_at = now() - interval '1 s' WHERE conversation_id = 1 AND seq = :e1;
-- past its ttl, before the expiry worker: its files are no longer handed
-- out (media_url P0002) or served (byte server), and readers show no
-- attachments (chat.message_expired)
SELECT pg_temp.req(2, jsonb_build_object('type', 'media_url', 'attachment', :'up2')) ->> 'code' AS url_due;
SELECT regexp_replace(pg_temp.try(format('SELECT chat.media_url(1, %L)', :'up2')), '[0-9a-f-]{36}', '<id>') AS sender_url_due;
SELECT count(*) AS served_due FROM chat.media_download_target(:'up2', false);
SELECT count(*) AS thumbnail_served_due FROM chat.media_download_target(:'up2', true);
SELECT m ? 'attachments' AS has_attachments, m ? 'mentions' AS has_mentions, m ? 'reactions' AS has_reactions,
       m ->> 'body' AS body
  FROM chat.message_json(chat.get_message(2, 1, :e1)) m;
SELECT chat.expire_messages() AS expired;
SELECT body, mentions, attachments, reactions, deleted_at IS NOT NULL AS tombstone
  FROM chat.messages WHERE conversation_id = 1 AND seq = :e1;
SELECT count(*) AS attachment_rows FROM chat.attachments WHERE id = :'up2';
SELECT storage_key FROM chat.media_deletions WHERE storage_key = 'thumb-dog.png';
SELECT count(*) AS queued_after FROM chat.media_deletions;
SELECT m ? 'attachments' AS has_attachments, m ? 'mentions' AS has_mentions, m ? 'reactions' AS has_reactions
  FROM chat.message_json(chat.get_message(2, 1, :e1)) m;
-- the first message (no ttl) keeps its upload
SELECT count(*) AS first_upload_kept FROM chat.attachments WHERE id = :'up1';
SELECT chat.set_disappearing(1, 1, NULL);

-- retention removes the attachments of the messages it removes ----------
SELECT chat.direct_conversation(1, 3) AS d \gset
SELECT pg_temp.ready(1, :d, 'old.png') AS up3 \gset
SELECT pg_temp.req(1, jsonb_build_object('type', 'send', 'conversation', :d, 'body', 'old',
                                         'attachments', jsonb_build_array(:'up3'))) ->> 'type' AS sent;
UPDATE chat.conversations SET created_at = now() - interval '2 days' WHERE id = :d;
UPDATE chat.messages SET created_at = now() - interval '2 days' WHERE conversation_id = :d;
SET chat.retention = '1 day';
SELECT chat.apply_retention() >= 1 AS removed;
RESET chat.retention;
SELECT count(*) AS messages_left FROM chat.messages WHERE conversation_id = :d;
SELECT count(*) AS attachment_rows FROM chat.attachments WHERE id = :'up3';
SELECT storage_key FROM chat.media_deletions WHERE storage_key = 'thumb-old.png';
