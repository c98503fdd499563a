-- chat 0.2.0 -> 0.3.0
--
-- complain if this script is sourced in psql rather than run by ALTER EXTENSION
\echo Use "ALTER EXTENSION chat UPDATE TO '0.3.0'" to load this file. \quit

-- Presence debounce (issue 11): chat.presence_pending, chat.presence_grace,
-- presence_offline and presence_sweep (19_presence_debounce.sql); connect,
-- disconnect, node_reset, node_heartbeat and presence use them.
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

-- Gateway start: registers the node and forgets its sessions; users who
-- were online only there go offline.  Refused (55000) while
-- chat.token_secret is unset: notifications are signed with it and a
-- gateway drops unsigned ones, so such a node would silently get nothing.
CREATE OR REPLACE FUNCTION chat.node_reset(node text)
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
END
$$;

-- A device came online on node: session row; the user's first device
-- online sends presence to its peers.
CREATE OR REPLACE FUNCTION chat.connect(node text, user_id bigint, device_id integer)
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
CREATE OR REPLACE FUNCTION chat.disconnect(node text, user_id bigint, device_id integer)
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
CREATE OR REPLACE FUNCTION chat.presence(viewer bigint, user_ids bigint[])
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
COMMENT ON FUNCTION chat.connect(text, bigint, integer) IS 'a device is online on a node; first device sends presence unless back within chat.presence_grace';
COMMENT ON FUNCTION chat.disconnect(text, bigint, integer) IS 'a device went offline; last device sets last_seen, presence after chat.presence_grace';
