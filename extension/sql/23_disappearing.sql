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
-- attachments and reactions removed, deleted_at = expires_at, the time
-- readers have shown it deleted since (chat.message_expired); the bodies of
-- their edit entries cleared too); returns how many.  Rows locked by others are
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
               deleted_at = x.expires_at, expires_at = NULL
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
