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
        -- kind (30_e2e.sql): absent or "text", or "e2e" (send_e2e); the C
        -- send path raises 22023 for any other.
        IF chat.request_text(request, 'kind', false) = 'e2e' THEN
            SELECT * INTO r FROM chat.send_e2e(user_id,
                chat.request_bigint(request, 'conversation'),
                chat.request_text(request, 'body'),
                chat.request_text(request, 'client_msg_id', false),
                chat.request_bigint(request, 'reply_to', false),
                device_id) AS s;
        ELSIF coalesce(chat.request_text(request, 'kind', false), 'text') <> 'text' THEN
            RAISE EXCEPTION 'invalid message kind "%"', chat.request_text(request, 'kind', false)
                USING ERRCODE = '22023';
        ELSE
            SELECT * INTO r FROM chat.send_message(user_id,
                chat.request_bigint(request, 'conversation'),
                chat.request_text(request, 'body'),
                chat.request_text(request, 'client_msg_id', false),
                chat.request_bigint(request, 'reply_to', false),
                device_id) AS s;
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
                       'last_message', CASE WHEN c.last_message IS NOT NULL THEN coalesce(
                           (SELECT chat.message_json(ROW(x.conversation_id, x.seq, x.sender_id,
                                       x.sender_device, x.kind, x.body, x.client_msg_id, x.reply_to,
                                       x.created_at, x.edited_at, x.deleted_at, x.target,
                                       x.attachments)::chat.message_view)
                              FROM chat.messages x
                             WHERE x.conversation_id = c.conversation_id
                               AND x.seq = (c.last_message ->> 'seq')::bigint),
                           c.last_message) END)
                   -- E2E (30_e2e.sql): "e2e": true on encrypted conversations
                   || CASE WHEN chat.is_e2e(c.conversation_id) THEN '{"e2e": true}'::jsonb
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

