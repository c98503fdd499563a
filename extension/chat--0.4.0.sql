-- chat extension 0.4.0: schema.  The install script is assembled from the
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
-- A new conversation id.  Partitioned (chat.partitions > 1, PL/Proxy): the
-- sequence value times chat.partitions plus chat.partition, so the low bits
-- name the partition that owns the conversation and the id alone routes.
-- Not partitioned: the plain sequence value, as before.
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
-- A conversation: kind direct (exactly two members, one per pair) or group.
CREATE TABLE chat.conversations (
    id            bigint PRIMARY KEY DEFAULT chat.new_conversation_id(),
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
REVOKE ALL ON FUNCTION chat.new_conversation_id() FROM PUBLIC;
COMMENT ON FUNCTION chat.new_conversation_id() IS 'a new conversation id; partitioned: sequence value * chat.partitions + chat.partition (the low bits route)';
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
    target          bigint,
    attachments     jsonb     -- media (issue 13): the attachment objects, NULL when none
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
                                  sender_device integer DEFAULT NULL, mentions bigint[] DEFAULT NULL)
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
               CASE WHEN x.target <= m.joined_seq THEN NULL ELSE x.body END,
               x.client_msg_id, x.reply_to, x.created_at, x.edited_at, x.deleted_at, x.target,
               x.attachments, x.mentions, CASE WHEN x.target <= m.joined_seq THEN NULL ELSE x.reactions END
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
           x.client_msg_id, x.reply_to, x.created_at, x.edited_at, x.deleted_at, x.target,
           x.attachments, x.mentions, CASE WHEN x.target <= m.joined_seq THEN NULL ELSE x.reactions END
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
           x.client_msg_id, x.reply_to, x.created_at, x.edited_at, x.deleted_at, x.target,
           x.attachments, x.mentions, CASE WHEN x.target <= m.joined_seq THEN NULL ELSE x.reactions END
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
               x.client_msg_id, x.reply_to, x.created_at, x.edited_at, x.deleted_at, x.target,
               x.attachments, x.mentions, CASE WHEN x.target <= joined THEN NULL ELSE x.reactions END
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

REVOKE ALL ON FUNCTION chat.send_message(bigint, bigint, text, text, bigint, integer, bigint[]) FROM PUBLIC;
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

COMMENT ON FUNCTION chat.send_message(bigint, bigint, text, text, bigint, integer, bigint[]) IS
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
        changes := changes || jsonb_build_object('avatar', nullif(avatar, ''));
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
REVOKE ALL ON FUNCTION chat.update_group(bigint, bigint, text, text, boolean, text) FROM PUBLIC;

COMMENT ON FUNCTION chat.members(bigint, bigint) IS
    'the active members of a conversation with role and joined_at; members only';
COMMENT ON FUNCTION chat.set_role(bigint, bigint, bigint, text) IS
    'owner/admin sets a member''s role to admin or member (never an owner''s); posts a system message';
COMMENT ON FUNCTION chat.leave(bigint, bigint) IS
    'the actor leaves a group; the last owner hands ownership to the longest-standing admin, else member';
COMMENT ON FUNCTION chat.update_group(bigint, bigint, text, text, boolean, text) IS
    'owner/admin changes title, description, only_admins_send, avatar (NULL keeps); posts a system message';
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
-- Presence debounce (issue 11): a user whose last device leaves is
-- announced offline only once chat.presence_grace has passed without it
-- coming back, so a quick reconnect (a network change, a gateway restart)
-- sends neither offline nor online.  chat.disconnect and chat.node_reset
-- note the user here (chat.presence_offline); chat.connect removes the
-- note and stays silent; chat.node_heartbeat (every gateway, every few
-- seconds) announces the notes whose grace ran out (chat.presence_sweep).
-- An offline announcement thus comes between the grace and the grace plus
-- one --node-heartbeat interval after the user left.  With
-- chat.presence_grace = 0 everything is announced at once, as before.

-- Users whose last device left and whose offline is not announced yet.
-- Unlogged like chat.sessions: it is state of the live system, not data.
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
-- Full-text search over the messages a user can see (docs/sql-api.md
-- "Search").
--
-- The text search configuration comes from the setting chat.search_config
-- (default 'simple': no stemming, no stop words, so every language works).
-- The GIN index below is on the 'simple' configuration; a deployment that
-- sets another one creates the same index on it (docs/sql-api.md), since
-- an expression index serves only the configuration it names.  Only text
-- messages that are not deleted are indexed: e2e bodies are ciphertext,
-- system messages and change-log entries are not what users search.

CREATE INDEX messages_search_idx ON chat.messages
    USING gin (to_tsvector('simple'::regconfig, body))
    WHERE kind = 'text' AND deleted_at IS NULL;

-- Up to lim messages matching query (web search syntax: words, "phrases",
-- -not, or) that the actor can see: kind text, not deleted, after the
-- member's joined_seq and, for a conversation it left, sent before it
-- left; only in conversation_id when given.  Best match first (ts_rank),
-- then newest.
--
-- Two plans, chosen by how many messages the actor can see at most (the
-- seqs after joined_seq of each membership, read from a few rows):
--  * up to chat.search_scan_limit (most users): those messages are read
--    conversation by conversation (primary key ranges) and matched one by
--    one, their tsvector made once for the match and the rank.  The cost
--    is bounded by what the user sees, whatever the word.
--  * more: the GIN index finds the matches and the visibility check
--    filters them.  This plan alone was the tail for everyone: for a
--    common word the planner read the word's whole posting list once per
--    conversation of the user (a BitmapAnd of the GIN index and the
--    primary key range), up to a second over 1,000,000 messages, where
--    reading the user's few hundred messages takes milliseconds.
CREATE FUNCTION chat.search(actor bigint, query text, conversation_id bigint DEFAULT NULL,
                            lim integer DEFAULT 20)
