-- chat 0.2.0 -> 0.3.0
--
-- complain if this script is sourced in psql rather than run by ALTER EXTENSION
\echo Use "ALTER EXTENSION chat UPDATE TO '0.3.0'" to load this file. \quit

-- Media (issue 13): attachments, signed URLs, the deletion queue (32_media.sql),
-- and the upload/media_url requests of dispatch_request.
-- Readers' messages carry their attachments: message_view gains them (last).
ALTER TYPE chat.message_view ADD ATTRIBUTE attachments jsonb;
CREATE OR REPLACE FUNCTION chat.history(actor bigint, conversation_id bigint, before_seq bigint DEFAULT NULL,
                             lim integer DEFAULT 50)
RETURNS SETOF chat.message_view
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    m chat.members;
BEGIN
    PERFORM chat.check_limit(lim);
    m := chat.require_member(actor, history.conversation_id);
    RETURN QUERY
    SELECT * FROM (
        SELECT x.conversation_id, x.seq, x.sender_id, x.sender_device, x.kind,
               CASE WHEN x.target <= m.joined_seq THEN NULL ELSE x.body END,
               x.client_msg_id, x.reply_to, x.created_at, x.edited_at, x.deleted_at, x.target,
               x.attachments
          FROM chat.messages x
         WHERE x.conversation_id = m.conversation_id
           AND x.seq > m.joined_seq
           AND x.seq < coalesce(before_seq, 9223372036854775807)
         ORDER BY x.seq DESC
         LIMIT lim) AS page
     ORDER BY page.seq;
END
$$;

CREATE OR REPLACE FUNCTION chat.messages_after(actor bigint, conversation_id bigint, after_seq bigint,
                                    lim integer DEFAULT 500)
RETURNS SETOF chat.message_view
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    m chat.members;
BEGIN
    PERFORM chat.check_limit(lim);
    m := chat.require_member(actor, messages_after.conversation_id);
    RETURN QUERY
    SELECT x.conversation_id, x.seq, x.sender_id, x.sender_device, x.kind,
           CASE WHEN x.target <= m.joined_seq THEN NULL ELSE x.body END,
           x.client_msg_id, x.reply_to, x.created_at, x.edited_at, x.deleted_at, x.target,
               x.attachments
      FROM chat.messages x
     WHERE x.conversation_id = m.conversation_id
       AND x.seq > GREATEST(coalesce(after_seq, 0), m.joined_seq)
     ORDER BY x.seq
     LIMIT lim;
END
$$;

CREATE OR REPLACE FUNCTION chat.get_message(actor bigint, conversation_id bigint, seq bigint)
RETURNS chat.message_view
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    m chat.members;
    result chat.message_view;
BEGIN
    IF get_message.seq IS NULL THEN
        RAISE EXCEPTION 'seq must not be null' USING ERRCODE = '22023';
    END IF;
    m := chat.require_member(actor, get_message.conversation_id);
    SELECT x.conversation_id, x.seq, x.sender_id, x.sender_device, x.kind,
           CASE WHEN x.target <= m.joined_seq THEN NULL ELSE x.body END,
           x.client_msg_id, x.reply_to, x.created_at, x.edited_at, x.deleted_at, x.target,
               x.attachments
      INTO result
      FROM chat.messages x
     WHERE x.conversation_id = m.conversation_id AND x.seq = get_message.seq
       AND x.seq > m.joined_seq;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'message % does not exist in conversation %', get_message.seq, m.conversation_id
            USING ERRCODE = 'P0002';
    END IF;
    RETURN result;
END
$$;

CREATE OR REPLACE FUNCTION chat.sync(user_id bigint, device_id integer, lim integer DEFAULT 500)
RETURNS SETOF chat.message_view
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    room integer := lim;
    taken integer;
    conv bigint;
    from_seq bigint;
    joined bigint;
