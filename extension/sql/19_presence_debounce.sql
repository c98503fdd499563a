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
