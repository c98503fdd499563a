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
