-- chat extension 0.2.0: schema.  The install script is assembled from the
-- files of extension/sql/ in name order.  A column added in a later version
-- goes last in its table (where ALTER TABLE ... ADD COLUMN puts it in the
-- upgrade script), so that upgraded and fresh installs are alike.
\echo Use "CREATE EXTENSION chat" to load this file. \quit

-- Users are the application's own; the id is the application's user id.
CREATE TABLE chat.users (
    id               bigint PRIMARY KEY,
    handle           text NOT NULL CHECK (handle <> '' AND length(handle) <= 64),
    display_name     text,
    presence_privacy text NOT NULL DEFAULT 'everyone'
                     CHECK (presence_privacy IN ('everyone', 'contacts', 'nobody')),
    last_seen        timestamptz,
    last_device_id   integer NOT NULL DEFAULT 0,  -- device ids are never reused
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_handle_key ON chat.users (lower(handle));

-- A user's devices; device ids are small integers per user (1, 2, ...).
CREATE TABLE chat.devices (
    user_id     bigint NOT NULL REFERENCES chat.users ON DELETE CASCADE,
    device_id   integer NOT NULL CHECK (device_id > 0),
    platform    text NOT NULL DEFAULT 'web',
    push_token  text,
    last_active timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- chat.register_push: the push service (webpush, fcm, apns) and, for
    -- webpush, the subscription {"endpoint","keys":{"p256dh","auth"}}
    -- (push_token then holds the endpoint).
    push_platform     text CHECK (push_platform IN ('webpush', 'fcm', 'apns')),
    push_subscription jsonb,
    PRIMARY KEY (user_id, device_id)
);
-- A push token belongs to one app install: registering it again moves it.
CREATE INDEX devices_push_token_idx ON chat.devices (push_token) WHERE push_token IS NOT NULL;

CREATE SEQUENCE chat.conversations_id_seq;
-- A conversation: kind direct (exactly two members, one per pair) or group.
CREATE TABLE chat.conversations (
    id            bigint PRIMARY KEY DEFAULT nextval('chat.conversations_id_seq'),
    kind          text NOT NULL CHECK (kind IN ('direct', 'group')),
    title         text,
    direct_low    bigint,   -- direct only: the smaller user id of the pair
    direct_high   bigint,   -- direct only: the larger user id of the pair
    last_seq      bigint NOT NULL DEFAULT 0,
    last_activity timestamptz NOT NULL DEFAULT now(),
    created_at    timestamptz NOT NULL DEFAULT now(),
    settings      jsonb NOT NULL DEFAULT '{}',
    CHECK ((kind = 'direct') = (direct_low IS NOT NULL AND direct_high IS NOT NULL)),
    CHECK (direct_low < direct_high)
) WITH (fillfactor = 50);  -- every send updates last_seq: room for HOT updates
ALTER SEQUENCE chat.conversations_id_seq OWNED BY chat.conversations.id;
CREATE UNIQUE INDEX conversations_direct_key ON chat.conversations (direct_low, direct_high)
    WHERE kind = 'direct';

-- Membership with per-member watermarks.  left_at set = no longer a member.
-- A member sees the messages after joined_seq; delivered_seq >= read_seq.
CREATE TABLE chat.members (
    conversation_id bigint NOT NULL REFERENCES chat.conversations ON DELETE CASCADE,
    user_id         bigint NOT NULL REFERENCES chat.users ON DELETE CASCADE,
    role            text NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'admin', 'member')),
    joined_seq      bigint NOT NULL DEFAULT 0,
    delivered_seq   bigint NOT NULL DEFAULT 0,
    read_seq        bigint NOT NULL DEFAULT 0,
    muted_until     timestamptz,
    joined_at       timestamptz NOT NULL DEFAULT now(),
    left_at         timestamptz,
    last_sent_seq   bigint NOT NULL DEFAULT 0,  -- seq of the member's latest text/e2e message
    PRIMARY KEY (conversation_id, user_id)
) WITH (fillfactor = 70);  -- watermarks move on every send, ack and read: HOT updates
-- A user's current conversations in id order (chat list, sync).
CREATE INDEX members_user_idx ON chat.members (user_id, conversation_id) WHERE left_at IS NULL;

-- Messages keyed by (conversation_id, seq): seq is gapless per conversation.
-- The log is also the change log: an edit or a delete appends an entry
-- (kind 'edit' / 'delete') whose target is the seq it changes.
CREATE TABLE chat.messages (
    conversation_id bigint NOT NULL REFERENCES chat.conversations ON DELETE CASCADE,
    seq             bigint NOT NULL,
    sender_id       bigint NOT NULL,
    sender_device   integer,
    kind            text NOT NULL DEFAULT 'text'
                    CHECK (kind IN ('text', 'system', 'e2e', 'edit', 'delete')),
    body            text,
    client_msg_id   text,
    reply_to        bigint,
    mentions        bigint[],
    attachments     jsonb,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    edited_at       timestamptz,
    deleted_at      timestamptz,
    target          bigint,   -- log entries only: the seq of the message changed
    PRIMARY KEY (conversation_id, seq),
    CHECK ((kind IN ('edit', 'delete')) = (target IS NOT NULL)),
    CHECK (target < seq)
);
-- The log entries of a conversation by seq (unread counts skip them) and by
-- target (a delete scrubs the bodies of the edits of its message).
CREATE INDEX messages_entries_idx ON chat.messages (conversation_id, seq)
    WHERE target IS NOT NULL;
CREATE INDEX messages_target_idx ON chat.messages (conversation_id, target)
    WHERE target IS NOT NULL;
-- Idempotent sends: one row per (sender, conversation, client_msg_id).
CREATE UNIQUE INDEX messages_client_msg_key ON chat.messages (conversation_id, sender_id, client_msg_id)
    WHERE client_msg_id IS NOT NULL;

-- What each device has received, per conversation.
CREATE TABLE chat.device_cursors (
    user_id         bigint NOT NULL,
    device_id       integer NOT NULL,
    conversation_id bigint NOT NULL REFERENCES chat.conversations ON DELETE CASCADE,
    acked_seq       bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id, conversation_id),
    FOREIGN KEY (user_id, device_id) REFERENCES chat.devices ON DELETE CASCADE
);