RETURNS SETOF chat.message_view
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- A search is a short query: compiling its plan, should an estimate pass
-- jit_above_cost, would cost more than it could save.
SET jit = off AS $$
DECLARE
    cfg regconfig;
    visible bigint;
BEGIN
    PERFORM chat.check_limit(lim);
    IF actor IS NULL THEN
        RAISE EXCEPTION 'actor must not be null' USING ERRCODE = '22023';
    END IF;
    IF query IS NULL OR btrim(query) = '' THEN
        RAISE EXCEPTION 'search query must not be empty' USING ERRCODE = '22023';
    END IF;
    IF length(query) > 256 THEN
        RAISE EXCEPTION 'search query of % characters is longer than 256', length(query)
            USING ERRCODE = '22001';
    END IF;
    BEGIN
        cfg := coalesce(nullif(current_setting('chat.search_config', true), ''), 'simple')::regconfig;
    EXCEPTION WHEN undefined_object THEN
        RAISE EXCEPTION 'chat.search_config "%" is not a text search configuration',
            current_setting('chat.search_config', true)
            USING ERRCODE = '22023', HINT = 'See \dF in psql; the default is simple.';
    END;
    IF search.conversation_id IS NOT NULL THEN
        PERFORM chat.require_member(actor, search.conversation_id);
    END IF;
    SELECT coalesce(sum(greatest(c.last_seq - m.joined_seq, 0)), 0) INTO visible
      FROM chat.members m
      JOIN chat.conversations c ON c.id = m.conversation_id
     WHERE m.user_id = actor
       AND (search.conversation_id IS NULL OR m.conversation_id = search.conversation_id);
    IF visible <= coalesce(nullif(current_setting('chat.search_scan_limit', true), '')::bigint, 5000) THEN
        -- OFFSET 0 keeps the subquery apart, so that the match runs on the
        -- tsvector made there rather than on the GIN index.
        RETURN QUERY EXECUTE $q$
            SELECT x.conversation_id, x.seq, x.sender_id, x.sender_device, x.kind, x.body,
                   x.client_msg_id, x.reply_to, x.created_at, x.edited_at, x.deleted_at, x.target,
                   x.attachments, x.mentions, x.reactions
              FROM chat.members m
              CROSS JOIN LATERAL (
                    SELECT y.*, to_tsvector($5, y.body) AS v
                      FROM chat.messages y
                     WHERE y.conversation_id = m.conversation_id
                       AND y.seq > m.joined_seq
                       AND y.kind = 'text' AND y.deleted_at IS NULL
                       AND (m.left_at IS NULL OR y.created_at <= m.left_at)
                    OFFSET 0) x
              CROSS JOIN websearch_to_tsquery($5, $3) q
             WHERE m.user_id = $1
               AND ($2::bigint IS NULL OR m.conversation_id = $2)
               AND x.v @@ q
             ORDER BY ts_rank(x.v, q) DESC, x.created_at DESC, x.conversation_id, x.seq
             LIMIT $4 $q$
        USING actor, search.conversation_id, query, lim, cfg;
        RETURN;
    END IF;
    -- The configuration as a literal, so that the planner matches the
    -- expression of the index made for it.
    RETURN QUERY EXECUTE format($q$
        SELECT x.conversation_id, x.seq, x.sender_id, x.sender_device, x.kind, x.body,
               x.client_msg_id, x.reply_to, x.created_at, x.edited_at, x.deleted_at, x.target,
               x.attachments, x.mentions, x.reactions
          FROM chat.members m
          JOIN chat.messages x ON x.conversation_id = m.conversation_id
         WHERE m.user_id = $1
           AND ($2::bigint IS NULL OR m.conversation_id = $2)
           AND to_tsvector(%1$L::regconfig, x.body) @@ websearch_to_tsquery(%1$L::regconfig, $3)
           AND x.kind = 'text' AND x.deleted_at IS NULL
           AND x.seq > m.joined_seq
           AND (m.left_at IS NULL OR x.created_at <= m.left_at)
         ORDER BY ts_rank(to_tsvector(%1$L::regconfig, x.body),
                          websearch_to_tsquery(%1$L::regconfig, $3)) DESC,
                  x.created_at DESC, x.conversation_id, x.seq
         LIMIT $4 $q$, cfg::text)
    USING actor, search.conversation_id, query, lim;
END
$$;

REVOKE ALL ON FUNCTION chat.search(bigint, text, bigint, integer) FROM PUBLIC;
COMMENT ON FUNCTION chat.search(bigint, text, bigint, integer) IS
    'full-text search (chat.search_config) over the text messages the actor can see, best match first';
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
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- plpgsql, not sql: a SQL function is planned again on every call
    -- (about 1.5 ms here), and chat.connect calls this for every client
    -- of a connection storm; plpgsql keeps the plan for the session.
    RETURN (
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
     WHERE u.id = presence_audience.user_id);
