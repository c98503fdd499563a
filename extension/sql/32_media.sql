-- Media (issue 13): attachments uploaded through signed, expiring URLs.
--
-- An upload is a row of chat.attachments: `upload` checks membership, the
-- MIME allow list (chat.media_types) and the per-type limit
-- (chat.media_limits) and hands out a PUT URL signed with HMAC-SHA256
-- under a key derived from chat.token_secret (HMAC(secret, "chat-media")),
-- so the byte server (chat-media, docs/media.md) checks it without asking
-- the database.  The byte server marks the row ready (media_uploaded) once
-- size, sha256 and content type checked out and the thumbnail is made; a
-- send may then carry it.  Bytes are never deleted here (the database
-- cannot reach the files): every removed row queues its storage keys in
-- chat.media_deletions, which the byte server drains (media_claim_deletions)
-- and unlinks.  Removing a row is what deletes bytes: cleanup of stale
-- pending uploads, a deleted or expired message, a deleted conversation.

-- One uploaded (or announced) file.  id is a random uuid (122 random bits):
-- it is the name in URLs, never guessable.  storage_key is another random
-- value, the file name in the store: knowing an id does not name a file.
CREATE TABLE chat.attachments (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id        bigint NOT NULL,
    conversation_id bigint NOT NULL REFERENCES chat.conversations ON DELETE CASCADE,
    mime            text NOT NULL,
    size            bigint NOT NULL CHECK (size > 0),
    sha256          text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    name            text,
    storage_key     text NOT NULL UNIQUE
                    DEFAULT encode(pg_catalog.sha256(gen_random_uuid()::text::bytea
                                                     || gen_random_uuid()::text::bytea), 'hex'),
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'ready')),
    width           integer,
    height          integer,
    duration_ms     integer,
    thumbnail_key   text,
    message_seq     bigint,   -- the message that carries it, once sent
    created_at      timestamptz NOT NULL DEFAULT now(),
    ready_at        timestamptz
);
-- The attachments of a message (message delete removes them).
CREATE INDEX attachments_message_idx ON chat.attachments (conversation_id, message_seq)
    WHERE message_seq IS NOT NULL;
-- Pending uploads by age (cleanup).
CREATE INDEX attachments_pending_idx ON chat.attachments (created_at) WHERE state = 'pending';
SELECT pg_catalog.pg_extension_config_dump('chat.attachments', '');
COMMENT ON TABLE chat.attachments IS 'uploaded files (media): owner, conversation, type, size, sha256, storage key, state';

-- Storage keys whose bytes the byte server is to delete.
CREATE TABLE chat.media_deletions (
    id          bigserial PRIMARY KEY,
    storage_key text NOT NULL,
    queued_at   timestamptz NOT NULL DEFAULT now()
);
SELECT pg_catalog.pg_extension_config_dump('chat.media_deletions', '');
SELECT pg_catalog.pg_extension_config_dump('chat.media_deletions_id_seq', '');
COMMENT ON TABLE chat.media_deletions IS 'storage keys of removed attachments, drained by the media byte server';
COMMENT ON SEQUENCE chat.media_deletions_id_seq IS 'ids of chat.media_deletions';

-- The HMAC-SHA256 (hex) of msg under HMAC(chat.token_secret, "chat-media").
CREATE FUNCTION chat.media_sign(msg text)
RETURNS text LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', 'chat_media_sign';
REVOKE ALL ON FUNCTION chat.media_sign(text) FROM PUBLIC;
COMMENT ON FUNCTION chat.media_sign(text) IS 'hex HMAC-SHA256 of a media URL under a key derived from chat.token_secret (internal)';

-- The class of a MIME type (which limit applies): image, video, voice, document.
CREATE FUNCTION chat.media_class(mime text)
RETURNS text LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE split_part(mime, '/', 1)
           WHEN 'image' THEN 'image' WHEN 'video' THEN 'video' WHEN 'audio' THEN 'voice'
           ELSE 'document' END
$$;
REVOKE ALL ON FUNCTION chat.media_class(text) FROM PUBLIC;
COMMENT ON FUNCTION chat.media_class(text) IS 'the limit class of a MIME type: image, video, voice (audio/*) or document';

-- A signed URL: <chat.media_url_prefix>/<op path>?u=<user>&e=<expiry>&s=<hmac>,
-- the MAC over "<op>\n<id>\n<user>\n<expiry>" (op put, get or thumb).
CREATE FUNCTION chat.media_signed_url(op text, id uuid, user_id bigint, expires bigint)
RETURNS text LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp AS $$
    SELECT current_setting('chat.media_url_prefix') || '/' || id::text
           || CASE op WHEN 'thumb' THEN '/thumb' ELSE '' END
           || '?u=' || user_id || '&e=' || expires
           || '&s=' || chat.media_sign(op || E'\n' || id::text || E'\n' || user_id || E'\n' || expires)