-- E2E keys (issue 12): key directory, to-device inbox, enable_e2e, send_e2e
-- (30_e2e.sql) and the e2e refusal of edits.  The e2e request types are in
-- the one chat.dispatch_request above (shared with media and push).
CREATE OR REPLACE FUNCTION chat.edit_message(actor bigint, conversation_id bigint, seq bigint, body text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    conv bigint := edit_message.conversation_id;
    m chat.members;
    msg chat.messages;
    window_length interval := current_setting('chat.edit_window')::interval;
    changed_at timestamptz;
    blocker bigint;
BEGIN
    PERFORM chat.check_body(edit_message.body);
    IF edit_message.seq IS NULL THEN
        RAISE EXCEPTION 'seq must not be null' USING ERRCODE = '22023';
    END IF;
    -- Lock order of every writer: the conversation row, then the rest.
    PERFORM FROM chat.conversations WHERE id = conv FOR NO KEY UPDATE;
    m := chat.require_member(actor, conv);
    -- E2E (30_e2e.sql): an edit would put a body the clients did not
    -- encrypt into an end-to-end encrypted conversation.
    IF chat.is_e2e(conv) THEN
        RAISE EXCEPTION 'conversation % is end-to-end encrypted: messages cannot be edited', conv
            USING ERRCODE = '0A000', HINT = 'Send a new encrypted message instead.';
    END IF;
    -- An edit brings new text, like a send: not from a blocked user into
    -- the direct conversation with the blocker (deleting stays allowed).
    SELECT k.blocker INTO blocker
      FROM chat.conversations c
      JOIN chat.blocks k ON k.blocked = actor
                        AND k.blocker = CASE WHEN c.direct_low = actor THEN c.direct_high ELSE c.direct_low END
     WHERE c.id = conv AND c.kind = 'direct';
    IF FOUND THEN
        RAISE EXCEPTION 'user % cannot edit in conversation %: blocked by user %', actor, conv, blocker
            USING ERRCODE = '42501';
    END IF;
    msg := chat.changeable_message(m, edit_message.seq, 'Edit');
    IF msg.sender_id <> actor OR msg.kind = 'system' THEN
        RAISE EXCEPTION 'user % may not edit message % of conversation %', actor, msg.seq, conv
            USING ERRCODE = '42501', HINT = 'Only the sender edits a message.';
    END IF;
    IF msg.deleted_at IS NOT NULL THEN
        RAISE EXCEPTION 'message % of conversation % is deleted', msg.seq, conv
            USING ERRCODE = '55000';
    END IF;
    IF clock_timestamp() > msg.created_at + window_length THEN
        RAISE EXCEPTION 'message % of conversation % is older than chat.edit_window (%)',
            msg.seq, conv, current_setting('chat.edit_window')
            USING ERRCODE = '55000', HINT = 'Send a new message instead.';
    END IF;
    changed_at := clock_timestamp();
    UPDATE chat.messages SET body = edit_message.body, edited_at = changed_at
     WHERE conversation_id = conv AND seq = msg.seq;
    PERFORM chat.append_message(conv, actor, 'edit', edit_message.body, msg.seq, changed_at);
    PERFORM chat.fanout_event(conv,
        ARRAY(SELECT x.user_id FROM chat.members x
               WHERE x.conversation_id = conv AND x.left_at IS NULL AND x.joined_seq < msg.seq),
        jsonb_build_object('type', 'edit', 'conversation', conv, 'seq', msg.seq,
                           'body', edit_message.body));
END
$$;


-- End-to-end encryption (docs/e2e.md, docs/sql-api.md "End-to-end
-- encryption"): the key directory of every device, the per-device
-- to-device inbox that carries key-sharing envelopes, and the switch that
-- makes a conversation accept only ciphertext.
--
-- The server never sees plaintext: keys are opaque base64 strings, an
-- envelope's ciphertext is stored and relayed as given, and an e2e
-- message's body is stored like any other but never parsed, put in a push
-- payload or searched.  The e2e switch lives in conversations.settings
-- ('e2e': true, like only_admins_send), so that the send path (send.c)
-- reads it from the row it locks anyway: no column is added to a released
-- table and a send costs nothing more.
--
-- Device-scoped events (to_device, keys_low) name their recipient device
-- in "device"; the gateway hands them to that device's connections only.

-- A device's public keys: identity key, signed prekey (id, key, signature)
-- and fallback key (handed out, marked, once the one-time keys run out).
CREATE TABLE chat.device_keys (
    user_id            bigint NOT NULL,
    device_id          integer NOT NULL,
    identity_key       text NOT NULL,
    signed_prekey      jsonb NOT NULL,   -- {"id","key","signature"}
    fallback_key       jsonb,            -- {"id","key","signature"}
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, device_id),
    FOREIGN KEY (user_id, device_id) REFERENCES chat.devices ON DELETE CASCADE
);

CREATE SEQUENCE chat.one_time_keys_id_seq;
-- The pool of one-time prekeys of each device; a claim deletes the key it
-- hands out (DELETE ... RETURNING over FOR UPDATE SKIP LOCKED): once only.
CREATE TABLE chat.one_time_keys (
    user_id    bigint NOT NULL,
    device_id  integer NOT NULL,
    key_id     text NOT NULL,
    key        text NOT NULL,
    id         bigint NOT NULL DEFAULT nextval('chat.one_time_keys_id_seq'),  -- upload order
    PRIMARY KEY (user_id, device_id, key_id),
    FOREIGN KEY (user_id, device_id) REFERENCES chat.device_keys ON DELETE CASCADE
);
ALTER SEQUENCE chat.one_time_keys_id_seq OWNED BY chat.one_time_keys.id;
CREATE INDEX one_time_keys_claim_idx ON chat.one_time_keys (user_id, device_id, id);

CREATE SEQUENCE chat.to_device_id_seq;
-- Envelopes waiting for one device (deleted by chat.to_device_ack).
CREATE TABLE chat.to_device (
    id           bigint PRIMARY KEY DEFAULT nextval('chat.to_device_id_seq'),
    user_id      bigint NOT NULL,
    device_id    integer NOT NULL,
    from_user    bigint NOT NULL,
    from_device  integer NOT NULL,
    message_type text NOT NULL,
    ciphertext   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (user_id, device_id) REFERENCES chat.devices ON DELETE CASCADE
);
ALTER SEQUENCE chat.to_device_id_seq OWNED BY chat.to_device.id;
CREATE INDEX to_device_inbox_idx ON chat.to_device (user_id, device_id, id);

-- The txns a sending device used (chat.to_device is idempotent per txn),
-- kept for a day.
CREATE TABLE chat.to_device_txns (
    user_id    bigint NOT NULL,
    device_id  integer NOT NULL,
    txn        text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, device_id, txn),
    FOREIGN KEY (user_id, device_id) REFERENCES chat.devices ON DELETE CASCADE
);
CREATE INDEX to_device_txns_age_idx ON chat.to_device_txns (created_at);

