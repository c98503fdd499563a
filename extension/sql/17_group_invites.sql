-- Group invite links and per-member message info (docs/sql-api.md
-- "Groups").
--
-- An invite is a random code (128 bits, hex) that lets anyone who has it
-- join the group as a member until it expires or an admin revokes it.
-- Joining takes the same locks as chat.add_member (the conversation row,
-- then the member row) and obeys chat.max_group_members.
--
-- message_info reads chat.receipt_times: one row per move of a member's
-- delivered or read watermark, written by the receipt path (FanoutReceipt
-- in fanout.c, which every ack, read and send that moves a watermark goes
-- through).  The first move at or beyond a seq is when that message was
-- delivered (read): the watermarks only go forward.

CREATE TABLE chat.invites (
    code            text PRIMARY KEY CHECK (code ~ '^[0-9a-f]{32}$'),
    conversation_id bigint NOT NULL REFERENCES chat.conversations ON DELETE CASCADE,
    created_by      bigint NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz,   -- NULL: never
    revoked_at      timestamptz
);
CREATE INDEX invites_conversation_idx ON chat.invites (conversation_id);

-- When each member's delivered / read watermark moved, and to which seq.
-- No foreign keys: written on the receipt path, which should stay cheap.
CREATE TABLE chat.receipt_times (
    conversation_id bigint NOT NULL,
    user_id         bigint NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('delivered', 'read')),
    seq             bigint NOT NULL,
    at              timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, user_id, kind, seq)
);

SELECT pg_catalog.pg_extension_config_dump('chat.invites', '');
SELECT pg_catalog.pg_extension_config_dump('chat.receipt_times', '');
REVOKE ALL ON chat.invites, chat.receipt_times FROM PUBLIC;
COMMENT ON TABLE chat.invites IS 'group invite links: code, expiry, revocation';
COMMENT ON TABLE chat.receipt_times IS 'when a member''s delivered/read watermark moved to seq (for chat.message_info)';