END
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
    -- offline announcements whose grace ran out (19_presence_debounce.sql)
    PERFORM chat.presence_sweep();
    -- Disappearing messages and retention (23_disappearing.sql).
    PERFORM chat.start_expiry_worker();
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
CREATE FUNCTION chat.presence(viewer bigint, user_ids bigint[])
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
COMMENT ON FUNCTION chat.connect(text, bigint, integer) IS 'a device is online on a node; first device sends presence unless back within chat.presence_grace';
COMMENT ON FUNCTION chat.disconnect(text, bigint, integer) IS 'a device went offline; last device sets last_seen, presence after chat.presence_grace';
COMMENT ON FUNCTION chat.presence(bigint, bigint[]) IS 'online state and last_seen of users as the viewer may see them';
COMMENT ON FUNCTION chat.typing(bigint, bigint, boolean) IS 'ephemeral typing event to the other online members, rate limited';
COMMENT ON FUNCTION chat.issue_token(bigint, integer, interval) IS 'HS256 JWT (sub, dev, iat, exp) signed with chat.token_secret';
COMMENT ON FUNCTION chat.condition_name(text) IS 'condition name of an SQLSTATE, e.g. insufficient_privilege';
-- Connection storms (issue 11): chat.connect for many sessions in one call.
-- A gateway that sees thousands of clients come back at once (after its own
-- restart, a network blip) registers the sessions of one event-loop turn
-- together: one round trip and one commit for all of them instead of one
-- each.  Each session runs chat.connect itself, in its own subtransaction,
-- so presence, the presence debounce and every error are exactly those of
-- chat.connect, session by session: a removed device fails alone (P0002 in
-- its row) and the others are registered.  Sessions are taken in
-- (user_id, device_id) order, the same lock order in every batch, so two
-- gateways registering overlapping users cannot deadlock each other.
CREATE FUNCTION chat.connect_many(node text, user_ids bigint[], device_ids integer[])
RETURNS TABLE (idx integer, code text, message text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer := coalesce(cardinality(user_ids), 0);
    i integer;
BEGIN
    PERFORM chat.check_node(node);
    IF user_ids IS NULL OR device_ids IS NULL OR cardinality(device_ids) <> n THEN
        RAISE EXCEPTION 'user_ids (% elements) and device_ids (% elements) must be arrays of the same length',
            cardinality(user_ids), cardinality(device_ids)
            USING ERRCODE = '22023', HINT = 'Pass one user_id and one device_id per session.';
    END IF;
    IF n > 10000 THEN
        RAISE EXCEPTION 'connect_many got % sessions, at most 10000 per call', n
            USING ERRCODE = '54000', HINT = 'Split the sessions over several calls.';
    END IF;
    FOR i IN
        SELECT u.i FROM unnest(user_ids, device_ids) WITH ORDINALITY AS u(user_id, device_id, i)
         ORDER BY u.user_id, u.device_id, u.i
    LOOP
        idx := i;
        BEGIN
            PERFORM chat.connect(node, user_ids[i], device_ids[i]);
            code := '00000';
            message := NULL;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT;
        END;
        RETURN NEXT;
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION chat.connect_many(text, bigint[], integer[]) FROM PUBLIC;
COMMENT ON FUNCTION chat.connect_many(text, bigint[], integer[]) IS
    'chat.connect for many sessions in one call: one row per session (1-based idx, code: SQLSTATE 00000 or its error)';
-- Push outbox (push.c fills it): rows for members with no online device.
-- A pusher claims due rows, delivers them, then completes or fails each.
-- A claim leases its rows for 30 seconds (chat.renew_push extends the lease
-- of rows still in flight), after which a crashed pusher's rows come due
-- again: another or a restarted pusher delivers them within a minute.
-- Queuing rows notifies channel chat_push (push.c) so pushers wake at once.

-- How long a queued row waits before it may be claimed: chat.push_coalesce_ms
-- (0 when the library has not defined it in this session).
CREATE FUNCTION chat.push_hold()
RETURNS interval
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(nullif(current_setting('chat.push_coalesce_ms', true), '')::integer, 0)
           * interval '1 millisecond'
$$;
REVOKE ALL ON FUNCTION chat.push_hold() FROM PUBLIC;
COMMENT ON FUNCTION chat.push_hold() IS
    'internal: chat.push_coalesce_ms as an interval, the wait before a queued push may be claimed';

-- Hands out up to batch due rows, oldest first, skipping rows another
-- pusher holds; counts the attempt and leases the rows for 30 seconds.
-- A row queued less than chat.push_coalesce_ms ago is not due yet (so that
-- chat.claim_push_notifications coalesces the messages of a burst).
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
                       AND q.created_at <= now() - chat.push_hold()
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
-- deleted whose recipient allows previews (users.push_previews); never for
-- e2e.  chat-pusher uses chat.claim_push_notifications (coalesced).  topic names the conversation, so a newer
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
    SELECT min(greatest(next_attempt_at, created_at + chat.push_hold()))
      FROM chat.push_outbox WHERE next_attempt_at < 'infinity'
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

-- Push previews and coalescing (issue 14).

-- A user's choice whether push notifications may carry a preview of the
-- message (the body, cut to 200 characters).  Appended: columns added to a
-- released table go last, as the upgrade adds them.
ALTER TABLE chat.users ADD COLUMN push_previews boolean NOT NULL DEFAULT true;
COMMENT ON COLUMN chat.users.push_previews IS
    'false: push notifications to the user carry no preview of the message body';

-- Sets whether the user's push notifications carry a message preview.
CREATE FUNCTION chat.set_push_previews(actor bigint, previews boolean)
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

-- What a pusher delivers, coalesced: claims like chat.claim_push, adds the
-- other due rows of the same device and conversation (skipping rows another
-- pusher holds), and returns one notification per device and conversation
-- with ids, every outbox row it stands for (complete, fail or renew them
-- all).  Rows of devices with no registration are removed, as in
-- chat.claim_push_deliveries.  payload is that of claim_push_deliveries for
-- the newest message (seq), plus "first_seq", the oldest seq, when the
-- notification stands for more than one message; "body" only for a text
-- message not deleted whose recipient allows previews (users.push_previews),
-- so never for e2e.
CREATE FUNCTION chat.claim_push_notifications(batch integer DEFAULT 100)
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
-- Disappearing messages, retention and broadcasts (docs/sql-api.md
-- "Disappearing messages, retention, broadcast").
--
-- A conversation's ttl (settings->'ttl', seconds) is read by the send path
-- (send.c) when it writes a text/e2e message: expires_at = created_at +
-- ttl.  chat.expire_messages tombstones the messages past expires_at in
-- batches (the expiry worker, expiry.c, runs it every chat.expire_interval
-- in a transaction of its own per batch), and chat.apply_retention removes
-- messages older than chat.retention altogether.  Neither takes the
-- conversation row lock that sends take, so sends go on meanwhile; rows
-- being changed by someone else are skipped until the next pass.
--
-- Devices learn the ttl from the system message of chat.set_disappearing
-- and drop their copies at created_at + ttl themselves; the server's
-- tombstone makes sure nothing is left to fetch after that.

-- Sets (ttl seconds, 5 .. 31536000) or clears (NULL) the disappearing-
-- messages timer of a conversation: any member of a direct conversation,
-- owners and admins of a group.  Posts a system message when it changes.
CREATE FUNCTION chat.set_disappearing(actor bigint, conversation_id bigint, ttl integer)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    conv bigint := set_disappearing.conversation_id;
    c chat.conversations;
    m chat.members;
BEGIN
    IF ttl IS NOT NULL AND (ttl < 5 OR ttl > 31536000) THEN
        RAISE EXCEPTION 'ttl % is out of range', ttl
            USING ERRCODE = '22023', HINT = 'Use 5 to 31536000 seconds, or null to turn it off.';
    END IF;
    IF conv IS NULL THEN
        RAISE EXCEPTION 'conversation_id must not be null' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO c FROM chat.conversations x WHERE x.id = conv FOR NO KEY UPDATE;
    m := chat.require_member(actor, conv);
    IF c.kind = 'service' OR (c.kind = 'group' AND m.role = 'member') THEN
        RAISE EXCEPTION 'user % may not change the timer of conversation %', actor, conv
            USING ERRCODE = '42501', HINT = 'In a group, owners and admins set it.';
    END IF;
    -- Like a send: not by a blocked user into the blocker's direct conversation.
    IF c.kind = 'direct' AND EXISTS (
           SELECT FROM chat.blocks k
            WHERE k.blocked = actor
              AND k.blocker = CASE WHEN c.direct_low = actor THEN c.direct_high ELSE c.direct_low END) THEN
        RAISE EXCEPTION 'user % cannot change the timer of conversation %: blocked', actor, conv
            USING ERRCODE = '42501';
    END IF;
    IF (c.settings ->> 'ttl')::integer IS NOT DISTINCT FROM ttl THEN
        RETURN;
    END IF;
    UPDATE chat.conversations x
       SET settings = CASE WHEN ttl IS NULL THEN x.settings - 'ttl'
                           ELSE jsonb_set(x.settings, '{ttl}', to_jsonb(ttl)) END
     WHERE x.id = conv;
    PERFORM chat.post_system_message(conv, actor,
        jsonb_build_object('action', 'disappearing', 'ttl', ttl, 'by', actor));
END
$$;

-- Tombstones up to batch messages past their expires_at (body, mentions,
-- attachments and reactions removed, deleted_at set; the bodies of their
-- edit entries cleared too); returns how many.  Rows locked by others are
-- skipped (the next pass takes them).  Online members get one event per
-- conversation and batch, {"type":"expired","conversation","seqs":[..],
-- "deleted_at"}, so open views drop the messages at once; no log entry is
-- appended (that would take the conversation row lock every send takes,
-- and double the writes), since every device drops its copy at
-- created_at + ttl itself.  Conversations without anyone online cost no
-- fanout call.
CREATE FUNCTION chat.expire_messages(batch integer DEFAULT 1000)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- Pricing a read of a cached page as a disk read, the planner scans the
-- table instead when a batch is a sizeable part of it: never wanted here.
-- Disabled paths count as huge costs, which would make every execution
-- JIT-compile its plan (jit_above_cost): hundreds of ms a batch, so no JIT.
SET enable_seqscan = off SET jit = off AS $$
DECLARE
    tids tid[];
    convs bigint[];
    seqs bigint[];
    ats timestamptz[];
    edited_convs bigint[];
    edited_seqs bigint[];
    online bigint[];
    events jsonb;
    ev jsonb;
BEGIN
    IF batch IS NULL OR batch < 1 OR batch > 100000 THEN
        RAISE EXCEPTION 'batch % is out of range', coalesce(batch::text, 'NULL')
            USING ERRCODE = '22023', HINT = 'Use 1 to 100000.';
    END IF;
    -- Every statement below reads only the rows of the batch, through an
    -- index or their ctid (locked, so they stay put): the cost of a batch
    -- never grows with the table.  (Written as joins, the planner hashed
    -- the whole of chat.messages, and every edit entry, once per batch: at
    -- 100,000 messages that made expiry ten times slower and, reading the
    -- table over and over, it took the CPU and cache that sends needed.)
    tids := ARRAY(SELECT x.ctid FROM chat.messages x
                   WHERE x.expires_at <= now()
                   ORDER BY x.expires_at
                   LIMIT batch
                     FOR NO KEY UPDATE SKIP LOCKED);
    IF cardinality(tids) = 0 THEN
        RETURN 0;
    END IF;
    WITH gone AS (
        UPDATE chat.messages x
           SET body = NULL, mentions = NULL, attachments = NULL, reactions = NULL,
               deleted_at = clock_timestamp(), expires_at = NULL
         WHERE x.ctid = ANY (tids)
        RETURNING x.conversation_id, x.seq, x.deleted_at, x.edited_at)
    SELECT array_agg(g.conversation_id), array_agg(g.seq), array_agg(g.deleted_at),
           array_agg(g.conversation_id) FILTER (WHERE g.edited_at IS NOT NULL),
           array_agg(g.seq) FILTER (WHERE g.edited_at IS NOT NULL)
      INTO convs, seqs, ats, edited_convs, edited_seqs
      FROM gone g;
    -- The bodies of the edit entries of those that were edited (edited_at
    -- set), found by (conversation, target); OFFSET 0 keeps it one index
    -- probe per edited message.
    IF edited_convs IS NOT NULL THEN
        UPDATE chat.messages e SET body = NULL
         WHERE e.ctid = ANY (ARRAY(
                   SELECT y.ctid
                     FROM unnest(edited_convs, edited_seqs) AS g(c, s)
                    CROSS JOIN LATERAL (
                          SELECT z.ctid FROM chat.messages z
                           WHERE z.conversation_id = g.c AND z.target = g.s AND z.kind = 'edit'
                          OFFSET 0) y))
           AND e.kind = 'edit';
    END IF;
    -- One expired event per conversation with a member online: those are
    -- found first (from the sessions when few are online), so a batch
    -- builds no event nobody would get.
    online := ARRAY(SELECT DISTINCT m.conversation_id
                      FROM chat.members m
                      JOIN chat.live_sessions l ON l.user_id = m.user_id
                     WHERE m.conversation_id = ANY (convs) AND m.left_at IS NULL);
    IF cardinality(online) > 0 THEN
        SELECT jsonb_agg(jsonb_build_object('type', 'expired', 'conversation', per.c,
                                            'seqs', to_jsonb(per.seqs),
                                            'deleted_at', chat.json_timestamp(per.at)))
          INTO events
          FROM (SELECT g.c, array_agg(g.s ORDER BY g.s) AS seqs, max(g.at) AS at
                  FROM unnest(convs, seqs, ats) AS g(c, s, at)
                 WHERE g.c = ANY (online)
                 GROUP BY g.c) per;
        FOR ev IN SELECT jsonb_array_elements(events) LOOP
            PERFORM chat.fanout_event((ev ->> 'conversation')::bigint, NULL, ev);
        END LOOP;
    END IF;
    RETURN cardinality(convs);
END
$$;

-- Removes up to batch messages older than chat.retention (an interval;
-- empty: keep everything), oldest conversations' first, then receipt
-- times (chat.receipt_times) as old; returns how many rows it removed.
-- Per conversation it walks the oldest seqs (created_at grows with seq),
-- so a pass reads no more than it deletes.
CREATE FUNCTION chat.apply_retention(batch integer DEFAULT 1000)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    setting text := nullif(current_setting('chat.retention', true), '');
    cutoff timestamptz;
    room integer := batch;
    taken integer;
    conv bigint;
BEGIN
    IF batch IS NULL OR batch < 1 OR batch > 100000 THEN
        RAISE EXCEPTION 'batch % is out of range', coalesce(batch::text, 'NULL')
            USING ERRCODE = '22023', HINT = 'Use 1 to 100000.';
    END IF;
    IF setting IS NULL THEN
        RETURN 0;
    END IF;
    cutoff := now() - setting::interval;
    FOR conv IN SELECT c.id FROM chat.conversations c WHERE c.created_at < cutoff ORDER BY c.id LOOP
        WITH oldest AS (
            SELECT x.seq FROM chat.messages x
             WHERE x.conversation_id = conv
             ORDER BY x.seq LIMIT room)
        DELETE FROM chat.messages x
         USING oldest
         WHERE x.conversation_id = conv AND x.seq = oldest.seq AND x.created_at < cutoff;
        GET DIAGNOSTICS taken = ROW_COUNT;
        room := room - taken;
        EXIT WHEN room <= 0;
    END LOOP;
    IF room > 0 THEN
        -- The receipt times of chat.message_info age out with the messages.
        DELETE FROM chat.receipt_times t
         WHERE t.ctid = ANY (ARRAY(SELECT r.ctid FROM chat.receipt_times r
                                    WHERE r.at < cutoff LIMIT room));
        GET DIAGNOSTICS taken = ROW_COUNT;
        IF taken < room THEN
            UPDATE chat.maintenance SET retention_at = now();
        END IF;
        room := room - taken;
    END IF;
    RETURN batch - room;
END
$$;

CREATE SEQUENCE chat.broadcasts_id_seq;
-- Broadcasts: one row each; delivered to every user's service conversation.
CREATE TABLE chat.broadcasts (
    id         bigint PRIMARY KEY DEFAULT nextval('chat.broadcasts_id_seq'),
    title      text NOT NULL,
    body       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    recipients integer NOT NULL DEFAULT 0
);
ALTER SEQUENCE chat.broadcasts_id_seq OWNED BY chat.broadcasts.id;
-- One service conversation per user, found by its user.
CREATE UNIQUE INDEX conversations_service_key ON chat.conversations (((settings ->> 'service_user')::bigint))
    WHERE kind = 'service';
SELECT pg_catalog.pg_extension_config_dump('chat.broadcasts', '');
SELECT pg_catalog.pg_extension_config_dump('chat.broadcasts_id_seq', '');
REVOKE ALL ON chat.broadcasts FROM PUBLIC;
REVOKE ALL ON SEQUENCE chat.broadcasts_id_seq FROM PUBLIC;
COMMENT ON TABLE chat.broadcasts IS 'broadcasts of chat.broadcast, with how many users they reached';
COMMENT ON SEQUENCE chat.broadcasts_id_seq IS 'ids of chat.broadcasts';

-- Posts a system message {"action":"broadcast","broadcast","title","body"}
-- to every user through the user's service conversation (created on
-- demand: kind 'service', the user its only member, read-only through
-- only_admins_send).  At most one broadcast a minute (53400).  Users are
-- taken 1000 at a time, each batch in a few set-based statements: no
-- per-user transaction, and no lock anyone else waits for (nobody else
-- writes service conversations).  Online users get one event per batch,
-- {"type":"broadcast","broadcast","title","body"}, and sync.
CREATE FUNCTION chat.broadcast(title text, body text)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    bid bigint;
    payload text;
    last_user bigint := -9223372036854775808;
    batch bigint[];
    total integer := 0;
    event jsonb;