$$;
REVOKE ALL ON FUNCTION chat.media_signed_url(text, uuid, bigint, bigint) FROM PUBLIC;
COMMENT ON FUNCTION chat.media_signed_url(text, uuid, bigint, bigint) IS 'a media URL for op (put, get, thumb) of user_id, valid until expires (unix seconds), signed (internal)';

-- Announces an upload: checks membership, type and size (in an e2e
-- conversation: encrypted files only, 22023); returns
-- {"upload","url","expires_at"} with a PUT URL valid chat.media_url_ttl.
CREATE FUNCTION chat.upload(actor bigint, conversation_id bigint, mime text, size bigint,
                            sha256 text, name text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cls text;
    lim bigint;
    att_id uuid;
    expires bigint;
BEGIN
    IF mime IS NULL OR size IS NULL OR sha256 IS NULL THEN
        RAISE EXCEPTION 'mime, size and sha256 must not be null' USING ERRCODE = '22023';
    END IF;
    PERFORM chat.require_member(actor, upload.conversation_id);
    mime := lower(mime);
    -- E2E (30_e2e.sql): an encrypted conversation takes encrypted files
    -- only: opaque bytes (nothing the byte server would decode into a
    -- thumbnail) without a name; type and name travel in the ciphertext.
    IF chat.is_e2e(upload.conversation_id)
       AND (mime <> 'application/octet-stream' OR coalesce(name, '') <> '') THEN
        RAISE EXCEPTION 'conversation % is end-to-end encrypted: a file of type "%"% is refused',
            upload.conversation_id, mime, CASE WHEN coalesce(name, '') <> '' THEN ' with a name' ELSE '' END
            USING ERRCODE = '22023',
                  HINT = 'Encrypt the file on the client and upload it as application/octet-stream without a name.';
    END IF;
    IF NOT mime = ANY (string_to_array(replace(current_setting('chat.media_types'), ' ', ''), ',')) THEN
        RAISE EXCEPTION 'media type "%" is not allowed', mime
            USING ERRCODE = '22023', HINT = 'chat.media_types lists the allowed types; send other files as application/octet-stream.';
    END IF;
    cls := chat.media_class(mime);
    lim := coalesce((current_setting('chat.media_limits')::jsonb ->> cls)::bigint, 0);
    IF size < 1 THEN
        RAISE EXCEPTION 'upload size % is out of range', size USING ERRCODE = '22023';
    END IF;
    IF size > lim THEN
        RAISE EXCEPTION 'upload of % bytes exceeds the % limit of % bytes', size, cls, lim
            USING ERRCODE = '54000', HINT = 'chat.media_limits sets the limit of each type.';
    END IF;
    sha256 := lower(sha256);
    IF sha256 !~ '^[0-9a-f]{64}$' THEN
        RAISE EXCEPTION 'sha256 "%" is not 64 hex digits', upload.sha256 USING ERRCODE = '22023';
    END IF;
    IF octet_length(name) > 255 THEN
        RAISE EXCEPTION 'file name of % bytes exceeds 255 bytes', octet_length(name) USING ERRCODE = '22001';
    END IF;
    INSERT INTO chat.attachments (owner_id, conversation_id, mime, size, sha256, name)
    VALUES (actor, upload.conversation_id, mime, size, sha256, nullif(name, ''))
    RETURNING id INTO att_id;
    expires := extract(epoch FROM now())::bigint + current_setting('chat.media_url_ttl')::integer;
    RETURN jsonb_build_object('upload', att_id,
                              'url', chat.media_signed_url('put', att_id, actor, expires),
                              'expires_at', expires);
END
$$;
REVOKE ALL ON FUNCTION chat.upload(bigint, bigint, text, bigint, text, text) FROM PUBLIC;
COMMENT ON FUNCTION chat.upload(bigint, bigint, text, bigint, text, text) IS 'announces an upload to a conversation (members only, allowed type, within its limit); returns {upload, url, expires_at} with a signed PUT URL';

-- A signed GET URL of an attachment (or its thumbnail) for a member of its
-- conversation, or for whoever may see it as a current avatar
-- (33_avatars.sql): {"url","expires_at"}.
CREATE FUNCTION chat.media_url(actor bigint, attachment uuid, thumbnail boolean DEFAULT false)
RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a chat.attachments;
    expires bigint;
BEGIN
    IF attachment IS NULL THEN
        RAISE EXCEPTION 'attachment must not be null' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO a FROM chat.attachments x WHERE x.id = attachment AND x.state = 'ready';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'attachment % does not exist', attachment USING ERRCODE = 'P0002';
    END IF;
    -- Avatars (issue 15, 33_avatars.sql): a current avatar is served beyond
    -- the rule below (a profile upload has no conversation: decided there).
    IF NOT chat.avatar_access(actor, a) THEN
        -- the uploader may fetch it before sending; the other members once it is sent
        IF a.message_seq IS NULL AND a.owner_id IS DISTINCT FROM actor THEN
            RAISE EXCEPTION 'attachment % does not exist', attachment USING ERRCODE = 'P0002';
        END IF;
        PERFORM chat.require_member(actor, a.conversation_id);
        -- the file of a message past its expires_at is gone with the
        -- message, before the expiry worker deletes the row
        -- (message_expired); a group's current picture stays (33_avatars.sql)
        IF EXISTS (SELECT FROM chat.messages x WHERE x.conversation_id = a.conversation_id
                      AND x.seq = a.message_seq AND x.expires_at <= now()) THEN
            RAISE EXCEPTION 'attachment % does not exist', attachment USING ERRCODE = 'P0002';
        END IF;
    END IF;
    IF coalesce(thumbnail, false) AND a.thumbnail_key IS NULL THEN
        RAISE EXCEPTION 'attachment % has no thumbnail', attachment USING ERRCODE = 'P0002';
    END IF;
    expires := extract(epoch FROM now())::bigint + current_setting('chat.media_url_ttl')::integer;
    RETURN jsonb_build_object('url', chat.media_signed_url(CASE WHEN thumbnail THEN 'thumb' ELSE 'get' END,
                                                           a.id, actor, expires),
                              'expires_at', expires);
END
$$;
REVOKE ALL ON FUNCTION chat.media_url(bigint, uuid, boolean) FROM PUBLIC;
COMMENT ON FUNCTION chat.media_url(bigint, uuid, boolean) IS 'a signed GET URL of an attachment or its thumbnail, bound to the actor, for members of its conversation; a current avatar also for those who may see it';

-- For the byte server: what a PUT to upload id by user_id is to store.
-- state 'ready' means the PUT is late (409); no row: 404.
CREATE FUNCTION chat.media_upload_target(id uuid, user_id bigint)
RETURNS TABLE (storage_key text, mime text, size bigint, sha256 text, state text, media_class text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT a.storage_key, a.mime, a.size, a.sha256, a.state, chat.media_class(a.mime)
      FROM chat.attachments a WHERE a.id = media_upload_target.id AND a.owner_id = user_id
$$;
REVOKE ALL ON FUNCTION chat.media_upload_target(uuid, bigint) FROM PUBLIC;
COMMENT ON FUNCTION chat.media_upload_target(uuid, bigint) IS 'the storage key, type, size and hash an upload is to have (byte server)';

-- For the byte server: the bytes were stored and checked; marks the upload
-- ready with what was learnt of it.  False when it was not pending (a
-- second PUT that raced the first: 409).
CREATE FUNCTION chat.media_uploaded(id uuid, width integer DEFAULT NULL, height integer DEFAULT NULL,
                                    thumbnail_key text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE chat.attachments a
       SET state = 'ready', ready_at = now(), width = media_uploaded.width,
           height = media_uploaded.height, thumbnail_key = media_uploaded.thumbnail_key
     WHERE a.id = media_uploaded.id AND a.state = 'pending';
    RETURN FOUND;
END
$$;
REVOKE ALL ON FUNCTION chat.media_uploaded(uuid, integer, integer, text) FROM PUBLIC;
COMMENT ON FUNCTION chat.media_uploaded(uuid, integer, integer, text) IS 'marks a pending upload ready with its dimensions and thumbnail (byte server); false when it was not pending';

-- For the byte server: the file (or thumbnail) a GET URL names.
CREATE FUNCTION chat.media_download_target(id uuid, thumbnail boolean)
RETURNS TABLE (storage_key text, mime text, size bigint, sha256 text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN thumbnail THEN a.thumbnail_key ELSE a.storage_key END,
           CASE WHEN thumbnail THEN 'image/jpeg' ELSE a.mime END,
           CASE WHEN thumbnail THEN NULL ELSE a.size END,
           CASE WHEN thumbnail THEN NULL ELSE a.sha256 END
      FROM chat.attachments a
     WHERE a.id = media_download_target.id AND a.state = 'ready'
       AND (NOT thumbnail OR a.thumbnail_key IS NOT NULL)
       -- not the file of a message past its expires_at (message_expired),
       -- unless it is the group's current picture (33_avatars.sql)
       AND (NOT EXISTS (SELECT FROM chat.messages x WHERE x.conversation_id = a.conversation_id
                           AND x.seq = a.message_seq AND x.expires_at <= now())
            OR EXISTS (SELECT FROM chat.conversations c
                        WHERE c.id = a.conversation_id AND c.settings ->> 'avatar' = a.id::text))
$$;
REVOKE ALL ON FUNCTION chat.media_download_target(uuid, boolean) FROM PUBLIC;
COMMENT ON FUNCTION chat.media_download_target(uuid, boolean) IS 'the storage key and type a GET URL serves (byte server)';

-- Removes uploads still pending after chat.media_upload_timeout (their
-- bytes, if any, are queued for deletion by the trigger), and profile
-- uploads as old that are no current avatar (33_avatars.sql); returns how many.
CREATE FUNCTION chat.media_cleanup()
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    DELETE FROM chat.attachments a
     WHERE a.state = 'pending'
       AND a.created_at < now() - make_interval(secs => current_setting('chat.media_upload_timeout')::integer);
    GET DIAGNOSTICS n = ROW_COUNT;
    -- Avatars (issue 15): profile uploads that are no current avatar.
    RETURN n + chat.avatar_cleanup();
END
$$;
REVOKE ALL ON FUNCTION chat.media_cleanup() FROM PUBLIC;
COMMENT ON FUNCTION chat.media_cleanup() IS 'removes uploads pending for longer than chat.media_upload_timeout, and older profile uploads that are no current avatar; their bytes are queued for deletion';

-- For the byte server: takes up to lim queued storage keys out of the queue
-- (rows another server holds are skipped).  The server deletes the files
-- before it commits, so a crash in between leaves the rows queued.
CREATE FUNCTION chat.media_claim_deletions(lim integer DEFAULT 100)
RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM chat.check_limit(lim);
    RETURN QUERY
    DELETE FROM chat.media_deletions d
     WHERE d.id IN (SELECT q.id FROM chat.media_deletions q ORDER BY q.id LIMIT lim
                    FOR UPDATE SKIP LOCKED)
    RETURNING d.storage_key;
END
$$;
REVOKE ALL ON FUNCTION chat.media_claim_deletions(integer) FROM PUBLIC;
COMMENT ON FUNCTION chat.media_claim_deletions(integer) IS 'takes up to lim storage keys out of the deletion queue (byte server; commit after deleting the files)';

-- Queues the bytes of a removed attachment (file and thumbnail) for deletion.
CREATE FUNCTION chat.media_queue_deletion()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO chat.media_deletions (storage_key) VALUES (OLD.storage_key);
    IF OLD.thumbnail_key IS NOT NULL THEN
        INSERT INTO chat.media_deletions (storage_key) VALUES (OLD.thumbnail_key);
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION chat.media_queue_deletion() FROM PUBLIC;
COMMENT ON FUNCTION chat.media_queue_deletion() IS 'trigger: queues the storage keys of a removed attachment for the byte server';
CREATE TRIGGER attachments_delete_bytes AFTER DELETE ON chat.attachments
    FOR EACH ROW EXECUTE FUNCTION chat.media_queue_deletion();

-- Removes the attachments of a message that is deleted (tombstoned by
-- delete_message or by expiry) or removed (retention).
CREATE FUNCTION chat.media_message_gone()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM chat.attachments a
     WHERE a.conversation_id = OLD.conversation_id AND a.message_seq = OLD.seq
       -- Avatars (issue 15): a group's current picture stays until replaced
       -- (chat.group_avatar_replaced, 33_avatars.sql)
       AND NOT EXISTS (SELECT FROM chat.conversations c
                        WHERE c.id = OLD.conversation_id AND c.settings ->> 'avatar' = a.id::text);
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION chat.media_message_gone() FROM PUBLIC;
COMMENT ON FUNCTION chat.media_message_gone() IS 'trigger: removes the attachments of a deleted message (their bytes are queued for deletion), but not a group''s current picture';
-- Only rows that carried attachments fire: sends and edits pay the WHEN test only.
CREATE TRIGGER messages_attachments_tombstone AFTER UPDATE OF deleted_at ON chat.messages
    FOR EACH ROW WHEN (OLD.attachments IS NOT NULL AND NEW.deleted_at IS NOT NULL
                       AND OLD.deleted_at IS NULL)
    EXECUTE FUNCTION chat.media_message_gone();
CREATE TRIGGER messages_attachments_delete AFTER DELETE ON chat.messages
    FOR EACH ROW WHEN (OLD.attachments IS NOT NULL)
    EXECUTE FUNCTION chat.media_message_gone();
