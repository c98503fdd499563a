-- Messages (docs/sql-api.md): the send path in C (send.c), reads, edits,
-- tombstones, per-device sync and the delivered/read watermarks.
--
-- A member sees the messages after its joined_seq.  Page limits are 1..1000.
--
-- The log is also the change log: edits and deletes append entries (kind
-- 'edit' / 'delete', target = the seq changed) that every read carries like
-- any message.  An entry whose target is at or before the reader's
-- joined_seq (a message from before it joined, which it never saw) reaches
-- it too, so its seqs stay gapless, but without a body.

CREATE FUNCTION chat.send_message(sender bigint, conversation_id bigint, body text,
                                  client_msg_id text DEFAULT NULL, reply_to bigint DEFAULT NULL,
                                  sender_device integer DEFAULT NULL, mentions bigint[] DEFAULT NULL,
                                  attachments jsonb DEFAULT NULL)
RETURNS TABLE(conversation_id bigint, seq bigint, created_at timestamptz, duplicate boolean)
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'chat_send_message';

CREATE FUNCTION chat.check_body(body text)
RETURNS void
LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'chat_check_body';

-- Appends a system message or a change-log entry to the conversation's
-- gapless log (C, send.c): its seq comes from AppendMessage, the one seq
-- allocation that send_message uses too.  Internal; callers check the rights.
CREATE FUNCTION chat.append_message(conversation_id bigint, author bigint, kind text, body text,
                                    target bigint DEFAULT NULL, created_at timestamptz DEFAULT NULL,
                                    reactions jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE c AS 'MODULE_PATHNAME', 'chat_append_message';

-- The message seq of member m's conversation that m may change (edit or
-- delete), locked FOR NO KEY UPDATE: P0002 when it does not exist or
-- predates m's membership, 42501 for a change-log entry (verb names the
-- change in the hint).  The actor's rights over it are the caller's rule.
-- A message past its expires_at comes back with deleted_at set.
CREATE FUNCTION chat.changeable_message(m chat.members, seq bigint, verb text)
RETURNS chat.messages
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    msg chat.messages;
BEGIN
    SELECT * INTO msg FROM chat.messages
     WHERE conversation_id = m.conversation_id AND seq = changeable_message.seq FOR NO KEY UPDATE;
    IF NOT FOUND OR msg.seq <= m.joined_seq THEN
        RAISE EXCEPTION 'message % does not exist in conversation %', changeable_message.seq,
            m.conversation_id USING ERRCODE = 'P0002';
    END IF;
    IF msg.target IS NOT NULL THEN
        RAISE EXCEPTION 'message % of conversation % is a change-log entry (%)', msg.seq,
            m.conversation_id, msg.kind
            USING ERRCODE = '42501', HINT = format('%s message %s, the message it changes.', verb, msg.target);
    END IF;
    -- Past its expires_at a message is gone for readers (message_expired),
    -- tombstoned or not yet: the callers treat it as deleted.
    IF msg.expires_at <= now() THEN
        msg.deleted_at := coalesce(msg.deleted_at, msg.expires_at);
    END IF;
    RETURN msg;
END
$$;

-- Edits the text of one's own message within chat.edit_window: the message
-- is updated in place (body, edited_at) and an 'edit' entry with the new
-- body and target = seq is appended to the log, so every device, online or
-- not, gets the change in order.  The live 'edit' event is kept for
-- existing clients; it goes to the members who could see the message.
CREATE FUNCTION chat.edit_message(actor bigint, conversation_id bigint, seq bigint, body text)
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

-- Deletes a message (its sender, or an owner/admin): a tombstone keeps the
-- seq with body NULL and deleted_at set, the bodies of its earlier 'edit'
-- entries are cleared too, and a 'delete' entry (no body, target = seq) is
-- appended to the log.  Deleting a tombstone does nothing.
CREATE FUNCTION chat.delete_message(actor bigint, conversation_id bigint, seq bigint)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    conv bigint := delete_message.conversation_id;
    m chat.members;
    msg chat.messages;
    changed_at timestamptz;
BEGIN
    IF delete_message.seq IS NULL THEN
        RAISE EXCEPTION 'seq must not be null' USING ERRCODE = '22023';
    END IF;
    PERFORM FROM chat.conversations WHERE id = conv FOR NO KEY UPDATE;
    m := chat.require_member(actor, conv);
    msg := chat.changeable_message(m, delete_message.seq, 'Delete');
    IF msg.sender_id <> actor AND m.role NOT IN ('owner', 'admin') THEN
        RAISE EXCEPTION 'user % may not delete message % of conversation %', actor, msg.seq, conv
            USING ERRCODE = '42501', HINT = 'Only the sender or an owner or admin deletes a message.';
    END IF;
    IF msg.deleted_at IS NOT NULL THEN
        RETURN;
    END IF;
    changed_at := clock_timestamp();
    UPDATE chat.messages
       SET body = NULL, mentions = NULL, attachments = NULL, reactions = NULL, expires_at = NULL,
           deleted_at = changed_at
     WHERE conversation_id = conv AND seq = msg.seq;
    UPDATE chat.messages SET body = NULL
     WHERE conversation_id = conv AND target = msg.seq AND kind = 'edit';
    PERFORM chat.append_message(conv, actor, 'delete', NULL, msg.seq, changed_at);
    PERFORM chat.fanout_event(conv, NULL,
        jsonb_build_object('type', 'delete', 'conversation', conv, 'seq', msg.seq));
