-- Avatars (issue 15): profile and group pictures other users can fetch
-- (docs/media.md "Avatars").
--
-- A profile picture is a *profile upload*: a row of chat.attachments with
-- no conversation, made by chat.upload_avatar (request `upload` with
-- "purpose":"avatar" and no conversation), always an image.  A group
-- picture is an ordinary upload to the group (an image).  chat.set_profile
-- and chat.update_group accept only such attachments (check_user_avatar,
-- check_group_avatar), and chat.media_url serves the CURRENT avatar beyond
-- its usual rule (avatar_access): a user's to every user the owner has not
-- blocked (chat.profile shows every profile to every user; a block hides
-- the picture from the blocked user, 42501), a group's to its members.
-- Once replaced or cleared the old attachment falls back to the usual
-- rule: a profile upload is then visible to its owner only and removed by
-- chat.media_cleanup once older than chat.media_upload_timeout (so is a
-- profile upload never made an avatar); a group upload stays what it was.
-- A group's current picture survives the deletion of the message that
-- carried it (media_message_gone) and goes when replaced.
--
-- Partitioned (PL/Proxy): profile uploads live on the owner's home
-- partition (upload_avatar routes `home`); set_profile runs on every
-- partition and checks the attachment only on that one (chat_proxy's
-- set_profile checks there first, then writes everywhere).

-- A profile upload has no conversation (appended to a released table as an
-- ALTER, the same statement in a fresh install and in the upgrade).
ALTER TABLE chat.attachments ALTER COLUMN conversation_id DROP NOT NULL;
-- Profile uploads by age (cleanup of those that are no current avatar).
CREATE INDEX attachments_profile_idx ON chat.attachments (created_at) WHERE conversation_id IS NULL;