SELECT pg_catalog.pg_extension_config_dump('chat.device_keys', '');
SELECT pg_catalog.pg_extension_config_dump('chat.one_time_keys', '');
SELECT pg_catalog.pg_extension_config_dump('chat.one_time_keys_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('chat.to_device', '');
SELECT pg_catalog.pg_extension_config_dump('chat.to_device_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('chat.to_device_txns', '');

REVOKE ALL ON TABLE chat.device_keys, chat.one_time_keys, chat.to_device, chat.to_device_txns FROM PUBLIC;
REVOKE ALL ON SEQUENCE chat.one_time_keys_id_seq, chat.to_device_id_seq FROM PUBLIC;

COMMENT ON TABLE chat.device_keys IS 'e2e key directory: identity key, signed prekey and fallback key of each device';
COMMENT ON TABLE chat.one_time_keys IS 'e2e one-time prekeys of each device; a claim deletes the key it hands out';
COMMENT ON TABLE chat.to_device IS 'e2e to-device inbox: envelopes waiting for one device until it acks them';
COMMENT ON TABLE chat.to_device_txns IS 'txns of chat.to_device calls of the last day (a repeated txn stores nothing)';
COMMENT ON SEQUENCE chat.one_time_keys_id_seq IS 'upload order of chat.one_time_keys';
COMMENT ON SEQUENCE chat.to_device_id_seq IS 'ids of chat.to_device';

-- Raises 22023 unless k is a key as the directory stores them: base64 or
-- base64url text of 1 to 1024 characters.  what names it in the message.
CREATE FUNCTION chat.check_e2e_key(k text, what text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF k IS NULL OR length(k) > 1024 OR k !~ '^[A-Za-z0-9+/_-]+={0,2}$' THEN
        RAISE EXCEPTION '% "%" is not a base64 key', what, left(coalesce(k, 'NULL'), 80)
            USING ERRCODE = '22023', HINT = 'Keys are base64 or base64url text of at most 1024 characters.';
    END IF;
    RETURN k;
END
$$;

-- Raises 22023 unless k is a signed key object {"id","key","signature"};
-- returns it with only those fields (id as text).
CREATE FUNCTION chat.check_signed_key(k jsonb, what text)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF jsonb_typeof(k) IS DISTINCT FROM 'object'
       OR jsonb_typeof(k -> 'id') NOT IN ('string', 'number')
       OR jsonb_typeof(k -> 'key') IS DISTINCT FROM 'string'
       OR jsonb_typeof(k -> 'signature') IS DISTINCT FROM 'string' THEN
        RAISE EXCEPTION '% must be an object {"id","key","signature"}, not %', what, left(coalesce(k::text, 'NULL'), 80)
            USING ERRCODE = '22023';
    END IF;
    IF length(k ->> 'id') NOT BETWEEN 1 AND 64 THEN
        RAISE EXCEPTION '% id "%" must have 1 to 64 characters', what, left(k ->> 'id', 80) USING ERRCODE = '22023';
    END IF;
    RETURN jsonb_build_object('id', k ->> 'id',
                              'key', chat.check_e2e_key(k ->> 'key', what || ' key'),
                              'signature', chat.check_e2e_key(k ->> 'signature', what || ' signature'));
END
$$;

-- The users who share a current conversation with user_id, and user_id
-- itself (its other devices): who hears of its identity key changes.
CREATE FUNCTION chat.e2e_peers(user_id bigint)
RETURNS bigint[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ARRAY(SELECT DISTINCT o.user_id
                   FROM chat.members m
                   JOIN chat.members o ON o.conversation_id = m.conversation_id AND o.left_at IS NULL
                  WHERE m.user_id = e2e_peers.user_id AND m.left_at IS NULL
                 UNION
                 SELECT e2e_peers.user_id
                  ORDER BY 1)
$$;

-- Raises 42501 unless users a and b are one user or share a current
-- conversation: keys are claimed and envelopes sent only between them, so
-- that strangers can neither drain a pool nor fill an inbox.
CREATE FUNCTION chat.require_e2e_peer(a bigint, b bigint)
RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF a = b OR EXISTS (SELECT FROM chat.members m
                          JOIN chat.members o ON o.conversation_id = m.conversation_id
                                             AND o.user_id = b AND o.left_at IS NULL
                         WHERE m.user_id = a AND m.left_at IS NULL) THEN
        RETURN;
    END IF;
    RAISE EXCEPTION 'user % shares no conversation with user %', a, b
        USING ERRCODE = '42501', HINT = 'Keys and envelopes go only to the devices of users one talks to.';
END
$$;

-- Uploads a device's keys; returns how many one-time keys it has now.
-- The first upload needs identity_key and signed_prekey.  A new identity
-- key (different from the stored one) replaces the device's keys: the
-- signed prekey must come with it, the old one-time and fallback keys are
-- dropped, and the peers get {"type":"identity_changed","user","device"}.
-- one_time_keys: [{"id","key"}], at most 100 a call and 200 in the pool
-- (54000 beyond); an id already in the pool keeps its key (a retried
-- upload is harmless).
CREATE FUNCTION chat.keys_upload(user_id bigint, device_id integer, identity_key text DEFAULT NULL,
                                 signed_prekey jsonb DEFAULT NULL, one_time_keys jsonb DEFAULT NULL,
                                 fallback_key jsonb DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    uid bigint := keys_upload.user_id;
    did integer := keys_upload.device_id;
    old chat.device_keys;
    spk jsonb;
    fbk jsonb;
    otk jsonb;
    n integer;
    pool integer;
BEGIN
    PERFORM chat.require_device(uid, did);
    IF identity_key IS NOT NULL THEN
        PERFORM chat.check_e2e_key(identity_key, 'identity_key');
    END IF;
    IF signed_prekey IS NOT NULL AND jsonb_typeof(signed_prekey) <> 'null' THEN
        spk := chat.check_signed_key(signed_prekey, 'signed_prekey');
    END IF;
    IF fallback_key IS NOT NULL AND jsonb_typeof(fallback_key) <> 'null' THEN
        fbk := chat.check_signed_key(fallback_key, 'fallback_key');
    END IF;
    IF one_time_keys IS NOT NULL AND jsonb_typeof(one_time_keys) <> 'null' THEN
        IF jsonb_typeof(one_time_keys) <> 'array' THEN
            RAISE EXCEPTION 'one_time_keys must be an array of {"id","key"}, not %', left(one_time_keys::text, 80)
                USING ERRCODE = '22023';
        END IF;
        IF jsonb_array_length(one_time_keys) > 100 THEN
            RAISE EXCEPTION '% one-time keys in one upload exceed 100', jsonb_array_length(one_time_keys)
                USING ERRCODE = '54000', HINT = 'Upload them in batches of 100.';
        END IF;
        FOR otk IN SELECT value FROM jsonb_array_elements(one_time_keys) LOOP
            IF jsonb_typeof(otk) IS DISTINCT FROM 'object'
               OR jsonb_typeof(otk -> 'id') NOT IN ('string', 'number')
               OR jsonb_typeof(otk -> 'key') IS DISTINCT FROM 'string'
               OR length(otk ->> 'id') NOT BETWEEN 1 AND 64 THEN
                RAISE EXCEPTION 'one-time key % must be an object {"id","key"} with an id of 1 to 64 characters',
                    left(otk::text, 80) USING ERRCODE = '22023';
            END IF;
            PERFORM chat.check_e2e_key(otk ->> 'key', 'one-time key ' || (otk ->> 'id'));
        END LOOP;
    END IF;

    SELECT * INTO old FROM chat.device_keys WHERE user_id = uid AND device_id = did FOR UPDATE;
    IF NOT FOUND THEN
        IF identity_key IS NULL OR spk IS NULL THEN
            RAISE EXCEPTION 'device % of user % has no keys yet: the first upload needs identity_key and signed_prekey', did, uid
                USING ERRCODE = '22023';
        END IF;
        INSERT INTO chat.device_keys (user_id, device_id, identity_key, signed_prekey, fallback_key)
        VALUES (uid, did, identity_key, spk, fbk);
    ELSIF identity_key IS NOT NULL AND identity_key <> old.identity_key THEN
        IF spk IS NULL THEN
            RAISE EXCEPTION 'a new identity key of device % of user % needs a new signed_prekey', did, uid
                USING ERRCODE = '22023', HINT = 'The signed prekey is signed by the identity key: upload both.';
        END IF;
        DELETE FROM chat.one_time_keys WHERE user_id = uid AND device_id = did;
        UPDATE chat.device_keys
           SET identity_key = keys_upload.identity_key, signed_prekey = spk, fallback_key = fbk,
               updated_at = now()
         WHERE user_id = uid AND device_id = did;
        PERFORM chat.fanout_event(NULL, chat.e2e_peers(uid),
            jsonb_build_object('type', 'identity_changed', 'user', uid, 'device', did));
    ELSIF spk IS NOT NULL OR fbk IS NOT NULL THEN
        UPDATE chat.device_keys
           SET signed_prekey = coalesce(spk, signed_prekey), fallback_key = coalesce(fbk, fallback_key),
               updated_at = now()
         WHERE user_id = uid AND device_id = did;
    END IF;

    IF one_time_keys IS NOT NULL AND jsonb_typeof(one_time_keys) = 'array' THEN
        INSERT INTO chat.one_time_keys (user_id, device_id, key_id, key)
        SELECT uid, did, k.value ->> 'id', k.value ->> 'key'
          FROM jsonb_array_elements(one_time_keys) WITH ORDINALITY AS k
         ORDER BY k.ordinality
        ON CONFLICT DO NOTHING;
    END IF;
    SELECT count(*) INTO pool FROM chat.one_time_keys WHERE user_id = uid AND device_id = did;
    IF pool > 200 THEN
        RAISE EXCEPTION 'device % of user % would hold % one-time keys, more than 200', did, uid, pool
            USING ERRCODE = '54000', HINT = 'Upload keys when keys_low says the pool runs low.';
    END IF;
    RETURN pool;
END
$$;

-- The devices of user_ids that have keys, with their identity key and
-- signed prekey, for any user (what a sender needs to start a session).
-- P0002 for an unknown user; at most 1000 users.
CREATE FUNCTION chat.keys_query(actor bigint, user_ids bigint[])
RETURNS TABLE(user_id bigint, device_id integer, identity_key text, signed_prekey jsonb)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM chat.require_actor(actor);
    IF user_ids IS NULL THEN
        RAISE EXCEPTION 'user_ids must not be null' USING ERRCODE = '22023';
    END IF;
    IF cardinality(user_ids) > 1000 THEN
        RAISE EXCEPTION '% users in one keys_query exceed 1000', cardinality(user_ids) USING ERRCODE = '54000';
    END IF;
    PERFORM chat.require_users(user_ids);
    RETURN QUERY
    SELECT k.user_id, k.device_id, k.identity_key, k.signed_prekey
      FROM chat.device_keys k
     WHERE k.user_id = ANY (user_ids)
     ORDER BY k.user_id, k.device_id;
END
$$;

-- Claims one key bundle per listed device ([{"user","device"}], at most
-- 1000): identity key, signed prekey and one one-time key, which is
-- deleted as it is handed out, so that no two claims ever get the same
-- one (concurrent claims skip each other's locked keys).  A device whose
-- pool is empty hands out its fallback key instead, with fallback true
-- (one_time_key NULL when it has none either).  The owner of a pool that
-- fell below 10 gets {"type":"keys_low","count","device"} on that device.
-- P0002 for a device without keys, 42501 for a user who shares no
-- conversation with the claimer.
CREATE FUNCTION chat.keys_claim(user_id bigint, device_id integer, devices jsonb)
RETURNS TABLE(claimed_user bigint, claimed_device integer, identity_key text, signed_prekey jsonb,
              one_time_key jsonb, fallback boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    d jsonb;
    cu bigint;
    cd integer;
    k chat.device_keys;
    otk record;
    left_keys integer;
BEGIN
    PERFORM chat.require_device(keys_claim.user_id, keys_claim.device_id);
    IF jsonb_typeof(devices) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'devices must be an array of {"user","device"}, not %', left(coalesce(devices::text, 'NULL'), 80)
            USING ERRCODE = '22023';
    END IF;
    IF jsonb_array_length(devices) > 1000 THEN
        RAISE EXCEPTION '% devices in one keys_claim exceed 1000', jsonb_array_length(devices)
            USING ERRCODE = '54000', HINT = 'Claim in batches of 1000.';
    END IF;
    FOR d IN SELECT value FROM jsonb_array_elements(devices) LOOP
        IF jsonb_typeof(d) IS DISTINCT FROM 'object' OR jsonb_typeof(d -> 'user') IS DISTINCT FROM 'number'
           OR jsonb_typeof(d -> 'device') IS DISTINCT FROM 'number'
           OR (d ->> 'user') !~ '^-?[0-9]{1,18}$' OR (d ->> 'device') !~ '^[0-9]{1,9}$' THEN
            RAISE EXCEPTION 'device % must be an object {"user","device"} of integers', left(d::text, 80)
                USING ERRCODE = '22P02';
        END IF;
        cu := (d ->> 'user')::bigint;
        cd := (d ->> 'device')::integer;
        PERFORM chat.require_e2e_peer(keys_claim.user_id, cu);
        SELECT * INTO k FROM chat.device_keys x WHERE x.user_id = cu AND x.device_id = cd;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'device % of user % has no keys', cd, cu
                USING ERRCODE = 'P0002', HINT = 'keys_query lists the devices that uploaded keys.';
        END IF;
        DELETE FROM chat.one_time_keys o
         WHERE o.ctid = (SELECT x.ctid FROM chat.one_time_keys x
                          WHERE x.user_id = cu AND x.device_id = cd
                          ORDER BY x.id LIMIT 1 FOR UPDATE SKIP LOCKED)
        RETURNING o.key_id, o.key INTO otk;
        claimed_user := cu;
        claimed_device := cd;
        identity_key := k.identity_key;
        signed_prekey := k.signed_prekey;
        IF otk.key_id IS NOT NULL THEN
            one_time_key := jsonb_build_object('id', otk.key_id, 'key', otk.key);
            fallback := false;
        ELSE
            one_time_key := k.fallback_key;
            fallback := true;
        END IF;
        otk := NULL;
        SELECT count(*) INTO left_keys FROM chat.one_time_keys x WHERE x.user_id = cu AND x.device_id = cd;
        IF left_keys < 10 THEN
            PERFORM chat.fanout_event(NULL, ARRAY[cu],
                jsonb_build_object('type', 'keys_low', 'count', left_keys, 'device', cd));
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Queues envelopes [{"user","device","type","ciphertext"}] (at most 1024,
-- ciphertext base64 of at most 6000 characters so that the live event fits
-- a notification) from (user_id, device_id) to those devices, each of which
-- gets {"type":"to_device","id","from_user","from_device","message_type",
-- "ciphertext","device"} if online and finds it in sync until it acks it.
-- Idempotent per txn: a txn the sending device used in the last day stores
-- nothing new.  A device's inbox holds at most 1000 envelopes (54000).
-- Recipients are the sender's own devices and the devices of users who
-- share a conversation with it (42501 otherwise).
CREATE FUNCTION chat.to_device(user_id bigint, device_id integer, messages jsonb, txn text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    uid bigint := to_device.user_id;
    did integer := to_device.device_id;
    m jsonb;
    ru bigint;
    rd integer;
    new_id bigint;
BEGIN
    PERFORM chat.require_device(uid, did);
    IF txn IS NULL OR length(txn) NOT BETWEEN 1 AND 128 THEN
        RAISE EXCEPTION 'txn "%" must have 1 to 128 characters', left(coalesce(txn, 'NULL'), 80)
            USING ERRCODE = '22023', HINT = 'A txn makes a retry store nothing twice: use a fresh one per call.';
    END IF;
    IF jsonb_typeof(messages) IS DISTINCT FROM 'array' OR jsonb_array_length(messages) = 0 THEN
        RAISE EXCEPTION 'messages must be a non-empty array of {"user","device","type","ciphertext"}'
            USING ERRCODE = '22023';
    END IF;
    IF jsonb_array_length(messages) > 1024 THEN
        RAISE EXCEPTION '% envelopes in one to_device call exceed 1024', jsonb_array_length(messages)
            USING ERRCODE = '54000';
    END IF;
    DELETE FROM chat.to_device_txns x
     WHERE x.user_id = uid AND x.device_id = did AND x.created_at < now() - interval '1 day';
    INSERT INTO chat.to_device_txns (user_id, device_id, txn) VALUES (uid, did, txn)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN;                 -- a retry: everything was queued the first time
    END IF;
    FOR m IN SELECT value FROM jsonb_array_elements(messages) LOOP
        IF jsonb_typeof(m) IS DISTINCT FROM 'object' OR jsonb_typeof(m -> 'user') IS DISTINCT FROM 'number'
           OR jsonb_typeof(m -> 'device') IS DISTINCT FROM 'number'
           OR (m ->> 'user') !~ '^-?[0-9]{1,18}$' OR (m ->> 'device') !~ '^[0-9]{1,9}$'
           OR jsonb_typeof(m -> 'type') IS DISTINCT FROM 'string'
           OR jsonb_typeof(m -> 'ciphertext') IS DISTINCT FROM 'string' THEN
            RAISE EXCEPTION 'envelope % must be an object {"user","device","type","ciphertext"}', left(m::text, 80)
                USING ERRCODE = '22P02';
        END IF;
        IF (m ->> 'type') !~ '^[A-Za-z0-9_.:-]{1,32}$' THEN
            RAISE EXCEPTION 'envelope type "%" must be 1 to 32 letters, digits or _.:-', left(m ->> 'type', 80)
                USING ERRCODE = '22023';
        END IF;
        -- base64 only: the live event's size then follows from the length
        -- (no escaping, one byte a character) and always fits a notification.
        IF (m ->> 'ciphertext') !~ '^[A-Za-z0-9+/_=-]+$' THEN
            RAISE EXCEPTION 'envelope ciphertext "%" is not base64 text', left(m ->> 'ciphertext', 40)
                USING ERRCODE = '22023';
        END IF;
        IF length(m ->> 'ciphertext') > 6000 THEN
            RAISE EXCEPTION 'envelope ciphertext of % characters exceeds 6000', length(m ->> 'ciphertext')
                USING ERRCODE = '22001', HINT = 'Envelopes carry keys; messages go through send.';
        END IF;
    END LOOP;
    -- The recipients: each must exist and be a peer; their device rows are
    -- locked in (user, device) order, so that senders with overlapping
    -- recipients queue behind each other instead of deadlocking, and the
    -- inbox bound holds under concurrent senders.
    FOR ru, rd IN
        SELECT DISTINCT (e.value ->> 'user')::bigint, (e.value ->> 'device')::integer
          FROM jsonb_array_elements(messages) e ORDER BY 1, 2
    LOOP
        PERFORM chat.require_device(ru, rd);
        PERFORM chat.require_e2e_peer(uid, ru);
    END LOOP;
    PERFORM FROM chat.devices x
     WHERE (x.user_id, x.device_id) IN (SELECT (e.value ->> 'user')::bigint, (e.value ->> 'device')::integer
                                           FROM jsonb_array_elements(messages) e)
     ORDER BY x.user_id, x.device_id
       FOR NO KEY UPDATE;
    SELECT r.u, r.d INTO ru, rd
      FROM (SELECT (e.value ->> 'user')::bigint AS u, (e.value ->> 'device')::integer AS d, count(*) AS n
              FROM jsonb_array_elements(messages) e GROUP BY 1, 2) r
     WHERE r.n + (SELECT count(*) FROM chat.to_device x WHERE x.user_id = r.u AND x.device_id = r.d) > 1000
     ORDER BY 1, 2 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'to-device inbox of device % of user % is full (1000 envelopes)', rd, ru
            USING ERRCODE = '54000', HINT = 'The device must sync and ack its inbox; retry later.';
    END IF;
    FOR m IN SELECT e.value FROM jsonb_array_elements(messages) WITH ORDINALITY AS e ORDER BY e.ordinality LOOP
        ru := (m ->> 'user')::bigint;
        rd := (m ->> 'device')::integer;
        INSERT INTO chat.to_device (user_id, device_id, from_user, from_device, message_type, ciphertext)
        VALUES (ru, rd, uid, did, m ->> 'type', m ->> 'ciphertext')
        RETURNING id INTO new_id;
        PERFORM chat.fanout_event(NULL, ARRAY[ru],
            jsonb_build_object('type', 'to_device', 'id', new_id, 'from_user', uid, 'from_device', did,
                               'message_type', m ->> 'type', 'ciphertext', m ->> 'ciphertext',
                               'device', rd));
    END LOOP;
END
$$;

-- The oldest lim envelopes of a device's inbox as the JSON array sync
-- returns ("to_device"): the live event objects.
CREATE FUNCTION chat.to_device_pending(user_id bigint, device_id integer, lim integer DEFAULT 100)
RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_object('type', 'to_device', 'id', t.id, 'from_user', t.from_user,
                                                 'from_device', t.from_device, 'message_type', t.message_type,
                                                 'ciphertext', t.ciphertext, 'device', t.device_id)
                              ORDER BY t.id), '[]')
      FROM (SELECT * FROM chat.to_device x
             WHERE x.user_id = to_device_pending.user_id AND x.device_id = to_device_pending.device_id
             ORDER BY x.id LIMIT lim) t
$$;

-- Deletes the device's envelopes up to id up_to (it has stored them);
-- returns how many.
CREATE FUNCTION chat.to_device_ack(user_id bigint, device_id integer, up_to bigint)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    n integer;
BEGIN
    PERFORM chat.require_device(to_device_ack.user_id, to_device_ack.device_id);
    IF up_to IS NULL OR up_to < 0 THEN
        RAISE EXCEPTION 'up_to % is not a valid to-device id', coalesce(up_to::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    DELETE FROM chat.to_device x
     WHERE x.user_id = to_device_ack.user_id AND x.device_id = to_device_ack.device_id AND x.id <= up_to;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- Makes a conversation end-to-end encrypted, for good: from then on only
-- kind e2e sends are accepted (send.c, 22023 otherwise) and edits are
-- refused.  Any member of a direct conversation, owners and admins of a
-- group; posts a system message {"action":"e2e","by"}.  Enabling it again
-- does nothing.
CREATE FUNCTION chat.enable_e2e(actor bigint, conversation_id bigint)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    conv bigint := enable_e2e.conversation_id;
    c chat.conversations;
    m chat.members;
BEGIN
    IF actor IS NULL OR conv IS NULL THEN
        RAISE EXCEPTION 'actor and conversation_id must not be null' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO c FROM chat.conversations x WHERE x.id = conv FOR NO KEY UPDATE;
    m := chat.require_member(actor, conv);
    IF c.kind = 'group' AND m.role = 'member' THEN
        RAISE EXCEPTION 'user % may not enable e2e in conversation %', actor, conv
            USING ERRCODE = '42501', HINT = 'Only owners and admins of a group switch it to end-to-end encryption.';
    END IF;
    IF coalesce((c.settings ->> 'e2e')::boolean, false) THEN
        RETURN;
    END IF;
    UPDATE chat.conversations x SET settings = x.settings || '{"e2e": true}' WHERE x.id = conv;
    PERFORM chat.post_system_message(conv, actor, jsonb_build_object('action', 'e2e', 'by', actor));
END
$$;

-- True when the conversation is end-to-end encrypted.
CREATE FUNCTION chat.is_e2e(conversation_id bigint)
RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT (c.settings ->> 'e2e')::boolean FROM chat.conversations c
                      WHERE c.id = is_e2e.conversation_id), false)
$$;

-- chat.send_message for a ciphertext: the same send with kind 'e2e', only
-- in an e2e conversation (22023 otherwise).  body is opaque.
CREATE FUNCTION chat.send_e2e(sender bigint, conversation_id bigint, body text,
                              client_msg_id text DEFAULT NULL, reply_to bigint DEFAULT NULL,
                              sender_device integer DEFAULT NULL)
RETURNS TABLE(conversation_id bigint, seq bigint, created_at timestamptz, duplicate boolean)
LANGUAGE c SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'chat_send_e2e';

REVOKE ALL ON FUNCTION chat.check_e2e_key(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.check_signed_key(jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.e2e_peers(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.require_e2e_peer(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.keys_upload(bigint, integer, text, jsonb, jsonb, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.keys_query(bigint, bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.keys_claim(bigint, integer, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.to_device(bigint, integer, jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.to_device_pending(bigint, integer, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.to_device_ack(bigint, integer, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.enable_e2e(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.is_e2e(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.send_e2e(bigint, bigint, text, text, bigint, integer) FROM PUBLIC;

COMMENT ON FUNCTION chat.check_e2e_key(text, text) IS 'internal: 22023 unless the key is base64 text of 1 to 1024 characters';
COMMENT ON FUNCTION chat.check_signed_key(jsonb, text) IS 'internal: 22023 unless the key is {"id","key","signature"}';
COMMENT ON FUNCTION chat.e2e_peers(bigint) IS 'internal: the users sharing a conversation with a user, and the user';
COMMENT ON FUNCTION chat.require_e2e_peer(bigint, bigint) IS 'internal: 42501 unless two users are one or share a current conversation';
COMMENT ON FUNCTION chat.keys_upload(bigint, integer, text, jsonb, jsonb, jsonb) IS
    'e2e: uploads a device''s identity key, signed prekey, one-time keys and fallback key; returns the one-time key count';
COMMENT ON FUNCTION chat.keys_query(bigint, bigint[]) IS 'e2e: identity keys and signed prekeys of the devices of users';
COMMENT ON FUNCTION chat.keys_claim(bigint, integer, jsonb) IS
    'e2e: one key bundle per device; each one-time key is handed out once only, then the fallback key (fallback true)';
COMMENT ON FUNCTION chat.to_device(bigint, integer, jsonb, text) IS
    'e2e: queues envelopes for single devices (idempotent per txn; inboxes bounded at 1000)';
COMMENT ON FUNCTION chat.to_device_pending(bigint, integer, integer) IS 'e2e: the oldest envelopes of a device''s inbox as JSON';
COMMENT ON FUNCTION chat.to_device_ack(bigint, integer, bigint) IS 'e2e: deletes a device''s envelopes up to an id';
COMMENT ON FUNCTION chat.enable_e2e(bigint, bigint) IS 'e2e: makes a conversation end-to-end encrypted (one-way; system message)';
COMMENT ON FUNCTION chat.is_e2e(bigint) IS 'true when the conversation is end-to-end encrypted';
COMMENT ON FUNCTION chat.send_e2e(bigint, bigint, text, text, bigint, integer) IS
    'e2e: sends a ciphertext message (kind e2e) to an e2e conversation';
