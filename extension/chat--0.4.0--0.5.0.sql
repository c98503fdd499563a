-- chat 0.4.0 -> 0.5.0
--
-- complain if this script is sourced in psql rather than run by ALTER EXTENSION
\echo Use "ALTER EXTENSION chat UPDATE TO '0.5.0'" to load this file. \quit

-- Avatars (issue 15): profile uploads (attachments without a conversation),
-- the avatar checks of set_profile and update_group, media_url for current
-- avatars and the cleanup of replaced profile pictures (33_avatars.sql).
CREATE OR REPLACE FUNCTION chat.set_profile(actor bigint, display_name text DEFAULT NULL,
                                 about text DEFAULT NULL, avatar text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    dn text := btrim(display_name);
BEGIN
    PERFORM chat.require_actor(actor);
    IF length(dn) > 64 THEN
        RAISE EXCEPTION 'display name of % characters is longer than 64', length(dn)
            USING ERRCODE = '22001';
    END IF;
    IF dn ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION 'display name "%" contains control characters', dn
            USING ERRCODE = '22023';
    END IF;
    IF length(about) > 500 THEN
        RAISE EXCEPTION 'about text of % characters is longer than 500', length(about)
            USING ERRCODE = '22001';
    END IF;
    IF avatar <> '' AND avatar !~ '^[A-Za-z0-9_-]{1,128}$' THEN
        RAISE EXCEPTION 'invalid avatar attachment id "%"', left(avatar, 200)
            USING ERRCODE = '22023', HINT = 'Pass the id of an uploaded attachment, or '''' to remove the avatar.';
    END IF;
    -- Avatars (issue 15, 33_avatars.sql): a new avatar must be a ready image
    -- profile upload of the actor; an unchanged one is not checked again.
    IF avatar <> '' AND avatar IS DISTINCT FROM (SELECT u.avatar FROM chat.users u WHERE u.id = actor) THEN
        PERFORM chat.check_user_avatar(actor, avatar);
    END IF;
    UPDATE chat.users u
       SET display_name = CASE WHEN dn IS NULL THEN u.display_name ELSE nullif(dn, '') END,
           about = CASE WHEN set_profile.about IS NULL THEN u.about ELSE nullif(set_profile.about, '') END,
           avatar = CASE WHEN set_profile.avatar IS NULL THEN u.avatar ELSE nullif(set_profile.avatar, '') END
     WHERE u.id = actor;
END
$$;

CREATE OR REPLACE FUNCTION chat.update_group(actor bigint, conversation_id bigint, title text DEFAULT NULL,
                                  description text DEFAULT NULL, only_admins_send boolean DEFAULT NULL,
                                  avatar text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    conv bigint := update_group.conversation_id;
    cur chat.conversations;
    changes jsonb := '{}';
BEGIN
    IF actor IS NULL THEN
        RAISE EXCEPTION 'actor must not be null' USING ERRCODE = '22023';
    END IF;
    IF length(title) > 255 THEN
        RAISE EXCEPTION 'group title of % characters is longer than 255', length(title)
            USING ERRCODE = '22001';
    END IF;
    IF length(description) > 1000 THEN
        RAISE EXCEPTION 'group description of % characters is longer than 1000', length(description)
            USING ERRCODE = '22001';
    END IF;
    IF avatar <> '' AND avatar !~ '^[A-Za-z0-9_-]{1,128}$' THEN
        RAISE EXCEPTION 'invalid avatar attachment id "%"', left(avatar, 200)
            USING ERRCODE = '22023', HINT = 'Pass the id of an uploaded attachment, or '''' to remove the avatar.';
    END IF;
    PERFORM chat.lock_group(conv);
    IF (chat.require_member(actor, conv)).role = 'member' THEN
        RAISE EXCEPTION 'user % may not change conversation %', actor, conv
            USING ERRCODE = '42501', HINT = 'Only owners and admins change a group.';
    END IF;
    SELECT * INTO STRICT cur FROM chat.conversations c WHERE c.id = conv;
    IF title IS NOT NULL AND nullif(title, '') IS DISTINCT FROM cur.title THEN
        changes := changes || jsonb_build_object('title', nullif(title, ''));
    END IF;
    IF description IS NOT NULL
       AND nullif(description, '') IS DISTINCT FROM cur.settings ->> 'description' THEN
        changes := changes || jsonb_build_object('description', nullif(description, ''));
    END IF;
    IF only_admins_send IS NOT NULL
       AND only_admins_send IS DISTINCT FROM coalesce((cur.settings ->> 'only_admins_send')::boolean, false) THEN
        changes := changes || jsonb_build_object('only_admins_send', only_admins_send);
    END IF;
    IF avatar IS NOT NULL AND nullif(avatar, '') IS DISTINCT FROM cur.settings ->> 'avatar' THEN
        -- Avatars (issue 15, 33_avatars.sql): a ready image uploaded to this group.
        IF avatar <> '' THEN
            PERFORM chat.check_group_avatar(actor, conv, avatar);
        END IF;
        changes := changes || jsonb_build_object('avatar', nullif(avatar, ''));
    END IF;
    IF changes = '{}' THEN
        RETURN;
    END IF;
    UPDATE chat.conversations c
       SET title = CASE WHEN changes ? 'title' THEN changes ->> 'title' ELSE c.title END,
           settings = jsonb_strip_nulls(c.settings || (changes - 'title'))
     WHERE c.id = conv;
    -- Avatars (issue 15, 33_avatars.sql): a replaced picture kept past its message goes now.
    IF changes ? 'avatar' THEN
        PERFORM chat.group_avatar_replaced(conv, cur.settings ->> 'avatar');
    END IF;
    PERFORM chat.post_system_message(conv, actor,
        jsonb_build_object('action', 'updated', 'by', actor) || changes);
END
$$;

CREATE OR REPLACE FUNCTION chat.dispatch_request(node text, user_id bigint, device_id integer, request jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rtype text := request ->> 'type';
    conv bigint;
    lim integer;
    r record;
    msgs chat.message_view[];
BEGIN
    CASE rtype
    WHEN 'send' THEN
        IF jsonb_typeof(request -> 'body') IS DISTINCT FROM 'string' AND request -> 'body' IS NOT NULL
           AND jsonb_typeof(request -> 'body') <> 'null' THEN
            RAISE EXCEPTION 'request field "body" must be a string' USING ERRCODE = '22P02';
        END IF;
        -- kind (30_e2e.sql): absent or "text", or "e2e" (send_e2e); the C
        -- send path raises 22023 for any other.  Mentions are ids in both
        -- (an e2e body is never parsed).
        IF chat.request_text(request, 'kind', false) = 'e2e' THEN
            SELECT * INTO r FROM chat.send_e2e(user_id,
                chat.request_bigint(request, 'conversation'),
                chat.request_text(request, 'body'),
                chat.request_text(request, 'client_msg_id', false),
                chat.request_bigint(request, 'reply_to', false),
                device_id,
                nullif(chat.request_ids(request, 'mentions', false), '{}')) AS s;
        ELSIF coalesce(chat.request_text(request, 'kind', false), 'text') <> 'text' THEN
            RAISE EXCEPTION 'invalid message kind "%"', chat.request_text(request, 'kind', false)
                USING ERRCODE = '22023';
        ELSE
            SELECT * INTO r FROM chat.send_message(user_id,
                chat.request_bigint(request, 'conversation'),
                chat.request_text(request, 'body'),
                chat.request_text(request, 'client_msg_id', false),
                chat.request_bigint(request, 'reply_to', false),
                device_id,
                nullif(chat.request_ids(request, 'mentions', false), '{}')) AS s;
        END IF;
        RETURN jsonb_build_object('conversation', r.conversation_id, 'seq', r.seq,
                                  'created_at', chat.json_timestamp(r.created_at),
                                  'duplicate', r.duplicate);
    WHEN 'edit' THEN
        conv := chat.request_bigint(request, 'conversation');
        PERFORM chat.edit_message(user_id, conv, chat.request_bigint(request, 'seq'),
                                  chat.request_text(request, 'body'));
        RETURN jsonb_build_object('conversation', conv, 'seq', request -> 'seq');
    WHEN 'delete' THEN
        conv := chat.request_bigint(request, 'conversation');
        PERFORM chat.delete_message(user_id, conv, chat.request_bigint(request, 'seq'));
        RETURN jsonb_build_object('conversation', conv, 'seq', request -> 'seq');
    WHEN 'ack' THEN
        PERFORM chat.ack(user_id, device_id, chat.request_bigint(request, 'conversation'),
                         chat.request_bigint(request, 'seq'));
        RETURN '{}';
    WHEN 'read' THEN
        PERFORM chat.mark_read(user_id, chat.request_bigint(request, 'conversation'),
                               chat.request_bigint(request, 'seq'));
        RETURN '{}';
    WHEN 'typing' THEN
        PERFORM chat.typing(user_id, chat.request_bigint(request, 'conversation'),
                            chat.request_bool(request, 'typing', true));
        RETURN '{}';
    WHEN 'sync' THEN
        lim := coalesce(chat.request_bigint(request, 'limit', false), 500);
        msgs := ARRAY(SELECT m FROM chat.sync(user_id, device_id, lim) m);
        -- E2E (30_e2e.sql): the device's to-device inbox, when not empty.
        RETURN jsonb_build_object('messages', chat.messages_json(msgs),
                                  'more', cardinality(msgs) >= lim
                                          OR jsonb_array_length(chat.to_device_pending(user_id, device_id, 100)) >= 100)
               || CASE WHEN jsonb_array_length(chat.to_device_pending(user_id, device_id, 100)) > 0
                       THEN jsonb_build_object('to_device', chat.to_device_pending(user_id, device_id, 100))
                       ELSE '{}' END;
    WHEN 'history' THEN
        msgs := ARRAY(SELECT m FROM chat.history(user_id, chat.request_bigint(request, 'conversation'),
                                                 chat.request_bigint(request, 'before_seq', false),
                                                 coalesce(chat.request_bigint(request, 'limit', false), 50)::integer) m);
        RETURN jsonb_build_object('messages', chat.messages_json(msgs));
    WHEN 'after' THEN
        msgs := ARRAY(SELECT m FROM chat.messages_after(user_id, chat.request_bigint(request, 'conversation'),
                                                        chat.request_bigint(request, 'after_seq'),
                                                        coalesce(chat.request_bigint(request, 'limit', false), 500)::integer) m);
        RETURN jsonb_build_object('messages', chat.messages_json(msgs));
    WHEN 'conversations' THEN
        RETURN jsonb_build_object('conversations', coalesce((
            SELECT jsonb_agg(jsonb_build_object(
                       'conversation', c.conversation_id, 'kind', c.kind, 'title', c.title,
                       'last_seq', c.last_seq, 'read_seq', c.read_seq, 'unread', c.unread,
                       'last_activity', chat.json_timestamp(c.last_activity),
                       'peer', (SELECT chat.profile_json(ROW(u.id, u.handle, u.display_name, u.about,
                                                             u.avatar)::chat.profile_view)
                                  FROM chat.users u WHERE u.id = c.peer_id),
                       -- issue 15: the reader's mute and the disappearing timer
                       'muted_until', (SELECT chat.json_timestamp(m.muted_until) FROM chat.members m
                                        WHERE m.conversation_id = c.conversation_id
                                          AND m.user_id = dispatch_request.user_id
                                          AND m.muted_until > now()),
                       'ttl', (SELECT (x.settings ->> 'ttl')::integer FROM chat.conversations x
                                WHERE x.id = c.conversation_id),
                       'last_message', CASE WHEN c.last_message IS NOT NULL THEN coalesce(
                           (SELECT chat.message_json(ROW(x.conversation_id, x.seq, x.sender_id,
                                       x.sender_device, x.kind, x.body, x.client_msg_id, x.reply_to,
                                       x.created_at, x.edited_at, x.deleted_at, x.target,
                                       x.attachments, x.mentions, x.reactions)::chat.message_view)
                              FROM chat.messages x
                             WHERE x.conversation_id = c.conversation_id
                               AND x.seq = (c.last_message ->> 'seq')::bigint),
                           c.last_message) END)
                   -- E2E (30_e2e.sql): "e2e": true on encrypted conversations
                   || CASE WHEN chat.is_e2e(c.conversation_id) THEN '{"e2e": true}'::jsonb
                           ELSE '{}' END
                   -- Avatars (issue 15): a group's picture (its members may fetch it)
                   || CASE WHEN c.kind = 'group' THEN
                           coalesce((SELECT jsonb_build_object('avatar', x.settings -> 'avatar')
                                       FROM chat.conversations x
                                      WHERE x.id = c.conversation_id AND x.settings ? 'avatar'), '{}')
                           ELSE '{}' END
                   ORDER BY c.last_activity DESC, c.conversation_id)
              FROM chat.conversations(user_id,
                       coalesce(chat.request_bigint(request, 'limit', false), 50)::integer,
                       chat.request_text(request, 'before', false)::timestamptz) c), '[]'));
    WHEN 'direct' THEN
        RETURN jsonb_build_object('conversation',
            chat.direct_conversation(user_id, chat.request_bigint(request, 'user')));
    WHEN 'create_group' THEN
        RETURN jsonb_build_object('conversation',
            chat.create_group(user_id, chat.request_text(request, 'title', false),
                              chat.request_ids(request, 'members', false)));
    WHEN 'add_member' THEN
        PERFORM chat.add_member(user_id, chat.request_bigint(request, 'conversation'),
                                chat.request_bigint(request, 'user'),
                                coalesce(chat.request_text(request, 'role', false), 'member'));
        RETURN '{}';
    WHEN 'remove_member' THEN
        PERFORM chat.remove_member(user_id, chat.request_bigint(request, 'conversation'),
                                   chat.request_bigint(request, 'user'));
        RETURN '{}';
    WHEN 'presence' THEN
        RETURN jsonb_build_object('users', coalesce((
            SELECT jsonb_agg(jsonb_build_object('user', p.user_id, 'online', p.online,
                                                'last_seen', chat.json_timestamp(p.last_seen))
                             ORDER BY p.user_id)
              FROM chat.presence(user_id, chat.request_ids(request, 'users')) p), '[]'));
    -- Profiles, blocking, reports, privacy (15_profiles.sql).
    WHEN 'profile' THEN
        RETURN jsonb_build_object('users', coalesce((
            SELECT jsonb_agg(chat.profile_json(p) ORDER BY p.user_id)
              FROM chat.profile(user_id, chat.request_ids(request, 'users')) p), '[]'));
    WHEN 'set_profile' THEN
        PERFORM chat.set_profile(user_id, chat.request_text(request, 'display_name', false),
                                 chat.request_text(request, 'about', false),
                                 chat.request_text(request, 'avatar', false));
        RETURN '{}';
    WHEN 'find_user' THEN
        RETURN jsonb_build_object('user', (
            SELECT chat.profile_json(p)
              FROM chat.find_user(user_id, chat.request_text(request, 'handle')) p));
    WHEN 'block' THEN
        PERFORM chat.block(user_id, chat.request_bigint(request, 'user'));
        RETURN '{}';
    WHEN 'unblock' THEN
        PERFORM chat.unblock(user_id, chat.request_bigint(request, 'user'));
        RETURN '{}';
    WHEN 'blocked' THEN
        RETURN jsonb_build_object('users', to_jsonb(ARRAY(SELECT chat.blocked(user_id))));
    WHEN 'report' THEN
        RETURN jsonb_build_object('report',
            chat.report(user_id, chat.request_bigint(request, 'user', false),
                        chat.request_bigint(request, 'conversation', false),
                        chat.request_bigint(request, 'seq', false),
                        chat.request_text(request, 'reason')));
    WHEN 'set_privacy' THEN
        PERFORM chat.set_privacy(user_id, chat.request_text(request, 'last_seen', false),
                                 chat.request_bool(request, 'read_receipts', NULL));
        RETURN '{}';
    -- Push registration (22_push.sql).
    WHEN 'register_push' THEN
        IF request -> 'subscription' IS NOT NULL AND jsonb_typeof(request -> 'subscription') <> 'null'
           AND jsonb_typeof(request -> 'subscription') <> 'object' THEN
            RAISE EXCEPTION 'request field "subscription" must be an object, not %',
                            request -> 'subscription' USING ERRCODE = '22P02';
        END IF;
        PERFORM chat.register_push(user_id, device_id, chat.request_text(request, 'platform'),
                                   chat.request_text(request, 'token', false),
                                   chat.request_field(request, 'subscription', false));
        RETURN '{}';
    WHEN 'unregister_push' THEN
        PERFORM chat.unregister_push(user_id, device_id);
        RETURN '{}';
    WHEN 'set_push_previews' THEN
        PERFORM chat.set_push_previews(user_id, chat.request_bool(request, 'previews', NULL));
        RETURN '{}';
    -- Group administration (16_groups.sql).
    WHEN 'members' THEN
        RETURN jsonb_build_object('members', coalesce((
            SELECT jsonb_agg(jsonb_build_object('user', m.user_id, 'role', m.role,
                                                'joined_at', chat.json_timestamp(m.joined_at))
                             ORDER BY m.ord)
              FROM chat.members(user_id, chat.request_bigint(request, 'conversation'))
                   WITH ORDINALITY AS m(user_id, role, joined_at, ord)), '[]'));
    WHEN 'set_role' THEN
        PERFORM chat.set_role(user_id, chat.request_bigint(request, 'conversation'),
                              chat.request_bigint(request, 'user'),
                              chat.request_text(request, 'role'));
        RETURN '{}';
    WHEN 'leave' THEN
        PERFORM chat.leave(user_id, chat.request_bigint(request, 'conversation'));
        RETURN '{}';
    WHEN 'update_group' THEN
        PERFORM chat.update_group(user_id, chat.request_bigint(request, 'conversation'),
                                  chat.request_text(request, 'title', false),
                                  chat.request_text(request, 'description', false),
                                  chat.request_bool(request, 'only_admins_send', NULL),
                                  chat.request_text(request, 'avatar', false));
        RETURN '{}';
    -- Invite links and message info (17_group_invites.sql), reactions,
    -- pins, mute (18_reactions.sql), search (19_search.sql), disappearing
    -- messages (23_disappearing.sql): issue 15.
    WHEN 'invite_link' THEN
        SELECT * INTO r FROM chat.invite_link(user_id, chat.request_bigint(request, 'conversation'),
                                              chat.request_bigint(request, 'expires_in', false)::integer) i;
        RETURN jsonb_build_object('code', r.code, 'expires_at', chat.json_timestamp(r.expires_at));
    WHEN 'revoke_invite' THEN
        PERFORM chat.revoke_invite(user_id, chat.request_text(request, 'code'));
        RETURN '{}';
    WHEN 'join' THEN
        RETURN jsonb_build_object('conversation', chat."join"(user_id, chat.request_text(request, 'code')));
    WHEN 'message_info' THEN
        RETURN jsonb_build_object('members', coalesce((
            SELECT jsonb_agg(jsonb_build_object('user', i.user_id,
                                                'delivered_at', chat.json_timestamp(i.delivered_at),
                                                'read_at', chat.json_timestamp(i.read_at))
                             ORDER BY i.user_id)
              FROM chat.message_info(user_id, chat.request_bigint(request, 'conversation'),
                                     chat.request_bigint(request, 'seq')) i), '[]'));
    WHEN 'react' THEN
        conv := chat.request_bigint(request, 'conversation');
        RETURN jsonb_build_object('conversation', conv, 'seq', request -> 'seq', 'entry',
            chat.react(user_id, conv, chat.request_bigint(request, 'seq'),
                       chat.request_text(request, 'emoji'),
                       chat.request_bool(request, 'remove', false)));
    WHEN 'pin' THEN
        PERFORM chat.pin(user_id, chat.request_bigint(request, 'conversation'),
                         chat.request_bigint(request, 'seq'),
                         chat.request_bool(request, 'pinned', true));
        RETURN '{}';
    WHEN 'pins' THEN
        RETURN jsonb_build_object('pins', to_jsonb(ARRAY(
            SELECT chat.pins(user_id, chat.request_bigint(request, 'conversation')))));
    WHEN 'mute' THEN
        PERFORM chat.mute(user_id, chat.request_bigint(request, 'conversation'),
                          chat.request_text(request, 'until', false)::timestamptz);
        RETURN '{}';
    WHEN 'search' THEN
        RETURN jsonb_build_object('messages', coalesce((
            SELECT jsonb_agg(q.j ORDER BY q.n)
              FROM (SELECT chat.message_json(m) AS j, row_number() OVER () AS n
                      FROM chat.search(user_id, chat.request_text(request, 'query'),
                                       chat.request_bigint(request, 'conversation', false),
                                       coalesce(chat.request_bigint(request, 'limit', false), 20)::integer) m) q),
            '[]'));
    WHEN 'set_disappearing' THEN
        PERFORM chat.set_disappearing(user_id, chat.request_bigint(request, 'conversation'),
                                      chat.request_bigint(request, 'ttl', false)::integer);
        RETURN '{}';
    -- media (issue 13)
    WHEN 'upload' THEN
        -- Avatars (issue 15): "purpose":"avatar" uploads a picture (33_avatars.sql).
        IF chat.request_text(request, 'purpose', false) = 'avatar' THEN
            RETURN chat.upload_avatar(user_id, chat.request_text(request, 'mime'),
                                      chat.request_bigint(request, 'size'),
                                      chat.request_text(request, 'sha256'),
                                      chat.request_bigint(request, 'conversation', false));
        ELSIF coalesce(chat.request_text(request, 'purpose', false), 'message') <> 'message' THEN
            RAISE EXCEPTION 'invalid upload purpose "%"', left(request ->> 'purpose', 200)
                USING ERRCODE = '22023', HINT = 'Use "message" (the default) or "avatar".';
        END IF;
        RETURN chat.upload(user_id, chat.request_bigint(request, 'conversation'),
                           chat.request_text(request, 'mime'),
                           chat.request_bigint(request, 'size'),
                           chat.request_text(request, 'sha256'),
                           chat.request_text(request, 'name', false));
    WHEN 'media_url' THEN
        RETURN chat.media_url(user_id, chat.request_text(request, 'attachment')::uuid,
                              chat.request_bool(request, 'thumbnail', false));
    -- End-to-end encryption: key directory, to-device inbox (30_e2e.sql).
    WHEN 'keys_upload' THEN
        RETURN jsonb_build_object('one_time_keys',
            chat.keys_upload(user_id, device_id, chat.request_text(request, 'identity_key', false),
                             chat.request_field(request, 'signed_prekey', false),
                             chat.request_field(request, 'one_time_keys', false),
                             chat.request_field(request, 'fallback_key', false)));
    WHEN 'keys_query' THEN
        RETURN jsonb_build_object('devices', coalesce((
            SELECT jsonb_agg(jsonb_build_object('user', k.user_id, 'device', k.device_id,
                                                'identity_key', k.identity_key,
                                                'signed_prekey', k.signed_prekey)
                             ORDER BY k.user_id, k.device_id)
              FROM chat.keys_query(user_id, chat.request_ids(request, 'users')) k), '[]'));
    WHEN 'keys_claim' THEN
        RETURN jsonb_build_object('bundles', coalesce((
            SELECT jsonb_agg(jsonb_build_object('user', b.claimed_user, 'device', b.claimed_device,
                                                'identity_key', b.identity_key,
                                                'signed_prekey', b.signed_prekey,
                                                'one_time_key', b.one_time_key)
                             || CASE WHEN b.fallback THEN '{"fallback": true}'::jsonb ELSE '{}'::jsonb END
                             ORDER BY b.ordinality)
              FROM chat.keys_claim(user_id, device_id, chat.request_field(request, 'devices', true))
                   WITH ORDINALITY AS b), '[]'));
    WHEN 'to_device' THEN
        PERFORM chat.to_device(user_id, device_id, chat.request_field(request, 'messages', true),
                               chat.request_text(request, 'txn'));
        RETURN '{}';
    WHEN 'to_device_ack' THEN
        PERFORM chat.to_device_ack(user_id, device_id, chat.request_bigint(request, 'up_to'));
        RETURN '{}';
    WHEN 'enable_e2e' THEN
        PERFORM chat.enable_e2e(user_id, chat.request_bigint(request, 'conversation'));
        RETURN '{}';
    ELSE
        RAISE EXCEPTION 'unknown request type "%"', rtype
            USING ERRCODE = '22023',
                  HINT = 'See docs/protocol.md for the request types of chat.v1.';
    END CASE;
END
$$;

CREATE OR REPLACE FUNCTION chat.media_url(actor bigint, attachment uuid, thumbnail boolean DEFAULT false)
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

COMMENT ON FUNCTION chat.media_url(bigint, uuid, boolean) IS 'a signed GET URL of an attachment or its thumbnail, bound to the actor, for members of its conversation; a current avatar also for those who may see it';

CREATE OR REPLACE FUNCTION chat.media_cleanup()
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

COMMENT ON FUNCTION chat.media_cleanup() IS 'removes uploads pending for longer than chat.media_upload_timeout, and older profile uploads that are no current avatar; their bytes are queued for deletion';

ALTER TABLE chat.attachments ALTER COLUMN conversation_id DROP NOT NULL;

CREATE INDEX attachments_profile_idx ON chat.attachments (created_at) WHERE conversation_id IS NULL;

-- new function
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

-- new function
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

-- new function
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

-- new function
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

-- new function
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

-- new function
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

-- new function
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

CREATE OR REPLACE FUNCTION chat.media_message_gone()
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

COMMENT ON FUNCTION chat.media_message_gone() IS 'trigger: removes the attachments of a deleted message (their bytes are queued for deletion), but not a group''s current picture';

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

-- End of avatars (issue 15).