END
$$;

-- The lim messages just below before_seq (or the newest), ascending.
CREATE FUNCTION chat.history(actor bigint, conversation_id bigint, before_seq bigint DEFAULT NULL,
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
               CASE WHEN x.target <= m.joined_seq OR chat.message_expired(x) THEN NULL ELSE x.body END,
               x.client_msg_id, x.reply_to, x.created_at, x.edited_at,
               CASE WHEN x.expires_at <= now() THEN x.expires_at ELSE x.deleted_at END, x.target,
               CASE WHEN chat.message_expired(x) THEN NULL ELSE x.attachments END,
               CASE WHEN chat.message_expired(x) THEN NULL ELSE x.mentions END,
               CASE WHEN x.target <= m.joined_seq OR chat.message_expired(x) THEN NULL ELSE x.reactions END
          FROM chat.messages x
         WHERE x.conversation_id = m.conversation_id
           AND x.seq > m.joined_seq
           AND x.seq < coalesce(before_seq, 9223372036854775807)
         ORDER BY x.seq DESC
         LIMIT lim) AS page
     ORDER BY page.seq;
END
$$;

-- Up to lim messages after after_seq, ascending (gap repair).
CREATE FUNCTION chat.messages_after(actor bigint, conversation_id bigint, after_seq bigint,
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
           CASE WHEN x.target <= m.joined_seq OR chat.message_expired(x) THEN NULL ELSE x.body END,
           x.client_msg_id, x.reply_to, x.created_at, x.edited_at,
               CASE WHEN x.expires_at <= now() THEN x.expires_at ELSE x.deleted_at END, x.target,
           CASE WHEN chat.message_expired(x) THEN NULL ELSE x.attachments END,
               CASE WHEN chat.message_expired(x) THEN NULL ELSE x.mentions END,
               CASE WHEN x.target <= m.joined_seq OR chat.message_expired(x) THEN NULL ELSE x.reactions END
      FROM chat.messages x
     WHERE x.conversation_id = m.conversation_id
       AND x.seq > GREATEST(coalesce(after_seq, 0), m.joined_seq)
     ORDER BY x.seq
     LIMIT lim;
END
$$;

-- One message (resolves events sent with "ref": true).
CREATE FUNCTION chat.get_message(actor bigint, conversation_id bigint, seq bigint)
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
           CASE WHEN x.target <= m.joined_seq OR chat.message_expired(x) THEN NULL ELSE x.body END,
           x.client_msg_id, x.reply_to, x.created_at, x.edited_at,
               CASE WHEN x.expires_at <= now() THEN x.expires_at ELSE x.deleted_at END, x.target,
           CASE WHEN chat.message_expired(x) THEN NULL ELSE x.attachments END,
               CASE WHEN chat.message_expired(x) THEN NULL ELSE x.mentions END,
               CASE WHEN x.target <= m.joined_seq OR chat.message_expired(x) THEN NULL ELSE x.reactions END
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

-- Everything after this device's acked_seq in every current conversation of
-- the user, ordered by (conversation_id, seq), at most lim rows.  Walks the
-- conversations that have news in id order and stops as soon as the page is
-- full, so a device far behind costs one page, not its whole backlog.
CREATE FUNCTION chat.sync(user_id bigint, device_id integer, lim integer DEFAULT 500)
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
               CASE WHEN x.target <= joined OR chat.message_expired(x) THEN NULL ELSE x.body END,
               x.client_msg_id, x.reply_to, x.created_at, x.edited_at,
               CASE WHEN x.expires_at <= now() THEN x.expires_at ELSE x.deleted_at END, x.target,
               CASE WHEN chat.message_expired(x) THEN NULL ELSE x.attachments END,
               CASE WHEN chat.message_expired(x) THEN NULL ELSE x.mentions END,
               CASE WHEN x.target <= joined OR chat.message_expired(x) THEN NULL ELSE x.reactions END
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

-- The device has stored everything up to seq: moves its cursor and the
-- member's delivered_seq forward (never back) and sends delivery receipts.
CREATE FUNCTION chat.ack(user_id bigint, device_id integer, conversation_id bigint, seq bigint)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    conv bigint := ack.conversation_id;
    reader bigint := ack.user_id;
    upto bigint := ack.seq;
    m chat.members;
    conv_last bigint;
BEGIN
    IF upto IS NULL OR upto < 0 THEN
        RAISE EXCEPTION 'seq % is not a valid ack', coalesce(upto::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    PERFORM chat.require_device(reader, ack.device_id);
    m := chat.require_member(reader, conv, true);
    SELECT last_seq INTO conv_last FROM chat.conversations WHERE id = conv;
    IF upto > conv_last THEN
        RAISE EXCEPTION 'seq % is beyond the last seq % of conversation %', upto, conv_last, conv
            USING ERRCODE = '22023', HINT = 'Ack only messages the device has received.';
    END IF;
    INSERT INTO chat.device_cursors AS dc (user_id, device_id, conversation_id, acked_seq)
    VALUES (reader, ack.device_id, conv, upto)
    ON CONFLICT (user_id, device_id, conversation_id) DO UPDATE
       SET acked_seq = EXCLUDED.acked_seq
     WHERE dc.acked_seq < EXCLUDED.acked_seq;
    IF upto > m.delivered_seq THEN
        UPDATE chat.members SET delivered_seq = upto
         WHERE conversation_id = conv AND user_id = reader;
        PERFORM chat.fanout_receipt(conv, reader, m.delivered_seq, upto, 'delivered');
    END IF;
END
$$;

-- The user has read everything up to seq (capped at last_seq): moves read_seq
-- forward (and delivered_seq with it), sends read receipts to the senders of
-- the covered messages and a read_state event to the user's other devices.
CREATE FUNCTION chat.mark_read(user_id bigint, conversation_id bigint, seq bigint)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    conv bigint := mark_read.conversation_id;
    reader bigint := mark_read.user_id;
    upto bigint;
    m chat.members;
BEGIN
    IF mark_read.seq IS NULL OR mark_read.seq < 0 THEN
        RAISE EXCEPTION 'seq % is not a valid read mark', coalesce(mark_read.seq::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    m := chat.require_member(reader, conv, true);
    SELECT LEAST(mark_read.seq, c.last_seq) INTO upto FROM chat.conversations c WHERE c.id = conv;
    IF upto <= m.read_seq THEN
        RETURN;
    END IF;
    UPDATE chat.members SET read_seq = upto, delivered_seq = GREATEST(delivered_seq, upto)
     WHERE conversation_id = conv AND user_id = reader;
    PERFORM chat.fanout_receipt(conv, reader, m.read_seq, upto, 'read');
    PERFORM chat.fanout_event(conv, ARRAY[reader],
        jsonb_build_object('type', 'read_state', 'conversation', conv, 'read', upto));
END
$$;

REVOKE ALL ON FUNCTION chat.send_message(bigint, bigint, text, text, bigint, integer, bigint[], jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.check_body(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.append_message(bigint, bigint, text, text, bigint, timestamptz, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.changeable_message(chat.members, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.edit_message(bigint, bigint, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.delete_message(bigint, bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.history(bigint, bigint, bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.messages_after(bigint, bigint, bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.get_message(bigint, bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.sync(bigint, integer, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.ack(bigint, integer, bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.mark_read(bigint, bigint, bigint) FROM PUBLIC;

COMMENT ON FUNCTION chat.send_message(bigint, bigint, text, text, bigint, integer, bigint[], jsonb) IS
    'sends a text message: gapless seq, idempotent on (sender, conversation, client_msg_id), fans out';
COMMENT ON FUNCTION chat.check_body(text) IS
    'internal: 22023 for a NULL or empty body, 22001 over chat.max_body_bytes';
COMMENT ON FUNCTION chat.append_message(bigint, bigint, text, text, bigint, timestamptz, jsonb) IS
    'internal: appends a system message or an edit/delete log entry at the next seq and fans it out';
COMMENT ON FUNCTION chat.changeable_message(chat.members, bigint, text) IS
    'internal: the message a member may edit or delete, locked (P0002 unknown or before joining, 42501 change-log entry)';
COMMENT ON FUNCTION chat.edit_message(bigint, bigint, bigint, text) IS
    'the sender edits a message within chat.edit_window; appends an edit entry to the log';
COMMENT ON FUNCTION chat.delete_message(bigint, bigint, bigint) IS
    'the sender or an owner/admin deletes a message, leaving a tombstone; appends a delete entry to the log';
COMMENT ON FUNCTION chat.history(bigint, bigint, bigint, integer) IS
    'the lim messages just below before_seq (or the newest), ascending seq';
COMMENT ON FUNCTION chat.messages_after(bigint, bigint, bigint, integer) IS
    'up to lim messages after after_seq, ascending seq (gap repair)';
COMMENT ON FUNCTION chat.get_message(bigint, bigint, bigint) IS
    'one message of a conversation the actor is a member of';
COMMENT ON FUNCTION chat.sync(bigint, integer, integer) IS
    'a page of everything after the device''s acked_seq, by (conversation_id, seq); ack, then call again';
COMMENT ON FUNCTION chat.ack(bigint, integer, bigint, bigint) IS
    'a device stored everything up to seq: moves its cursor and delivered_seq, sends delivery receipts';
COMMENT ON FUNCTION chat.mark_read(bigint, bigint, bigint) IS
    'the user read up to seq (capped at last_seq): moves read_seq, sends read receipts and read_state';
