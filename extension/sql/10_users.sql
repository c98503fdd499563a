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