BEGIN
    PERFORM chat.check_limit(lim);
    PERFORM chat.require_device(sync.user_id, sync.device_id);
    FOR conv, from_seq, joined IN
        SELECT m.conversation_id, GREATEST(coalesce(dc.acked_seq, 0), m.joined_seq), m.joined_seq
          FROM chat.members m
          JOIN chat.conversations c ON c.id = m.conversation_id
          LEFT JOIN chat.device_cursors dc
                 ON dc.user_id = m.user_id AND dc.device_id = sync.device_id
                AND dc.conversation_id = m.conversation_id
         WHERE m.user_id = sync.user_id AND m.left_at IS NULL
           AND c.last_seq > GREATEST(coalesce(dc.acked_seq, 0), m.joined_seq)
         ORDER BY m.conversation_id
    LOOP
        RETURN QUERY
        SELECT x.conversation_id, x.seq, x.sender_id, x.sender_device, x.kind,
               CASE WHEN x.target <= joined THEN NULL ELSE x.body END,
               x.client_msg_id, x.reply_to, x.created_at, x.edited_at, x.deleted_at, x.target,
               x.attachments
          FROM chat.messages x
         WHERE x.conversation_id = conv AND x.seq > from_seq
         ORDER BY x.seq
         LIMIT room;
        GET DIAGNOSTICS taken = ROW_COUNT;
        room := room - taken;
        EXIT WHEN room <= 0;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION chat.report(actor bigint, user_id bigint, conversation_id bigint, seq bigint, reason text)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    target_user bigint := report.user_id;
    conv bigint := report.conversation_id;
    m chat.members;
    msg chat.messages;
    msg_copy jsonb;
    rid bigint;
BEGIN
    PERFORM chat.require_actor(actor);
    IF reason IS NULL OR btrim(reason) = '' THEN
        RAISE EXCEPTION 'report reason must not be empty' USING ERRCODE = '22023';
    END IF;
    IF length(reason) > 1000 THEN
        RAISE EXCEPTION 'report reason of % characters is longer than 1000', length(reason)
            USING ERRCODE = '22001';
    END IF;
    IF target_user IS NULL AND conv IS NULL THEN
        RAISE EXCEPTION 'a report names a user, a conversation or a message'
            USING ERRCODE = '22023';
    END IF;
    IF report.seq IS NOT NULL AND conv IS NULL THEN
        RAISE EXCEPTION 'seq % needs its conversation', report.seq USING ERRCODE = '22023';
    END IF;
    IF target_user = actor THEN
        RAISE EXCEPTION 'user % cannot report itself', actor USING ERRCODE = '22023';
    END IF;
    IF target_user IS NOT NULL THEN
        PERFORM chat.require_users(ARRAY[target_user]);
    END IF;
    IF conv IS NOT NULL THEN
        m := chat.require_member(actor, conv);
    END IF;
    IF report.seq IS NOT NULL THEN
        SELECT * INTO msg FROM chat.messages x
         WHERE x.conversation_id = conv AND x.seq = report.seq;
        IF NOT FOUND OR msg.seq <= m.joined_seq THEN
            RAISE EXCEPTION 'message % does not exist in conversation %', report.seq, conv
                USING ERRCODE = 'P0002';
        END IF;
        IF target_user IS NULL THEN
            target_user := msg.sender_id;
        ELSIF target_user <> msg.sender_id THEN
            RAISE EXCEPTION 'user % did not send message % of conversation %', target_user, msg.seq, conv
                USING ERRCODE = '22023', HINT = 'Leave user out to report the message''s sender.';
        END IF;
        IF target_user = actor THEN
            RAISE EXCEPTION 'user % cannot report its own message', actor USING ERRCODE = '22023';
        END IF;
        msg_copy := chat.message_json(ROW(msg.conversation_id, msg.seq, msg.sender_id, msg.sender_device,
                    msg.kind, msg.body, msg.client_msg_id, msg.reply_to, msg.created_at,
                    msg.edited_at, msg.deleted_at, msg.target, msg.attachments)::chat.message_view);
    END IF;
    -- Serialises one reporter's reports so the count below is exact.
    PERFORM FROM chat.users u WHERE u.id = actor FOR NO KEY UPDATE;
    IF (SELECT count(*) FROM chat.reports r
         WHERE r.reporter = actor AND r.created_at > now() - interval '1 hour') >= 20 THEN
        RAISE EXCEPTION 'user % has made 20 reports in the last hour', actor
            USING ERRCODE = '53400', HINT = 'Try again later.';
    END IF;
    INSERT INTO chat.reports (reporter, reported_user, conversation_id, seq, reason, message)
    VALUES (actor, target_user, conv, report.seq, reason, msg_copy)
    RETURNING id INTO rid;
    RETURN rid;
