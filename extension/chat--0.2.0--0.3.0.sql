-- chat 0.2.0 -> 0.3.0
--
-- complain if this script is sourced in psql rather than run by ALTER EXTENSION
\echo Use "ALTER EXTENSION chat UPDATE TO '0.3.0'" to load this file. \quit

-- Push previews and coalescing (issue 14)
CREATE OR REPLACE FUNCTION chat.push_hold()
RETURNS interval
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(nullif(current_setting('chat.push_coalesce_ms', true), '')::integer, 0)
           * interval '1 millisecond'
$$;
REVOKE ALL ON FUNCTION chat.push_hold() FROM PUBLIC;
COMMENT ON FUNCTION chat.push_hold() IS
    'internal: chat.push_coalesce_ms as an interval, the wait before a queued push may be claimed';
CREATE OR REPLACE FUNCTION chat.claim_push(batch integer DEFAULT 100)
RETURNS SETOF chat.push_outbox
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF batch IS NULL OR batch < 1 OR batch > 10000 THEN
        RAISE EXCEPTION 'invalid push batch size %', batch
            USING ERRCODE = '22023', HINT = 'Claim between 1 and 10000 rows.';
    END IF;
    RETURN QUERY
    UPDATE chat.push_outbox p
       SET attempts = p.attempts + 1, next_attempt_at = now() + interval '30 seconds'
     WHERE p.id IN (SELECT q.id FROM chat.push_outbox q
                     WHERE q.next_attempt_at <= now()
                       AND q.created_at <= now() - chat.push_hold()
                     ORDER BY q.next_attempt_at, q.id
                     LIMIT batch
                     FOR UPDATE SKIP LOCKED)
    RETURNING p.*;
END
$$;
CREATE OR REPLACE FUNCTION chat.next_push_due()
RETURNS timestamptz
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT min(greatest(next_attempt_at, created_at + chat.push_hold()))
      FROM chat.push_outbox WHERE next_attempt_at < 'infinity'
$$;
CREATE OR REPLACE FUNCTION chat.claim_push_deliveries(batch integer DEFAULT 100)
RETURNS TABLE(id bigint, attempts integer, platform text, token text, subscription jsonb,
              topic text, payload jsonb)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    claimed chat.push_outbox[] := ARRAY(SELECT p FROM chat.claim_push(batch) p);
BEGIN
    DELETE FROM chat.push_outbox o
     USING unnest(claimed) c
     WHERE o.id = c.id
       AND NOT EXISTS (SELECT FROM chat.devices d
                        WHERE d.user_id = c.user_id AND d.device_id = c.device_id
                          AND d.push_token IS NOT NULL AND d.push_platform IS NOT NULL);
    RETURN QUERY
    SELECT c.id, c.attempts, d.push_platform, d.push_token, d.push_subscription,
           'c' || c.conversation_id,
           jsonb_build_object('type', 'message', 'conversation', c.conversation_id, 'seq', c.seq,
                              'sender', x.sender_id, 'unread', u.unread)
           || CASE WHEN x.kind = 'text' AND x.deleted_at IS NULL
                        AND (SELECT r.push_previews FROM chat.users r WHERE r.id = c.user_id)
                   THEN jsonb_build_object('body', left(x.body, 200)) ELSE '{}' END
      FROM unnest(claimed) c
      JOIN chat.devices d ON d.user_id = c.user_id AND d.device_id = c.device_id
                         AND d.push_token IS NOT NULL AND d.push_platform IS NOT NULL
      LEFT JOIN chat.messages x ON x.conversation_id = c.conversation_id AND x.seq = c.seq
      CROSS JOIN LATERAL (
          SELECT coalesce(sum(GREATEST(v.last_seq - GREATEST(m.read_seq, m.joined_seq)
                     - (SELECT count(*) FROM chat.messages e
                         WHERE e.conversation_id = m.conversation_id AND e.target IS NOT NULL
                           AND e.seq > GREATEST(m.read_seq, m.joined_seq)), 0)), 0)::bigint AS unread
            FROM chat.members m JOIN chat.conversations v ON v.id = m.conversation_id
           WHERE m.user_id = c.user_id AND m.left_at IS NULL) u
     ORDER BY c.id;
END
$$;
ALTER TABLE chat.users ADD COLUMN push_previews boolean NOT NULL DEFAULT true;
COMMENT ON COLUMN chat.users.push_previews IS
    'false: push notifications to the user carry no preview of the message body';
CREATE OR REPLACE FUNCTION chat.set_push_previews(actor bigint, previews boolean)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF previews IS NULL THEN
        RAISE EXCEPTION 'invalid push previews setting NULL'
            USING ERRCODE = '22023', HINT = 'Pass true or false.';
    END IF;
    UPDATE chat.users u SET push_previews = set_push_previews.previews WHERE u.id = actor;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % does not exist', actor USING ERRCODE = 'P0002';
    END IF;