-- Makes an invite code for a group (owners and admins); expires_in seconds
-- (1 .. 31536000) or NULL for a code that lasts until revoked.
CREATE FUNCTION chat.invite_link(actor bigint, conversation_id bigint, expires_in integer DEFAULT NULL)
RETURNS TABLE(code text, expires_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    conv bigint := invite_link.conversation_id;
    new_code text := replace(gen_random_uuid()::text, '-', '');
    expiry timestamptz;
BEGIN
    IF actor IS NULL THEN
        RAISE EXCEPTION 'actor must not be null' USING ERRCODE = '22023';
    END IF;
    IF expires_in IS NOT NULL AND (expires_in < 1 OR expires_in > 31536000) THEN
        RAISE EXCEPTION 'expires_in % is out of range', expires_in
            USING ERRCODE = '22023', HINT = 'Use 1 to 31536000 seconds, or null for no expiry.';
    END IF;
    PERFORM chat.lock_group(conv);
    IF (chat.require_member(actor, conv)).role = 'member' THEN
        RAISE EXCEPTION 'user % may not make invite links for conversation %', actor, conv
            USING ERRCODE = '42501', HINT = 'Only owners and admins make invite links.';
    END IF;
    expiry := now() + make_interval(secs => expires_in);
    INSERT INTO chat.invites (code, conversation_id, created_by, expires_at)
    VALUES (new_code, conv, actor, expiry);
    code := new_code;
    expires_at := expiry;
    RETURN NEXT;
END
$$;

-- Revokes an invite code (owners and admins of its group); revoking a
-- revoked code changes nothing.
CREATE FUNCTION chat.revoke_invite(actor bigint, code text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    inv chat.invites;
BEGIN
    IF actor IS NULL OR revoke_invite.code IS NULL THEN
        RAISE EXCEPTION 'actor and code must not be null' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO inv FROM chat.invites WHERE code = revoke_invite.code;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'invite code "%" does not exist', left(revoke_invite.code, 64)
            USING ERRCODE = 'P0002';
    END IF;
    PERFORM chat.lock_group(inv.conversation_id);
    IF (chat.require_member(actor, inv.conversation_id)).role = 'member' THEN
        RAISE EXCEPTION 'user % may not revoke invite links of conversation %', actor, inv.conversation_id
            USING ERRCODE = '42501', HINT = 'Only owners and admins revoke invite links.';
    END IF;
    UPDATE chat.invites SET revoked_at = now()
     WHERE code = inv.code AND revoked_at IS NULL;
END
$$;

-- Joins the group of an invite code as a member; returns its id.  An
-- active member gets the id and nothing changes.  55000 for an expired or
-- revoked code, P0002 for an unknown one, 54000 when the group is full.
CREATE FUNCTION chat."join"(actor bigint, code text)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    inv chat.invites;
    conv_last bigint;
    cur chat.members;
    active integer;
    cap integer := current_setting('chat.max_group_members')::integer;
BEGIN
    IF actor IS NULL OR "join".code IS NULL THEN
        RAISE EXCEPTION 'actor and code must not be null' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO inv FROM chat.invites WHERE code = "join".code;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'invite code "%" does not exist', left("join".code, 64)
            USING ERRCODE = 'P0002';
    END IF;
    PERFORM chat.require_users(ARRAY[actor]);
    conv_last := chat.lock_group(inv.conversation_id);
    -- Read again under the group lock: a revocation commits before it.
    SELECT * INTO inv FROM chat.invites WHERE code = inv.code;
    IF inv.revoked_at IS NOT NULL THEN
        RAISE EXCEPTION 'invite code "%" was revoked', inv.code
            USING ERRCODE = '55000', HINT = 'Ask an admin of the group for a new link.';
    END IF;
    IF inv.expires_at <= now() THEN
        RAISE EXCEPTION 'invite code "%" expired at %', inv.code, inv.expires_at
            USING ERRCODE = '55000', HINT = 'Ask an admin of the group for a new link.';
    END IF;
    SELECT * INTO cur FROM chat.members
     WHERE conversation_id = inv.conversation_id AND user_id = actor FOR NO KEY UPDATE;
    IF FOUND AND cur.left_at IS NULL THEN
        RETURN inv.conversation_id;
    END IF;
    SELECT count(*) INTO active FROM chat.members
     WHERE conversation_id = inv.conversation_id AND left_at IS NULL;
    IF active >= cap THEN
        RAISE EXCEPTION 'conversation % is full with % members (chat.max_group_members)',
            inv.conversation_id, active USING ERRCODE = '54000';
    END IF;
    IF cur.user_id IS NOT NULL THEN
        UPDATE chat.members
           SET role = 'member', joined_seq = conv_last, delivered_seq = conv_last,
               read_seq = conv_last, muted_until = NULL, joined_at = now(), left_at = NULL
         WHERE conversation_id = inv.conversation_id AND user_id = actor;
    ELSE
        INSERT INTO chat.members (conversation_id, user_id, role, joined_seq, delivered_seq, read_seq)
        VALUES (inv.conversation_id, actor, 'member', conv_last, conv_last, conv_last);
    END IF;
    PERFORM chat.post_system_message(inv.conversation_id, actor,
        jsonb_build_object('action', 'joined', 'user', actor, 'by_link', true));
    PERFORM chat.fanout_event(inv.conversation_id, NULL,
        jsonb_build_object('type', 'member', 'conversation', inv.conversation_id, 'user', actor,
                           'action', 'added', 'role', 'member'));
    RETURN inv.conversation_id;
END
$$;

-- Per member (other than the sender, who joined before the message): when
-- message seq was delivered to and read by them.  The sender or an
-- owner/admin only; read_at stays NULL for a member whose read receipts
-- are off (delivery is still reported).
CREATE FUNCTION chat.message_info(actor bigint, conversation_id bigint, seq bigint)
RETURNS TABLE(user_id bigint, delivered_at timestamptz, read_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    conv bigint := message_info.conversation_id;
    m chat.members;
    msg chat.messages;
BEGIN
    IF message_info.seq IS NULL THEN
        RAISE EXCEPTION 'seq must not be null' USING ERRCODE = '22023';
    END IF;
    m := chat.require_member(actor, conv);
    SELECT * INTO msg FROM chat.messages x
     WHERE x.conversation_id = conv AND x.seq = message_info.seq AND x.seq > m.joined_seq;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'message % does not exist in conversation %', message_info.seq, conv
            USING ERRCODE = 'P0002';
    END IF;
    IF msg.kind NOT IN ('text', 'e2e') THEN
        RAISE EXCEPTION 'message % of conversation % is a % message, which has no receipts',
            msg.seq, conv, msg.kind USING ERRCODE = '22023';
    END IF;
    IF msg.sender_id <> actor AND m.role = 'member' THEN
        RAISE EXCEPTION 'user % may not see the receipts of message % of conversation %',
            actor, msg.seq, conv
            USING ERRCODE = '42501', HINT = 'Only the sender or an owner or admin sees them.';
    END IF;
    RETURN QUERY
    SELECT x.user_id,
           LEAST((SELECT t.at FROM chat.receipt_times t
                   WHERE t.conversation_id = conv AND t.user_id = x.user_id
                     AND t.kind = 'delivered' AND t.seq >= msg.seq ORDER BY t.seq LIMIT 1),
                 (SELECT t.at FROM chat.receipt_times t
                   WHERE t.conversation_id = conv AND t.user_id = x.user_id
                     AND t.kind = 'read' AND t.seq >= msg.seq ORDER BY t.seq LIMIT 1)),
           CASE WHEN u.read_receipts THEN
               (SELECT t.at FROM chat.receipt_times t
                 WHERE t.conversation_id = conv AND t.user_id = x.user_id
                   AND t.kind = 'read' AND t.seq >= msg.seq ORDER BY t.seq LIMIT 1) END
      FROM chat.members x
      JOIN chat.users u ON u.id = x.user_id
     WHERE x.conversation_id = conv AND x.left_at IS NULL
       AND x.user_id <> msg.sender_id AND x.joined_seq < msg.seq
     ORDER BY x.user_id;
END
$$;

REVOKE ALL ON FUNCTION chat.invite_link(bigint, bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.revoke_invite(bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat."join"(bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.message_info(bigint, bigint, bigint) FROM PUBLIC;

COMMENT ON FUNCTION chat.invite_link(bigint, bigint, integer) IS
    'owner/admin makes an invite code for a group, expiring after expires_in seconds (NULL: never)';
COMMENT ON FUNCTION chat.revoke_invite(bigint, text) IS
    'owner/admin revokes an invite code of their group';
COMMENT ON FUNCTION chat."join"(bigint, text) IS
    'joins the group of an invite code as a member (55000 expired or revoked, P0002 unknown)';
COMMENT ON FUNCTION chat.message_info(bigint, bigint, bigint) IS
    'per member: when a message was delivered and read; the sender or an owner/admin only';
