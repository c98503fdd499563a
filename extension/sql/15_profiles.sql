-- Profiles, blocking, reports and privacy (docs/sql-api.md "Profiles,
-- blocking, reports, privacy").
--
-- A block is one row of chat.blocks (blocker, blocked).  It is read on hot
-- paths by primary key only: the send path (send.c: a blocked user cannot
-- send into the direct conversation with the blocker, 42501), typing
-- (typing.c), receipts (fanout.c) and presence (20_realtime.sql) between
-- the two stop in both directions.

-- Profile columns and the read-receipts switch (appended: columns added to
-- a released table go last, as the upgrade adds them).
ALTER TABLE chat.users
    ADD COLUMN about         text CHECK (length(about) <= 500),
    ADD COLUMN avatar        text CHECK (avatar ~ '^[A-Za-z0-9_-]{1,128}$'),
    ADD COLUMN read_receipts boolean NOT NULL DEFAULT true;
COMMENT ON COLUMN chat.users.about IS 'profile text shown to others (at most 500 characters)';
COMMENT ON COLUMN chat.users.avatar IS 'attachment id of the profile picture (NULL: none)';
COMMENT ON COLUMN chat.users.read_receipts IS 'false: the user''s reads are not sent to others as read receipts (delivery still is)';

-- Who blocked whom.  Keyed (blocker, blocked) for the send path's lookup,
-- and by blocked for "does anyone block this user" (typing, presence).
CREATE TABLE chat.blocks (
    blocker    bigint NOT NULL REFERENCES chat.users ON DELETE CASCADE,
    blocked    bigint NOT NULL REFERENCES chat.users ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (blocker, blocked),
    CHECK (blocker <> blocked)
);
CREATE INDEX blocks_blocked_idx ON chat.blocks (blocked, blocker);

CREATE SEQUENCE chat.reports_id_seq;
-- Reports for moderators, each with a copy of the reported message as it
-- was when reported (the message may be edited or deleted later).  No
-- foreign keys: a report outlives the users and conversations it names.
CREATE TABLE chat.reports (
    id              bigint PRIMARY KEY DEFAULT nextval('chat.reports_id_seq'),
    reporter        bigint NOT NULL,
    reported_user   bigint,
    conversation_id bigint,
    seq             bigint,
    reason          text NOT NULL CHECK (reason <> '' AND length(reason) <= 1000),
    message         jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (reported_user IS NOT NULL OR conversation_id IS NOT NULL),
    CHECK (seq IS NULL OR conversation_id IS NOT NULL)
);
ALTER SEQUENCE chat.reports_id_seq OWNED BY chat.reports.id;
-- A reporter's recent reports (the rate limit).
CREATE INDEX reports_reporter_idx ON chat.reports (reporter, created_at);

SELECT pg_catalog.pg_extension_config_dump('chat.blocks', '');
SELECT pg_catalog.pg_extension_config_dump('chat.reports', '');
SELECT pg_catalog.pg_extension_config_dump('chat.reports_id_seq', '');

-- What moderators read: every report with the handles it names.  Granted
-- to no one by the extension: GRANT SELECT ON chat.reports_for_moderators
-- TO your moderation role.
CREATE VIEW chat.reports_for_moderators AS
SELECT r.id, r.created_at, r.reporter, ru.handle AS reporter_handle,
       r.reported_user, pu.handle AS reported_handle,
       r.conversation_id, r.seq, r.reason, r.message
  FROM chat.reports r
  LEFT JOIN chat.users ru ON ru.id = r.reporter
  LEFT JOIN chat.users pu ON pu.id = r.reported_user;

REVOKE ALL ON chat.blocks FROM PUBLIC;
REVOKE ALL ON chat.reports FROM PUBLIC;
REVOKE ALL ON SEQUENCE chat.reports_id_seq FROM PUBLIC;
REVOKE ALL ON chat.reports_for_moderators FROM PUBLIC;

COMMENT ON TABLE chat.blocks IS 'blocks (blocker, blocked): blocked cannot send into their direct conversation; no typing, presence or receipts flow between the two';
COMMENT ON TABLE chat.reports IS 'reports of users and messages, with a copy of the reported message';
COMMENT ON SEQUENCE chat.reports_id_seq IS 'ids of chat.reports';
COMMENT ON VIEW chat.reports_for_moderators IS 'reports with the handles they name; granted to no one by default (GRANT SELECT to a moderation role)';

-- A user's public profile (chat.profile, chat.find_user).
CREATE TYPE chat.profile_view AS (
    user_id      bigint,
    handle       text,
    display_name text,
    about        text,
    avatar       text
);
COMMENT ON TYPE chat.profile_view IS 'a user''s public profile (profile, find_user)';

-- Raises 22023 for a NULL actor and P0002 for one that is not a user.
CREATE FUNCTION chat.require_actor(actor bigint)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF actor IS NULL THEN
        RAISE EXCEPTION 'actor must not be null' USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT FROM chat.users u WHERE u.id = actor) THEN
        RAISE EXCEPTION 'user % does not exist', actor
            USING ERRCODE = 'P0002', HINT = 'Create it with chat.upsert_user.';
    END IF;
