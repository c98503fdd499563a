-- chat 0.3.0 -> 0.4.0
--
-- complain if this script is sourced in psql rather than run by ALTER EXTENSION
\echo Use "ALTER EXTENSION chat UPDATE TO '0.4.0'" to load this file. \quit

-- Gateway at 100,000 (issue 11): connect batching
-- presence_audience in plpgsql (its plan kept; chat.connect calls it for every client)
CREATE OR REPLACE FUNCTION chat.presence_audience(user_id bigint)
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


-- Messenger (issue 15): expiry tells online members (expired event), the
-- broadcast fans out one event per batch, search picks its plan by what the
-- actor sees.

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

CREATE OR REPLACE FUNCTION chat.broadcast(title text, body text)
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


-- Monitoring (issue 11): the notifier workers' histograms.
CREATE FUNCTION chat.notifier_histograms(OUT histogram text, OUT bounds double precision[],
                                         OUT cumulative bigint[], OUT sum bigint)
RETURNS SETOF record LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'chat_notifier_histograms';
REVOKE ALL ON FUNCTION chat.notifier_histograms() FROM PUBLIC;
COMMENT ON FUNCTION chat.notifier_histograms() IS
    'notifier workers since start (all databases): queue_depth (events waiting per pass) and batch_events (events per NOTIFY); cumulative counts per bound, last = +Inf';
