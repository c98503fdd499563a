-- Group administration (docs/sql-api.md "Groups"): the member list, roles,
-- leaving, and the group's title, description and only-admins-send switch.
--
-- description and only_admins_send live in conversations.settings (jsonb),
-- so no column is added to a released table.  The send path (send.c) reads
-- settings->'only_admins_send' in the row it already locks: a plain member
-- of such a group gets 42501.  Lock order as in 11_conversations.sql: the
-- conversation row first (chat.lock_group), then member rows.

-- The active members of a conversation with their roles, for its members
-- only: owners first, then admins, then members, each by join time.
CREATE FUNCTION chat.members(actor bigint, conversation_id bigint)
RETURNS TABLE(user_id bigint, role text, joined_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF actor IS NULL THEN
        RAISE EXCEPTION 'actor must not be null' USING ERRCODE = '22023';
    END IF;
    PERFORM chat.require_member(actor, members.conversation_id);
    RETURN QUERY
    SELECT m.user_id, m.role, m.joined_at
      FROM chat.members m
     WHERE m.conversation_id = members.conversation_id AND m.left_at IS NULL
     ORDER BY CASE m.role WHEN 'owner' THEN 0 WHEN 'admin' THEN 1 ELSE 2 END,
              m.joined_at, m.user_id;
END
$$;

-- Sets the role (admin or member) of an active member of a group; owners
-- and admins only, and never of an owner (ownership passes only through
-- chat.add_member by an owner, or when the last owner leaves).  Setting
-- the role a member already has changes nothing and posts nothing.
CREATE FUNCTION chat.set_role(actor bigint, conversation_id bigint, user_id bigint, role text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    conv bigint := set_role.conversation_id;
    target bigint := set_role.user_id;
    new_role text := set_role.role;
    actor_role text;
    target_role text;
BEGIN
    IF new_role IS NULL OR new_role NOT IN ('admin', 'member') THEN
        RAISE EXCEPTION 'invalid role "%"', coalesce(new_role, 'NULL')
            USING ERRCODE = '22023',
                  HINT = 'Use admin or member; an owner grants ownership with chat.add_member.';
    END IF;
    IF actor IS NULL OR target IS NULL THEN
        RAISE EXCEPTION 'actor and user_id must not be null' USING ERRCODE = '22023';
    END IF;
    PERFORM chat.lock_group(conv);
    actor_role := (chat.require_member(actor, conv)).role;
    IF actor_role = 'member' THEN
        RAISE EXCEPTION 'user % may not set roles in conversation %', actor, conv
            USING ERRCODE = '42501', HINT = 'Only owners and admins set roles.';
    END IF;
    SELECT m.role INTO target_role FROM chat.members m
     WHERE m.conversation_id = conv AND m.user_id = target AND m.left_at IS NULL
       FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % is not a member of conversation %', target, conv
            USING ERRCODE = 'P0002';
    END IF;
    IF target_role = 'owner' THEN
        RAISE EXCEPTION 'user % may not change the role of owner % in conversation %',
            actor, target, conv
            USING ERRCODE = '42501', HINT = 'The role of an owner does not change with chat.set_role.';
    END IF;
    IF target_role = new_role THEN
        RETURN;
    END IF;
    UPDATE chat.members SET role = new_role
     WHERE conversation_id = conv AND user_id = target;
    PERFORM chat.post_system_message(conv, actor,
        jsonb_build_object('action', 'role', 'user', target, 'by', actor, 'role', new_role));
    PERFORM chat.fanout_event(conv, NULL,
        jsonb_build_object('type', 'member', 'conversation', conv, 'user', target,
                           'action', 'role', 'role', new_role));
END
$$;

-- The actor leaves a group (22023 for a direct conversation), posting a
-- 'left' system message.  When the last owner leaves, the longest-standing
-- admin (else the longest-standing member) becomes owner; the last member
-- to leave leaves the group without members (it stays, with its history).
CREATE FUNCTION chat.leave(actor bigint, conversation_id bigint)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    conv_kind text;
BEGIN
    IF actor IS NULL OR conversation_id IS NULL THEN
        RAISE EXCEPTION 'actor and conversation_id must not be null' USING ERRCODE = '22023';
    END IF;
    SELECT c.kind INTO conv_kind FROM chat.conversations c WHERE c.id = leave.conversation_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'conversation % does not exist', conversation_id USING ERRCODE = 'P0002';
    END IF;
    IF conv_kind <> 'group' THEN
        RAISE EXCEPTION 'conversation % is a direct conversation, which cannot be left', conversation_id
            USING ERRCODE = '22023', HINT = 'Block the user with chat.block instead.';
    END IF;
    PERFORM chat.remove_member(actor, conversation_id, actor);
END
$$;

-- Changes a group's title, description, only-admins-send switch and avatar
-- (owners and admins only); NULL keeps a field, '' clears the title, the
-- description or the avatar (an attachment id, as in chat.set_profile;
-- last among the parameters so that 0.2.0 callers keep working).  Posts an 'updated' system message naming what changed;
-- nothing changed, nothing posted.
CREATE FUNCTION chat.update_group(actor bigint, conversation_id bigint, title text DEFAULT NULL,
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

REVOKE ALL ON FUNCTION chat.members(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.set_role(bigint, bigint, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.leave(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.update_group(bigint, bigint, text, text, boolean, text) FROM PUBLIC;

COMMENT ON FUNCTION chat.members(bigint, bigint) IS
    'the active members of a conversation with role and joined_at; members only';
COMMENT ON FUNCTION chat.set_role(bigint, bigint, bigint, text) IS
    'owner/admin sets a member''s role to admin or member (never an owner''s); posts a system message';
COMMENT ON FUNCTION chat.leave(bigint, bigint) IS
    'the actor leaves a group; the last owner hands ownership to the longest-standing admin, else member';
COMMENT ON FUNCTION chat.update_group(bigint, bigint, text, text, boolean, text) IS
    'owner/admin changes title, description, only_admins_send, avatar (NULL keeps); posts a system message';
