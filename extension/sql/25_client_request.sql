-- chat.client_request: the one call behind every client frame (docs/protocol.md).
--
-- Field rules: a required field that is missing or null is 22023
-- invalid_parameter_value; a field of the wrong JSON type (or a non-integer
-- where an id is due) is 22P02 invalid_text_representation; a request that
-- is not an object or has no type is 22P02; an unknown type is 22023.

-- The field of a request as JSON; NULL when absent (or JSON null) and
-- optional, 22023 when absent and required: the one "missing" rule.
CREATE FUNCTION chat.request_field(request jsonb, field text, required boolean)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v jsonb := request -> field;
BEGIN
    IF v IS NULL OR jsonb_typeof(v) = 'null' THEN
        IF required THEN
            RAISE EXCEPTION 'request field "%" is missing', field USING ERRCODE = '22023';
        END IF;
        RETURN NULL;
    END IF;
    RETURN v;
END
$$;

-- The field of a request as text; NULL when absent and optional.
CREATE FUNCTION chat.request_text(request jsonb, field text, required boolean DEFAULT true)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v jsonb := chat.request_field(request, field, required);
BEGIN
    IF v IS NULL THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(v) NOT IN ('string', 'number') THEN
        RAISE EXCEPTION 'request field "%" must be a string, not %', field, v::text
            USING ERRCODE = '22P02';
    END IF;
    RETURN v #>> '{}';
END
$$;

-- The field of a request as a bigint (a JSON integer or a string of digits).
CREATE FUNCTION chat.request_bigint(request jsonb, field text, required boolean DEFAULT true)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t text := chat.request_text(request, field, required);
BEGIN
    IF t IS NOT NULL AND t !~ '^-?[0-9]{1,19}$' THEN
        RAISE EXCEPTION 'request field "%" must be an integer, not %', field, request -> field
            USING ERRCODE = '22P02';
    END IF;
    RETURN t::bigint;
END
$$;

-- The field of a request as a boolean; dflt when absent.
CREATE FUNCTION chat.request_bool(request jsonb, field text, dflt boolean)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v jsonb := chat.request_field(request, field, false);
BEGIN
    IF v IS NULL THEN
        RETURN dflt;
    END IF;
    IF jsonb_typeof(v) <> 'boolean' THEN
        RAISE EXCEPTION 'request field "%" must be true or false, not %', field, v::text
            USING ERRCODE = '22P02';
    END IF;
    RETURN v::boolean;
END
$$;

-- The field of a request as an array of user ids.
CREATE FUNCTION chat.request_ids(request jsonb, field text, required boolean DEFAULT true)
RETURNS bigint[]
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v jsonb := chat.request_field(request, field, required);
BEGIN
    IF v IS NULL THEN
        RETURN '{}';
    END IF;
    IF jsonb_typeof(v) <> 'array' OR EXISTS (
            SELECT FROM jsonb_array_elements(v) e
             WHERE jsonb_typeof(e) NOT IN ('number', 'string') OR e #>> '{}' !~ '^-?[0-9]{1,19}$') THEN
        RAISE EXCEPTION 'request field "%" must be an array of integers, not %', field, v::text
            USING ERRCODE = '22P02';
    END IF;
    RETURN ARRAY(SELECT (e #>> '{}')::bigint FROM jsonb_array_elements(v) e);
END
$$;

-- Messages as a JSON array of message objects, in (conversation, seq) order.
CREATE FUNCTION chat.messages_json(msgs chat.message_view[])
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(jsonb_agg(chat.message_json(m) ORDER BY m.conversation_id, m.seq), '[]')
      FROM unnest(msgs) AS m
$$;

-- A profile as the JSON object of the protocol ("user", not "user_id").
CREATE FUNCTION chat.profile_json(p chat.profile_view)
RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_object('user', p.user_id, 'handle', p.handle, 'display_name', p.display_name,
                              'about', p.about, 'avatar', p.avatar)
$$;

-- Runs one request of user_id's device (no error handling: see
-- client_request) and returns its result object.  client_request (C)
-- comes here for the types it has no handler of its own for; the hot
-- types stay here too, as the reference of their field order and results.
CREATE FUNCTION chat.dispatch_request(node text, user_id bigint, device_id integer, request jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rtype text := request ->> 'type';
    conv bigint;
    lim integer;
    r record;
    msgs chat.message_view[];
    -- send's fields (and search_users' limit)
    big bigint;
    att jsonb;
    body text;
    cmid text;
    reply bigint;
    ment bigint[];
    kind text;
BEGIN
    CASE rtype
    WHEN 'send' THEN
        IF jsonb_typeof(request -> 'body') IS DISTINCT FROM 'string' AND request -> 'body' IS NOT NULL
           AND jsonb_typeof(request -> 'body') <> 'null' THEN
            RAISE EXCEPTION 'request field "body" must be a string' USING ERRCODE = '22P02';
        END IF;
        -- The fields in the order of the C send (request.c HandleSend), with
        -- its rules: attachments (media, issue 13) an array, and with them
        -- the body (caption) may be left out; mentions are ids; kind absent
        -- or "text", or "e2e" (send_e2e, 30_e2e.sql), any other 22023.
        conv := chat.request_bigint(request, 'conversation');
        att := chat.request_field(request, 'attachments', false);
        IF att IS NOT NULL AND jsonb_typeof(att) <> 'array' THEN
            RAISE EXCEPTION 'request field "attachments" must be an array of upload ids'
                USING ERRCODE = '22P02';
        END IF;
        body := coalesce(chat.request_text(request, 'body', att IS NULL), '');
        cmid := chat.request_text(request, 'client_msg_id', false);
        reply := chat.request_bigint(request, 'reply_to', false);
        ment := nullif(chat.request_ids(request, 'mentions', false), '{}');
        kind := coalesce(chat.request_text(request, 'kind', false), 'text');
        IF kind = 'e2e' THEN
            SELECT * INTO r FROM chat.send_e2e(user_id, conv, body, cmid, reply, device_id, ment, att) AS s;
        ELSIF kind <> 'text' THEN
            RAISE EXCEPTION 'invalid message kind "%"', kind USING ERRCODE = '22023',
                HINT = 'A send is of kind text or, in an end-to-end encrypted conversation, e2e.';
        ELSE
            SELECT * INTO r FROM chat.send_message(user_id, conv, body, cmid, reply, device_id, ment, att) AS s;
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
                                       x.sender_device, x.kind,
                                       CASE WHEN chat.message_expired(x) THEN NULL ELSE x.body END,
                                       x.client_msg_id, x.reply_to, x.created_at, x.edited_at,
                                       CASE WHEN x.expires_at <= now() THEN x.expires_at ELSE x.deleted_at END,
                                       x.target,
                                       CASE WHEN chat.message_expired(x) THEN NULL ELSE x.attachments END,
                                       CASE WHEN chat.message_expired(x) THEN NULL ELSE x.mentions END,
                                       CASE WHEN chat.message_expired(x) THEN NULL ELSE x.reactions END
                                       )::chat.message_view)
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
    -- Contact search (issue 15, 26_contacts.sql).
    WHEN 'search_users' THEN
        big := coalesce(chat.request_bigint(request, 'limit', false), 20);
        IF big NOT BETWEEN 1 AND 50 THEN
            RAISE EXCEPTION 'search limit % is out of range', big USING ERRCODE = '22023',
                HINT = 'Ask for 1 to 50 users.';
        END IF;
        RETURN jsonb_build_object('users', coalesce((
            SELECT jsonb_agg(chat.profile_json(ROW(u.user_id, u.handle, u.display_name, u.about,
                                                   u.avatar)::chat.profile_view)
                             || jsonb_build_object('contact', u.contact) ORDER BY u.n)
              FROM chat.search_users(user_id, chat.request_text(request, 'query'),
                                     big::integer)
                   WITH ORDINALITY AS u(user_id, handle, display_name, about, avatar, contact, n)), '[]'));
    ELSE
        RAISE EXCEPTION 'unknown request type "%"', rtype
            USING ERRCODE = '22023',
                  HINT = 'See docs/protocol.md for the request types of chat.v1.';
    END CASE;
