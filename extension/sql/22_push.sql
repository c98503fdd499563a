-- Push outbox (push.c fills it): rows for members with no online device.
-- A pusher claims due rows, delivers them, then completes or fails each.
-- A claim leases its rows for 5 minutes, after which a crashed pusher's
-- rows come due again.

-- Hands out up to batch due rows, oldest first, skipping rows another
-- pusher holds; counts the attempt and leases the rows for 5 minutes.
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
       SET attempts = p.attempts + 1, next_attempt_at = now() + interval '5 minutes'
     WHERE p.id IN (SELECT q.id FROM chat.push_outbox q
                     WHERE q.next_attempt_at <= now()
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

-- Delivery failed: records the error and retries with exponential backoff
-- (30 s, 1 min, 2 min, ... capped at 1 hour).  After chat.push_max_attempts
-- attempts the row is kept as given up (next_attempt_at infinity) for
-- inspection.  Returns true when it will be retried.
CREATE FUNCTION chat.fail_push(id bigint, error text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    tries integer;
    retry boolean;
BEGIN
    SELECT p.attempts INTO tries FROM chat.push_outbox p WHERE p.id = fail_push.id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'push % does not exist', fail_push.id USING ERRCODE = 'P0002';
    END IF;
    retry := tries < current_setting('chat.push_max_attempts')::integer;
    UPDATE chat.push_outbox p
       SET last_error = left(error, 1000),
           next_attempt_at = CASE WHEN retry
                                  THEN now() + least(interval '30 seconds' * power(2, greatest(tries - 1, 0)),
                                                     interval '1 hour')
                                  ELSE 'infinity' END
     WHERE p.id = fail_push.id;
    RETURN retry;
END
$$;

REVOKE ALL ON FUNCTION chat.claim_push(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.complete_push(bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.fail_push(bigint, text) FROM PUBLIC;

COMMENT ON FUNCTION chat.claim_push(integer) IS
    'hands out due push_outbox rows (FOR UPDATE SKIP LOCKED), leased for 5 minutes';
COMMENT ON FUNCTION chat.complete_push(bigint[]) IS 'removes delivered push_outbox rows';
COMMENT ON FUNCTION chat.fail_push(bigint, text) IS
    'records a failed push; retries with backoff until chat.push_max_attempts, then gives up';