END
$$;


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
                                       x.created_at, x.edited_at, x.deleted_at, x.target,
                                       x.attachments)::chat.message_view)
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
    -- media (issue 13)
    WHEN 'upload' THEN
        RETURN chat.upload(user_id, chat.request_bigint(request, 'conversation'),
                           chat.request_text(request, 'mime'),
                           chat.request_bigint(request, 'size'),
                           chat.request_text(request, 'sha256'),
                           chat.request_text(request, 'name', false));
    WHEN 'media_url' THEN
        RETURN chat.media_url(user_id, chat.request_text(request, 'attachment')::uuid,
                              chat.request_bool(request, 'thumbnail', false));
    ELSE
        RAISE EXCEPTION 'unknown request type "%"', rtype
            USING ERRCODE = '22023',
                  HINT = 'See docs/protocol.md for the request types of chat.v1.';
    END CASE;
END
$$;

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

-- Announces an upload: checks membership, type and size; returns
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
-- conversation: {"url","expires_at"}.
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
    -- the uploader may fetch it before sending; the other members once it is sent
    IF a.message_seq IS NULL AND a.owner_id IS DISTINCT FROM actor THEN
        RAISE EXCEPTION 'attachment % does not exist', attachment USING ERRCODE = 'P0002';
    END IF;
    PERFORM chat.require_member(actor, a.conversation_id);
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
COMMENT ON FUNCTION chat.media_url(bigint, uuid, boolean) IS 'a signed GET URL of an attachment or its thumbnail, bound to the actor, for members of its conversation';

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
$$;
REVOKE ALL ON FUNCTION chat.media_download_target(uuid, boolean) FROM PUBLIC;
COMMENT ON FUNCTION chat.media_download_target(uuid, boolean) IS 'the storage key and type a GET URL serves (byte server)';

-- Removes uploads still pending after chat.media_upload_timeout (their
-- bytes, if any, are queued for deletion by the trigger); returns how many.
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
    RETURN n;
END
$$;
REVOKE ALL ON FUNCTION chat.media_cleanup() FROM PUBLIC;
COMMENT ON FUNCTION chat.media_cleanup() IS 'removes uploads pending for longer than chat.media_upload_timeout; their bytes are queued for deletion';

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
     WHERE a.conversation_id = OLD.conversation_id AND a.message_seq = OLD.seq;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION chat.media_message_gone() FROM PUBLIC;
COMMENT ON FUNCTION chat.media_message_gone() IS 'trigger: removes the attachments of a deleted message (their bytes are queued for deletion)';
-- Only rows that carried attachments fire: sends and edits pay the WHEN test only.
CREATE TRIGGER messages_attachments_tombstone AFTER UPDATE OF deleted_at ON chat.messages
    FOR EACH ROW WHEN (OLD.attachments IS NOT NULL AND NEW.deleted_at IS NOT NULL
                       AND OLD.deleted_at IS NULL)
    EXECUTE FUNCTION chat.media_message_gone();
CREATE TRIGGER messages_attachments_delete AFTER DELETE ON chat.messages
    FOR EACH ROW WHEN (OLD.attachments IS NOT NULL)
    EXECUTE FUNCTION chat.media_message_gone();

-- Presence debounce (issue 11): chat.presence_pending, chat.presence_grace,
-- presence_offline and presence_sweep (19_presence_debounce.sql); connect,
-- disconnect, node_reset, node_heartbeat and presence use them.
CREATE UNLOGGED TABLE chat.presence_pending (
    user_id bigint PRIMARY KEY REFERENCES chat.users (id) ON DELETE CASCADE,
    since timestamptz NOT NULL DEFAULT now()
);

