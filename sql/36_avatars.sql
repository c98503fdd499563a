-- Avatars (issue 15): profile uploads, set_profile / update_group checks,
-- media_url for current avatars (blocks, members, replaced ones) and the
-- cleanup of profile uploads; every rejection with its SQLSTATE and no
-- partial state after one.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS chat CASCADE;
CREATE EXTENSION chat;
SET chat.token_secret = 'regress avatar secret';
CREATE FUNCTION pg_temp.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
-- An error's SQLSTATE, message and hint.
CREATE FUNCTION pg_temp.err(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    h text;
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS h = PG_EXCEPTION_HINT;
    RETURN SQLSTATE || ': ' || SQLERRM || ' (hint: ' || h || ')';
END $$;
-- The request frame of client_request without its id.
CREATE FUNCTION pg_temp.req(u bigint, r jsonb) RETURNS jsonb LANGUAGE sql AS $$
    SELECT chat.client_request('n1', u, 1, r) - 'id'
$$;
-- A ready upload (what chat-media does after a good PUT).
CREATE FUNCTION pg_temp.ready(id text) RETURNS boolean LANGUAGE sql AS $$
    SELECT chat.media_uploaded(id::uuid, 64, 64, NULL)
$$;
-- Stable output: every upload id becomes the name the test gave it.
CREATE TEMP TABLE names (id text, name text);
CREATE FUNCTION pg_temp.named(t text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    n record;
BEGIN
    FOR n IN SELECT * FROM pg_temp.names LOOP
        t := replace(t, n.id, n.name);
    END LOOP;
    RETURN t;
END $$;

-- What a rejection must leave alone.
CREATE FUNCTION pg_temp.state() RETURNS text LANGUAGE sql AS $$
    SELECT 'attachments=' || (SELECT count(*) FROM chat.attachments)
        || ' avatars=' || coalesce((SELECT string_agg(u.id || ':' || coalesce(pg_temp.named(u.avatar), '-'), ',' ORDER BY u.id)
                                      FROM chat.users u), '')
        || ' groups=' || coalesce((SELECT string_agg(c.id || ':' || coalesce(pg_temp.named(c.settings ->> 'avatar'), '-'), ',' ORDER BY c.id)
                                     FROM chat.conversations c WHERE c.kind = 'group'), '')
        || ' messages=' || (SELECT count(*) FROM chat.messages)
        || ' deletions=' || (SELECT count(*) FROM chat.media_deletions)
$$;

SELECT chat.upsert_user(i, 'user' || i) FROM generate_series(1, 4) i;
SELECT chat.register_device(i) FROM generate_series(1, 4) i;
-- g: members 1, 2 (3 and 4 are not); h: 3 alone
SELECT chat.create_group(1, 'g', ARRAY[2]::bigint[]) AS g \gset
SELECT chat.create_group(3, 'h', ARRAY[]::bigint[]) AS h \gset

-- profile uploads -------------------------------------------------------
SELECT pg_temp.req(1, '{"type":"upload","purpose":"avatar","mime":"image/png","size":1000,
    "sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}') AS r \gset
SELECT (:'r'::jsonb -> 'result') ?& ARRAY['upload', 'url', 'expires_at'] AS has_fields,
       (:'r'::jsonb #>> '{result,url}') ~ '^/media/[0-9a-f-]{36}\?u=1&e=[0-9]+&s=[0-9a-f]{64}$' AS put_url;
SELECT :'r'::jsonb #>> '{result,upload}' AS av1 \gset
INSERT INTO names VALUES (:'av1', 'av1');
SELECT owner_id, conversation_id, mime, state FROM chat.attachments;
-- the byte server's view of it: a PUT by its owner only
SELECT mime, size, state, media_class FROM chat.media_upload_target(:'av1'::uuid, 1);
SELECT count(*) AS put_by_other FROM chat.media_upload_target(:'av1'::uuid, 2);
SELECT pg_temp.state();

-- rejected uploads: not an image, too big, bad hash, bad purpose, a group
-- picture into a conversation the actor is not in; nothing left behind
SELECT pg_temp.req(1, '{"type":"upload","purpose":"avatar","mime":"application/pdf","size":10,
    "sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}');
SELECT pg_temp.req(1, '{"type":"upload","purpose":"avatar","mime":"image/png","size":999999999,
    "sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}');
SELECT pg_temp.req(1, '{"type":"upload","purpose":"avatar","mime":"image/png","size":0,
    "sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}');
SELECT pg_temp.req(1, '{"type":"upload","purpose":"avatar","mime":"image/png","size":10,"sha256":"abc"}');
SELECT pg_temp.req(1, '{"type":"upload","purpose":"avatar","mime":"image/x-unknown","size":10,
    "sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}');
SELECT pg_temp.req(1, '{"type":"upload","purpose":"banner","mime":"image/png","size":10,
    "sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}');
SELECT pg_temp.req(1, '{"type":"upload","mime":"image/png","size":10,
    "sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}');
SELECT pg_temp.req(4, ('{"type":"upload","purpose":"avatar","conversation":' || :g || ',"mime":"image/png","size":10,
    "sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}')::jsonb);
SELECT pg_temp.try('SELECT chat.upload_avatar(99, ''image/png'', 10, repeat(''a'', 64))');
SELECT pg_temp.state();

-- set_profile: every rejection, nothing changed --------------------------
SELECT pg_temp.named(pg_temp.err(format('SELECT chat.set_profile(1, avatar => %L)', :'av1')));   -- pending: 55000
SELECT pg_temp.state();
SELECT pg_temp.ready(:'av1');
SELECT pg_temp.named(pg_temp.err(format('SELECT chat.set_profile(2, avatar => %L)', :'av1')));   -- not 2''s: 42501
SELECT pg_temp.err('SELECT chat.set_profile(2, avatar => ''0b5d7c1e-1111-4222-8333-944445555666'')');   -- unknown: 42501 as well
SELECT pg_temp.err('SELECT chat.set_profile(2, avatar => ''not-a-uuid'')');   -- not an id: 22023
SELECT pg_temp.err('SELECT chat.set_profile(2, avatar => ''bad id!'')');      -- not even the old shape: 22023
-- an upload to a conversation (even an image of the actor's own) is no profile picture: 22023
SELECT (chat.upload(1, :g, 'image/png', 10, repeat('b', 64)) ->> 'upload') AS conv_up \gset
INSERT INTO names VALUES (:'conv_up', 'conv_up');
SELECT pg_temp.ready(:'conv_up');
SELECT pg_temp.named(pg_temp.err(format('SELECT chat.set_profile(1, avatar => %L)', :'conv_up')));
-- a ready upload that is no image (possible only for a group picture: a
-- conversation upload): 22023 there, below
SELECT pg_temp.state();

-- set_profile: a good one; chat.profile shows it -------------------------
SELECT chat.set_profile(1, avatar => :'av1');
SELECT pg_temp.named(avatar) FROM chat.profile(2, ARRAY[1]::bigint[]);
-- NULL keeps, an unchanged id is not checked again, '' clears (below)
SELECT chat.set_profile(1, display_name => 'One');
SELECT chat.set_profile(1, avatar => :'av1');
SELECT pg_temp.named(avatar), display_name FROM chat.profile(1, ARRAY[1]::bigint[]);
SELECT pg_temp.named(pg_temp.req(1, jsonb_build_object('type', 'set_profile', 'avatar', :'av1'))::text);

-- media_url of a current profile picture --------------------------------
-- 2 shares a group with 1, 3 shares nothing, 4 is blocked by 1
SELECT chat.block(1, 4);
SELECT (chat.media_url(1, :'av1'::uuid) ->> 'url') ~ '\?u=1&' AS owner_url,
       (chat.media_url(2, :'av1'::uuid) ->> 'url') ~ '\?u=2&' AS peer_url,
       (chat.media_url(3, :'av1'::uuid) ->> 'url') ~ '\?u=3&' AS stranger_url;
SELECT pg_temp.req(3, jsonb_build_object('type', 'media_url', 'attachment', :'av1')) #>> '{result,url}' ~ '^/media/' AS request_url;
SELECT pg_temp.named(pg_temp.err(format('SELECT chat.media_url(4, %L)', :'av1')));    -- blocked: 42501
SELECT pg_temp.named(pg_temp.req(4, jsonb_build_object('type', 'media_url', 'attachment', :'av1'))::text);
SELECT pg_temp.named(pg_temp.err(format('SELECT chat.media_url(3, %L, true)', :'av1')));   -- no thumbnail: P0002
SELECT pg_temp.named(pg_temp.err(format('SELECT chat.media_url(99, %L)', :'av1')));   -- no such user: P0002
-- 4 blocking 1 does not hide 1's picture from 4 (4 chose not to talk to 1);
-- 1 blocking 4 does.  Lifting the block lets 4 fetch it.
SELECT chat.unblock(1, 4);
SELECT (chat.media_url(4, :'av1'::uuid) ->> 'url') ~ '\?u=4&' AS unblocked_url;
SELECT chat.block(4, 1);
SELECT (chat.media_url(4, :'av1'::uuid) ->> 'url') ~ '\?u=4&' AS blocker_still_sees;
SELECT chat.unblock(4, 1);
SELECT chat.block(1, 4);
-- the byte server serves it (the URL is what it checks)
SELECT mime, size FROM chat.media_download_target(:'av1'::uuid, false);

-- replaced: the old picture is its owner's only -------------------------
SELECT (chat.upload_avatar(1, 'image/jpeg', 20, repeat('c', 64)) ->> 'upload') AS av2 \gset
INSERT INTO names VALUES (:'av2', 'av2');
SELECT pg_temp.named(pg_temp.err(format('SELECT chat.media_url(2, %L)', :'av2')));   -- not the avatar yet: P0002
SELECT pg_temp.ready(:'av2');
SELECT pg_temp.named(pg_temp.err(format('SELECT chat.media_url(2, %L)', :'av2')));   -- ready, still not the avatar: P0002
SELECT chat.set_profile(1, avatar => :'av2');
SELECT (chat.media_url(2, :'av2'::uuid) ->> 'url') IS NOT NULL AS new_url;
SELECT pg_temp.named(pg_temp.err(format('SELECT chat.media_url(2, %L)', :'av1')));   -- replaced: P0002
SELECT pg_temp.named(pg_temp.err(format('SELECT chat.media_url(3, %L)', :'av1')));
SELECT (chat.media_url(1, :'av1'::uuid) ->> 'url') IS NOT NULL AS owner_keeps_old;
-- setting an old picture again works (it still exists), clearing hides it
SELECT chat.set_profile(1, avatar => :'av1');
SELECT (chat.media_url(3, :'av1'::uuid) ->> 'url') IS NOT NULL AS old_again;
SELECT chat.set_profile(1, avatar => '');
SELECT pg_temp.named(pg_temp.err(format('SELECT chat.media_url(3, %L)', :'av1')));   -- cleared: P0002
SELECT avatar FROM chat.profile(2, ARRAY[1]::bigint[]);
SELECT chat.set_profile(1, avatar => :'av2');

-- cleanup: profile uploads older than the timeout that are no avatar -----
SELECT (chat.upload_avatar(2, 'image/png', 30, repeat('d', 64)) ->> 'upload') AS av3 \gset
INSERT INTO names VALUES (:'av3', 'av3');
SELECT chat.media_cleanup() AS fresh_uploads_kept;
UPDATE chat.attachments SET created_at = now() - interval '2 hours';
SELECT chat.media_cleanup() AS removed;   -- av1 (replaced) and av3 (pending); av2 (current) and conv_up stay
SELECT pg_temp.named(id::text) FROM chat.attachments ORDER BY 1;
SELECT count(*) AS queued_deletions FROM chat.media_deletions;
SELECT pg_temp.named(pg_temp.err(format('SELECT chat.media_url(1, %L)', :'av1')));   -- gone: P0002
SELECT pg_temp.named(pg_temp.err(format('SELECT chat.set_profile(1, avatar => %L)', :'av1')));   -- gone: 42501

-- group pictures --------------------------------------------------------
SELECT (chat.upload_avatar(1, 'image/png', 40, repeat('e', 64), :g) ->> 'upload') AS gav1 \gset
INSERT INTO names VALUES (:'gav1', 'gav1');
SELECT (chat.upload(1, :g, 'application/pdf', 40, repeat('f', 64)) ->> 'upload') AS gpdf \gset
INSERT INTO names VALUES (:'gpdf', 'gpdf');
SELECT pg_temp.ready(:'gpdf');
SELECT (chat.upload(3, :h, 'image/png', 40, repeat('f', 64)) ->> 'upload') AS hup \gset
INSERT INTO names VALUES (:'hup', 'hup');
SELECT pg_temp.ready(:'hup');
SELECT (chat.upload(2, :g, 'image/png', 40, repeat('9', 64)) ->> 'upload') AS g2up \gset
INSERT INTO names VALUES (:'g2up', 'g2up');
SELECT pg_temp.ready(:'g2up');
SELECT chat.set_role(1, :g, 2, 'admin');
SELECT pg_temp.state();
SELECT pg_temp.named(pg_temp.err(format('SELECT chat.update_group(1, %s, avatar => %L)', :g, :'gav1')));   -- pending: 55000
SELECT pg_temp.ready(:'gav1');
SELECT pg_temp.named(pg_temp.err(format('SELECT chat.update_group(1, %s, avatar => %L)', :g, :'gpdf')));   -- no image: 22023
SELECT pg_temp.named(pg_temp.err(format('SELECT chat.update_group(1, %s, avatar => %L)', :g, :'hup')));    -- another group's: 42501
SELECT pg_temp.named(pg_temp.err(format('SELECT chat.update_group(1, %s, avatar => %L)', :g, :'av2')));    -- a profile upload: 42501
SELECT pg_temp.named(pg_temp.err(format('SELECT chat.update_group(1, %s, avatar => %L)', :g, :'g2up')));   -- 2's unsent upload: 42501
SELECT pg_temp.named(pg_temp.err(format('SELECT chat.update_group(1, %s, avatar => ''x'')', :g)));         -- not an id: 22023
SELECT pg_temp.named(pg_temp.req(1, jsonb_build_object('type', 'update_group', 'conversation', :g, 'avatar', :'hup'))::text);
SELECT pg_temp.state();
SELECT chat.update_group(1, :g, avatar => :'gav1');
SELECT pg_temp.state();
SELECT pg_temp.named((SELECT body FROM chat.messages WHERE conversation_id = :g ORDER BY seq DESC LIMIT 1));
-- members fetch it (2 before the avatar only the uploader could), others not
SELECT (chat.media_url(2, :'gav1'::uuid) ->> 'url') IS NOT NULL AS member_url;
SELECT pg_temp.named(pg_temp.err(format('SELECT chat.media_url(3, %L)', :'gav1')));   -- not a member: P0002 (an unsent upload of another)
-- a picture someone else sent in the group may become its avatar
SELECT pg_temp.req(2, jsonb_build_object('type', 'send', 'conversation', :g, 'body', '',
                                         'attachments', jsonb_build_array(:'g2up'))) ->> 'type' AS sent;
SELECT chat.update_group(1, :g, avatar => :'g2up');
SELECT pg_temp.named(pg_temp.err(format('SELECT chat.media_url(2, %L)', :'gav1')));   -- replaced, unsent: P0002 for 2
SELECT (chat.media_url(1, :'gav1'::uuid) ->> 'url') IS NOT NULL AS uploader_keeps_it;
-- the message carrying the current picture is deleted: the picture stays
-- (it is the group's now), and goes once replaced
SELECT seq AS g2seq FROM chat.messages WHERE conversation_id = :g AND attachments IS NOT NULL \gset
SELECT chat.delete_message(2, :g, :g2seq);
SELECT count(*) AS kept FROM chat.attachments WHERE id = :'g2up';
SELECT (chat.media_url(1, :'g2up'::uuid) ->> 'url') IS NOT NULL AS still_fetchable;
SELECT pg_temp.state();
-- an id in capitals is not the form upload returns (media_url's rule compares that form): 22023
SELECT pg_temp.err(format('SELECT chat.update_group(1, %s, avatar => %L)', :g, 'ABCDEF00-0000-4000-8000-00000000000A'));
-- a member who left loses it
SELECT chat.update_group(1, :g, avatar => :'gav1');
SELECT count(*) AS removed_once_replaced FROM chat.attachments WHERE id = :'g2up';
SELECT pg_temp.state();
SELECT chat.leave(2, :g);
SELECT pg_temp.named(pg_temp.err(format('SELECT chat.media_url(2, %L)', :'gav1')));   -- left: P0002 (as a non-member)
SELECT chat.update_group(1, :g, avatar => '');
SELECT settings ? 'avatar' AS has_avatar FROM chat.conversations WHERE id = :g;
