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