END
$$;

-- Whether a block stands between a and b, either way (two key lookups).
CREATE FUNCTION chat.is_blocked(a bigint, b bigint)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT FROM chat.blocks k WHERE k.blocker = a AND k.blocked = b)
        OR EXISTS (SELECT FROM chat.blocks k WHERE k.blocker = b AND k.blocked = a)
$$;

-- The public profiles of user_ids (at most 1000; unknown ids are left out),
-- by user id.
CREATE FUNCTION chat.profile(actor bigint, user_ids bigint[])
RETURNS SETOF chat.profile_view
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM chat.require_actor(actor);
    IF user_ids IS NULL THEN
        RAISE EXCEPTION 'user_ids must not be null' USING ERRCODE = '22023';
    END IF;
    IF cardinality(user_ids) > 1000 THEN
        RAISE EXCEPTION '% user ids asked for, at most 1000 are allowed', cardinality(user_ids)
            USING ERRCODE = '54000', HINT = 'Ask in pages of at most 1000 ids.';
    END IF;
    RETURN QUERY
    SELECT u.id, u.handle, u.display_name, u.about, u.avatar
      FROM chat.users u
     WHERE u.id = ANY (user_ids)
     ORDER BY u.id;
END
$$;

-- Sets the actor's profile.  NULL leaves a field unchanged; '' clears it.
-- display_name: at most 64 characters, no control characters (trimmed);
-- about: at most 500 characters; avatar: the id of a ready image profile
-- upload of the actor (33_avatars.sql).
CREATE FUNCTION chat.set_profile(actor bigint, display_name text DEFAULT NULL,
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

-- The user whose handle is handle, regardless of case; P0002 when none.
CREATE FUNCTION chat.find_user(actor bigint, handle text)
RETURNS SETOF chat.profile_view
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM chat.require_actor(actor);
    IF handle IS NULL OR handle = '' THEN
        RAISE EXCEPTION 'handle must not be empty' USING ERRCODE = '22023';
    END IF;
    IF length(handle) > 64 THEN
        RAISE EXCEPTION 'handle of % characters is longer than 64', length(handle)
            USING ERRCODE = '22001';
    END IF;
    RETURN QUERY
    SELECT u.id, u.handle, u.display_name, u.about, u.avatar
      FROM chat.users u
     WHERE lower(u.handle) = lower(find_user.handle);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no user has the handle "%"', handle USING ERRCODE = 'P0002';
    END IF;
END
$$;

-- Raises 22023 unless actor and user_id are two different non-null ids,
-- P0002 unless both are users.
CREATE FUNCTION chat.check_block_pair(actor bigint, user_id bigint)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM chat.require_actor(actor);
    IF user_id IS NULL THEN
        RAISE EXCEPTION 'user_id must not be null' USING ERRCODE = '22023';
    END IF;
    IF user_id = actor THEN
        RAISE EXCEPTION 'user % cannot block itself', actor USING ERRCODE = '22023';
    END IF;
    PERFORM chat.require_users(ARRAY[user_id]);
END
$$;

-- The actor blocks user_id (again: no change).  Each of the two is shown
-- the other offline at once, since no more presence flows between them.
CREATE FUNCTION chat.block(actor bigint, user_id bigint)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM chat.check_block_pair(actor, user_id);
    INSERT INTO chat.blocks (blocker, blocked) VALUES (actor, user_id)
        ON CONFLICT DO NOTHING;
    IF FOUND THEN
        PERFORM chat.fanout_event(NULL, ARRAY[user_id],
            jsonb_build_object('type', 'presence', 'user', actor, 'online', false, 'last_seen', NULL));
        PERFORM chat.fanout_event(NULL, ARRAY[actor],
            jsonb_build_object('type', 'presence', 'user', user_id, 'online', false, 'last_seen', NULL));
    END IF;
END
$$;

-- The actor unblocks user_id (not blocked: no change).  Presence flows
-- again: each is sent the other's presence as it may now see it.
CREATE FUNCTION chat.unblock(actor bigint, user_id bigint)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a bigint := actor;
    b bigint := user_id;
    p record;
BEGIN
    PERFORM chat.check_block_pair(a, b);
    DELETE FROM chat.blocks k WHERE k.blocker = a AND k.blocked = b;
    IF FOUND AND NOT chat.is_blocked(a, b) THEN
        FOR p IN SELECT v.viewer, s.user_id, s.online, s.last_seen
                   FROM (VALUES (a, b), (b, a)) AS v(viewer, subject)
                  CROSS JOIN LATERAL chat.presence(v.viewer, ARRAY[v.subject]) s
        LOOP
            PERFORM chat.fanout_event(NULL, ARRAY[p.viewer],
                jsonb_build_object('type', 'presence', 'user', p.user_id, 'online', p.online,
                                   'last_seen', chat.json_timestamp(p.last_seen)));
        END LOOP;
    END IF;
END
$$;

-- The users the actor has blocked, by id.
CREATE FUNCTION chat.blocked(actor bigint)
RETURNS SETOF bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM chat.require_actor(actor);
    RETURN QUERY SELECT k.blocked FROM chat.blocks k WHERE k.blocker = actor ORDER BY k.blocked;
END
$$;

-- Stores a report for moderators and returns its id.  A report names a
-- user, a conversation or a message (conversation and seq); a message is
-- copied into the report, and only one the actor can see (a member, the
-- message after its joined_seq) can be reported.  user_id defaults to the
-- message's sender.  At most 20 reports per reporter per hour (53400).
CREATE FUNCTION chat.report(actor bigint, user_id bigint, conversation_id bigint, seq bigint, reason text)
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
                    msg.edited_at, msg.deleted_at, msg.target, msg.attachments, msg.mentions,
                    msg.reactions)::chat.message_view);
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