BEGIN
    IF title IS NULL OR btrim(title) = '' THEN
        RAISE EXCEPTION 'broadcast title must not be empty' USING ERRCODE = '22023';
    END IF;
    IF length(title) > 255 THEN
        RAISE EXCEPTION 'broadcast title of % characters is longer than 255', length(title)
            USING ERRCODE = '22001';
    END IF;
    PERFORM chat.check_body(body);
    -- One broadcast at a time; the rate check sees the last one committed.
    LOCK TABLE chat.broadcasts IN SHARE ROW EXCLUSIVE MODE;
    IF EXISTS (SELECT FROM chat.broadcasts b WHERE b.created_at > now() - interval '1 minute') THEN
        RAISE EXCEPTION 'a broadcast was sent less than a minute ago'
            USING ERRCODE = '53400', HINT = 'Send at most one broadcast a minute.';
    END IF;
    INSERT INTO chat.broadcasts (title, body) VALUES (broadcast.title, broadcast.body)
    RETURNING broadcasts.id INTO bid;
    payload := jsonb_build_object('action', 'broadcast', 'broadcast', bid,
                                  'title', broadcast.title, 'body', broadcast.body)::text;
    PERFORM chat.check_body(payload);
    event := jsonb_build_object('type', 'broadcast', 'broadcast', bid,
                                'title', broadcast.title, 'body', broadcast.body);
    LOOP
        batch := ARRAY(SELECT u.id FROM chat.users u WHERE u.id > last_user ORDER BY u.id LIMIT 1000);
        EXIT WHEN cardinality(batch) = 0;
        last_user := batch[cardinality(batch)];
        WITH need AS (
            SELECT u FROM unnest(batch) u
             WHERE NOT EXISTS (SELECT FROM chat.conversations c
                                WHERE c.kind = 'service' AND (c.settings ->> 'service_user')::bigint = u)),
        made AS (
            INSERT INTO chat.conversations (kind, title, settings)
            SELECT 'service', 'Service', jsonb_build_object('service_user', u, 'only_admins_send', true)
              FROM need
            RETURNING conversations.id AS conv, (settings ->> 'service_user')::bigint AS u)
        INSERT INTO chat.members (conversation_id, user_id, role)
        SELECT made.conv, made.u, 'member' FROM made;
        WITH convs AS (
            UPDATE chat.conversations c SET last_seq = c.last_seq + 1, last_activity = now()
             WHERE c.kind = 'service' AND (c.settings ->> 'service_user')::bigint = ANY (batch)
            RETURNING c.id, c.last_seq)
        INSERT INTO chat.messages (conversation_id, seq, sender_id, kind, body)
        SELECT convs.id, convs.last_seq, 0, 'system', payload FROM convs;
        total := total + cardinality(batch);
        -- One event for the users of the batch online now (the others
        -- sync when they connect): one notification per gateway node per
        -- batch, not one message event per user.  Their clients sync to
        -- fetch the message of their service conversation.
        PERFORM chat.fanout_event(NULL,
                    ARRAY(SELECT DISTINCT s.user_id FROM chat.live_sessions s
                           WHERE s.user_id = ANY (batch) ORDER BY 1),
                    event)
          WHERE EXISTS (SELECT FROM chat.live_sessions s WHERE s.user_id = ANY (batch));
    END LOOP;
    UPDATE chat.broadcasts b SET recipients = total WHERE b.id = bid;
    RETURN bid;