-- chat.presence_grace as an interval (its default when the library is not
-- loaded in this backend yet and the setting is therefore unknown).
CREATE FUNCTION chat.presence_grace()
RETURNS interval
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(nullif(current_setting('chat.presence_grace', true), ''), '5s')::interval
$$;

-- The last device of user_id left: with a grace, note it (the sweep
-- announces it later unless the user is back); without, announce now.
CREATE FUNCTION chat.presence_offline(user_id bigint)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF chat.presence_grace() > interval '0' THEN
        INSERT INTO chat.presence_pending AS p (user_id) VALUES (presence_offline.user_id)
            ON CONFLICT ON CONSTRAINT presence_pending_pkey DO UPDATE SET since = now();
    ELSE
        PERFORM chat.fanout_presence(user_id, false);
    END IF;
END
$$;

-- Announces offline every user noted at least chat.presence_grace ago who
-- has no live session now (one who has is dropped silently); returns how
-- many were announced.  Concurrent sweeps announce each user once: the
-- DELETE takes the row.
CREATE FUNCTION chat.presence_sweep()
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    uid bigint;
    announced integer := 0;
BEGIN
    FOR uid IN
        DELETE FROM chat.presence_pending p
         WHERE p.since <= now() - chat.presence_grace()
        RETURNING p.user_id
    LOOP
        CONTINUE WHEN EXISTS (SELECT FROM chat.live_sessions l WHERE l.user_id = uid);
        PERFORM chat.fanout_presence(uid, false);
        announced := announced + 1;
    END LOOP;
    RETURN announced;
END
$$;