-- Announces the upload of a picture: with no conversation a profile
-- picture of the actor, with one a picture for that group (an ordinary
-- upload there).  Only image/* types (22023); otherwise as chat.upload.
CREATE FUNCTION chat.upload_avatar(actor bigint, mime text, size bigint, sha256 text,
                                   conversation_id bigint DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    lim bigint;
    att_id uuid;
    expires bigint;
BEGIN
    IF mime IS NULL OR size IS NULL OR sha256 IS NULL THEN
        RAISE EXCEPTION 'mime, size and sha256 must not be null' USING ERRCODE = '22023';
    END IF;
    mime := lower(mime);
    IF chat.media_class(mime) <> 'image' THEN
        RAISE EXCEPTION 'an avatar of type "%" is refused: avatars are images', mime
            USING ERRCODE = '22023', HINT = 'Upload an image/* file (chat.media_types lists the allowed types).';
    END IF;
    IF upload_avatar.conversation_id IS NOT NULL THEN
        RETURN chat.upload(actor, upload_avatar.conversation_id, mime, size, sha256, NULL);
    END IF;
    PERFORM chat.require_actor(actor);
    IF NOT mime = ANY (string_to_array(replace(current_setting('chat.media_types'), ' ', ''), ',')) THEN
        RAISE EXCEPTION 'media type "%" is not allowed', mime
            USING ERRCODE = '22023', HINT = 'chat.media_types lists the allowed types.';
    END IF;
    lim := coalesce((current_setting('chat.media_limits')::jsonb ->> 'image')::bigint, 0);
    IF size < 1 THEN
        RAISE EXCEPTION 'upload size % is out of range', size USING ERRCODE = '22023';
    END IF;
    IF size > lim THEN
        RAISE EXCEPTION 'upload of % bytes exceeds the image limit of % bytes', size, lim
            USING ERRCODE = '54000', HINT = 'chat.media_limits sets the limit of each type.';
    END IF;
    sha256 := lower(sha256);
    IF sha256 !~ '^[0-9a-f]{64}$' THEN
        RAISE EXCEPTION 'sha256 "%" is not 64 hex digits', upload_avatar.sha256 USING ERRCODE = '22023';
    END IF;
    INSERT INTO chat.attachments (owner_id, conversation_id, mime, size, sha256)
    VALUES (actor, NULL, mime, size, sha256)
    RETURNING id INTO att_id;
    expires := extract(epoch FROM now())::bigint + current_setting('chat.media_url_ttl')::integer;
    RETURN jsonb_build_object('upload', att_id,
                              'url', chat.media_signed_url('put', att_id, actor, expires),
                              'expires_at', expires);
END
$$;
REVOKE ALL ON FUNCTION chat.upload_avatar(bigint, text, bigint, text, bigint) FROM PUBLIC;
COMMENT ON FUNCTION chat.upload_avatar(bigint, text, bigint, text, bigint) IS 'announces an avatar upload (image/* only): without a conversation a profile picture of the actor, with one a picture for that group; returns {upload, url, expires_at}';

-- The attachment an avatar value names (22023 unless it is a uuid as
-- upload returns it: lowercase, the form media_url's rule compares); NULL
-- when no row has that id.
CREATE FUNCTION chat.avatar_attachment(avatar text)
RETURNS chat.attachments
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a chat.attachments;
BEGIN
    IF avatar !~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        RAISE EXCEPTION 'avatar "%" is not an attachment id', left(avatar, 200)
            USING ERRCODE = '22023', HINT = 'Pass the upload id that upload with "purpose":"avatar" returned, or '''' to remove the avatar.';
    END IF;
    SELECT * INTO a FROM chat.attachments x WHERE x.id = avatar::uuid;
    RETURN a;
END
$$;
REVOKE ALL ON FUNCTION chat.avatar_attachment(text) FROM PUBLIC;
COMMENT ON FUNCTION chat.avatar_attachment(text) IS 'internal: the attachment an avatar id names (22023 unless a uuid; NULLs when none)';

-- Raises unless the attachment can be shown as an avatar: uploaded (55000)
-- and an image (22023).
CREATE FUNCTION chat.check_avatar_file(a chat.attachments)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF a.state <> 'ready' THEN
        RAISE EXCEPTION 'attachment % is not uploaded yet', a.id
            USING ERRCODE = '55000', HINT = 'Set the avatar once the PUT of its bytes has been answered 201.';
    END IF;
    IF chat.media_class(a.mime) <> 'image' THEN
        RAISE EXCEPTION 'attachment % is of type "%", not an image', a.id, a.mime
            USING ERRCODE = '22023', HINT = 'An avatar is an image/* upload.';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION chat.check_avatar_file(chat.attachments) FROM PUBLIC;
COMMENT ON FUNCTION chat.check_avatar_file(chat.attachments) IS 'internal: 55000 unless the attachment is ready, 22023 unless it is an image';

-- Raises unless avatar (not NULL, not '') may become the actor's profile
-- picture: a profile upload of the actor's own (42501; an unknown id
-- answers the same, so ids of others are not confirmed), not one made to a
-- conversation (22023), ready (55000), an image (22023).  Partitioned, only
-- the actor's home partition holds it and checks it.
CREATE FUNCTION chat.check_user_avatar(actor bigint, avatar text)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a chat.attachments;
BEGIN
    IF current_setting('chat.partitions')::integer > 1
       AND (hashint8(actor) & (current_setting('chat.partitions')::integer - 1))
           <> current_setting('chat.partition')::integer THEN
        RETURN;   -- checked on the actor's home partition
    END IF;
    a := chat.avatar_attachment(avatar);
    IF a.id IS NULL OR a.owner_id <> actor THEN
        RAISE EXCEPTION 'attachment % is not an upload of user %', avatar, actor
            USING ERRCODE = '42501', HINT = 'Upload the picture with "purpose":"avatar" (chat.upload_avatar) and set the id it returns.';
    END IF;
    IF a.conversation_id IS NOT NULL THEN
        RAISE EXCEPTION 'attachment % was uploaded to conversation %, not as a profile picture', a.id, a.conversation_id
            USING ERRCODE = '22023', HINT = 'Upload the picture again with "purpose":"avatar" and no conversation.';
    END IF;
    PERFORM chat.check_avatar_file(a);
END
$$;
REVOKE ALL ON FUNCTION chat.check_user_avatar(bigint, text) FROM PUBLIC;
COMMENT ON FUNCTION chat.check_user_avatar(bigint, text) IS 'internal: raises unless an id names a ready image profile upload of the actor (42501, 22023, 55000)';

-- Raises unless avatar (not NULL, not '') may become the picture of group
-- conv: an upload to that group the actor can see (its own, or one sent
-- in a message; 42501 otherwise, also for an unknown id), ready (55000),
-- an image (22023).
CREATE FUNCTION chat.check_group_avatar(actor bigint, conv bigint, avatar text)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a chat.attachments;
BEGIN
    a := chat.avatar_attachment(avatar);
    IF a.id IS NULL OR a.conversation_id IS DISTINCT FROM conv
       OR (a.owner_id <> actor AND a.message_seq IS NULL) THEN
        RAISE EXCEPTION 'attachment % is not an upload to conversation %', avatar, conv
            USING ERRCODE = '42501', HINT = 'Upload the picture to the group ("purpose":"avatar" with the conversation) and set the id it returns.';
    END IF;
    PERFORM chat.check_avatar_file(a);
END
$$;
REVOKE ALL ON FUNCTION chat.check_group_avatar(bigint, bigint, text) FROM PUBLIC;
COMMENT ON FUNCTION chat.check_group_avatar(bigint, bigint, text) IS 'internal: raises unless an id names a ready image upload to the group the actor can see (42501, 22023, 55000)';

-- The avatar part of chat.media_url's rule for a ready attachment a: true
-- when actor may fetch it as a current avatar (a user's: every user but
-- one the owner blocked, 42501; a group's: its active members), false when
-- the usual rule decides.  A profile upload that is no current avatar is
-- its owner's only (P0002 for others, as an unsent upload).
CREATE FUNCTION chat.avatar_access(actor bigint, a chat.attachments)
RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF a.conversation_id IS NULL THEN
        PERFORM chat.require_actor(actor);
        IF a.owner_id = actor THEN
            RETURN true;
        END IF;
        IF NOT EXISTS (SELECT FROM chat.users u WHERE u.id = a.owner_id AND u.avatar = a.id::text) THEN
            RAISE EXCEPTION 'attachment % does not exist', a.id USING ERRCODE = 'P0002';
        END IF;
        IF EXISTS (SELECT FROM chat.blocks k WHERE k.blocker = a.owner_id AND k.blocked = actor) THEN
            RAISE EXCEPTION 'user % may not see the avatar of user %', actor, a.owner_id
                USING ERRCODE = '42501', HINT = 'The user has blocked you.';
        END IF;
        RETURN true;
    END IF;
    RETURN EXISTS (SELECT FROM chat.conversations c
                    WHERE c.id = a.conversation_id AND c.settings ->> 'avatar' = a.id::text)
       AND EXISTS (SELECT FROM chat.members m
                    WHERE m.conversation_id = a.conversation_id AND m.user_id = actor
                      AND m.left_at IS NULL);
END
$$;
REVOKE ALL ON FUNCTION chat.avatar_access(bigint, chat.attachments) FROM PUBLIC;
COMMENT ON FUNCTION chat.avatar_access(bigint, chat.attachments) IS 'internal: whether media_url serves an attachment as a current avatar (user: all but whom the owner blocked, 42501; group: members)';

-- After a group's picture changed from old: an old picture whose message
-- was deleted meanwhile (chat.media_message_gone keeps a group's current
-- picture) is removed now, its bytes queued for deletion.
CREATE FUNCTION chat.group_avatar_replaced(conv bigint, old text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF old IS NULL OR old !~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        RETURN;   -- none, or an id stored before 0.5.0
    END IF;
    DELETE FROM chat.attachments a
     WHERE a.id = old::uuid AND a.conversation_id = conv AND a.message_seq IS NOT NULL
       AND NOT EXISTS (SELECT FROM chat.messages m
                        WHERE m.conversation_id = conv AND m.seq = a.message_seq AND m.deleted_at IS NULL);
END
$$;
REVOKE ALL ON FUNCTION chat.group_avatar_replaced(bigint, text) FROM PUBLIC;
COMMENT ON FUNCTION chat.group_avatar_replaced(bigint, text) IS 'internal: removes a replaced group picture whose message was deleted while it was the picture';

-- Removes profile uploads older than chat.media_upload_timeout that are no
-- user's current avatar (replaced, cleared, never set); returns how many.
-- Called by chat.media_cleanup.
CREATE FUNCTION chat.avatar_cleanup()
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    DELETE FROM chat.attachments a
     WHERE a.conversation_id IS NULL
       AND a.created_at < now() - make_interval(secs => current_setting('chat.media_upload_timeout')::integer)
       AND NOT EXISTS (SELECT FROM chat.users u WHERE u.id = a.owner_id AND u.avatar = a.id::text);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
REVOKE ALL ON FUNCTION chat.avatar_cleanup() FROM PUBLIC;
COMMENT ON FUNCTION chat.avatar_cleanup() IS 'removes profile uploads older than chat.media_upload_timeout that are no current avatar; their bytes are queued for deletion';