END
$$;

REVOKE ALL ON FUNCTION chat.set_disappearing(bigint, bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.expire_messages(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.apply_retention(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.broadcast(text, text) FROM PUBLIC;

COMMENT ON FUNCTION chat.set_disappearing(bigint, bigint, integer) IS
    'sets or clears a conversation''s disappearing-messages ttl (seconds); posts a system message';
COMMENT ON FUNCTION chat.expire_messages(integer) IS
    'tombstones up to batch messages past their disappearing ttl; returns how many (the expiry worker runs it)';
COMMENT ON FUNCTION chat.apply_retention(integer) IS
    'removes up to batch messages older than chat.retention; returns how many (the expiry worker runs it)';
COMMENT ON FUNCTION chat.broadcast(text, text) IS
    'a system message to every user through their read-only service conversation; at most one a minute';

-- When the expiry worker last applied chat.retention (one row).
CREATE TABLE chat.maintenance (
    id           boolean PRIMARY KEY DEFAULT true CHECK (id),
    retention_at timestamptz
);
INSERT INTO chat.maintenance DEFAULT VALUES;
REVOKE ALL ON chat.maintenance FROM PUBLIC;
COMMENT ON TABLE chat.maintenance IS 'one row: when the expiry worker last applied chat.retention';

-- Registers the expiry worker of this database (C, expiry.c); false when
-- no background worker slot is free.
CREATE FUNCTION chat.launch_expiry_worker()
RETURNS boolean
LANGUAGE c AS 'MODULE_PATHNAME', 'chat_launch_expiry_worker';

-- Starts the expiry worker when there is work and none runs: messages past
-- their ttl, or chat.retention set and not applied for a minute.  The
-- gateways' heartbeat calls it (chat.node_heartbeat), so expiry runs every
-- few seconds wherever a gateway is up; without gateways, call it from a
-- scheduler.  Returns whether it started one.
CREATE FUNCTION chat.start_expiry_worker()
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM chat.messages x WHERE x.expires_at <= now())
       AND (coalesce(current_setting('chat.retention', true), '') = ''
            OR EXISTS (SELECT FROM chat.maintenance mt
                        WHERE mt.retention_at > now() - interval '1 minute')) THEN
        RETURN false;
    END IF;
    IF EXISTS (SELECT FROM pg_stat_activity a
                WHERE a.backend_type = 'chat expiry' AND a.datname = current_database()) THEN
        RETURN false;
    END IF;
    RETURN chat.launch_expiry_worker();
END
$$;

REVOKE ALL ON FUNCTION chat.launch_expiry_worker() FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.start_expiry_worker() FROM PUBLIC;
COMMENT ON FUNCTION chat.launch_expiry_worker() IS
    'internal: registers the expiry worker of this database (false: no worker slot free)';
COMMENT ON FUNCTION chat.start_expiry_worker() IS
    'starts the expiry worker when messages are due or retention is to be applied; the gateway heartbeat calls it';
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
        -- kind (30_e2e.sql): absent or "text", or "e2e" (send_e2e); the C
        -- send path raises 22023 for any other.  Mentions are ids in both
        -- (an e2e body is never parsed).
        IF chat.request_text(request, 'kind', false) = 'e2e' THEN
            SELECT * INTO r FROM chat.send_e2e(user_id,
                chat.request_bigint(request, 'conversation'),
                chat.request_text(request, 'body'),
                chat.request_text(request, 'client_msg_id', false),
                chat.request_bigint(request, 'reply_to', false),
                device_id,
                nullif(chat.request_ids(request, 'mentions', false), '{}')) AS s;
        ELSIF coalesce(chat.request_text(request, 'kind', false), 'text') <> 'text' THEN
            RAISE EXCEPTION 'invalid message kind "%"', chat.request_text(request, 'kind', false)
                USING ERRCODE = '22023';
        ELSE
            SELECT * INTO r FROM chat.send_message(user_id,
                chat.request_bigint(request, 'conversation'),
                chat.request_text(request, 'body'),
                chat.request_text(request, 'client_msg_id', false),
                chat.request_bigint(request, 'reply_to', false),
                device_id,
                nullif(chat.request_ids(request, 'mentions', false), '{}')) AS s;
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
                       -- issue 15: the reader's mute and the disappearing timer
                       'muted_until', (SELECT chat.json_timestamp(m.muted_until) FROM chat.members m
                                        WHERE m.conversation_id = c.conversation_id
                                          AND m.user_id = dispatch_request.user_id
                                          AND m.muted_until > now()),
                       'ttl', (SELECT (x.settings ->> 'ttl')::integer FROM chat.conversations x
                                WHERE x.id = c.conversation_id),
                       'last_message', CASE WHEN c.last_message IS NOT NULL THEN coalesce(
                           (SELECT chat.message_json(ROW(x.conversation_id, x.seq, x.sender_id,
                                       x.sender_device, x.kind, x.body, x.client_msg_id, x.reply_to,
                                       x.created_at, x.edited_at, x.deleted_at, x.target,
                                       x.attachments, x.mentions, x.reactions)::chat.message_view)
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
                                  chat.request_bool(request, 'only_admins_send', NULL),
                                  chat.request_text(request, 'avatar', false));
        RETURN '{}';
    -- Invite links and message info (17_group_invites.sql), reactions,
    -- pins, mute (18_reactions.sql), search (19_search.sql), disappearing
    -- messages (23_disappearing.sql): issue 15.
    WHEN 'invite_link' THEN
        SELECT * INTO r FROM chat.invite_link(user_id, chat.request_bigint(request, 'conversation'),
                                              chat.request_bigint(request, 'expires_in', false)::integer) i;
        RETURN jsonb_build_object('code', r.code, 'expires_at', chat.json_timestamp(r.expires_at));
    WHEN 'revoke_invite' THEN
        PERFORM chat.revoke_invite(user_id, chat.request_text(request, 'code'));
        RETURN '{}';
    WHEN 'join' THEN
        RETURN jsonb_build_object('conversation', chat."join"(user_id, chat.request_text(request, 'code')));
    WHEN 'message_info' THEN
        RETURN jsonb_build_object('members', coalesce((
            SELECT jsonb_agg(jsonb_build_object('user', i.user_id,
                                                'delivered_at', chat.json_timestamp(i.delivered_at),
                                                'read_at', chat.json_timestamp(i.read_at))
                             ORDER BY i.user_id)
              FROM chat.message_info(user_id, chat.request_bigint(request, 'conversation'),
                                     chat.request_bigint(request, 'seq')) i), '[]'));
    WHEN 'react' THEN
        conv := chat.request_bigint(request, 'conversation');
        RETURN jsonb_build_object('conversation', conv, 'seq', request -> 'seq', 'entry',
            chat.react(user_id, conv, chat.request_bigint(request, 'seq'),
                       chat.request_text(request, 'emoji'),
                       chat.request_bool(request, 'remove', false)));
    WHEN 'pin' THEN
        PERFORM chat.pin(user_id, chat.request_bigint(request, 'conversation'),
                         chat.request_bigint(request, 'seq'),
                         chat.request_bool(request, 'pinned', true));
        RETURN '{}';
    WHEN 'pins' THEN
        RETURN jsonb_build_object('pins', to_jsonb(ARRAY(
            SELECT chat.pins(user_id, chat.request_bigint(request, 'conversation')))));
    WHEN 'mute' THEN
        PERFORM chat.mute(user_id, chat.request_bigint(request, 'conversation'),
                          chat.request_text(request, 'until', false)::timestamptz);
        RETURN '{}';
    WHEN 'search' THEN
        RETURN jsonb_build_object('messages', coalesce((
            SELECT jsonb_agg(q.j ORDER BY q.n)
              FROM (SELECT chat.message_json(m) AS j, row_number() OVER () AS n
                      FROM chat.search(user_id, chat.request_text(request, 'query'),
                                       chat.request_bigint(request, 'conversation', false),
                                       coalesce(chat.request_bigint(request, 'limit', false), 20)::integer) m) q),
            '[]'));
    WHEN 'set_disappearing' THEN
        PERFORM chat.set_disappearing(user_id, chat.request_bigint(request, 'conversation'),
                                      chat.request_bigint(request, 'ttl', false)::integer);
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
-- conversation with the claimer (check_peers; chat.keys_claim checks).
-- check_peers false is for chat_proxy only (docs/scaling.md): in a sharded
-- install keys live on their owner's home partition while the conversation
-- two users share may live on another, so the proxy checks the rule over
-- every partition and claims here without it.
CREATE FUNCTION chat.keys_claim_local(user_id bigint, device_id integer, devices jsonb, check_peers boolean)
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
    PERFORM chat.require_device(keys_claim_local.user_id, keys_claim_local.device_id);
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
        IF check_peers THEN
            PERFORM chat.require_e2e_peer(keys_claim_local.user_id, cu);
        END IF;
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

-- Claims one key bundle per listed device ([{"user","device"}], at most
-- 1000): see chat.keys_claim_local, with the peer rule (42501).
CREATE FUNCTION chat.keys_claim(user_id bigint, device_id integer, devices jsonb)
RETURNS TABLE(claimed_user bigint, claimed_device integer, identity_key text, signed_prekey jsonb,
              one_time_key jsonb, fallback boolean)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM chat.keys_claim_local(user_id, device_id, devices, true)
$$;

-- Queues envelopes [{"user","device","type","ciphertext"}] (at most 1024,
-- ciphertext base64 of at most 6000 characters so that the live event fits
-- a notification) from (user_id, device_id) to those devices, each of which
-- gets {"type":"to_device","id","from_user","from_device","message_type",
-- "ciphertext","device"} if online and finds it in sync until it acks it.
-- Idempotent per txn: a txn the sending device used in the last day stores
-- nothing new.  A device's inbox holds at most 1000 envelopes (54000).
-- Recipients are the sender's own devices and the devices of users who
-- share a conversation with it (42501 otherwise; check_peers false is for
-- chat_proxy only, which checks that over every partition and queues each
-- envelope on its recipient's home partition).
CREATE FUNCTION chat.to_device_local(user_id bigint, device_id integer, messages jsonb, txn text,
                                     check_peers boolean)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    uid bigint := to_device_local.user_id;
    did integer := to_device_local.device_id;
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
        IF check_peers THEN
            PERFORM chat.require_e2e_peer(uid, ru);
        END IF;
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

-- Queues envelopes for single devices: see chat.to_device_local, with the
-- peer rule (42501).
CREATE FUNCTION chat.to_device(user_id bigint, device_id integer, messages jsonb, txn text)
RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT chat.to_device_local(user_id, device_id, messages, txn, true)
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
-- in an e2e conversation (22023 otherwise).  body is opaque; mentions are
-- member ids as in send_message (the body is never parsed for them).
CREATE FUNCTION chat.send_e2e(sender bigint, conversation_id bigint, body text,
                              client_msg_id text DEFAULT NULL, reply_to bigint DEFAULT NULL,
                              sender_device integer DEFAULT NULL, mentions bigint[] DEFAULT NULL)
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
REVOKE ALL ON FUNCTION chat.keys_claim_local(bigint, integer, jsonb, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.to_device_local(bigint, integer, jsonb, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.to_device(bigint, integer, jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.to_device_pending(bigint, integer, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.to_device_ack(bigint, integer, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.enable_e2e(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.is_e2e(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.send_e2e(bigint, bigint, text, text, bigint, integer, bigint[]) FROM PUBLIC;

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
COMMENT ON FUNCTION chat.keys_claim_local(bigint, integer, jsonb, boolean) IS
    'internal (chat_proxy): keys_claim with the peer rule optional (the proxy checks it over every partition)';
COMMENT ON FUNCTION chat.to_device_local(bigint, integer, jsonb, text, boolean) IS
    'internal (chat_proxy): to_device with the peer rule optional (the proxy checks it over every partition)';
COMMENT ON FUNCTION chat.to_device_pending(bigint, integer, integer) IS 'e2e: the oldest envelopes of a device''s inbox as JSON';
COMMENT ON FUNCTION chat.to_device_ack(bigint, integer, bigint) IS 'e2e: deletes a device''s envelopes up to an id';
COMMENT ON FUNCTION chat.enable_e2e(bigint, bigint) IS 'e2e: makes a conversation end-to-end encrypted (one-way; system message)';
COMMENT ON FUNCTION chat.is_e2e(bigint) IS 'true when the conversation is end-to-end encrypted';
COMMENT ON FUNCTION chat.send_e2e(bigint, bigint, text, text, bigint, integer, bigint[]) IS
    'e2e: sends a ciphertext message (kind e2e) to an e2e conversation';
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
-- Monitoring (issue 11): the notifier workers' histograms for the
-- gateway's /metrics (read with every node heartbeat) and for operators.

CREATE FUNCTION chat.notifier_histograms(OUT histogram text, OUT bounds double precision[],
                                         OUT cumulative bigint[], OUT sum bigint)
RETURNS SETOF record LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'chat_notifier_histograms';

REVOKE ALL ON FUNCTION chat.notifier_histograms() FROM PUBLIC;

COMMENT ON FUNCTION chat.notifier_histograms() IS
    'notifier workers since start (all databases): queue_depth (events waiting per pass) and batch_events (events per NOTIFY); cumulative counts per bound, last = +Inf';