-- Gateway nodes and their heartbeats.
CREATE TABLE chat.nodes (
    node         text PRIMARY KEY CHECK (node ~ '^[a-z0-9_]{1,40}$'),
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- Who is connected where.  Unlogged: after a crash every gateway re-registers.
CREATE UNLOGGED TABLE chat.sessions (
    node         text NOT NULL,
    user_id      bigint NOT NULL,
    device_id    integer NOT NULL,
    connected_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node, user_id, device_id)
);
CREATE INDEX sessions_user_idx ON chat.sessions (user_id);

CREATE SEQUENCE chat.push_outbox_id_seq;
-- Pending push notifications for offline devices, claimed with SKIP LOCKED.
CREATE TABLE chat.push_outbox (
    id              bigint PRIMARY KEY DEFAULT nextval('chat.push_outbox_id_seq'),
    user_id         bigint NOT NULL,
    device_id       integer NOT NULL,
    push_token      text NOT NULL,
    conversation_id bigint NOT NULL,
    seq             bigint NOT NULL,
    payload         jsonb NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
ALTER SEQUENCE chat.push_outbox_id_seq OWNED BY chat.push_outbox.id;
CREATE INDEX push_outbox_due_idx ON chat.push_outbox (next_attempt_at, id);

-- pg_dump keeps every table that holds user data (and their sequences).
SELECT pg_catalog.pg_extension_config_dump('chat.users', '');
SELECT pg_catalog.pg_extension_config_dump('chat.devices', '');
SELECT pg_catalog.pg_extension_config_dump('chat.conversations', '');
SELECT pg_catalog.pg_extension_config_dump('chat.conversations_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('chat.members', '');
SELECT pg_catalog.pg_extension_config_dump('chat.messages', '');
SELECT pg_catalog.pg_extension_config_dump('chat.device_cursors', '');
SELECT pg_catalog.pg_extension_config_dump('chat.push_outbox', '');
SELECT pg_catalog.pg_extension_config_dump('chat.push_outbox_id_seq', '');

REVOKE ALL ON ALL TABLES IN SCHEMA chat FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA chat FROM PUBLIC;

COMMENT ON TABLE chat.users IS 'chat users; id is the application''s user id';
COMMENT ON TABLE chat.devices IS 'devices of a user (device_id 1, 2, ...), with optional push token';
COMMENT ON TABLE chat.conversations IS 'direct and group conversations; last_seq is the newest message seq';
COMMENT ON TABLE chat.members IS 'conversation membership with delivered/read watermarks';
COMMENT ON TABLE chat.messages IS 'messages keyed by (conversation_id, seq), seq gapless per conversation; edits and deletes append entries (kind edit/delete, target)';
COMMENT ON COLUMN chat.devices.push_platform IS 'push service of the registration (chat.register_push): webpush, fcm or apns; NULL: none';
COMMENT ON COLUMN chat.devices.push_subscription IS 'webpush only: the subscription {"endpoint","keys":{"p256dh","auth"}}';
COMMENT ON COLUMN chat.messages.target IS 'log entries (kind edit/delete): the seq of the message the entry changes';
COMMENT ON COLUMN chat.members.last_sent_seq IS 'seq of the member''s latest text/e2e message (0: never sent); defines contacts';
COMMENT ON TABLE chat.device_cursors IS 'per-device acked_seq per conversation, for sync';
COMMENT ON TABLE chat.nodes IS 'gateway nodes and their heartbeats';
COMMENT ON TABLE chat.sessions IS 'connected devices per gateway node (unlogged)';
COMMENT ON TABLE chat.push_outbox IS 'push notifications pending for offline devices';
COMMENT ON SEQUENCE chat.conversations_id_seq IS 'ids of chat.conversations';
COMMENT ON SEQUENCE chat.push_outbox_id_seq IS 'ids of chat.push_outbox';
COMMENT ON SCHEMA chat IS 'pgchat: users, conversations, gapless messages, receipts, presence and NOTIFY fanout';

-- What a message looks like to readers (docs/sql-api.md).
CREATE TYPE chat.message_view AS (
    conversation_id bigint,
    seq             bigint,
    sender_id       bigint,
    sender_device   integer,
    kind            text,
    body            text,
    client_msg_id   text,
    reply_to        bigint,
    created_at      timestamptz,
    edited_at       timestamptz,
    deleted_at      timestamptz,
    target          bigint
);
COMMENT ON TYPE chat.message_view IS 'a message as readers see it (history, messages_after, get_message, sync)';
-- Fanout entry points the SQL parts of the extension call (fanout.c).
-- Internal: not granted to applications.

-- Notifies an event to the online devices of user_ids (NULL: all current
-- members of the conversation), grouped by gateway node, at commit.
CREATE FUNCTION chat.fanout_event(conversation_id bigint, user_ids bigint[], event jsonb)
RETURNS void LANGUAGE c AS 'MODULE_PATHNAME', 'chat_fanout_event';

-- Delivery ('delivered') or read ('read') receipts after reader's watermark
-- moved from from_seq to to_seq: sent to the senders of the messages in
-- (from_seq, to_seq] other than the reader, never to the whole group.
CREATE FUNCTION chat.fanout_receipt(conversation_id bigint, reader bigint, from_seq bigint, to_seq bigint, kind text)
RETURNS void LANGUAGE c AS 'MODULE_PATHNAME', 'chat_fanout_receipt';

-- Fans out the stored message (conversation_id, seq) as a message event and
-- queues pushes for offline devices (system messages written in SQL use it).
CREATE FUNCTION chat.fanout_message(conversation_id bigint, seq bigint)
RETURNS void LANGUAGE c AS 'MODULE_PATHNAME', 'chat_fanout_message';

-- {"type":"revoked","user","device"} to the nodes holding sessions of the
-- device, which close its connections (chat.remove_device calls it).
CREATE FUNCTION chat.fanout_revoked(user_id bigint, device_id integer)
RETURNS void LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'chat_fanout_revoked';

REVOKE ALL ON FUNCTION chat.fanout_event(bigint, bigint[], jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.fanout_revoked(bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.fanout_receipt(bigint, bigint, bigint, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.fanout_message(bigint, bigint) FROM PUBLIC;

-- The message event of a stored message (exactly what a "message"
-- notification carries, plus edited_at/deleted_at when set): the one shape
-- of a message in client_request results.
CREATE FUNCTION chat.message_json(m chat.message_view)
RETURNS jsonb LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', 'chat_message_json';

-- A timestamp as events carry it: "YYYY-MM-DDTHH:MM:SS.mmmZ" in UTC.
CREATE FUNCTION chat.json_timestamp(ts timestamptz)
RETURNS text LANGUAGE c IMMUTABLE STRICT AS 'MODULE_PATHNAME', 'chat_json_timestamp';

REVOKE ALL ON FUNCTION chat.message_json(chat.message_view) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.json_timestamp(timestamptz) FROM PUBLIC;

COMMENT ON FUNCTION chat.fanout_event(bigint, bigint[], jsonb) IS
    'internal: notifies an event to the online devices of user_ids (NULL: all members), at commit';
COMMENT ON FUNCTION chat.fanout_revoked(bigint, integer) IS
    'internal: revoked event to the nodes holding sessions of a device (they close it with 4003)';
COMMENT ON FUNCTION chat.fanout_receipt(bigint, bigint, bigint, bigint, text) IS
    'internal: delivered/read receipts to the senders of the messages in (from_seq, to_seq]';
COMMENT ON FUNCTION chat.fanout_message(bigint, bigint) IS
    'internal: fans out a stored message and queues pushes for offline members';
COMMENT ON FUNCTION chat.message_json(chat.message_view) IS
    'the message event object of a message (same shape as the notification)';
COMMENT ON FUNCTION chat.json_timestamp(timestamptz) IS
    'timestamp as events carry it: YYYY-MM-DDTHH:MM:SS.mmmZ in UTC';
-- Users and devices (docs/sql-api.md), and the internal checks the
-- other core functions share.
--
-- Every public function is SECURITY DEFINER with a pinned search_path: the
-- application role needs EXECUTE on the functions only, never rights on the
-- tables (docs/sql-api.md lists the GRANTs).  The actor is vouched for by the
-- caller (the application backend or the gateway).

-- Raises P0002 for an unknown conversation or user and 42501 for a user
-- without an active membership; returns the membership row otherwise.
-- lock_row takes FOR NO KEY UPDATE on the member row (watermark updates).
CREATE FUNCTION chat.require_member(user_id bigint, conversation_id bigint, lock_row boolean DEFAULT false)
RETURNS chat.members
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    m chat.members;
BEGIN
    IF require_member.user_id IS NULL THEN
        RAISE EXCEPTION 'user_id must not be null' USING ERRCODE = '22023';
    END IF;
    IF require_member.conversation_id IS NULL THEN
        RAISE EXCEPTION 'conversation_id must not be null' USING ERRCODE = '22023';
    END IF;
    IF lock_row THEN
        SELECT * INTO m FROM chat.members
         WHERE conversation_id = require_member.conversation_id
           AND user_id = require_member.user_id AND left_at IS NULL
           FOR NO KEY UPDATE;
    ELSE
        SELECT * INTO m FROM chat.members
         WHERE conversation_id = require_member.conversation_id
           AND user_id = require_member.user_id AND left_at IS NULL;
    END IF;
    IF FOUND THEN
        RETURN m;
    END IF;
    IF NOT EXISTS (SELECT FROM chat.conversations WHERE id = require_member.conversation_id) THEN
        RAISE EXCEPTION 'conversation % does not exist', require_member.conversation_id
            USING ERRCODE = 'P0002';
    END IF;
    IF NOT EXISTS (SELECT FROM chat.users WHERE id = require_member.user_id) THEN
        RAISE EXCEPTION 'user % does not exist', require_member.user_id
            USING ERRCODE = 'P0002', HINT = 'Create it with chat.upsert_user.';
    END IF;
    RAISE EXCEPTION 'user % is not a member of conversation %',
        require_member.user_id, require_member.conversation_id
        USING ERRCODE = '42501';
END
$$;

-- Raises 22023 unless lim is between 1 and 1000.
CREATE FUNCTION chat.check_limit(lim integer)
RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF lim IS NULL OR lim < 1 OR lim > 1000 THEN
        RAISE EXCEPTION 'limit % is out of range', coalesce(lim::text, 'NULL')
            USING ERRCODE = '22023', HINT = 'Pass a limit between 1 and 1000 and page.';
    END IF;
END
$$;

-- Raises P0002 unless device (user_id, device_id) exists.
CREATE FUNCTION chat.require_device(user_id bigint, device_id integer)
RETURNS void
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    IF require_device.user_id IS NULL OR require_device.device_id IS NULL THEN
        RAISE EXCEPTION 'user_id and device_id must not be null' USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT FROM chat.devices
                    WHERE user_id = require_device.user_id AND device_id = require_device.device_id) THEN
        RAISE EXCEPTION 'device % of user % does not exist', require_device.device_id, require_device.user_id
            USING ERRCODE = 'P0002', HINT = 'Register it with chat.register_device.';
    END IF;
END
$$;

-- Creates or updates a user; a NULL display_name keeps the current one.
CREATE FUNCTION chat.upsert_user(user_id bigint, handle text, display_name text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    holder bigint;
BEGIN
    IF upsert_user.user_id IS NULL THEN
        RAISE EXCEPTION 'user_id must not be null' USING ERRCODE = '22023';
    END IF;
    IF upsert_user.handle IS NULL OR btrim(upsert_user.handle) = '' THEN
        RAISE EXCEPTION 'handle of user % must not be empty', upsert_user.user_id
            USING ERRCODE = '22023';
    END IF;
    IF length(upsert_user.handle) > 64 THEN
        RAISE EXCEPTION 'handle "%" is longer than 64 characters', upsert_user.handle
            USING ERRCODE = '22001';
    END IF;
    SELECT id INTO holder FROM chat.users
     WHERE lower(handle) = lower(upsert_user.handle) AND id <> upsert_user.user_id;
    IF FOUND THEN
        RAISE EXCEPTION 'handle "%" is taken by user %', upsert_user.handle, holder
            USING ERRCODE = '23505', HINT = 'Handles are unique regardless of case.';
    END IF;
    INSERT INTO chat.users AS u (id, handle, display_name)
    VALUES (upsert_user.user_id, upsert_user.handle, upsert_user.display_name)
    ON CONFLICT (id) DO UPDATE
       SET handle = EXCLUDED.handle,
           display_name = coalesce(EXCLUDED.display_name, u.display_name);
END
$$;

-- Adds a device to a user; device ids count up per user and are never reused,
-- so a token issued for a removed device never names a new one.
CREATE FUNCTION chat.register_device(user_id bigint, platform text DEFAULT 'web', push_token text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    new_id integer;
BEGIN
    IF register_device.user_id IS NULL THEN
        RAISE EXCEPTION 'user_id must not be null' USING ERRCODE = '22023';
    END IF;
    IF register_device.platform IS NULL OR register_device.platform !~ '^[a-z0-9_-]{1,32}$' THEN
        RAISE EXCEPTION 'invalid platform "%"', coalesce(register_device.platform, 'NULL')
            USING ERRCODE = '22023', HINT = 'Use a short lowercase name such as web, ios or android.';
    END IF;
    IF register_device.push_token = '' OR length(register_device.push_token) > 4096 THEN
        RAISE EXCEPTION 'push token of % characters is invalid', length(register_device.push_token)
            USING ERRCODE = '22023', HINT = 'Pass NULL for a device without push.';
    END IF;
    UPDATE chat.users SET last_device_id = last_device_id + 1
     WHERE id = register_device.user_id
     RETURNING last_device_id INTO new_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % does not exist', register_device.user_id
            USING ERRCODE = 'P0002', HINT = 'Create it with chat.upsert_user.';
    END IF;
    -- A push token identifies one app install: an older device row with it is stale.
    IF register_device.push_token IS NOT NULL THEN
        UPDATE chat.devices SET push_token = NULL WHERE push_token = register_device.push_token;
    END IF;
    INSERT INTO chat.devices (user_id, device_id, platform, push_token, last_active)
    VALUES (register_device.user_id, new_id, register_device.platform, register_device.push_token, now());
    RETURN new_id;
END
$$;

-- Removes a device with its cursors (by cascade), sessions and pending pushes.
-- The nodes holding its sessions get {"type":"revoked","user","device"} at
-- commit and close its open connections (4003); the event goes out before
-- the session rows that route it are deleted.
CREATE FUNCTION chat.remove_device(user_id bigint, device_id integer)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    PERFORM chat.require_device(remove_device.user_id, remove_device.device_id);
    IF EXISTS (SELECT FROM chat.sessions
                WHERE user_id = remove_device.user_id AND device_id = remove_device.device_id) THEN
        PERFORM chat.fanout_revoked(remove_device.user_id, remove_device.device_id);
    END IF;
    DELETE FROM chat.devices
     WHERE user_id = remove_device.user_id AND device_id = remove_device.device_id;
    DELETE FROM chat.sessions
     WHERE user_id = remove_device.user_id AND device_id = remove_device.device_id;
    DELETE FROM chat.push_outbox
     WHERE user_id = remove_device.user_id AND device_id = remove_device.device_id;
END
$$;

REVOKE ALL ON FUNCTION chat.require_member(bigint, bigint, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.check_limit(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.require_device(bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.upsert_user(bigint, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.register_device(bigint, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.remove_device(bigint, integer) FROM PUBLIC;

COMMENT ON FUNCTION chat.require_member(bigint, bigint, boolean) IS
    'internal: the active membership row of (user, conversation); P0002 unknown ids, 42501 not a member';
COMMENT ON FUNCTION chat.check_limit(integer) IS
    'internal: 22023 unless the page limit is between 1 and 1000';
COMMENT ON FUNCTION chat.require_device(bigint, integer) IS
    'internal: P0002 unless the device exists';
COMMENT ON FUNCTION chat.upsert_user(bigint, text, text) IS
    'creates or updates a user (id chosen by the application); handles are unique regardless of case';
COMMENT ON FUNCTION chat.register_device(bigint, text, text) IS
    'adds a device to a user and returns its device_id (1, 2, ... never reused)';
COMMENT ON FUNCTION chat.remove_device(bigint, integer) IS
    'removes a device with its sync cursors, sessions and pending pushes; its open connections are closed (4003)';
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
                       'body', CASE WHEN x.kind = 'e2e' THEN NULL ELSE left(x.body, 200) END,
                       'created_at', x.created_at, 'deleted', x.deleted_at IS NOT NULL)
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
                                  sender_device integer DEFAULT NULL)
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
                                    target bigint DEFAULT NULL, created_at timestamptz DEFAULT NULL)
RETURNS bigint
LANGUAGE c AS 'MODULE_PATHNAME', 'chat_append_message';

-- The message seq of member m's conversation that m may change (edit or
-- delete), locked FOR NO KEY UPDATE: P0002 when it does not exist or
-- predates m's membership, 42501 for a change-log entry (verb names the
-- change in the hint).  The actor's rights over it are the caller's rule.
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
       SET body = NULL, mentions = NULL, attachments = NULL, deleted_at = changed_at
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
               CASE WHEN x.target <= m.joined_seq THEN NULL ELSE x.body END,
               x.client_msg_id, x.reply_to, x.created_at, x.edited_at, x.deleted_at, x.target
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
           CASE WHEN x.target <= m.joined_seq THEN NULL ELSE x.body END,
           x.client_msg_id, x.reply_to, x.created_at, x.edited_at, x.deleted_at, x.target
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
           CASE WHEN x.target <= m.joined_seq THEN NULL ELSE x.body END,
           x.client_msg_id, x.reply_to, x.created_at, x.edited_at, x.deleted_at, x.target
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
               CASE WHEN x.target <= joined THEN NULL ELSE x.body END,
               x.client_msg_id, x.reply_to, x.created_at, x.edited_at, x.deleted_at, x.target
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

REVOKE ALL ON FUNCTION chat.send_message(bigint, bigint, text, text, bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.check_body(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.append_message(bigint, bigint, text, text, bigint, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.changeable_message(chat.members, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.edit_message(bigint, bigint, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.delete_message(bigint, bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.history(bigint, bigint, bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.messages_after(bigint, bigint, bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.get_message(bigint, bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.sync(bigint, integer, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.ack(bigint, integer, bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.mark_read(bigint, bigint, bigint) FROM PUBLIC;

COMMENT ON FUNCTION chat.send_message(bigint, bigint, text, text, bigint, integer) IS
    'sends a text message: gapless seq, idempotent on (sender, conversation, client_msg_id), fans out';
COMMENT ON FUNCTION chat.check_body(text) IS
    'internal: 22023 for a NULL or empty body, 22001 over chat.max_body_bytes';
COMMENT ON FUNCTION chat.append_message(bigint, bigint, text, text, bigint, timestamptz) IS
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
-- about: at most 500 characters; avatar: an attachment id.
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
                    msg.edited_at, msg.deleted_at, msg.target)::chat.message_view);
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

-- Changes a group's title, description and only-admins-send switch (owners
-- and admins only); NULL keeps a field, '' clears the title or the
-- description.  Posts an 'updated' system message naming what changed;
-- nothing changed, nothing posted.
CREATE FUNCTION chat.update_group(actor bigint, conversation_id bigint, title text DEFAULT NULL,
                                  description text DEFAULT NULL, only_admins_send boolean DEFAULT NULL)
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
    IF changes = '{}' THEN
        RETURN;
    END IF;
    UPDATE chat.conversations c
       SET title = CASE WHEN changes ? 'title' THEN changes ->> 'title' ELSE c.title END,
           settings = jsonb_strip_nulls(c.settings || (changes - 'title'))
     WHERE c.id = conv;
    PERFORM chat.post_system_message(conv, actor,
        jsonb_build_object('action', 'updated', 'by', actor) || changes);
END
$$;

REVOKE ALL ON FUNCTION chat.members(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.set_role(bigint, bigint, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.leave(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.update_group(bigint, bigint, text, text, boolean) FROM PUBLIC;

COMMENT ON FUNCTION chat.members(bigint, bigint) IS
    'the active members of a conversation with role and joined_at; members only';
COMMENT ON FUNCTION chat.set_role(bigint, bigint, bigint, text) IS
    'owner/admin sets a member''s role to admin or member (never an owner''s); posts a system message';
COMMENT ON FUNCTION chat.leave(bigint, bigint) IS
    'the actor leaves a group; the last owner hands ownership to the longest-standing admin, else member';
COMMENT ON FUNCTION chat.update_group(bigint, bigint, text, text, boolean) IS
    'owner/admin changes title, description, only_admins_send (NULL keeps); posts a system message';
-- Realtime layer: gateway nodes, sessions, presence, typing, tokens
-- (docs/realtime.md).  Fanout itself is C (fanout.c).
--
-- A session counts as online while its node's heartbeat is younger than
-- chat.node_timeout: chat.live_nodes is that rule, written once, and
-- chat.live_sessions (the sessions of live nodes) is what every query, the
-- C fanout included, reads.

-- When a node was found silent beyond chat.node_timeout and its users were
-- announced offline (NULL: alive, or not yet noticed).
ALTER TABLE chat.nodes ADD COLUMN gone_at timestamptz;
COMMENT ON COLUMN chat.nodes.gone_at IS 'when the node was found silent and its users announced offline';

CREATE VIEW chat.live_nodes AS
SELECT n.node
  FROM chat.nodes n
 WHERE n.heartbeat_at > now() - current_setting('chat.node_timeout')::interval;

CREATE VIEW chat.live_sessions AS
SELECT s.node, s.user_id, s.device_id, s.connected_at
  FROM chat.sessions s
  JOIN chat.live_nodes n ON n.node = s.node;

-- Raises 22023 unless node is a valid node name.
CREATE FUNCTION chat.check_node(node text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF node IS NULL OR node !~ '^[a-z0-9_]{1,40}$' THEN
        RAISE EXCEPTION 'invalid node name "%"', node
            USING ERRCODE = '22023', HINT = 'Node names match [a-z0-9_]{1,40}.';
    END IF;
END
$$;

-- The users who get presence events of user_id, by its privacy setting:
-- 'everyone': its conversation peers (group members and direct peers);
-- 'contacts': its contacts only (chat.contacts: a direct conversation in
-- which both have sent a message); 'nobody': no one.  Users in a block
-- with it (either way, chat.blocks) are left out.
CREATE FUNCTION chat.presence_audience(user_id bigint)
RETURNS bigint[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT ARRAY(
        SELECT x FROM unnest(CASE u.presence_privacy
           WHEN 'everyone' THEN
               (SELECT coalesce(array_agg(DISTINCT p.user_id), '{}')
                  FROM chat.members m
                  JOIN chat.members p ON p.conversation_id = m.conversation_id
                                     AND p.left_at IS NULL AND p.user_id <> m.user_id
                 WHERE m.user_id = u.id AND m.left_at IS NULL)
           WHEN 'contacts' THEN ARRAY(SELECT chat.contacts(u.id))
           ELSE '{}'::bigint[] END) AS x
         WHERE NOT EXISTS (SELECT FROM chat.blocks k
                            WHERE (k.blocker = u.id AND k.blocked = x)
                               OR (k.blocker = x AND k.blocked = u.id)))
      FROM chat.users u
     WHERE u.id = presence_audience.user_id
$$;

-- Sends a presence event of user_id to its audience.
CREATE FUNCTION chat.fanout_presence(user_id bigint, online boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    audience bigint[] := chat.presence_audience(user_id);
    seen timestamptz;
BEGIN
    IF cardinality(audience) = 0 THEN
        RETURN;
    END IF;
    SELECT u.last_seen INTO seen FROM chat.users u WHERE u.id = fanout_presence.user_id;
    PERFORM chat.fanout_event(NULL, audience,
        jsonb_build_object('type', 'presence', 'user', user_id, 'online', online,
                           'last_seen', chat.json_timestamp(seen)));
END
$$;

-- Gateway start: registers the node and forgets its sessions; users who
-- were online only there go offline.  Refused (55000) while
-- chat.token_secret is unset: notifications are signed with it and a
-- gateway drops unsigned ones, so such a node would silently get nothing.
CREATE FUNCTION chat.node_reset(node text)
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
        PERFORM chat.fanout_presence(gone, false);
    END LOOP;
END
$$;

-- Gateway heartbeat: keeps the node's sessions online.  It also notices
-- other nodes gone silent beyond chat.node_timeout: their users with no
-- other live session get last_seen and a presence online:false event (the
-- sessions stay, so a node that was only slow comes back whole); a node
-- heard from again announces its users online.
CREATE FUNCTION chat.node_heartbeat(node text)
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
END
$$;

-- A device came online on node: session row; the user's first device
-- online sends presence to its peers.
CREATE FUNCTION chat.connect(node text, user_id bigint, device_id integer)
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
        PERFORM chat.fanout_presence(user_id, true);
    END IF;
END
$$;

-- A device went offline; the user's last device offline sets last_seen
-- and sends presence.
CREATE FUNCTION chat.disconnect(node text, user_id bigint, device_id integer)
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
        PERFORM chat.fanout_presence(user_id, false);
    END IF;
END
$$;

-- Online state and last_seen of user_ids as viewer may see them: a user
-- with privacy 'nobody' (or 'contacts', to a viewer who is not one of its
-- contacts), or in a block with the viewer either way, shows offline with
-- no last_seen.  Unknown users are left out.
CREATE FUNCTION chat.presence(viewer bigint, user_ids bigint[])
RETURNS TABLE (user_id bigint, online boolean, last_seen timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT u.id,
           v.visible AND EXISTS (SELECT FROM chat.live_sessions l WHERE l.user_id = u.id),
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

-- Ephemeral typing event to the other online members (C, rate limited).
CREATE FUNCTION chat.typing(user_id bigint, conversation_id bigint, typing boolean DEFAULT true)
RETURNS void LANGUAGE c SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS 'MODULE_PATHNAME', 'chat_typing';

-- HS256 JWT for a client (C, token.c).
CREATE FUNCTION chat.issue_token(user_id bigint, device_id integer, ttl interval DEFAULT '1 hour')
RETURNS text LANGUAGE c STRICT VOLATILE AS 'MODULE_PATHNAME', 'chat_issue_token';

-- PostgreSQL's condition name of an SQLSTATE (C, errors.c).
CREATE FUNCTION chat.condition_name(sqlstate text)
RETURNS text LANGUAGE c IMMUTABLE STRICT AS 'MODULE_PATHNAME', 'chat_condition_name';

-- The notifier's state for monitoring (C, notifier.c): ring size, bytes
-- queued and worker pid for this database, and the transactions (of any
-- database) that had to NOTIFY directly since the server started.
CREATE FUNCTION chat.notifier_stats(OUT preloaded boolean, OUT ring_bytes bigint,
                                    OUT queued_bytes bigint, OUT worker_pid integer,
                                    OUT fallbacks bigint)
RETURNS record LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'chat_notifier_stats';

REVOKE ALL ON FUNCTION chat.check_node(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.notifier_stats() FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.presence_audience(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.fanout_presence(bigint, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.node_reset(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.node_heartbeat(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.connect(text, bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.disconnect(text, bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.presence(bigint, bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.typing(bigint, bigint, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.issue_token(bigint, integer, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.condition_name(text) FROM PUBLIC;
REVOKE ALL ON chat.live_nodes FROM PUBLIC;
REVOKE ALL ON chat.live_sessions FROM PUBLIC;

COMMENT ON VIEW chat.live_nodes IS 'gateway nodes heard from within chat.node_timeout (the one liveness rule)';
COMMENT ON VIEW chat.live_sessions IS 'sessions of nodes heard from within chat.node_timeout (online)';
COMMENT ON FUNCTION chat.notifier_stats() IS
    'notifier ring size, bytes queued and worker of this database; direct-NOTIFY fallbacks since start (all databases)';
COMMENT ON FUNCTION chat.check_node(text) IS 'raises 22023 unless the node name matches [a-z0-9_]{1,40}';
COMMENT ON FUNCTION chat.presence_audience(bigint) IS 'users who receive presence events of a user';
COMMENT ON FUNCTION chat.fanout_presence(bigint, boolean) IS 'internal: presence event of a user to its audience';
COMMENT ON FUNCTION chat.node_reset(text) IS 'gateway start: registers the node and forgets its sessions';
COMMENT ON FUNCTION chat.node_heartbeat(text) IS 'gateway heartbeat; announces nodes silent beyond chat.node_timeout offline';
COMMENT ON FUNCTION chat.connect(text, bigint, integer) IS 'a device is online on a node; first device sends presence';
COMMENT ON FUNCTION chat.disconnect(text, bigint, integer) IS 'a device went offline; last device sets last_seen, sends presence';
COMMENT ON FUNCTION chat.presence(bigint, bigint[]) IS 'online state and last_seen of users as the viewer may see them';
COMMENT ON FUNCTION chat.typing(bigint, bigint, boolean) IS 'ephemeral typing event to the other online members, rate limited';
COMMENT ON FUNCTION chat.issue_token(bigint, integer, interval) IS 'HS256 JWT (sub, dev, iat, exp) signed with chat.token_secret';
COMMENT ON FUNCTION chat.condition_name(text) IS 'condition name of an SQLSTATE, e.g. insufficient_privilege';
-- Push outbox (push.c fills it): rows for members with no online device.
-- A pusher claims due rows, delivers them, then completes or fails each.
-- A claim leases its rows for 30 seconds (chat.renew_push extends the lease
-- of rows still in flight), after which a crashed pusher's rows come due
-- again: another or a restarted pusher delivers them within a minute.
-- Queuing rows notifies channel chat_push (push.c) so pushers wake at once.

-- Hands out up to batch due rows, oldest first, skipping rows another
-- pusher holds; counts the attempt and leases the rows for 30 seconds.
CREATE FUNCTION chat.claim_push(batch integer DEFAULT 100)
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
                     ORDER BY q.next_attempt_at, q.id
                     LIMIT batch
                     FOR UPDATE SKIP LOCKED)
    RETURNING p.*;
END
$$;

-- Delivered: removes the rows; returns how many there were.
CREATE FUNCTION chat.complete_push(ids bigint[])
RETURNS integer
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    WITH done AS (DELETE FROM chat.push_outbox WHERE id = ANY (ids) RETURNING 1)
    SELECT count(*)::integer FROM done
$$;

-- Delivery failed and the push service said when to come back (HTTP
-- Retry-After): as fail_push(id, error), but the retry comes after
-- retry_after (1 second to 1 hour) instead of the backoff.
CREATE FUNCTION chat.fail_push(id bigint, error text, retry_after interval)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    tries integer;
    retry boolean;
BEGIN
    IF retry_after IS NOT NULL AND (retry_after < interval '1 second' OR retry_after > interval '1 hour') THEN
        RAISE EXCEPTION 'invalid retry_after %', retry_after
            USING ERRCODE = '22023', HINT = 'Pass between 1 second and 1 hour, or NULL for the backoff.';
    END IF;
    SELECT p.attempts INTO tries FROM chat.push_outbox p WHERE p.id = fail_push.id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'push % does not exist', fail_push.id USING ERRCODE = 'P0002';
    END IF;
    retry := tries < current_setting('chat.push_max_attempts')::integer;
    UPDATE chat.push_outbox p
       SET last_error = left(error, 1000),
           next_attempt_at = CASE WHEN NOT retry THEN 'infinity'
                                  WHEN retry_after IS NOT NULL THEN now() + retry_after
                                  ELSE now() + (0.5 + random() / 2)
                                                * least(interval '30 seconds' * power(2, greatest(tries - 1, 0)),
                                                        interval '1 hour') END
     WHERE p.id = fail_push.id;
    RETURN retry;
END
$$;

-- Delivery failed: records the error and retries with exponential backoff
-- and jitter (30 s, 1 min, 2 min, ... capped at 1 hour, each shortened by a
-- random 0 to 50%, so rows that failed together do not retry together:
-- "equal jitter", which keeps half of the backoff as a floor).  After chat.push_max_attempts
-- attempts the row is kept as given up (next_attempt_at infinity) for
-- inspection.  Returns true when it will be retried.
CREATE FUNCTION chat.fail_push(id bigint, error text)
RETURNS boolean
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT chat.fail_push(id, error, NULL)
$$;

REVOKE ALL ON FUNCTION chat.claim_push(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.complete_push(bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.fail_push(bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.fail_push(bigint, text, interval) FROM PUBLIC;

COMMENT ON FUNCTION chat.claim_push(integer) IS
    'hands out due push_outbox rows (FOR UPDATE SKIP LOCKED), leased for 30 seconds';
COMMENT ON FUNCTION chat.complete_push(bigint[]) IS 'removes delivered push_outbox rows';
COMMENT ON FUNCTION chat.fail_push(bigint, text) IS
    'records a failed push; retries with backoff until chat.push_max_attempts, then gives up';
COMMENT ON FUNCTION chat.fail_push(bigint, text, interval) IS
    'records a failed push; retries after retry_after (the push service''s Retry-After) or with backoff, until chat.push_max_attempts';

-- The bytes of a base64url string (RFC 4648 section 5, padding optional);
-- NULL when it is not one.
CREATE FUNCTION chat.base64url_bytes(s text)
RETURNS bytea
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN s ~ '^[A-Za-z0-9_-]*={0,2}$' AND length(rtrim(s, '=')) % 4 <> 1
                THEN decode(translate(rtrim(s, '='), '-_', '+/')
                            || repeat('=', (4 - length(rtrim(s, '=')) % 4) % 4), 'base64')
           END
$$;

-- Registers the push address of a device, replacing the one it had:
-- platform webpush with subscription {"endpoint","keys":{"p256dh","auth"}}
-- (endpoint https, or http on the loopback address for tests; p256dh an
-- uncompressed P-256 point, auth 16 bytes, both base64url), or fcm / apns
-- with token.  A token or endpoint names one app install, so another device
-- holding it loses it (its pending pushes are dropped when claimed).
CREATE FUNCTION chat.register_push(user_id bigint, device_id integer, platform text, token text,
                                   subscription jsonb DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    endpoint text;
    p256dh bytea;
    auth bytea;
    address text;
    stored jsonb;
BEGIN
    PERFORM chat.require_device(register_push.user_id, register_push.device_id);
    IF register_push.platform IS NULL OR register_push.platform NOT IN ('webpush', 'fcm', 'apns') THEN
        RAISE EXCEPTION 'invalid push platform "%"', coalesce(register_push.platform, 'NULL')
            USING ERRCODE = '22023', HINT = 'Use webpush, fcm or apns.';
    END IF;
    IF register_push.platform = 'webpush' THEN
        IF register_push.token IS NOT NULL THEN
            RAISE EXCEPTION 'platform webpush takes a subscription, not a token'
                USING ERRCODE = '22023', HINT = 'Pass the PushSubscription as subscription.';
        END IF;
        IF jsonb_typeof(register_push.subscription) IS DISTINCT FROM 'object'
           OR jsonb_typeof(register_push.subscription -> 'endpoint') IS DISTINCT FROM 'string'
           OR jsonb_typeof(register_push.subscription -> 'keys') IS DISTINCT FROM 'object'
           OR jsonb_typeof(register_push.subscription #> '{keys,p256dh}') IS DISTINCT FROM 'string'
           OR jsonb_typeof(register_push.subscription #> '{keys,auth}') IS DISTINCT FROM 'string' THEN
            RAISE EXCEPTION 'invalid webpush subscription %', coalesce(register_push.subscription::text, 'NULL')
                USING ERRCODE = '22023',
                      HINT = 'A subscription is {"endpoint":"https://...","keys":{"p256dh":"...","auth":"..."}}.';
        END IF;
        endpoint := register_push.subscription ->> 'endpoint';
        IF length(endpoint) > 2048
           OR endpoint !~ '^(https://[A-Za-z0-9.-]+|http://(127\.0\.0\.1|\[::1\]))(:[0-9]{1,5})?(/[!-~]*)?$' THEN
            RAISE EXCEPTION 'invalid webpush endpoint "%"', left(endpoint, 200)
                USING ERRCODE = '22023', HINT = 'The endpoint must be an https:// URL.';
        END IF;
        p256dh := chat.base64url_bytes(register_push.subscription #>> '{keys,p256dh}');
        IF p256dh IS NULL OR length(p256dh) <> 65 OR get_byte(p256dh, 0) <> 4 THEN
            RAISE EXCEPTION 'invalid webpush key p256dh "%"', left(register_push.subscription #>> '{keys,p256dh}', 200)
                USING ERRCODE = '22023', HINT = 'p256dh is an uncompressed P-256 point (65 bytes), base64url.';
        END IF;
        auth := chat.base64url_bytes(register_push.subscription #>> '{keys,auth}');
        IF auth IS NULL OR length(auth) <> 16 THEN
            RAISE EXCEPTION 'invalid webpush key auth "%"', left(register_push.subscription #>> '{keys,auth}', 200)
                USING ERRCODE = '22023', HINT = 'auth is a 16-byte secret, base64url.';
        END IF;
        address := endpoint;
        stored := jsonb_build_object('endpoint', endpoint, 'keys', jsonb_build_object(
                      'p256dh', register_push.subscription #>> '{keys,p256dh}',
                      'auth', register_push.subscription #>> '{keys,auth}'));
    ELSE
        IF register_push.subscription IS NOT NULL THEN
            RAISE EXCEPTION 'platform % takes a token, not a subscription', register_push.platform
                USING ERRCODE = '22023';
        END IF;
        IF register_push.token IS NULL OR length(register_push.token) > 4096
           OR register_push.token !~ '^[!-~]+$' THEN
            RAISE EXCEPTION 'invalid % push token "%"', register_push.platform,
                            left(coalesce(register_push.token, 'NULL'), 200)
                USING ERRCODE = '22023', HINT = 'A token is 1 to 4096 printable ASCII characters.';
        END IF;
        address := register_push.token;
    END IF;
    UPDATE chat.devices
       SET push_token = NULL, push_platform = NULL, push_subscription = NULL
     WHERE push_token = address
       AND (user_id, device_id) <> (register_push.user_id, register_push.device_id);
    UPDATE chat.devices
       SET push_token = address, push_platform = register_push.platform, push_subscription = stored
     WHERE user_id = register_push.user_id AND device_id = register_push.device_id;
END
$$;

-- Removes the push registration of a device and its pending pushes.
CREATE FUNCTION chat.unregister_push(user_id bigint, device_id integer)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    PERFORM chat.require_device(unregister_push.user_id, unregister_push.device_id);
    UPDATE chat.devices
       SET push_token = NULL, push_platform = NULL, push_subscription = NULL
     WHERE user_id = unregister_push.user_id AND device_id = unregister_push.device_id;
    DELETE FROM chat.push_outbox
     WHERE user_id = unregister_push.user_id AND device_id = unregister_push.device_id;
END
$$;

-- What a pusher delivers: claims like chat.claim_push and joins each row to
-- the device's current registration (rows of devices that no longer have
-- one, or only a token from chat.register_device without a platform, are
-- removed, not returned).  payload is the notification of PROTOCOL "Push
-- registration": {"type":"message","conversation","seq","sender","unread"}
-- with unread the user's unread messages over all conversations (the badge)
-- at claim time, plus "body" (200 characters) for a text message not
-- deleted; never for e2e.  topic names the conversation, so a newer
-- notification replaces an older one.
CREATE FUNCTION chat.claim_push_deliveries(batch integer DEFAULT 100)
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

-- Extends the lease of claimed rows still in flight by 30 seconds; rows
-- that are gone, given up or already due again are left alone (a due row
-- may be another pusher's by now).  Returns how many were extended.
CREATE FUNCTION chat.renew_push(ids bigint[])
RETURNS integer
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    WITH renewed AS (
        UPDATE chat.push_outbox SET next_attempt_at = now() + interval '30 seconds'
         WHERE id = ANY (ids) AND next_attempt_at > now() AND next_attempt_at <> 'infinity'
        RETURNING 1)
    SELECT count(*)::integer FROM renewed
$$;

-- The push service said the registration is gone (404/410): removes the row
-- and, when the device still has that token, its registration and pending
-- pushes.  Returns whether the registration was removed.
CREATE FUNCTION chat.forget_push(id bigint, token text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o chat.push_outbox;
BEGIN
    DELETE FROM chat.push_outbox p WHERE p.id = forget_push.id RETURNING * INTO o;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'push % does not exist', forget_push.id USING ERRCODE = 'P0002';
    END IF;
    UPDATE chat.devices d
       SET push_token = NULL, push_platform = NULL, push_subscription = NULL
     WHERE d.user_id = o.user_id AND d.device_id = o.device_id AND d.push_token = forget_push.token;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    DELETE FROM chat.push_outbox p WHERE p.user_id = o.user_id AND p.device_id = o.device_id;
    RETURN true;
END
$$;

-- When the next row comes due (NULL: none pending), so that an idle pusher
-- sleeps exactly until then.
CREATE FUNCTION chat.next_push_due()
RETURNS timestamptz
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT min(next_attempt_at) FROM chat.push_outbox WHERE next_attempt_at < 'infinity'
$$;

-- The outbox at a glance, for a pusher's /metrics: rows due now, the age in
-- seconds of the oldest due row (0 when none), rows pending in all (due,
-- leased or waiting for a retry) and rows given up.
CREATE FUNCTION chat.push_queue_stats(OUT due bigint, OUT oldest_due_age double precision,
                                      OUT pending bigint, OUT given_up bigint)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT count(*) FILTER (WHERE next_attempt_at <= now()),
           coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE next_attempt_at <= now())), 0)::double precision,
           count(*) FILTER (WHERE next_attempt_at < 'infinity'),
           count(*) FILTER (WHERE next_attempt_at = 'infinity')
      FROM chat.push_outbox
$$;

REVOKE ALL ON FUNCTION chat.base64url_bytes(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.register_push(bigint, integer, text, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.unregister_push(bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.claim_push_deliveries(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.renew_push(bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.forget_push(bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.next_push_due() FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.push_queue_stats() FROM PUBLIC;

COMMENT ON FUNCTION chat.base64url_bytes(text) IS
    'internal: the bytes of a base64url string (padding optional), NULL when it is not one';
COMMENT ON FUNCTION chat.register_push(bigint, integer, text, text, jsonb) IS
    'sets the push registration of a device: webpush with a subscription, fcm or apns with a token; 22023 on a bad shape';
COMMENT ON FUNCTION chat.unregister_push(bigint, integer) IS
    'removes the push registration of a device and its pending pushes';
COMMENT ON FUNCTION chat.claim_push_deliveries(integer) IS
    'claims due pushes (as claim_push) with the device''s registration, a topic per conversation and the notification payload';
COMMENT ON FUNCTION chat.renew_push(bigint[]) IS
    'extends by 30 seconds the lease of claimed pushes still in flight';
COMMENT ON FUNCTION chat.forget_push(bigint, text) IS
    'a push endpoint answered gone (404/410): removes the row and the device''s registration if it is still token';
COMMENT ON FUNCTION chat.next_push_due() IS
    'when the next push_outbox row comes due (NULL: none), for a pusher''s retry timer';
COMMENT ON FUNCTION chat.push_queue_stats() IS
    'push_outbox rows due now, age of the oldest due row (seconds), pending and given-up rows, for /metrics';
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
