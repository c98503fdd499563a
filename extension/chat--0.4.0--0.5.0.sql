-- chat 0.4.0 -> 0.5.0
--
-- complain if this script is sourced in psql rather than run by ALTER EXTENSION
\echo Use "ALTER EXTENSION chat UPDATE TO '0.5.0'" to load this file. \quit

-- Disappearing messages (issue 15): a message past its expires_at is gone
-- for readers before the expiry worker tombstones it (chat.message_expired,
-- 18_reactions.sql), the worker tombstones with deleted_at = expires_at,
-- and an attachment of such a message is no longer served.  The helpers
-- first: chat.conversations (LANGUAGE sql) refers to them.
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

CREATE OR REPLACE FUNCTION chat.conversations(user_id bigint, lim integer DEFAULT 50, before timestamptz DEFAULT NULL)
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

CREATE OR REPLACE FUNCTION chat.changeable_message(m chat.members, seq bigint, verb text)
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

CREATE OR REPLACE FUNCTION chat.history(actor bigint, conversation_id bigint, before_seq bigint DEFAULT NULL,
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

CREATE OR REPLACE FUNCTION chat.messages_after(actor bigint, conversation_id bigint, after_seq bigint,
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

CREATE OR REPLACE FUNCTION chat.get_message(actor bigint, conversation_id bigint, seq bigint)
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

CREATE OR REPLACE FUNCTION chat.sync(user_id bigint, device_id integer, lim integer DEFAULT 500)
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

CREATE OR REPLACE FUNCTION chat.search(actor bigint, query text, conversation_id bigint DEFAULT NULL,
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
                       AND (y.expires_at IS NULL OR y.expires_at > now())
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
           AND (x.expires_at IS NULL OR x.expires_at > now())
           AND x.seq > m.joined_seq
           AND (m.left_at IS NULL OR x.created_at <= m.left_at)
         ORDER BY ts_rank(to_tsvector(%1$L::regconfig, x.body),
                          websearch_to_tsquery(%1$L::regconfig, $3)) DESC,
                  x.created_at DESC, x.conversation_id, x.seq
         LIMIT $4 $q$, cfg::text)
    USING actor, search.conversation_id, query, lim;
END
$$;

CREATE OR REPLACE FUNCTION chat.expire_messages(batch integer DEFAULT 1000)
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

CREATE OR REPLACE FUNCTION chat.media_download_target(id uuid, thumbnail boolean)
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
       -- not the file of a message past its expires_at (message_expired),
       -- unless it is the group's current picture (33_avatars.sql)
       AND (NOT EXISTS (SELECT FROM chat.messages x WHERE x.conversation_id = a.conversation_id
                           AND x.seq = a.message_seq AND x.expires_at <= now())
            OR EXISTS (SELECT FROM chat.conversations c
                        WHERE c.id = a.conversation_id AND c.settings ->> 'avatar' = a.id::text))
$$;



-- Dispatcher send passes attachments (0.5.0): send_message and send_e2e take
-- attachments (a JSON array of upload ids, as in the send request), so the
-- plpgsql send of chat.dispatch_request no longer drops them.  The new
-- parameter changes the signatures: the functions are dropped and created
-- again (GRANTs made on the old ones must be made again).
DROP FUNCTION chat.send_message(bigint, bigint, text, text, bigint, integer, bigint[]);
DROP FUNCTION chat.send_e2e(bigint, bigint, text, text, bigint, integer, bigint[]);
CREATE FUNCTION chat.send_message(sender bigint, conversation_id bigint, body text,
                                  client_msg_id text DEFAULT NULL, reply_to bigint DEFAULT NULL,
                                  sender_device integer DEFAULT NULL, mentions bigint[] DEFAULT NULL,
                                  attachments jsonb DEFAULT NULL)
RETURNS TABLE(conversation_id bigint, seq bigint, created_at timestamptz, duplicate boolean)
LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'chat_send_message';
REVOKE ALL ON FUNCTION chat.send_message(bigint, bigint, text, text, bigint, integer, bigint[], jsonb) FROM PUBLIC;
COMMENT ON FUNCTION chat.send_message(bigint, bigint, text, text, bigint, integer, bigint[], jsonb) IS
    'sends a text message: gapless seq, idempotent on (sender, conversation, client_msg_id), fans out';
CREATE FUNCTION chat.send_e2e(sender bigint, conversation_id bigint, body text,
                              client_msg_id text DEFAULT NULL, reply_to bigint DEFAULT NULL,
                              sender_device integer DEFAULT NULL, mentions bigint[] DEFAULT NULL,
                              attachments jsonb DEFAULT NULL)
RETURNS TABLE(conversation_id bigint, seq bigint, created_at timestamptz, duplicate boolean)
LANGUAGE c SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'chat_send_e2e';
REVOKE ALL ON FUNCTION chat.send_e2e(bigint, bigint, text, text, bigint, integer, bigint[], jsonb) FROM PUBLIC;
COMMENT ON FUNCTION chat.send_e2e(bigint, bigint, text, text, bigint, integer, bigint[], jsonb) IS
    'e2e: sends a ciphertext message (kind e2e) to an e2e conversation';
-- Contact search (issue 15): chat.search_users and its prefix indexes.
CREATE INDEX users_handle_prefix_idx ON chat.users ((lower(handle) COLLATE "C"));
CREATE INDEX users_display_name_prefix_idx ON chat.users ((lower(display_name) COLLATE "C"))
    WHERE display_name IS NOT NULL;
CREATE FUNCTION chat.search_users(actor bigint, query text, lim integer DEFAULT 20)
RETURNS TABLE (user_id bigint, handle text, display_name text, about text, avatar text, contact boolean)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pattern text;
BEGIN
    PERFORM chat.require_actor(actor);
    IF query IS NULL OR btrim(query) = '' THEN
        RAISE EXCEPTION 'search query must not be empty' USING ERRCODE = '22023',
            HINT = 'Pass the first letters of a handle or display name.';
    END IF;
    IF length(query) > 64 THEN
        RAISE EXCEPTION 'search query of % characters is longer than 64', length(query)
            USING ERRCODE = '22001';
    END IF;
    IF lim IS NULL OR lim < 1 OR lim > 50 THEN
        RAISE EXCEPTION 'search limit % is out of range', coalesce(lim::text, 'NULL')
            USING ERRCODE = '22023', HINT = 'Ask for 1 to 50 users.';
    END IF;
    -- the query is a literal prefix: LIKE's own characters escaped
    pattern := replace(replace(replace(lower(query), '\', '\\'), '%', '\%'), '_', '\_') || '%';
    -- A literal pattern (format %L), not a parameter: the planner turns
    -- only a constant LIKE prefix into an index range.
    RETURN QUERY EXECUTE format($q$
        WITH c AS (SELECT x AS id FROM chat.contacts($1) x),
        hits AS (
            (SELECT u.id FROM chat.users u
              WHERE lower(u.handle) COLLATE "C" LIKE %1$L
                AND u.id <> $1
                AND NOT EXISTS (SELECT FROM chat.blocks k WHERE k.blocker = u.id AND k.blocked = $1)
              ORDER BY lower(u.handle) COLLATE "C" LIMIT $2)
            UNION
            (SELECT u.id FROM chat.users u
              WHERE lower(u.display_name) COLLATE "C" LIKE %1$L AND u.display_name IS NOT NULL
                AND u.id <> $1
                AND NOT EXISTS (SELECT FROM chat.blocks k WHERE k.blocker = u.id AND k.blocked = $1)
              ORDER BY lower(u.display_name) COLLATE "C" LIMIT $2)
            UNION
            (SELECT u.id FROM c JOIN chat.users u ON u.id = c.id
              WHERE (lower(u.handle) COLLATE "C" LIKE %1$L
                     OR lower(u.display_name) COLLATE "C" LIKE %1$L)
                AND NOT EXISTS (SELECT FROM chat.blocks k WHERE k.blocker = u.id AND k.blocked = $1)))
        SELECT u.id, u.handle, u.display_name, u.about, u.avatar,
               EXISTS (SELECT FROM c WHERE c.id = u.id) AS contact
          FROM hits h JOIN chat.users u ON u.id = h.id
         ORDER BY 6 DESC,
                  lower(u.handle) COLLATE "C" LIKE %1$L DESC,
                  CASE WHEN lower(u.handle) COLLATE "C" LIKE %1$L THEN lower(u.handle)
                       ELSE lower(u.display_name) END COLLATE "C",
                  u.id
         LIMIT $2$q$, pattern)
    USING actor, lim;
END
$$;
REVOKE ALL ON FUNCTION chat.search_users(bigint, text, integer) FROM PUBLIC;
COMMENT ON FUNCTION chat.search_users(bigint, text, integer) IS
    'users whose handle or display name starts with a prefix (case ignored), contacts first; at most 50; users who blocked the actor left out';

-- Gateway shutdown (node_stop): the final call removes the node; a heartbeat
-- does not bring back a stopped node.
CREATE OR REPLACE FUNCTION chat.node_heartbeat(node text)
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
        -- Gateway shutdown (27_node_stop.sql): a node stopped while this
        -- heartbeat waited for its row has no sessions and stays gone.
        IF EXISTS (SELECT FROM chat.sessions s WHERE s.node = node_heartbeat.node) THEN
            INSERT INTO chat.nodes (node) VALUES (node_heartbeat.node) ON CONFLICT DO NOTHING;
        END IF;
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
CREATE FUNCTION chat.node_stop(node text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM chat.node_reset(node);
    DELETE FROM chat.nodes n WHERE n.node = node_stop.node;
END
$$;
REVOKE ALL ON FUNCTION chat.node_stop(text) FROM PUBLIC;
COMMENT ON FUNCTION chat.node_stop(text) IS
    'gateway shutdown: forgets the node''s sessions (as node_reset) and removes the node';


-- Avatars (issue 15): profile uploads (attachments without a conversation),
-- the avatar checks of set_profile and update_group, media_url for current
-- avatars and the cleanup of replaced profile pictures (33_avatars.sql).
CREATE OR REPLACE FUNCTION chat.set_profile(actor bigint, display_name text DEFAULT NULL,
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

CREATE OR REPLACE FUNCTION chat.update_group(actor bigint, conversation_id bigint, title text DEFAULT NULL,
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

CREATE OR REPLACE FUNCTION chat.dispatch_request(node text, user_id bigint, device_id integer, request jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rtype text := request ->> 'type';
    conv bigint;
    lim integer;
    r record;
    msgs chat.message_view[];
    -- send's fields (and search_users' limit)
    big bigint;
    att jsonb;
    body text;
    cmid text;
    reply bigint;
    ment bigint[];
    kind text;
BEGIN
    CASE rtype
    WHEN 'send' THEN
        IF jsonb_typeof(request -> 'body') IS DISTINCT FROM 'string' AND request -> 'body' IS NOT NULL
           AND jsonb_typeof(request -> 'body') <> 'null' THEN
            RAISE EXCEPTION 'request field "body" must be a string' USING ERRCODE = '22P02';
        END IF;
        -- The fields in the order of the C send (request.c HandleSend), with
        -- its rules: attachments (media, issue 13) an array, and with them
        -- the body (caption) may be left out; mentions are ids; kind absent
        -- or "text", or "e2e" (send_e2e, 30_e2e.sql), any other 22023.
        conv := chat.request_bigint(request, 'conversation');
        att := chat.request_field(request, 'attachments', false);
        IF att IS NOT NULL AND jsonb_typeof(att) <> 'array' THEN
            RAISE EXCEPTION 'request field "attachments" must be an array of upload ids'
                USING ERRCODE = '22P02';
        END IF;
        body := coalesce(chat.request_text(request, 'body', att IS NULL), '');
        cmid := chat.request_text(request, 'client_msg_id', false);
        reply := chat.request_bigint(request, 'reply_to', false);
        ment := nullif(chat.request_ids(request, 'mentions', false), '{}');
        kind := coalesce(chat.request_text(request, 'kind', false), 'text');
        IF kind = 'e2e' THEN
            SELECT * INTO r FROM chat.send_e2e(user_id, conv, body, cmid, reply, device_id, ment, att) AS s;
        ELSIF kind <> 'text' THEN
            RAISE EXCEPTION 'invalid message kind "%"', kind USING ERRCODE = '22023',
                HINT = 'A send is of kind text or, in an end-to-end encrypted conversation, e2e.';
        ELSE
            SELECT * INTO r FROM chat.send_message(user_id, conv, body, cmid, reply, device_id, ment, att) AS s;
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
                                       x.sender_device, x.kind,
                                       CASE WHEN chat.message_expired(x) THEN NULL ELSE x.body END,
                                       x.client_msg_id, x.reply_to, x.created_at, x.edited_at,
                                       CASE WHEN x.expires_at <= now() THEN x.expires_at ELSE x.deleted_at END,
                                       x.target,
                                       CASE WHEN chat.message_expired(x) THEN NULL ELSE x.attachments END,
                                       CASE WHEN chat.message_expired(x) THEN NULL ELSE x.mentions END,
                                       CASE WHEN chat.message_expired(x) THEN NULL ELSE x.reactions END
                                       )::chat.message_view)
                              FROM chat.messages x
                             WHERE x.conversation_id = c.conversation_id
                               AND x.seq = (c.last_message ->> 'seq')::bigint),
                           c.last_message) END)
                   -- E2E (30_e2e.sql): "e2e": true on encrypted conversations
                   || CASE WHEN chat.is_e2e(c.conversation_id) THEN '{"e2e": true}'::jsonb
                           ELSE '{}' END
                   -- Avatars (issue 15): a group's picture (its members may fetch it)
                   || CASE WHEN c.kind = 'group' THEN
                           coalesce((SELECT jsonb_build_object('avatar', x.settings -> 'avatar')
                                       FROM chat.conversations x
                                      WHERE x.id = c.conversation_id AND x.settings ? 'avatar'), '{}')
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
        -- Avatars (issue 15): "purpose":"avatar" uploads a picture (33_avatars.sql).
        IF chat.request_text(request, 'purpose', false) = 'avatar' THEN
            RETURN chat.upload_avatar(user_id, chat.request_text(request, 'mime'),
                                      chat.request_bigint(request, 'size'),
                                      chat.request_text(request, 'sha256'),
                                      chat.request_bigint(request, 'conversation', false));
        ELSIF coalesce(chat.request_text(request, 'purpose', false), 'message') <> 'message' THEN
            RAISE EXCEPTION 'invalid upload purpose "%"', left(request ->> 'purpose', 200)
                USING ERRCODE = '22023', HINT = 'Use "message" (the default) or "avatar".';
        END IF;
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
    -- Contact search (issue 15, 26_contacts.sql).
    WHEN 'search_users' THEN
        big := coalesce(chat.request_bigint(request, 'limit', false), 20);
        IF big NOT BETWEEN 1 AND 50 THEN
            RAISE EXCEPTION 'search limit % is out of range', big USING ERRCODE = '22023',
                HINT = 'Ask for 1 to 50 users.';
        END IF;
        RETURN jsonb_build_object('users', coalesce((
            SELECT jsonb_agg(chat.profile_json(ROW(u.user_id, u.handle, u.display_name, u.about,
                                                   u.avatar)::chat.profile_view)
                             || jsonb_build_object('contact', u.contact) ORDER BY u.n)
              FROM chat.search_users(user_id, chat.request_text(request, 'query'),
                                     big::integer)
                   WITH ORDINALITY AS u(user_id, handle, display_name, about, avatar, contact, n)), '[]'));
    ELSE
        RAISE EXCEPTION 'unknown request type "%"', rtype
            USING ERRCODE = '22023',
                  HINT = 'See docs/protocol.md for the request types of chat.v1.';
    END CASE;
END
$$;

CREATE OR REPLACE FUNCTION chat.media_url(actor bigint, attachment uuid, thumbnail boolean DEFAULT false)
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
    -- Avatars (issue 15, 33_avatars.sql): a current avatar is served beyond
    -- the rule below (a profile upload has no conversation: decided there).
    IF NOT chat.avatar_access(actor, a) THEN
        -- the uploader may fetch it before sending; the other members once it is sent
        IF a.message_seq IS NULL AND a.owner_id IS DISTINCT FROM actor THEN
            RAISE EXCEPTION 'attachment % does not exist', attachment USING ERRCODE = 'P0002';
        END IF;
        PERFORM chat.require_member(actor, a.conversation_id);
        -- the file of a message past its expires_at is gone with the
        -- message, before the expiry worker deletes the row
        -- (message_expired); a group's current picture stays (33_avatars.sql)
        IF EXISTS (SELECT FROM chat.messages x WHERE x.conversation_id = a.conversation_id
                      AND x.seq = a.message_seq AND x.expires_at <= now()) THEN
            RAISE EXCEPTION 'attachment % does not exist', attachment USING ERRCODE = 'P0002';
        END IF;
    END IF;
    IF coalesce(thumbnail, false) AND a.thumbnail_key IS NULL THEN
        RAISE EXCEPTION 'attachment % has no thumbnail', attachment USING ERRCODE = 'P0002';
    END IF;
    expires := extract(epoch FROM now())::bigint + current_setting('chat.media_url_ttl')::integer;
    RETURN jsonb_build_object('url', chat.media_signed_url(CASE WHEN thumbnail THEN 'thumb' ELSE 'get' END,
                                                           a.id, actor, expires),
                              'expires_at', expires);
END
$$;

COMMENT ON FUNCTION chat.media_url(bigint, uuid, boolean) IS 'a signed GET URL of an attachment or its thumbnail, bound to the actor, for members of its conversation; a current avatar also for those who may see it';

CREATE OR REPLACE FUNCTION chat.media_cleanup()
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
    -- Avatars (issue 15): profile uploads that are no current avatar.
    RETURN n + chat.avatar_cleanup();
END
$$;

COMMENT ON FUNCTION chat.media_cleanup() IS 'removes uploads pending for longer than chat.media_upload_timeout, and older profile uploads that are no current avatar; their bytes are queued for deletion';

ALTER TABLE chat.attachments ALTER COLUMN conversation_id DROP NOT NULL;

CREATE INDEX attachments_profile_idx ON chat.attachments (created_at) WHERE conversation_id IS NULL;

-- new function
CREATE FUNCTION chat.upload_avatar(actor bigint, mime text, size bigint, sha256 text,
                                   conversation_id bigint DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    lim bigint;
    att_id uuid;
    expires bigint;
BEGIN
    IF mime IS NULL OR size IS NULL OR sha256 IS NULL THEN
        RAISE EXCEPTION 'mime, size and sha256 must not be null' USING ERRCODE = '22023';
    END IF;
    mime := lower(mime);
    IF chat.media_class(mime) <> 'image' THEN
        RAISE EXCEPTION 'an avatar of type "%" is refused: avatars are images', mime
            USING ERRCODE = '22023', HINT = 'Upload an image/* file (chat.media_types lists the allowed types).';
    END IF;
    IF upload_avatar.conversation_id IS NOT NULL THEN
        RETURN chat.upload(actor, upload_avatar.conversation_id, mime, size, sha256, NULL);
    END IF;
    PERFORM chat.require_actor(actor);
    IF NOT mime = ANY (string_to_array(replace(current_setting('chat.media_types'), ' ', ''), ',')) THEN
        RAISE EXCEPTION 'media type "%" is not allowed', mime
            USING ERRCODE = '22023', HINT = 'chat.media_types lists the allowed types.';
    END IF;
    lim := coalesce((current_setting('chat.media_limits')::jsonb ->> 'image')::bigint, 0);
    IF size < 1 THEN
        RAISE EXCEPTION 'upload size % is out of range', size USING ERRCODE = '22023';
    END IF;
    IF size > lim THEN
        RAISE EXCEPTION 'upload of % bytes exceeds the image limit of % bytes', size, lim
            USING ERRCODE = '54000', HINT = 'chat.media_limits sets the limit of each type.';
    END IF;
    sha256 := lower(sha256);
    IF sha256 !~ '^[0-9a-f]{64}$' THEN
        RAISE EXCEPTION 'sha256 "%" is not 64 hex digits', upload_avatar.sha256 USING ERRCODE = '22023';
    END IF;
    INSERT INTO chat.attachments (owner_id, conversation_id, mime, size, sha256)
    VALUES (actor, NULL, mime, size, sha256)
    RETURNING id INTO att_id;
    expires := extract(epoch FROM now())::bigint + current_setting('chat.media_url_ttl')::integer;
    RETURN jsonb_build_object('upload', att_id,
                              'url', chat.media_signed_url('put', att_id, actor, expires),
                              'expires_at', expires);
END
$$;

REVOKE ALL ON FUNCTION chat.upload_avatar(bigint, text, bigint, text, bigint) FROM PUBLIC;

COMMENT ON FUNCTION chat.upload_avatar(bigint, text, bigint, text, bigint) IS 'announces an avatar upload (image/* only): without a conversation a profile picture of the actor, with one a picture for that group; returns {upload, url, expires_at}';

-- new function
CREATE FUNCTION chat.avatar_attachment(avatar text)
RETURNS chat.attachments
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a chat.attachments;
BEGIN
    IF avatar !~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        RAISE EXCEPTION 'avatar "%" is not an attachment id', left(avatar, 200)
            USING ERRCODE = '22023', HINT = 'Pass the upload id that upload with "purpose":"avatar" returned, or '''' to remove the avatar.';
    END IF;
    SELECT * INTO a FROM chat.attachments x WHERE x.id = avatar::uuid;
    RETURN a;
END
$$;

REVOKE ALL ON FUNCTION chat.avatar_attachment(text) FROM PUBLIC;

COMMENT ON FUNCTION chat.avatar_attachment(text) IS 'internal: the attachment an avatar id names (22023 unless a uuid; NULLs when none)';

-- new function
CREATE FUNCTION chat.check_avatar_file(a chat.attachments)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF a.state <> 'ready' THEN
        RAISE EXCEPTION 'attachment % is not uploaded yet', a.id
            USING ERRCODE = '55000', HINT = 'Set the avatar once the PUT of its bytes has been answered 201.';
    END IF;
    IF chat.media_class(a.mime) <> 'image' THEN
        RAISE EXCEPTION 'attachment % is of type "%", not an image', a.id, a.mime
            USING ERRCODE = '22023', HINT = 'An avatar is an image/* upload.';
    END IF;
END
$$;

REVOKE ALL ON FUNCTION chat.check_avatar_file(chat.attachments) FROM PUBLIC;

COMMENT ON FUNCTION chat.check_avatar_file(chat.attachments) IS 'internal: 55000 unless the attachment is ready, 22023 unless it is an image';

-- new function
CREATE FUNCTION chat.check_user_avatar(actor bigint, avatar text)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a chat.attachments;
BEGIN
    IF current_setting('chat.partitions')::integer > 1
       AND (hashint8(actor) & (current_setting('chat.partitions')::integer - 1))
           <> current_setting('chat.partition')::integer THEN
        RETURN;   -- checked on the actor's home partition
    END IF;
    a := chat.avatar_attachment(avatar);
    IF a.id IS NULL OR a.owner_id <> actor THEN
        RAISE EXCEPTION 'attachment % is not an upload of user %', avatar, actor
            USING ERRCODE = '42501', HINT = 'Upload the picture with "purpose":"avatar" (chat.upload_avatar) and set the id it returns.';
    END IF;
    IF a.conversation_id IS NOT NULL THEN
        RAISE EXCEPTION 'attachment % was uploaded to conversation %, not as a profile picture', a.id, a.conversation_id
            USING ERRCODE = '22023', HINT = 'Upload the picture again with "purpose":"avatar" and no conversation.';
    END IF;
    PERFORM chat.check_avatar_file(a);
END
$$;

REVOKE ALL ON FUNCTION chat.check_user_avatar(bigint, text) FROM PUBLIC;

COMMENT ON FUNCTION chat.check_user_avatar(bigint, text) IS 'internal: raises unless an id names a ready image profile upload of the actor (42501, 22023, 55000)';

-- new function
CREATE FUNCTION chat.check_group_avatar(actor bigint, conv bigint, avatar text)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a chat.attachments;
BEGIN
    a := chat.avatar_attachment(avatar);
    IF a.id IS NULL OR a.conversation_id IS DISTINCT FROM conv
       OR (a.owner_id <> actor AND a.message_seq IS NULL) THEN
        RAISE EXCEPTION 'attachment % is not an upload to conversation %', avatar, conv
            USING ERRCODE = '42501', HINT = 'Upload the picture to the group ("purpose":"avatar" with the conversation) and set the id it returns.';
    END IF;
    PERFORM chat.check_avatar_file(a);
END
$$;

REVOKE ALL ON FUNCTION chat.check_group_avatar(bigint, bigint, text) FROM PUBLIC;

COMMENT ON FUNCTION chat.check_group_avatar(bigint, bigint, text) IS 'internal: raises unless an id names a ready image upload to the group the actor can see (42501, 22023, 55000)';

-- new function
CREATE FUNCTION chat.avatar_access(actor bigint, a chat.attachments)
RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF a.conversation_id IS NULL THEN
        PERFORM chat.require_actor(actor);
        IF a.owner_id = actor THEN
            RETURN true;
        END IF;
        IF NOT EXISTS (SELECT FROM chat.users u WHERE u.id = a.owner_id AND u.avatar = a.id::text) THEN
            RAISE EXCEPTION 'attachment % does not exist', a.id USING ERRCODE = 'P0002';
        END IF;
        IF EXISTS (SELECT FROM chat.blocks k WHERE k.blocker = a.owner_id AND k.blocked = actor) THEN
            RAISE EXCEPTION 'user % may not see the avatar of user %', actor, a.owner_id
                USING ERRCODE = '42501', HINT = 'The user has blocked you.';
        END IF;
        RETURN true;
    END IF;
    RETURN EXISTS (SELECT FROM chat.conversations c
                    WHERE c.id = a.conversation_id AND c.settings ->> 'avatar' = a.id::text)
       AND EXISTS (SELECT FROM chat.members m
                    WHERE m.conversation_id = a.conversation_id AND m.user_id = actor
                      AND m.left_at IS NULL);
END
$$;

REVOKE ALL ON FUNCTION chat.avatar_access(bigint, chat.attachments) FROM PUBLIC;

COMMENT ON FUNCTION chat.avatar_access(bigint, chat.attachments) IS 'internal: whether media_url serves an attachment as a current avatar (user: all but whom the owner blocked, 42501; group: members)';

-- new function
CREATE FUNCTION chat.avatar_cleanup()
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    DELETE FROM chat.attachments a
     WHERE a.conversation_id IS NULL
       AND a.created_at < now() - make_interval(secs => current_setting('chat.media_upload_timeout')::integer)
       AND NOT EXISTS (SELECT FROM chat.users u WHERE u.id = a.owner_id AND u.avatar = a.id::text);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

REVOKE ALL ON FUNCTION chat.avatar_cleanup() FROM PUBLIC;

COMMENT ON FUNCTION chat.avatar_cleanup() IS 'removes profile uploads older than chat.media_upload_timeout that are no current avatar; their bytes are queued for deletion';

CREATE OR REPLACE FUNCTION chat.media_message_gone()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM chat.attachments a
     WHERE a.conversation_id = OLD.conversation_id AND a.message_seq = OLD.seq
       -- Avatars (issue 15): a group's current picture stays until replaced
       -- (chat.group_avatar_replaced, 33_avatars.sql)
       AND NOT EXISTS (SELECT FROM chat.conversations c
                        WHERE c.id = OLD.conversation_id AND c.settings ->> 'avatar' = a.id::text);
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION chat.media_message_gone() IS 'trigger: removes the attachments of a deleted message (their bytes are queued for deletion), but not a group''s current picture';

CREATE FUNCTION chat.group_avatar_replaced(conv bigint, old text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF old IS NULL OR old !~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        RETURN;   -- none, or an id stored before 0.5.0
    END IF;
    DELETE FROM chat.attachments a
     WHERE a.id = old::uuid AND a.conversation_id = conv AND a.message_seq IS NOT NULL
       AND NOT EXISTS (SELECT FROM chat.messages m
                        WHERE m.conversation_id = conv AND m.seq = a.message_seq AND m.deleted_at IS NULL);
END
$$;
REVOKE ALL ON FUNCTION chat.group_avatar_replaced(bigint, text) FROM PUBLIC;

COMMENT ON FUNCTION chat.group_avatar_replaced(bigint, text) IS 'internal: removes a replaced group picture whose message was deleted while it was the picture';

-- End of avatars (issue 15).