-- Sets who sees the actor's online state and last seen ('everyone',
-- 'contacts', 'nobody') and whether its reads are sent as read receipts.
-- NULL leaves a setting unchanged.  Users who lose sight of the actor are
-- shown it offline at once; users who gain it get its presence.
CREATE FUNCTION chat.set_privacy(actor bigint, last_seen text DEFAULT NULL, read_receipts boolean DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    old_audience bigint[];
    new_audience bigint[];
    p record;
BEGIN
    PERFORM chat.require_actor(actor);
    IF last_seen NOT IN ('everyone', 'contacts', 'nobody') THEN
        RAISE EXCEPTION 'invalid last_seen privacy "%"', last_seen
            USING ERRCODE = '22023', HINT = 'Use everyone, contacts or nobody.';
    END IF;
    old_audience := chat.presence_audience(actor);
    UPDATE chat.users u
       SET presence_privacy = coalesce(set_privacy.last_seen, u.presence_privacy),
           read_receipts = coalesce(set_privacy.read_receipts, u.read_receipts)
     WHERE u.id = actor;
    new_audience := chat.presence_audience(actor);
    PERFORM chat.fanout_event(NULL, ARRAY(SELECT unnest(old_audience) EXCEPT SELECT unnest(new_audience)),
        jsonb_build_object('type', 'presence', 'user', actor, 'online', false, 'last_seen', NULL));
    SELECT s.online, s.last_seen INTO p FROM chat.presence(actor, ARRAY[actor]) s;
    PERFORM chat.fanout_event(NULL, ARRAY(SELECT unnest(new_audience) EXCEPT SELECT unnest(old_audience)),
        jsonb_build_object('type', 'presence', 'user', actor, 'online', p.online,
                           'last_seen', chat.json_timestamp(p.last_seen)));
END
$$;

REVOKE ALL ON FUNCTION chat.require_actor(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.is_blocked(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.profile(bigint, bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.set_profile(bigint, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.find_user(bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.check_block_pair(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.block(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.unblock(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.blocked(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.report(bigint, bigint, bigint, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.set_privacy(bigint, text, boolean) FROM PUBLIC;

COMMENT ON FUNCTION chat.require_actor(bigint) IS
    'internal: 22023 for a NULL actor, P0002 unless it is a user';
COMMENT ON FUNCTION chat.is_blocked(bigint, bigint) IS
    'true when either of two users blocks the other';
COMMENT ON FUNCTION chat.profile(bigint, bigint[]) IS
    'public profiles (handle, display_name, about, avatar) of up to 1000 users; unknown ids left out';
COMMENT ON FUNCTION chat.set_profile(bigint, text, text, text) IS
    'sets the actor''s display_name, about and avatar; NULL keeps a field, '''' clears it';
COMMENT ON FUNCTION chat.find_user(bigint, text) IS
    'the user with a handle, regardless of case (P0002 when none)';
COMMENT ON FUNCTION chat.check_block_pair(bigint, bigint) IS
    'internal: 22023 for NULL or equal ids, P0002 unless both are users';
COMMENT ON FUNCTION chat.block(bigint, bigint) IS
    'the actor blocks a user: no sends from it into their direct conversation, no typing, presence or receipts between them';
COMMENT ON FUNCTION chat.unblock(bigint, bigint) IS
    'the actor lifts its block of a user';
COMMENT ON FUNCTION chat.blocked(bigint) IS
    'the users the actor has blocked';
COMMENT ON FUNCTION chat.report(bigint, bigint, bigint, bigint, text) IS
    'stores a report of a user, conversation or message (copied) for moderators; at most 20 per hour';
COMMENT ON FUNCTION chat.set_privacy(bigint, text, boolean) IS
    'who sees the actor''s presence (everyone/contacts/nobody) and whether its reads are sent as read receipts';