REVOKE ALL ON chat.presence_pending FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.presence_grace() FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.presence_offline(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.presence_sweep() FROM PUBLIC;

COMMENT ON TABLE chat.presence_pending IS 'users whose last device left and whose offline presence waits out chat.presence_grace (unlogged)';
COMMENT ON COLUMN chat.presence_pending.since IS 'when the last device left';
COMMENT ON FUNCTION chat.presence_grace() IS 'chat.presence_grace as an interval';
COMMENT ON FUNCTION chat.presence_offline(bigint) IS 'internal: the last device of a user left; offline now or after chat.presence_grace';
COMMENT ON FUNCTION chat.presence_sweep() IS 'announces offline the users gone longer than chat.presence_grace (called by chat.node_heartbeat)';

-- Gateway start: registers the node and forgets its sessions; users who
-- were online only there go offline.  Refused (55000) while
-- chat.token_secret is unset: notifications are signed with it and a
-- gateway drops unsigned ones, so such a node would silently get nothing.
CREATE OR REPLACE FUNCTION chat.node_reset(node text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    gone bigint;
    was_gone timestamptz;
BEGIN
    PERFORM chat.check_node(node);
    -- the setting shows '' when unset and a mask when set (never the secret)
    IF coalesce(current_setting('chat.token_secret', true), '') = '' THEN
        RAISE EXCEPTION 'cannot register node "%": chat.token_secret is not set', node
            USING ERRCODE = '55000',
                  HINT = 'Set chat.token_secret in postgresql.conf to the contents of the gateway''s --token-secret-file and reload; notifications are signed with it.';
    END IF;
    SELECT n.gone_at INTO was_gone FROM chat.nodes n WHERE n.node = node_reset.node;
    INSERT INTO chat.nodes AS n (node) VALUES (node_reset.node)
        ON CONFLICT ON CONSTRAINT nodes_pkey
        DO UPDATE SET started_at = now(), heartbeat_at = now(), gone_at = NULL;
    FOR gone IN
        WITH dropped AS (
            DELETE FROM chat.sessions s WHERE s.node = node_reset.node RETURNING s.user_id)
        SELECT DISTINCT d.user_id FROM dropped d
         WHERE NOT EXISTS (SELECT FROM chat.live_sessions l
                            WHERE l.user_id = d.user_id AND l.node <> node_reset.node)
    LOOP
        -- users of a node already announced gone keep that last_seen
        CONTINUE WHEN was_gone IS NOT NULL;
        UPDATE chat.users SET last_seen = now() WHERE id = gone;
        -- a restarted gateway's clients come back within seconds
        PERFORM chat.presence_offline(gone);
    END LOOP;
END
$$;

-- Gateway heartbeat: keeps the node's sessions online.  It also notices
-- other nodes gone silent beyond chat.node_timeout: their users with no
-- other live session get last_seen and a presence online:false event (the
-- sessions stay, so a node that was only slow comes back whole); a node
-- heard from again announces its users online.
CREATE OR REPLACE FUNCTION chat.node_heartbeat(node text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    was_gone timestamptz;
    dead text;
    uid bigint;
BEGIN
    PERFORM chat.check_node(node);
    SELECT n.gone_at INTO was_gone FROM chat.nodes n WHERE n.node = node_heartbeat.node FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO chat.nodes (node) VALUES (node_heartbeat.node) ON CONFLICT DO NOTHING;
    ELSE
        UPDATE chat.nodes n SET heartbeat_at = now(), gone_at = NULL WHERE n.node = node_heartbeat.node;
        IF was_gone IS NOT NULL THEN
            FOR uid IN
                SELECT DISTINCT s.user_id FROM chat.sessions s
                 WHERE s.node = node_heartbeat.node
                   AND NOT EXISTS (SELECT FROM chat.live_sessions l
                                    WHERE l.user_id = s.user_id AND l.node <> node_heartbeat.node)
            LOOP
                PERFORM chat.fanout_presence(uid, true);
            END LOOP;
        END IF;
    END IF;
    FOR dead IN
        SELECT n.node FROM chat.nodes n
         WHERE n.gone_at IS NULL
           AND NOT EXISTS (SELECT FROM chat.live_nodes l WHERE l.node = n.node)
         FOR UPDATE SKIP LOCKED
    LOOP
        UPDATE chat.nodes n SET gone_at = now() WHERE n.node = dead;
        FOR uid IN
            SELECT DISTINCT s.user_id FROM chat.sessions s
             WHERE s.node = dead
               AND NOT EXISTS (SELECT FROM chat.live_sessions l WHERE l.user_id = s.user_id)
        LOOP
            UPDATE chat.users u SET last_seen = now() WHERE u.id = uid;
            PERFORM chat.fanout_presence(uid, false);
        END LOOP;
    END LOOP;
    -- offline announcements whose grace ran out (19_presence_debounce.sql)
    PERFORM chat.presence_sweep();
END
$$;

-- A device came online on node: session row; the user's first device
-- online sends presence to its peers.
CREATE OR REPLACE FUNCTION chat.connect(node text, user_id bigint, device_id integer)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    was_online boolean;
BEGIN
    PERFORM chat.check_node(node);
    PERFORM FROM chat.devices d WHERE d.user_id = connect.user_id AND d.device_id = connect.device_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'device % of user % does not exist', device_id, user_id
            USING ERRCODE = 'P0002', HINT = 'Register it with chat.register_device.';
    END IF;
    INSERT INTO chat.nodes (node) VALUES (connect.node) ON CONFLICT DO NOTHING;
    was_online := EXISTS (SELECT FROM chat.live_sessions l WHERE l.user_id = connect.user_id);
    INSERT INTO chat.sessions AS s (node, user_id, device_id)
    VALUES (connect.node, connect.user_id, connect.device_id)
        ON CONFLICT ON CONSTRAINT sessions_pkey DO UPDATE SET connected_at = now();
    UPDATE chat.devices d SET last_active = now()
     WHERE d.user_id = connect.user_id AND d.device_id = connect.device_id;
    IF NOT was_online THEN
        -- back within chat.presence_grace: its offline was never announced,
        -- so its online is not news either
        DELETE FROM chat.presence_pending p WHERE p.user_id = connect.user_id;
        IF NOT FOUND THEN
            PERFORM chat.fanout_presence(user_id, true);
        END IF;
    END IF;
END
$$;

-- A device went offline; the user's last device offline sets last_seen
-- and sends presence.
CREATE OR REPLACE FUNCTION chat.disconnect(node text, user_id bigint, device_id integer)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM chat.check_node(node);
    DELETE FROM chat.sessions s
     WHERE s.node = disconnect.node AND s.user_id = disconnect.user_id
       AND s.device_id = disconnect.device_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE chat.devices d SET last_active = now()
     WHERE d.user_id = disconnect.user_id AND d.device_id = disconnect.device_id;
    IF NOT EXISTS (SELECT FROM chat.live_sessions l WHERE l.user_id = disconnect.user_id) THEN
        UPDATE chat.users u SET last_seen = now() WHERE u.id = disconnect.user_id;
        PERFORM chat.presence_offline(user_id);
    END IF;
END
$$;

-- Online state and last_seen of user_ids as viewer may see them: a user
-- with privacy 'nobody' (or 'contacts', to a viewer who is not one of its
-- contacts), or in a block with the viewer either way, shows offline with
-- no last_seen.  Unknown users are left out.  A user whose last device left
-- less than chat.presence_grace ago (chat.presence_pending) still shows
-- online: the presence events have not said otherwise yet.
CREATE OR REPLACE FUNCTION chat.presence(viewer bigint, user_ids bigint[])
RETURNS TABLE (user_id bigint, online boolean, last_seen timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT u.id,
           v.visible AND (EXISTS (SELECT FROM chat.live_sessions l WHERE l.user_id = u.id)
                          OR EXISTS (SELECT FROM chat.presence_pending p WHERE p.user_id = u.id)),
           CASE WHEN v.visible THEN u.last_seen END
      FROM (SELECT DISTINCT x FROM unnest(user_ids) AS x) ids
      JOIN chat.users u ON u.id = ids.x
     CROSS JOIN LATERAL (
        SELECT (u.id = viewer
                OR u.presence_privacy = 'everyone'
                OR (u.presence_privacy = 'contacts' AND chat.is_contact(u.id, viewer)))
               AND NOT chat.is_blocked(u.id, viewer) AS visible) v
     ORDER BY u.id
$$;
COMMENT ON FUNCTION chat.connect(text, bigint, integer) IS 'a device is online on a node; first device sends presence unless back within chat.presence_grace';
COMMENT ON FUNCTION chat.disconnect(text, bigint, integer) IS 'a device went offline; last device sets last_seen, presence after chat.presence_grace';

-- PL/Proxy partitions (issue 16): conversation ids carry their partition.
CREATE FUNCTION chat.new_conversation_id()
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    -- missing_ok: a session that has not loaded the library yet (it is not
    -- in shared_preload_libraries) has no chat.* settings defined so far.
    n integer := coalesce(current_setting('chat.partitions', true), '1')::integer;
    p integer := coalesce(current_setting('chat.partition', true), '0')::integer;
BEGIN
    IF n = 1 THEN
        RETURN nextval('chat.conversations_id_seq');
    END IF;
    IF n < 1 OR n & (n - 1) <> 0 THEN
        RAISE EXCEPTION 'chat.partitions % is not a power of two', n USING ERRCODE = '22023';
    END IF;
    IF p < 0 OR p >= n THEN
        RAISE EXCEPTION 'chat.partition % is not below chat.partitions %', p, n
            USING ERRCODE = '22023',
                  HINT = 'Set chat.partition of each partition database to its number, 0 .. chat.partitions - 1.';
    END IF;
    RETURN nextval('chat.conversations_id_seq') * n + p;
END
$$;
ALTER TABLE chat.conversations ALTER COLUMN id SET DEFAULT chat.new_conversation_id();
REVOKE ALL ON FUNCTION chat.new_conversation_id() FROM PUBLIC;
COMMENT ON FUNCTION chat.new_conversation_id() IS 'a new conversation id; partitioned: sequence value * chat.partitions + chat.partition (the low bits route)';