END
$$;
CREATE OR REPLACE FUNCTION chat.claim_push_notifications(batch integer DEFAULT 100)
RETURNS TABLE(ids bigint[], platform text, token text, subscription jsonb, topic text, payload jsonb)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    claimed chat.push_outbox[] := ARRAY(SELECT p FROM chat.claim_push(batch) p);
    joined chat.push_outbox[];
BEGIN
    WITH more AS (
        UPDATE chat.push_outbox p
           SET attempts = p.attempts + 1, next_attempt_at = now() + interval '30 seconds'
         WHERE p.id IN (SELECT q.id FROM chat.push_outbox q
                         WHERE q.next_attempt_at <= now()
                           AND (q.user_id, q.device_id, q.conversation_id) IN
                               (SELECT c.user_id, c.device_id, c.conversation_id FROM unnest(claimed) c)
                         FOR UPDATE SKIP LOCKED)
        RETURNING p.*)
    SELECT coalesce(array_agg(m), '{}') INTO joined FROM more m;
    claimed := claimed || joined;
    DELETE FROM chat.push_outbox o
     USING unnest(claimed) c
     WHERE o.id = c.id
       AND NOT EXISTS (SELECT FROM chat.devices d
                        WHERE d.user_id = c.user_id AND d.device_id = c.device_id
                          AND d.push_token IS NOT NULL AND d.push_platform IS NOT NULL);
    RETURN QUERY
    WITH g AS (
        SELECT c.user_id, c.device_id, c.conversation_id, array_agg(c.id ORDER BY c.seq, c.id) AS ids,
               min(c.seq) AS first_seq, max(c.seq) AS seq, count(DISTINCT c.seq) AS n
          FROM unnest(claimed) c
         GROUP BY c.user_id, c.device_id, c.conversation_id)
    SELECT g.ids, d.push_platform, d.push_token, d.push_subscription,
           'c' || g.conversation_id,
           jsonb_build_object('type', 'message', 'conversation', g.conversation_id, 'seq', g.seq,
                              'sender', x.sender_id, 'unread', u.unread)
           || CASE WHEN g.n > 1 THEN jsonb_build_object('first_seq', g.first_seq) ELSE '{}' END
           || CASE WHEN x.kind = 'text' AND x.deleted_at IS NULL AND r.push_previews
                   THEN jsonb_build_object('body', left(x.body, 200)) ELSE '{}' END
      FROM g
      JOIN chat.devices d ON d.user_id = g.user_id AND d.device_id = g.device_id
                         AND d.push_token IS NOT NULL AND d.push_platform IS NOT NULL
      JOIN chat.users r ON r.id = g.user_id
      LEFT JOIN chat.messages x ON x.conversation_id = g.conversation_id AND x.seq = g.seq
      CROSS JOIN LATERAL (
          SELECT coalesce(sum(GREATEST(v.last_seq - GREATEST(m.read_seq, m.joined_seq)
                     - (SELECT count(*) FROM chat.messages e
                         WHERE e.conversation_id = m.conversation_id AND e.target IS NOT NULL
                           AND e.seq > GREATEST(m.read_seq, m.joined_seq)), 0)), 0)::bigint AS unread
            FROM chat.members m JOIN chat.conversations v ON v.id = m.conversation_id
           WHERE m.user_id = g.user_id AND m.left_at IS NULL) u
     ORDER BY g.ids[1];
END
$$;
REVOKE ALL ON FUNCTION chat.set_push_previews(bigint, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.claim_push_notifications(integer) FROM PUBLIC;
COMMENT ON FUNCTION chat.set_push_previews(bigint, boolean) IS
    'sets whether the user''s push notifications carry a preview of the message body';
COMMENT ON FUNCTION chat.claim_push_notifications(integer) IS
    'claims due pushes coalesced per device and conversation: the rows (ids), registration, topic and payload with first_seq';
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
        SELECT * INTO r FROM chat.send_message(user_id,
            chat.request_bigint(request, 'conversation'),
            chat.request_text(request, 'body'),
            chat.request_text(request, 'client_msg_id', false),
            chat.request_bigint(request, 'reply_to', false),
            device_id) AS s;
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
        RETURN jsonb_build_object('messages', chat.messages_json(msgs),
                                  'more', cardinality(msgs) >= lim);
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
                       'last_message', CASE WHEN c.last_message IS NOT NULL THEN coalesce(
                           (SELECT chat.message_json(ROW(x.conversation_id, x.seq, x.sender_id,
                                       x.sender_device, x.kind, x.body, x.client_msg_id, x.reply_to,
                                       x.created_at, x.edited_at, x.deleted_at, x.target)::chat.message_view)
                              FROM chat.messages x
                             WHERE x.conversation_id = c.conversation_id
                               AND x.seq = (c.last_message ->> 'seq')::bigint),
                           c.last_message) END)
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
                                  chat.request_bool(request, 'only_admins_send', NULL));
        RETURN '{}';
    ELSE
        RAISE EXCEPTION 'unknown request type "%"', rtype
            USING ERRCODE = '22023',
                  HINT = 'See docs/protocol.md for the request types of chat.v1.';
    END CASE;
END
$$;
