-- Conversations and members (docs/sql-api.md).
--
-- Lock order, everywhere: the conversation row first (FOR NO KEY UPDATE, as
-- send_message takes it), then member rows.  ack and mark_read lock only the
-- reader's member row, so no cycle is possible.

-- Appends a system message (kind 'system', body a JSON object) as actor and
-- fans it out, through the one write path of the log (chat.append_message,
-- which takes the conversation row lock).  Like any send it moves the
-- actor's watermarks when the actor is a member.  Returns its seq.
CREATE FUNCTION chat.post_system_message(conversation_id bigint, actor bigint, body jsonb)
RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    RETURN chat.append_message(post_system_message.conversation_id, post_system_message.actor,
                               'system', post_system_message.body::text);
END
$$;

-- Raises P0002 naming the first id of user_ids that is not a user.
CREATE FUNCTION chat.require_users(user_ids bigint[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    missing bigint;
BEGIN
    SELECT x INTO missing FROM unnest(user_ids) AS x
     WHERE NOT EXISTS (SELECT FROM chat.users u WHERE u.id = x)
     ORDER BY x LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'user % does not exist', missing
            USING ERRCODE = 'P0002', HINT = 'Create it with chat.upsert_user.';
    END IF;
END
$$;

-- Get-or-create the direct conversation of a and b.  The unique index on the
-- ordered pair makes concurrent calls, (a,b) and (b,a) alike, agree: the
-- loser's ON CONFLICT waits for the winner and then reads its row.
CREATE FUNCTION chat.direct_conversation(a bigint, b bigint)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    low bigint := LEAST(a, b);
    high bigint := GREATEST(a, b);
    conv bigint;
BEGIN
    IF a IS NULL OR b IS NULL THEN
        RAISE EXCEPTION 'user ids must not be null' USING ERRCODE = '22023';
    END IF;
    IF a = b THEN
        RAISE EXCEPTION 'user % cannot have a direct conversation with itself', a
            USING ERRCODE = '22023';
    END IF;
    SELECT c.id INTO conv FROM chat.conversations c
     WHERE c.kind = 'direct' AND c.direct_low = low AND c.direct_high = high;
    IF FOUND THEN
        RETURN conv;
    END IF;
    PERFORM chat.require_users(ARRAY[low, high]);
    INSERT INTO chat.conversations (kind, direct_low, direct_high)
    VALUES ('direct', low, high)
    ON CONFLICT (direct_low, direct_high) WHERE kind = 'direct' DO NOTHING
    RETURNING id INTO conv;
    IF conv IS NULL THEN
        SELECT c.id INTO STRICT conv FROM chat.conversations c
         WHERE c.kind = 'direct' AND c.direct_low = low AND c.direct_high = high;
        RETURN conv;
    END IF;
    INSERT INTO chat.members (conversation_id, user_id, role)
    VALUES (conv, low, 'member'), (conv, high, 'member');
    RETURN conv;
END
$$;

-- Creates a group: creator as owner, the others as members, and a 'created'
-- system message as seq 1.
CREATE FUNCTION chat.create_group(creator bigint, title text, members bigint[] DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    others bigint[];
    cap integer := current_setting('chat.max_group_members')::integer;
    conv bigint;
BEGIN
    IF creator IS NULL THEN
        RAISE EXCEPTION 'creator must not be null' USING ERRCODE = '22023';
    END IF;
    IF array_position(members, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'members of a new group must not contain NULL' USING ERRCODE = '22023';
    END IF;
    IF length(title) > 255 THEN
        RAISE EXCEPTION 'group title of % characters is longer than 255', length(title)
            USING ERRCODE = '22001';
    END IF;
    others := ARRAY(SELECT DISTINCT x FROM unnest(coalesce(members, '{}')) AS x
                     WHERE x <> creator ORDER BY x);
    PERFORM chat.require_users(creator || others);
    IF 1 + cardinality(others) > cap THEN
        RAISE EXCEPTION 'group of % members exceeds chat.max_group_members (%)',
            1 + cardinality(others), cap
            USING ERRCODE = '54000', HINT = 'Create the group with fewer members.';
    END IF;
    INSERT INTO chat.conversations (kind, title) VALUES ('group', nullif(title, ''))
    RETURNING id INTO conv;
    INSERT INTO chat.members (conversation_id, user_id, role)
    SELECT conv, creator, 'owner'
    UNION ALL
    SELECT conv, x, 'member' FROM unnest(others) AS x;
    PERFORM chat.post_system_message(conv, creator,
        jsonb_build_object('action', 'created', 'by', creator, 'title', nullif(title, ''),
                           'members', to_jsonb(creator || others)));
    RETURN conv;
END
$$;

-- Locks a group's row for a membership change; P0002 when unknown, 42501 for
-- a direct conversation.  Returns the conversation's last_seq.
CREATE FUNCTION chat.lock_group(conversation_id bigint)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    conv_kind text;
    conv_last bigint;
BEGIN
    IF conversation_id IS NULL THEN
        RAISE EXCEPTION 'conversation_id must not be null' USING ERRCODE = '22023';
    END IF;
    SELECT c.kind, c.last_seq INTO conv_kind, conv_last FROM chat.conversations c
     WHERE c.id = lock_group.conversation_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'conversation % does not exist', conversation_id USING ERRCODE = 'P0002';
    END IF;
    IF conv_kind <> 'group' THEN
        RAISE EXCEPTION 'conversation % is a direct conversation', conversation_id
            USING ERRCODE = '42501', HINT = 'Create a group with chat.create_group to talk with more people.';
    END IF;
    RETURN conv_last;
END
$$;

-- Adds user_id with role (owner/admin only); on an active member, changes the
-- role instead.  Only an owner grants or takes 'owner'.
CREATE FUNCTION chat.add_member(actor bigint, conversation_id bigint, user_id bigint, role text DEFAULT 'member')
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    conv bigint := add_member.conversation_id;
    target bigint := add_member.user_id;
    new_role text := add_member.role;
    conv_last bigint;
    actor_role text;
    cur chat.members;
    active integer;
    cap integer := current_setting('chat.max_group_members')::integer;
BEGIN
    IF new_role IS NULL OR new_role NOT IN ('owner', 'admin', 'member') THEN
        RAISE EXCEPTION 'invalid role "%"', coalesce(new_role, 'NULL')
            USING ERRCODE = '22023', HINT = 'Use owner, admin or member.';
    END IF;
    IF actor IS NULL OR target IS NULL THEN
        RAISE EXCEPTION 'actor and user_id must not be null' USING ERRCODE = '22023';
    END IF;
    conv_last := chat.lock_group(conv);
    actor_role := (chat.require_member(actor, conv)).role;
    IF actor_role = 'member' THEN
        RAISE EXCEPTION 'user % may not add members to conversation %', actor, conv
            USING ERRCODE = '42501', HINT = 'Only owners and admins add members.';
    END IF;
    IF new_role = 'owner' AND actor_role <> 'owner' THEN
        RAISE EXCEPTION 'user % may not make owners in conversation %', actor, conv
            USING ERRCODE = '42501', HINT = 'Only owners grant the owner role.';
    END IF;
    PERFORM chat.require_users(ARRAY[target]);
    SELECT * INTO cur FROM chat.members
     WHERE conversation_id = conv AND user_id = target FOR NO KEY UPDATE;

    IF FOUND AND cur.left_at IS NULL THEN
        -- Already a member: a role change.
        IF cur.role = new_role THEN
            RETURN;
        END IF;
        IF cur.role = 'owner' THEN
            IF actor_role <> 'owner' THEN
                RAISE EXCEPTION 'user % may not change the role of owner % in conversation %',
                    actor, target, conv
                    USING ERRCODE = '42501', HINT = 'Only owners change the role of an owner.';
            END IF;
            IF NOT EXISTS (SELECT FROM chat.members
                            WHERE conversation_id = conv AND user_id <> target
                              AND role = 'owner' AND left_at IS NULL) THEN
                RAISE EXCEPTION 'user % is the last owner of conversation %', target, conv
                    USING ERRCODE = '55000', HINT = 'Make another member owner first.';
            END IF;
        END IF;
        UPDATE chat.members SET role = new_role
         WHERE conversation_id = conv AND user_id = target;
        PERFORM chat.fanout_event(conv, NULL,
            jsonb_build_object('type', 'member', 'conversation', conv, 'user', target,
                               'action', 'role', 'role', new_role));
        RETURN;
    END IF;

    SELECT count(*) INTO active FROM chat.members
     WHERE conversation_id = conv AND left_at IS NULL;
    IF active >= cap THEN
        RAISE EXCEPTION 'conversation % is full with % members (chat.max_group_members)', conv, active
            USING ERRCODE = '54000', HINT = 'Remove a member first.';
    END IF;
    -- The new member sees the messages from its own join on.
    IF cur.user_id IS NOT NULL THEN
        UPDATE chat.members
           SET role = new_role, joined_seq = conv_last, delivered_seq = conv_last,
               read_seq = conv_last, muted_until = NULL, joined_at = now(), left_at = NULL
         WHERE conversation_id = conv AND user_id = target;
    ELSE
        INSERT INTO chat.members (conversation_id, user_id, role, joined_seq, delivered_seq, read_seq)
        VALUES (conv, target, new_role, conv_last, conv_last, conv_last);
    END IF;
    PERFORM chat.post_system_message(conv, actor,
        jsonb_build_object('action', 'added', 'user', target, 'by', actor, 'role', new_role));
    PERFORM chat.fanout_event(conv, NULL,
        jsonb_build_object('type', 'member', 'conversation', conv, 'user', target,
                           'action', 'added', 'role', new_role));
END
$$;

-- Removes user_id from a group: anyone may leave, owners and admins remove
-- others, only owners remove owners.  When the last owner leaves, the longest
-- standing admin (else member) becomes owner.
CREATE FUNCTION chat.remove_member(actor bigint, conversation_id bigint, user_id bigint)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    conv bigint := remove_member.conversation_id;
    target bigint := remove_member.user_id;
    actor_role text;
    target_role text;
    members_before bigint[];
    heir bigint;
BEGIN
    IF actor IS NULL OR target IS NULL THEN
        RAISE EXCEPTION 'actor and user_id must not be null' USING ERRCODE = '22023';
    END IF;
    PERFORM chat.lock_group(conv);
    actor_role := (chat.require_member(actor, conv)).role;
    IF actor <> target THEN
        IF actor_role = 'member' THEN
            RAISE EXCEPTION 'user % may not remove members from conversation %', actor, conv
                USING ERRCODE = '42501', HINT = 'Only owners and admins remove others; anyone may leave.';
        END IF;
        SELECT role INTO target_role FROM chat.members
         WHERE conversation_id = conv AND user_id = target AND left_at IS NULL
           FOR NO KEY UPDATE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'user % is not a member of conversation %', target, conv
                USING ERRCODE = 'P0002';
        END IF;
        IF target_role = 'owner' AND actor_role <> 'owner' THEN
            RAISE EXCEPTION 'user % may not remove owner % from conversation %', actor, target, conv
                USING ERRCODE = '42501', HINT = 'Only owners remove owners.';
        END IF;
    ELSE
        target_role := actor_role;
    END IF;

    members_before := ARRAY(SELECT user_id FROM chat.members
                     WHERE conversation_id = conv AND left_at IS NULL ORDER BY user_id);
    UPDATE chat.members SET left_at = now()
     WHERE conversation_id = conv AND user_id = target;

    IF target_role = 'owner' AND NOT EXISTS (
        SELECT FROM chat.members WHERE conversation_id = conv AND role = 'owner' AND left_at IS NULL) THEN
        SELECT user_id INTO heir FROM chat.members
         WHERE conversation_id = conv AND left_at IS NULL
         ORDER BY role = 'admin' DESC, joined_at, user_id LIMIT 1;
        IF FOUND THEN
            UPDATE chat.members SET role = 'owner' WHERE conversation_id = conv AND user_id = heir;
            PERFORM chat.fanout_event(conv, NULL,
                jsonb_build_object('type', 'member', 'conversation', conv, 'user', heir,
                                   'action', 'role', 'role', 'owner'));
        END IF;
    END IF;

    PERFORM chat.post_system_message(conv, actor,
        jsonb_build_object('action', CASE WHEN actor = target THEN 'left' ELSE 'removed' END,
                           'user', target, 'by', actor));
    PERFORM chat.fanout_event(conv, members_before,
        jsonb_build_object('type', 'member', 'conversation', conv, 'user', target,
                           'action', 'removed', 'role', target_role));
END
$$;

-- The chat list: a user's conversations, newest activity first, with unread
-- counts and a preview of the last message (body cut to 200 characters, none
-- for e2e or deleted messages).  Change-log entries (edit, delete) are not
-- messages here: they are neither counted as unread nor previewed.  Direct conversations are titled with the
-- peer's display name (or handle); peer_id names the peer.
CREATE FUNCTION chat.conversations(user_id bigint, lim integer DEFAULT 50, before timestamptz DEFAULT NULL)
RETURNS TABLE(conversation_id bigint, kind text, title text, last_seq bigint, read_seq bigint,
              unread bigint, last_activity timestamptz, last_message jsonb, peer_id bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    PERFORM chat.check_limit(lim);
    IF conversations.user_id IS NULL THEN
        RAISE EXCEPTION 'user_id must not be null' USING ERRCODE = '22023';
    END IF;
    PERFORM chat.require_users(ARRAY[conversations.user_id]);
    RETURN QUERY
    SELECT c.id, c.kind,
           CASE WHEN c.kind = 'direct' THEN coalesce(p.display_name, p.handle) ELSE c.title END,
           c.last_seq,
           GREATEST(m.read_seq, m.joined_seq),
           GREATEST(c.last_seq - GREATEST(m.read_seq, m.joined_seq)
                    - (SELECT count(*) FROM chat.messages e
                        WHERE e.conversation_id = c.id AND e.target IS NOT NULL
                          AND e.seq > GREATEST(m.read_seq, m.joined_seq)), 0),
           c.last_activity,
           (SELECT jsonb_build_object(
                       'seq', x.seq, 'sender', x.sender_id, 'kind', x.kind,
                       'body', CASE WHEN x.kind = 'e2e' OR chat.message_expired(x) THEN NULL
                                    ELSE left(x.body, 200) END,
                       'created_at', x.created_at,
                       'deleted', x.deleted_at IS NOT NULL OR x.expires_at <= now())
              FROM chat.messages x
             WHERE x.conversation_id = c.id AND x.seq > m.joined_seq AND x.target IS NULL
             ORDER BY x.seq DESC
             LIMIT 1),
           p.id
      FROM chat.members m
      JOIN chat.conversations c ON c.id = m.conversation_id
      LEFT JOIN chat.users p
             ON c.kind = 'direct'
            AND p.id = CASE WHEN c.direct_low = m.user_id THEN c.direct_high ELSE c.direct_low END
     WHERE m.user_id = conversations.user_id AND m.left_at IS NULL
       AND (conversations.before IS NULL OR c.last_activity < conversations.before)
     ORDER BY c.last_activity DESC, c.id DESC
     LIMIT lim;
END
$$;

-- The contacts of a user: the users with whom it has a direct conversation
-- in which both have sent a message (creating the conversation alone makes
-- no one a contact).  members.last_sent_seq, kept by every send, makes this
-- one index walk over the user's conversations.
CREATE FUNCTION chat.contacts(user_id bigint)
RETURNS SETOF bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT p.user_id
      FROM chat.members m
      JOIN chat.conversations c ON c.id = m.conversation_id AND c.kind = 'direct'
      JOIN chat.members p ON p.conversation_id = m.conversation_id AND p.user_id <> m.user_id
     WHERE m.user_id = contacts.user_id AND m.left_at IS NULL AND m.last_sent_seq > 0
       AND p.left_at IS NULL AND p.last_sent_seq > 0
     ORDER BY p.user_id
$$;

-- Whether a and b are contacts (see chat.contacts).
CREATE FUNCTION chat.is_contact(a bigint, b bigint)
RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (
        SELECT FROM chat.conversations c
          JOIN chat.members x ON x.conversation_id = c.id AND x.user_id = LEAST(a, b)
          JOIN chat.members y ON y.conversation_id = c.id AND y.user_id = GREATEST(a, b)
         WHERE c.kind = 'direct' AND c.direct_low = LEAST(a, b) AND c.direct_high = GREATEST(a, b)
           AND x.left_at IS NULL AND x.last_sent_seq > 0
           AND y.left_at IS NULL AND y.last_sent_seq > 0)
$$;

REVOKE ALL ON FUNCTION chat.post_system_message(bigint, bigint, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.contacts(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.is_contact(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.require_users(bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.lock_group(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.direct_conversation(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.create_group(bigint, text, bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.add_member(bigint, bigint, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.remove_member(bigint, bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.conversations(bigint, integer, timestamptz) FROM PUBLIC;

COMMENT ON FUNCTION chat.post_system_message(bigint, bigint, jsonb) IS
    'internal: appends and fans out a system message (through chat.append_message)';
COMMENT ON FUNCTION chat.contacts(bigint) IS
    'the user''s contacts: users sharing a direct conversation with it in which both have sent a message';
COMMENT ON FUNCTION chat.is_contact(bigint, bigint) IS
    'true when two users are contacts (a direct conversation in which both have sent a message)';
COMMENT ON FUNCTION chat.require_users(bigint[]) IS
    'internal: P0002 naming the first id that is not a user';
COMMENT ON FUNCTION chat.lock_group(bigint) IS
    'internal: locks a group''s row for a membership change; returns last_seq';
COMMENT ON FUNCTION chat.direct_conversation(bigint, bigint) IS
    'get-or-create the direct conversation of two users: one id for (a,b) and (b,a), also under concurrency';
COMMENT ON FUNCTION chat.create_group(bigint, text, bigint[]) IS
    'creates a group with creator as owner and members as members; capped by chat.max_group_members';
COMMENT ON FUNCTION chat.add_member(bigint, bigint, bigint, text) IS
    'owner/admin adds a member (or changes an active member''s role); posts a system message';
COMMENT ON FUNCTION chat.remove_member(bigint, bigint, bigint) IS
    'removes a member (admins remove others, anyone leaves); posts a system message';
COMMENT ON FUNCTION chat.conversations(bigint, integer, timestamptz) IS
    'the chat list of a user, newest activity first, with unread counts and a last-message preview';