END
$$;

-- One client frame: dispatches request on behalf of (user_id, device_id)
-- connected at node and returns the response frame with the request's id.
-- In C (request.c): the hot types (send, ack, read, typing, sync, history,
-- after) have C handlers on saved plans, every other type goes to
-- chat.dispatch_request above.  Errors become error frames; the failed
-- request's work is rolled back to a savepoint, so the caller's transaction
-- goes on.  The one exception: a device that does not exist (removed, or
-- never registered) raises P0002, so that a gateway that missed the
-- revocation cannot act for it (the gateway closes such a connection with
-- 4003).
CREATE FUNCTION chat.client_request(node text, user_id bigint, device_id integer, request jsonb)
RETURNS jsonb
LANGUAGE c SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'chat_client_request';

REVOKE ALL ON FUNCTION chat.request_field(jsonb, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.request_text(jsonb, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.request_bigint(jsonb, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.request_bool(jsonb, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.request_ids(jsonb, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.messages_json(chat.message_view[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.profile_json(chat.profile_view) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.dispatch_request(text, bigint, integer, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.client_request(text, bigint, integer, jsonb) FROM PUBLIC;

COMMENT ON FUNCTION chat.request_field(jsonb, text, boolean) IS 'client_request field as jsonb (22023 missing when required; NULL when absent)';
COMMENT ON FUNCTION chat.request_text(jsonb, text, boolean) IS 'client_request field as text (22023 missing, 22P02 wrong type)';
COMMENT ON FUNCTION chat.request_bigint(jsonb, text, boolean) IS 'client_request field as bigint (22023 missing, 22P02 not an integer)';
COMMENT ON FUNCTION chat.request_bool(jsonb, text, boolean) IS 'client_request field as boolean (22P02 wrong type)';
COMMENT ON FUNCTION chat.request_ids(jsonb, text, boolean) IS 'client_request field as an array of ids (22P02 wrong type)';
COMMENT ON FUNCTION chat.messages_json(chat.message_view[]) IS 'messages as a JSON array of message event objects';
COMMENT ON FUNCTION chat.profile_json(chat.profile_view) IS 'a profile as a JSON object {"user","handle","display_name","about","avatar"}';
COMMENT ON FUNCTION chat.dispatch_request(text, bigint, integer, jsonb) IS 'internal: runs one client request, errors propagate';
COMMENT ON FUNCTION chat.client_request(text, bigint, integer, jsonb) IS
    'one client frame (docs/protocol.md) -> response frame with the request id; errors become error frames (P0002 raised for an unknown device)';
