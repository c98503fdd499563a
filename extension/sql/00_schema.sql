-- chat extension 0.5.0: schema.  The install script is assembled from the
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
