-- Reactions, pins and mute (docs/sql-api.md "Mentions, reactions, pins,
-- mute").  Mentions are stored by the send path (send.c: members only,
-- each once) in messages.mentions, which the push rule reads (a mention
-- overrides mute, PUSH_WANTED_SQL in chat.h).
--
-- A reaction is a change-log entry like an edit: kind 'reaction', target
-- the seq reacted to, body the emoji, reactions {"emoji","removed"}; the
-- target's reactions column holds the aggregated map {"<emoji>":[user
-- ids]} (in reacting order), so history shows the current state and every
-- device that syncs sees each change in order.
--
-- Columns and constraints added to released tables go last / are
-- replaced here, as the upgrade script does it, so that both installs are
-- alike.

ALTER TABLE chat.messages
    DROP CONSTRAINT messages_kind_check,
    DROP CONSTRAINT messages_check,
    ADD COLUMN reactions  jsonb,
    ADD COLUMN expires_at timestamptz,
    ADD CONSTRAINT messages_kind_check
        CHECK (kind IN ('text', 'system', 'e2e', 'edit', 'delete', 'reaction')),
    ADD CONSTRAINT messages_check CHECK ((kind IN ('edit', 'delete', 'reaction')) = (target IS NOT NULL));
COMMENT ON COLUMN chat.messages.reactions IS
    'messages: {"<emoji>":[user ids]}; reaction entries: {"emoji","removed"}';
COMMENT ON COLUMN chat.messages.expires_at IS
    'when a disappearing message is tombstoned (conversation ttl at send time); NULL: never';
-- The expiry worker's queue: only messages still to expire are in it.
CREATE INDEX messages_expiry_idx ON chat.messages (expires_at) WHERE expires_at IS NOT NULL;

-- A message past its expires_at is gone for readers at once, whether or
-- not the expiry worker (23_disappearing.sql) has tombstoned it yet: every
-- reader shows it as a tombstone (deleted_at = expires_at; no body,
-- attachments, mentions or reactions), and an edit entry of it without the
-- body it carries.  The worker's pace (it takes only idle CPU) is then
-- invisible to readers.
--
-- message_expired is a SQL function without SET clauses or subqueries,
-- every operator qualified, so the planner inlines it into the readers'
-- queries: a row costs a comparison, and only an edit entry calls
-- edit_target_expired (one primary key probe).
CREATE FUNCTION chat.edit_target_expired(conversation_id bigint, target bigint)
RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT FROM chat.messages t
                    WHERE t.conversation_id = $1 AND t.seq = $2 AND t.expires_at <= now())
$$;
CREATE FUNCTION chat.message_expired(x chat.messages)
RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT ($1).expires_at OPERATOR(pg_catalog.<=) pg_catalog.now()
        OR (($1).kind OPERATOR(pg_catalog.=) 'edit'
            AND chat.edit_target_expired(($1).conversation_id, ($1).target))
$$;
REVOKE ALL ON FUNCTION chat.edit_target_expired(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.message_expired(chat.messages) FROM PUBLIC;
COMMENT ON FUNCTION chat.edit_target_expired(bigint, bigint) IS
    'internal: true when message target of the conversation is past its expires_at (chat.message_expired of an edit entry)';
COMMENT ON FUNCTION chat.message_expired(chat.messages) IS
    'internal: true when a message is past its expires_at (or is an edit entry of one): readers show it as a tombstone';

ALTER TABLE chat.conversations
    DROP CONSTRAINT conversations_kind_check,
    ADD CONSTRAINT conversations_kind_check CHECK (kind IN ('direct', 'group', 'service'));

ALTER TYPE chat.message_view
    ADD ATTRIBUTE mentions bigint[],
    ADD ATTRIBUTE reactions jsonb;

-- Adds (or with remove, takes back) the actor's reaction emoji to message
-- seq.  Returns the seq of the 'reaction' entry appended, or NULL when
-- nothing changed (the reaction was already there, or was not).
CREATE FUNCTION chat.react(actor bigint, conversation_id bigint, seq bigint, emoji text,
                           remove boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    conv bigint := react.conversation_id;
    m chat.members;
    msg chat.messages;
    cur jsonb;
    users jsonb;
    has boolean;
    blocker bigint;
BEGIN
    IF react.seq IS NULL OR remove IS NULL THEN
        RAISE EXCEPTION 'seq and remove must not be null' USING ERRCODE = '22023';
    END IF;
    IF emoji IS NULL OR emoji = '' OR length(emoji) > 16 OR octet_length(emoji) > 64
       OR emoji ~ '[[:space:][:cntrl:]]' THEN
        RAISE EXCEPTION 'invalid reaction "%"', left(coalesce(emoji, 'NULL'), 64)
            USING ERRCODE = '22023', HINT = 'A reaction is one emoji (at most 16 characters, no spaces).';
    END IF;
    PERFORM FROM chat.conversations WHERE id = conv FOR NO KEY UPDATE;
    m := chat.require_member(actor, conv);
    SELECT k.blocker INTO blocker
      FROM chat.conversations c
      JOIN chat.blocks k ON k.blocked = actor
                        AND k.blocker = CASE WHEN c.direct_low = actor THEN c.direct_high ELSE c.direct_low END
     WHERE c.id = conv AND c.kind = 'direct';
    IF FOUND THEN
        RAISE EXCEPTION 'user % cannot react in conversation %: blocked by user %', actor, conv, blocker
            USING ERRCODE = '42501';
    END IF;
    msg := chat.changeable_message(m, react.seq, 'React to');
    IF msg.kind = 'system' THEN
        RAISE EXCEPTION 'message % of conversation % is a system message', msg.seq, conv
            USING ERRCODE = '22023', HINT = 'React to messages that members sent.';
    END IF;
    IF msg.deleted_at IS NOT NULL THEN
        RAISE EXCEPTION 'message % of conversation % is deleted', msg.seq, conv
            USING ERRCODE = '55000';
    END IF;
    cur := coalesce(msg.reactions, '{}');
    users := coalesce(cur -> emoji, '[]');
    has := users @> jsonb_build_array(actor);
    IF has <> remove THEN
        RETURN NULL;
    END IF;
    IF remove THEN
        users := coalesce((SELECT jsonb_agg(u) FROM jsonb_array_elements(users) u
                            WHERE u <> to_jsonb(actor)), '[]');
    ELSE
        IF NOT cur ? emoji AND (SELECT count(*) FROM jsonb_object_keys(cur)) >= 20 THEN
            RAISE EXCEPTION 'message % of conversation % has 20 different reactions already', msg.seq, conv
                USING ERRCODE = '54000', HINT = 'React with one of the emoji already there.';
        END IF;
        users := users || to_jsonb(actor);
    END IF;
    cur := CASE WHEN users = '[]' THEN cur - emoji ELSE jsonb_set(cur, ARRAY[emoji], users) END;
    UPDATE chat.messages SET reactions = nullif(cur, '{}')
     WHERE conversation_id = conv AND seq = msg.seq;
    RETURN chat.append_message(conv, actor, 'reaction', emoji, msg.seq, clock_timestamp(),
                               jsonb_build_object('emoji', emoji, 'removed', remove));
END
$$;

-- Pins (pinned true) or unpins message seq; any member, at most 20 pins
-- per conversation (54000).  Posts a 'pinned' / 'unpinned' system message;
-- pinning a pinned message (or unpinning one that is not) changes nothing.
CREATE FUNCTION chat.pin(actor bigint, conversation_id bigint, seq bigint, pinned boolean)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    conv bigint := pin.conversation_id;
    m chat.members;
    msg chat.messages;
    pins jsonb;
BEGIN
    IF pin.seq IS NULL OR pinned IS NULL THEN
        RAISE EXCEPTION 'seq and pinned must not be null' USING ERRCODE = '22023';
    END IF;
    SELECT coalesce(c.settings -> 'pinned', '[]') INTO pins FROM chat.conversations c
     WHERE c.id = conv FOR NO KEY UPDATE;
    m := chat.require_member(actor, conv);
    msg := chat.changeable_message(m, pin.seq, 'Pin');
    IF msg.kind = 'system' THEN
        RAISE EXCEPTION 'message % of conversation % is a system message', msg.seq, conv
            USING ERRCODE = '22023';
    END IF;
    IF (pins @> to_jsonb(msg.seq)) = pinned THEN
        RETURN;
    END IF;
    IF pinned THEN
        IF jsonb_array_length(pins) >= 20 THEN
            RAISE EXCEPTION 'conversation % has 20 pinned messages already', conv
                USING ERRCODE = '54000', HINT = 'Unpin one first.';
        END IF;
        pins := to_jsonb(msg.seq) || pins;
    ELSE
        pins := coalesce((SELECT jsonb_agg(p) FROM jsonb_array_elements(pins) p
                           WHERE p <> to_jsonb(msg.seq)), '[]');
    END IF;
    UPDATE chat.conversations c
       SET settings = CASE WHEN pins = '[]' THEN c.settings - 'pinned'
                           ELSE jsonb_set(c.settings, '{pinned}', pins) END
     WHERE c.id = conv;
    PERFORM chat.post_system_message(conv, actor,
        jsonb_build_object('action', CASE WHEN pinned THEN 'pinned' ELSE 'unpinned' END,
                           'seq', msg.seq, 'by', actor));
END
$$;

-- The pinned messages of a conversation the actor can see, newest pin first.
CREATE FUNCTION chat.pins(actor bigint, conversation_id bigint)
RETURNS SETOF bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m chat.members;
BEGIN
    m := chat.require_member(actor, pins.conversation_id);
    RETURN QUERY
    SELECT p.seq::bigint
      FROM chat.conversations c,
           jsonb_array_elements_text(coalesce(c.settings -> 'pinned', '[]')) WITH ORDINALITY AS p(seq, ord)
     WHERE c.id = m.conversation_id AND p.seq::bigint > m.joined_seq
     ORDER BY p.ord;
END
$$;

-- Mutes the conversation for the actor until a time (NULL or a past time:
-- not muted).  A muted member gets no push unless mentioned.
CREATE FUNCTION chat.mute(actor bigint, conversation_id bigint, "until" timestamptz)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM chat.require_member(actor, mute.conversation_id, true);
    UPDATE chat.members m SET muted_until = mute."until"
     WHERE m.conversation_id = mute.conversation_id AND m.user_id = actor;
END
$$;

REVOKE ALL ON FUNCTION chat.react(bigint, bigint, bigint, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.pin(bigint, bigint, bigint, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.pins(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.mute(bigint, bigint, timestamptz) FROM PUBLIC;

COMMENT ON FUNCTION chat.react(bigint, bigint, bigint, text, boolean) IS
    'adds or removes the actor''s reaction; appends a reaction entry (NULL: nothing changed)';
COMMENT ON FUNCTION chat.pin(bigint, bigint, bigint, boolean) IS
    'pins or unpins a message (at most 20 per conversation); posts a system message';
COMMENT ON FUNCTION chat.pins(bigint, bigint) IS
    'the seqs of the pinned messages the actor can see, newest pin first';
COMMENT ON FUNCTION chat.mute(bigint, bigint, timestamptz) IS
    'mutes a conversation for the actor until a time (NULL: unmute); mentions still push';
