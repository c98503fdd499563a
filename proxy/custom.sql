-- chat_proxy functions written by hand (the rest is generated from
-- proxy/routing.conf).  client_request routes one client frame by its
-- fields: "conversation" -> that conversation's partition; sync and
-- conversations -> every partition, merged with the same paging; direct
-- -> the pair's partition; create_group -> round robin; user-wide writes
-- (profile, privacy, blocks, push registration) -> every partition;
-- everything else -> the user's home partition.

-- Presence: sessions and users are on every partition, but whether a
-- 'contacts' privacy lets the viewer see a user depends on their direct
-- conversation, which lives on the pair's partition.  Every partition
-- answers; a user is online / has a last_seen when any partition shows it.
CREATE FUNCTION chat_proxy.presence_all(viewer bigint, user_ids bigint[])
RETURNS TABLE (user_id bigint, online boolean, last_seen timestamptz)
LANGUAGE plproxy SECURITY DEFINER AS $$
    CLUSTER 'chat_partitions';
    RUN ON ALL;
    TARGET chat.presence;
$$;

CREATE FUNCTION chat.presence(viewer bigint, user_ids bigint[])
RETURNS TABLE (user_id bigint, online boolean, last_seen timestamptz)
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT p.user_id, bool_or(p.online), max(p.last_seen)
      FROM chat_proxy.presence_all(viewer, user_ids) p
     GROUP BY p.user_id
     ORDER BY p.user_id
$$;

-- True for the error of a call whose partition could not be reached: a
-- connection SQLSTATE, or PL/Proxy's own failure to connect (its messages
-- without "REMOTE"); false for errors the partition raised.
CREATE FUNCTION chat_proxy.unreachable(state text, message text)
RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT state LIKE '08%' OR state LIKE '57P0_'
        OR (message LIKE 'PL/Proxy function %' AND message NOT LIKE '%REMOTE %')
$$;

-- Contact search (issue 15): every partition answers chat.search_users;
-- a user is a contact when any partition says so (the pair's direct
-- conversation lives on one of them), then the order of chat.search_users.
CREATE FUNCTION chat_proxy.search_users_all(actor bigint, query text, lim integer)
RETURNS TABLE (user_id bigint, handle text, display_name text, about text, avatar text, contact boolean)
LANGUAGE plproxy SECURITY DEFINER AS $$
    CLUSTER 'chat_partitions';
    RUN ON ALL;
    TARGET chat.search_users;
$$;

CREATE FUNCTION chat.search_users(actor bigint, query text, lim integer DEFAULT 20)
RETURNS TABLE (user_id bigint, handle text, display_name text, about text, avatar text, contact boolean)
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT s.user_id, s.handle, s.display_name, s.about, s.avatar, s.contact
      FROM (SELECT p.user_id, min(p.handle) AS handle, min(p.display_name) AS display_name,
                   min(p.about) AS about, min(p.avatar) AS avatar, bool_or(p.contact) AS contact
              FROM chat_proxy.search_users_all(actor, query, lim) p
             GROUP BY p.user_id) s
     ORDER BY s.contact DESC,
              starts_with(lower(s.handle) COLLATE "C", lower(query)) DESC,
              CASE WHEN starts_with(lower(s.handle) COLLATE "C", lower(query)) THEN lower(s.handle)
                   ELSE lower(s.display_name) END COLLATE "C",
              s.user_id
     LIMIT lim
$$;

REVOKE ALL ON FUNCTION chat_proxy.search_users_all(bigint, text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.search_users(bigint, text, integer) FROM PUBLIC;
COMMENT ON FUNCTION chat_proxy.search_users_all(bigint, text, integer) IS 'chat_proxy: chat.search_users on every partition';
COMMENT ON FUNCTION chat.search_users(bigint, text, integer) IS
    'chat_proxy (custom): search_users merged over every partition (a contact where any partition says so)';

-- Sessions: chat.connect and chat.disconnect run on every partition one at
-- a time, and a partition that cannot be reached is skipped (WARNING), so
-- that clients still connect while a partition is down.  Nothing is lost:
-- when the partition returns, each gateway's connection to it runs
-- node_reset there and registers every live session again (docs/scaling.md).
-- A kept connection ended by the partition's restart (57P0x) is retried
-- once first.  Other errors (an unknown device: P0002) propagate.
CREATE FUNCTION chat_proxy.partition_count()
RETURNS integer
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT count(*)::integer
      FROM pg_foreign_server s, unnest(s.srvoptions) o
     WHERE s.srvname = 'chat_partitions' AND o ~ '^p[0-9]+='
$$;

CREATE FUNCTION chat_proxy.session_on(part integer, op text, node text, user_id bigint, device_id integer)
RETURNS void
LANGUAGE plproxy SECURITY DEFINER AS $$
    CLUSTER 'chat_partitions';
    RUN ON part;
    SELECT CASE WHEN op = 'connect' THEN chat.connect(node, user_id, device_id)
                ELSE chat.disconnect(node, user_id, device_id) END;
$$;

CREATE FUNCTION chat_proxy.session_everywhere(op text, node text, user_id bigint, device_id integer)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer := chat_proxy.partition_count();
    reached integer := 0;
BEGIN
    IF n = 0 THEN
        RAISE EXCEPTION 'chat_proxy has no partitions' USING ERRCODE = '55000',
            HINT = 'SELECT chat_proxy.configure(ARRAY[...]) first.';
    END IF;
    FOR p IN 0 .. n - 1 LOOP
        BEGIN
            BEGIN
                PERFORM chat_proxy.session_on(p, op, node, user_id, device_id);
            EXCEPTION WHEN admin_shutdown OR crash_shutdown OR cannot_connect_now THEN
                PERFORM chat_proxy.session_on(p, op, node, user_id, device_id);
            END;
            reached := reached + 1;
        EXCEPTION WHEN OTHERS THEN
            IF NOT chat_proxy.unreachable(SQLSTATE, SQLERRM) THEN
                RAISE;
            END IF;
            RAISE WARNING 'chat.%: partition % unreachable, skipped (node % registers again when it returns): %',
                op, p, node, SQLERRM;
        END;
    END LOOP;
    IF reached = 0 THEN
        RAISE EXCEPTION 'chat.%: no partition reachable', op USING ERRCODE = '08006';
    END IF;
END
$$;

CREATE FUNCTION chat.connect(node text, user_id bigint, device_id integer)
RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT chat_proxy.session_everywhere('connect', node, user_id, device_id)
$$;

CREATE FUNCTION chat.disconnect(node text, user_id bigint, device_id integer)
RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT chat_proxy.session_everywhere('disconnect', node, user_id, device_id)
$$;

-- Connection storms (issue 11): the gateway's batch of registrations, each
-- session as the proxy's chat.connect above (every partition that
-- answers), in its own subtransaction, one row per session.
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

-- One frame on one partition (hash as in the generated functions).
CREATE FUNCTION chat_proxy.request_on(part integer, node text, user_id bigint, device_id integer, request jsonb)
RETURNS jsonb
LANGUAGE plproxy SECURITY DEFINER AS $$
    CLUSTER 'chat_partitions';
    RUN ON part;
    SELECT chat.client_request(node, user_id, device_id, request);
$$;

-- One frame on every partition.
CREATE FUNCTION chat_proxy.request_all(node text, user_id bigint, device_id integer, request jsonb)
RETURNS SETOF jsonb
LANGUAGE plproxy SECURITY DEFINER AS $$
    CLUSTER 'chat_partitions';
    RUN ON ALL;
    SELECT chat.client_request(node, user_id, device_id, request);
$$;

-- request_on with one retry when PL/Proxy's kept connection to the
-- partition was ended by its restart (57P0x: the statement did not run).
CREATE FUNCTION chat_proxy.request_one(part integer, node text, user_id bigint, device_id integer, request jsonb)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN chat_proxy.request_on(part, node, user_id, device_id, request);
EXCEPTION WHEN admin_shutdown OR crash_shutdown OR cannot_connect_now THEN
    RETURN chat_proxy.request_on(part, node, user_id, device_id, request);
END
$$;

-- request_all's frames.  Read-only requests (partial true: sync,
-- conversations, presence) survive a partition that cannot be reached:
-- they are then asked one partition at a time and the unreachable ones are
-- left out (WARNING).  Nothing is lost: what a left-out partition holds
-- stays unacked, and when it returns every gateway tells its clients to
-- resync.  Writes to every partition (partial false) fail instead.
CREATE FUNCTION chat_proxy.request_every(node text, user_id bigint, device_id integer, request jsonb, partial boolean)
RETURNS jsonb[]
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    frames jsonb[] := '{}';
BEGIN
    BEGIN
        RETURN ARRAY(SELECT chat_proxy.request_all(node, user_id, device_id, request));
    EXCEPTION WHEN OTHERS THEN
        IF NOT partial OR NOT chat_proxy.unreachable(SQLSTATE, SQLERRM) THEN
            RAISE;
        END IF;
    END;
    FOR p IN 0 .. chat_proxy.partition_count() - 1 LOOP
        BEGIN
            frames := frames || chat_proxy.request_one(p, node, user_id, device_id, request);
        EXCEPTION WHEN OTHERS THEN
            IF NOT chat_proxy.unreachable(SQLSTATE, SQLERRM) THEN
                RAISE;
            END IF;
            RAISE WARNING 'chat.client_request %: partition % unreachable, left out: %',
                request ->> 'type', p, SQLERRM;
        END;
    END LOOP;
    IF cardinality(frames) = 0 THEN
        RAISE EXCEPTION 'no partition reachable' USING ERRCODE = '08006';
    END IF;
    RETURN frames;
END
$$;

-- A JSON id field as bigint, NULL when it is not a plain integer (the
-- partition that gets the frame then rejects it with the usual SQLSTATE).
CREATE FUNCTION chat_proxy.json_id(v jsonb)
RETURNS bigint
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN jsonb_typeof(v) IN ('number', 'string') AND v #>> '{}' ~ '^-?[0-9]{1,18}$'
                THEN (v #>> '{}')::bigint END
$$;

-- The first error frame among frames, else NULL.
CREATE FUNCTION chat_proxy.first_error(frames jsonb[])
RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT f FROM unnest(frames) f WHERE f ->> 'type' = 'error' LIMIT 1
$$;

-- Media: an attachment id (a random uuid) does not say where it lives, so
-- media_url asks each partition in turn; the one that holds the upload
-- answers, the others have none (P0002).  O(partitions) per call; uploads
-- themselves route by their conversation.
CREATE FUNCTION chat_proxy.media_url_on(part integer, actor bigint, attachment uuid, thumbnail boolean)
RETURNS jsonb
LANGUAGE plproxy SECURITY DEFINER AS $$
    CLUSTER 'chat_partitions';
    RUN ON part;
    -- TARGET would pass part too: chat.media_url(integer, bigint, uuid, boolean)
    SELECT chat.media_url(actor, attachment, thumbnail);
$$;

CREATE FUNCTION chat.media_url(actor bigint, attachment uuid, thumbnail boolean DEFAULT false)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    FOR p IN 0 .. chat_proxy.partition_count() - 1 LOOP
        BEGIN
            RETURN chat_proxy.media_url_on(p, actor, attachment, thumbnail);
        EXCEPTION WHEN no_data_found THEN
            NULL;   -- not this partition's
        END;
    END LOOP;
    RAISE EXCEPTION 'attachment % does not exist', attachment USING ERRCODE = 'P0002';
END
$$;
REVOKE ALL ON FUNCTION chat_proxy.media_url_on(integer, bigint, uuid, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.media_url(bigint, uuid, boolean) FROM PUBLIC;
COMMENT ON FUNCTION chat_proxy.media_url_on(integer, bigint, uuid, boolean) IS 'chat_proxy: chat.media_url on one partition';
COMMENT ON FUNCTION chat.media_url(bigint, uuid, boolean) IS 'chat_proxy (custom): chat.media_url on the partition that holds the attachment';

-- Invites: a code does not say which partition holds its group, so join
-- and revoke_invite ask each partition in turn (the others: P0002).
CREATE FUNCTION chat_proxy.join_on(part integer, actor bigint, code text)
RETURNS bigint
LANGUAGE plproxy SECURITY DEFINER AS $$
    CLUSTER 'chat_partitions';
    RUN ON part;
    SELECT chat."join"(actor, code);   -- TARGET cannot name a quoted identifier
$$;

CREATE FUNCTION chat."join"(actor bigint, code text)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    FOR p IN 0 .. chat_proxy.partition_count() - 1 LOOP
        BEGIN
            RETURN chat_proxy.join_on(p, actor, code);
        EXCEPTION WHEN no_data_found THEN
            NULL;   -- not this partition's
        END;
    END LOOP;
    RAISE EXCEPTION 'invite % does not exist', code USING ERRCODE = 'P0002';
END
$$;

CREATE FUNCTION chat_proxy.revoke_invite_on(part integer, actor bigint, code text)
RETURNS void
LANGUAGE plproxy SECURITY DEFINER AS $$
    CLUSTER 'chat_partitions';
    RUN ON part;
    SELECT chat.revoke_invite(actor, code);   -- TARGET would pass part too
$$;

CREATE FUNCTION chat.revoke_invite(actor bigint, code text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    FOR p IN 0 .. chat_proxy.partition_count() - 1 LOOP
        BEGIN
            PERFORM chat_proxy.revoke_invite_on(p, actor, code);
            RETURN;
        EXCEPTION WHEN no_data_found THEN
            NULL;   -- not this partition's
        END;
    END LOOP;
    RAISE EXCEPTION 'invite % does not exist', code USING ERRCODE = 'P0002';
END
$$;

-- Broadcast: partition 0 holds every user's service conversation (users
-- are on every partition), so a broadcast is posted there once.
CREATE FUNCTION chat.broadcast(title text, body text)
RETURNS bigint
LANGUAGE plproxy SECURITY DEFINER AS $$
    CLUSTER 'chat_partitions';
    RUN ON 0;
$$;
REVOKE ALL ON FUNCTION chat_proxy.join_on(integer, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat."join"(bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat_proxy.revoke_invite_on(integer, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.revoke_invite(bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.broadcast(text, text) FROM PUBLIC;
COMMENT ON FUNCTION chat_proxy.join_on(integer, bigint, text) IS 'chat_proxy: chat.join on one partition';
COMMENT ON FUNCTION chat."join"(bigint, text) IS 'chat_proxy (custom): chat.join on the partition that holds the invite';
COMMENT ON FUNCTION chat_proxy.revoke_invite_on(integer, bigint, text) IS 'chat_proxy: chat.revoke_invite on one partition';
COMMENT ON FUNCTION chat.revoke_invite(bigint, text) IS 'chat_proxy (custom): chat.revoke_invite on the partition that holds the invite';
COMMENT ON FUNCTION chat.broadcast(text, text) IS 'chat_proxy (custom): chat.broadcast on partition 0 (every user has a service conversation there)';

-- E2E (issue 12): a device's keys and to-device inbox live on its owner's
-- home partition (hashint8(user id)), but the conversation two users share
-- (the peer rule of keys_claim and to_device: 42501 between strangers) may
-- live on any partition.  So the proxy checks the rule over every
-- partition, then claims or queues on each owner's home partition with
-- chat.keys_claim_local / chat.to_device_local (check_peers false).  A
-- request whose shape the partitions would refuse goes whole to the
-- caller's home partition, which refuses it before doing anything (the
-- checks here mirror the partition's exactly).  Each partition's part
-- commits on its own: a to_device retried with the same txn stores nothing
-- twice on the partitions that took it; a claim that fails on one
-- partition may have used up one-time keys on another.

-- The users who share a current conversation with user_id, on every partition.
CREATE FUNCTION chat_proxy.e2e_peers_all(user_id bigint)
RETURNS SETOF bigint
LANGUAGE plproxy SECURITY DEFINER AS $$
    CLUSTER 'chat_partitions';
    RUN ON ALL;
    SELECT unnest(chat.e2e_peers(user_id));
$$;

-- 42501 unless every user of others is actor or shares a conversation with
-- actor on some partition (chat.require_e2e_peer over every partition).
CREATE FUNCTION chat_proxy.require_e2e_peers(actor bigint, others bigint[])
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    bad bigint;
BEGIN
    IF coalesce(cardinality(ARRAY(SELECT o FROM unnest(others) o WHERE o <> actor)), 0) = 0 THEN
        RETURN;
    END IF;
    SELECT o INTO bad
      FROM unnest(others) WITH ORDINALITY AS x(o, n)
     WHERE o <> actor AND o <> ALL (ARRAY(SELECT chat_proxy.e2e_peers_all(actor)))
     ORDER BY n LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'user % shares no conversation with user %', actor, bad
            USING ERRCODE = '42501', HINT = 'Keys and envelopes go only to the devices of users one talks to.';
    END IF;
END
$$;

-- The partition of a user's home (PL/Proxy's RUN ON hashint8 mapping).
CREATE FUNCTION chat_proxy.home_partition(user_id bigint)
RETURNS integer
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT hashint8(user_id) & (chat_proxy.partition_count() - 1)
$$;

-- True when a key claim list has the shape chat.keys_claim_local accepts.
CREATE FUNCTION chat_proxy.claim_list_ok(devices jsonb)
RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_typeof(devices) = 'array' AND jsonb_array_length(devices) <= 1000
       AND NOT EXISTS (SELECT FROM jsonb_array_elements(devices) e
                        WHERE jsonb_typeof(e.value) IS DISTINCT FROM 'object'
                           OR jsonb_typeof(e.value -> 'user') IS DISTINCT FROM 'number'
                           OR jsonb_typeof(e.value -> 'device') IS DISTINCT FROM 'number'
                           OR (e.value ->> 'user') !~ '^-?[0-9]{1,18}$'
                           OR (e.value ->> 'device') !~ '^[0-9]{1,9}$')
$$;

-- True when envelopes and txn have the shape chat.to_device_local accepts.
CREATE FUNCTION chat_proxy.envelopes_ok(messages jsonb, txn text)
RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT txn IS NOT NULL AND length(txn) BETWEEN 1 AND 128
       AND jsonb_typeof(messages) = 'array' AND jsonb_array_length(messages) BETWEEN 1 AND 1024
       AND NOT EXISTS (SELECT FROM jsonb_array_elements(messages) e
                        WHERE jsonb_typeof(e.value) IS DISTINCT FROM 'object'
                           OR jsonb_typeof(e.value -> 'user') IS DISTINCT FROM 'number'
                           OR jsonb_typeof(e.value -> 'device') IS DISTINCT FROM 'number'
                           OR (e.value ->> 'user') !~ '^-?[0-9]{1,18}$'
                           OR (e.value ->> 'device') !~ '^[0-9]{1,9}$'
                           OR jsonb_typeof(e.value -> 'type') IS DISTINCT FROM 'string'
                           OR jsonb_typeof(e.value -> 'ciphertext') IS DISTINCT FROM 'string'
                           OR (e.value ->> 'type') !~ '^[A-Za-z0-9_.:-]{1,32}$'
                           OR (e.value ->> 'ciphertext') !~ '^[A-Za-z0-9+/_=-]+$'
                           OR length(e.value ->> 'ciphertext') > 6000)
$$;

CREATE FUNCTION chat_proxy.keys_claim_on(part integer, user_id bigint, device_id integer, devices jsonb,
                                         check_peers boolean)
RETURNS TABLE(claimed_user bigint, claimed_device integer, identity_key text, signed_prekey jsonb,
              one_time_key jsonb, fallback boolean)
LANGUAGE plproxy SECURITY DEFINER AS $$
    CLUSTER 'chat_partitions';
    RUN ON part;
    SELECT * FROM chat.keys_claim_local(user_id, device_id, devices, check_peers);
$$;

CREATE FUNCTION chat_proxy.to_device_on(part integer, user_id bigint, device_id integer, messages jsonb,
                                        txn text, check_peers boolean)
RETURNS void
LANGUAGE plproxy SECURITY DEFINER AS $$
    CLUSTER 'chat_partitions';
    RUN ON part;
    SELECT chat.to_device_local(user_id, device_id, messages, txn, check_peers);
$$;

CREATE FUNCTION chat.keys_claim(user_id bigint, device_id integer, devices jsonb)
RETURNS TABLE(claimed_user bigint, claimed_device integer, identity_key text, signed_prekey jsonb,
              one_time_key jsonb, fallback boolean)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    p integer;
    ns bigint[];
    acc jsonb := '[]';
BEGIN
    IF NOT coalesce(chat_proxy.claim_list_ok(devices), false) THEN
        -- refused by the partition before it claims anything
        RETURN QUERY SELECT * FROM chat_proxy.keys_claim_on(chat_proxy.home_partition(user_id),
                                                             user_id, device_id, devices, true);
        RETURN;
    END IF;
    PERFORM chat_proxy.require_e2e_peers(user_id,
        ARRAY(SELECT (e ->> 'user')::bigint FROM jsonb_array_elements(devices) e));
    FOR p IN SELECT DISTINCT chat_proxy.home_partition((e ->> 'user')::bigint)
               FROM jsonb_array_elements(devices) e LOOP
        ns := ARRAY(SELECT x.n FROM jsonb_array_elements(devices) WITH ORDINALITY AS x(e, n)
                     WHERE chat_proxy.home_partition((x.e ->> 'user')::bigint) = p ORDER BY x.n);
        acc := acc || coalesce((
            SELECT jsonb_agg(to_jsonb(r) || jsonb_build_object('n', ns[r.k]))
              FROM chat_proxy.keys_claim_on(p, user_id, device_id,
                       (SELECT jsonb_agg(devices -> (n::integer - 1) ORDER BY n) FROM unnest(ns) n), false)
                   WITH ORDINALITY AS r(claimed_user, claimed_device, identity_key, signed_prekey,
                                        one_time_key, fallback, k)), '[]');
    END LOOP;
    RETURN QUERY
    SELECT x.claimed_user, x.claimed_device, x.identity_key, x.signed_prekey, x.one_time_key, x.fallback
      FROM jsonb_to_recordset(acc) AS x(claimed_user bigint, claimed_device integer, identity_key text,
                                       signed_prekey jsonb, one_time_key jsonb, fallback boolean, n bigint)
     ORDER BY x.n;
END
$$;

CREATE FUNCTION chat.to_device(user_id bigint, device_id integer, messages jsonb, txn text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p integer;
BEGIN
    IF NOT coalesce(chat_proxy.envelopes_ok(messages, txn), false) THEN
        -- refused by the partition before it stores anything
        PERFORM chat_proxy.to_device_on(chat_proxy.home_partition(user_id), user_id, device_id,
                                        messages, txn, true);
        RETURN;
    END IF;
    PERFORM chat_proxy.require_e2e_peers(user_id,
        ARRAY(SELECT (e ->> 'user')::bigint FROM jsonb_array_elements(messages) e));
    FOR p IN SELECT DISTINCT chat_proxy.home_partition((e ->> 'user')::bigint)
               FROM jsonb_array_elements(messages) e ORDER BY 1 LOOP
        PERFORM chat_proxy.to_device_on(p, user_id, device_id,
            (SELECT jsonb_agg(x.e ORDER BY x.n) FROM jsonb_array_elements(messages) WITH ORDINALITY AS x(e, n)
              WHERE chat_proxy.home_partition((x.e ->> 'user')::bigint) = p),
            txn, false);
    END LOOP;
END
$$;

-- keys_claim and to_device frames of client_request, built here (the
-- partitions' dispatcher would apply the peer rule to its own conversations
-- only); a malformed request goes whole to the home partition.
CREATE FUNCTION chat_proxy.e2e_request(node text, user_id bigint, device_id integer, request jsonb)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rtype text := request ->> 'type';
    result jsonb;
BEGIN
    IF (rtype = 'keys_claim' AND NOT coalesce(chat_proxy.claim_list_ok(request -> 'devices'), false))
       OR (rtype = 'to_device' AND (jsonb_typeof(request -> 'txn') IS DISTINCT FROM 'string'
                                    OR NOT coalesce(chat_proxy.envelopes_ok(request -> 'messages',
                                                                            request ->> 'txn'), false))) THEN
        RETURN chat_proxy.request_one(chat_proxy.home_partition(user_id), node, user_id, device_id, request);
    END IF;
    BEGIN
        IF rtype = 'keys_claim' THEN
            result := jsonb_build_object('bundles', coalesce((
                SELECT jsonb_agg(jsonb_build_object('user', b.claimed_user, 'device', b.claimed_device,
                                                    'identity_key', b.identity_key,
                                                    'signed_prekey', b.signed_prekey,
                                                    'one_time_key', b.one_time_key)
                                 || CASE WHEN b.fallback THEN '{"fallback": true}'::jsonb ELSE '{}'::jsonb END
                                 ORDER BY b.ordinality)
                  FROM chat.keys_claim(user_id, device_id, request -> 'devices') WITH ORDINALITY AS b), '[]'));
        ELSE
            PERFORM chat.to_device(user_id, device_id, request -> 'messages', request ->> 'txn');
            result := '{}';
        END IF;
    EXCEPTION WHEN OTHERS THEN
        IF chat_proxy.unreachable(SQLSTATE, SQLERRM) THEN
            RAISE;
        END IF;
        RETURN jsonb_build_object('id', coalesce(request -> 'id', 'null'::jsonb), 'type', 'error',
                                  'code', SQLSTATE,
                                  'error', coalesce(chat.condition_name(SQLSTATE), 'error'),
                                  'message', SQLERRM);
    END;
    RETURN jsonb_build_object('id', coalesce(request -> 'id', 'null'::jsonb), 'type', 'ok', 'result', result);
END
$$;

REVOKE ALL ON FUNCTION chat_proxy.e2e_peers_all(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat_proxy.require_e2e_peers(bigint, bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat_proxy.keys_claim_on(integer, bigint, integer, jsonb, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat_proxy.to_device_on(integer, bigint, integer, jsonb, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat_proxy.e2e_request(text, bigint, integer, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.keys_claim(bigint, integer, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.to_device(bigint, integer, jsonb, text) FROM PUBLIC;
COMMENT ON FUNCTION chat_proxy.e2e_peers_all(bigint) IS 'chat_proxy: chat.e2e_peers on every partition';
COMMENT ON FUNCTION chat_proxy.require_e2e_peers(bigint, bigint[]) IS 'chat_proxy: the e2e peer rule (42501) over every partition';
COMMENT ON FUNCTION chat_proxy.home_partition(bigint) IS 'chat_proxy: the home partition of a user (hashint8)';
COMMENT ON FUNCTION chat_proxy.claim_list_ok(jsonb) IS 'chat_proxy: a keys_claim device list the partitions accept';
COMMENT ON FUNCTION chat_proxy.envelopes_ok(jsonb, text) IS 'chat_proxy: to_device envelopes and txn the partitions accept';
COMMENT ON FUNCTION chat_proxy.keys_claim_on(integer, bigint, integer, jsonb, boolean) IS 'chat_proxy: chat.keys_claim_local on one partition';
COMMENT ON FUNCTION chat_proxy.to_device_on(integer, bigint, integer, jsonb, text, boolean) IS 'chat_proxy: chat.to_device_local on one partition';
COMMENT ON FUNCTION chat_proxy.e2e_request(text, bigint, integer, jsonb) IS 'chat_proxy: the keys_claim and to_device frames of client_request';
COMMENT ON FUNCTION chat.keys_claim(bigint, integer, jsonb) IS
    'chat_proxy (custom): the peer rule over every partition, then each bundle claimed on its owner''s home partition';
COMMENT ON FUNCTION chat.to_device(bigint, integer, jsonb, text) IS
    'chat_proxy (custom): the peer rule over every partition, then each envelope queued on its recipient''s home partition';

CREATE FUNCTION chat.client_request(node text, user_id bigint, device_id integer, request jsonb)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rtype text := CASE WHEN jsonb_typeof(request) = 'object' THEN request ->> 'type' END;
    home integer := hashint8(coalesce(user_id, 0));
    conv bigint := CASE WHEN jsonb_typeof(request) = 'object' THEN chat_proxy.json_id(request -> 'conversation') END;
    lim bigint;
    frames jsonb[];
    err jsonb;
    merged jsonb;
    todev jsonb;
BEGIN
    -- Avatars (issue 15): a new avatar is a profile upload, on the actor's home
    -- partition only, which alone checks it: a refusal there changes no partition.
    IF rtype = 'set_profile' AND jsonb_typeof(request -> 'avatar') = 'string' AND request ->> 'avatar' <> '' THEN
        err := chat_proxy.request_one(home, node, user_id, device_id, request);
        IF err ->> 'type' = 'error' THEN
            RETURN err;
        END IF;
    END IF;
    IF rtype IN ('sync', 'conversations', 'presence', 'search_users', 'set_profile', 'set_privacy', 'block', 'unblock',
                 'register_push', 'unregister_push', 'set_push_previews') THEN
        frames := chat_proxy.request_every(node, user_id, device_id, request, rtype IN ('sync', 'conversations', 'presence', 'search_users'));
        err := chat_proxy.first_error(frames);
        IF err IS NOT NULL THEN
            RETURN err;
        END IF;
        IF rtype = 'sync' THEN
            lim := coalesce(chat_proxy.json_id(request -> 'limit'), 500);
            SELECT coalesce(jsonb_agg(m ORDER BY (m ->> 'conversation')::bigint, (m ->> 'seq')::bigint), '[]')
              INTO merged
              FROM (SELECT m FROM unnest(frames) f, jsonb_array_elements(f -> 'result' -> 'messages') m
                     ORDER BY (m ->> 'conversation')::bigint, (m ->> 'seq')::bigint LIMIT lim) page;
            -- E2E: the device's to-device inbox (on its home partition only)
            SELECT coalesce(jsonb_agg(t ORDER BY (t ->> 'id')::bigint), '[]') INTO todev
              FROM unnest(frames) f, jsonb_array_elements(coalesce(f -> 'result' -> 'to_device', '[]')) t;
            RETURN jsonb_set(frames[1], '{result}',
                             jsonb_build_object('messages', merged,
                                                'more', jsonb_array_length(merged) >= lim
                                                        OR EXISTS (SELECT FROM unnest(frames) f
                                                                    WHERE jsonb_array_length(coalesce(f -> 'result' -> 'to_device', '[]')) >= 100
                                                                      AND (f -> 'result' ->> 'more')::boolean))
                             || CASE WHEN jsonb_array_length(todev) > 0
                                     THEN jsonb_build_object('to_device', todev) ELSE '{}' END);
        ELSIF rtype = 'conversations' THEN
            lim := coalesce(chat_proxy.json_id(request -> 'limit'), 50);
            SELECT coalesce(jsonb_agg(c ORDER BY (c ->> 'last_activity')::timestamptz DESC,
                                                 (c ->> 'conversation')::bigint DESC), '[]')
              INTO merged
              FROM (SELECT c FROM unnest(frames) f, jsonb_array_elements(f -> 'result' -> 'conversations') c
                     ORDER BY (c ->> 'last_activity')::timestamptz DESC, (c ->> 'conversation')::bigint DESC
                     LIMIT lim) page;
            RETURN jsonb_set(frames[1], '{result}', jsonb_build_object('conversations', merged));
        ELSIF rtype = 'search_users' THEN
            -- contact search (issue 15): merged as chat.search_users above
            lim := chat_proxy.json_id(request -> 'limit');
            SELECT coalesce(jsonb_agg(u ORDER BY (u ->> 'contact')::boolean DESC, hm DESC, k COLLATE "C",
                                                 (u ->> 'user')::bigint), '[]')
              INTO merged
              FROM (SELECT u, hm, k FROM (
                        SELECT DISTINCT ON ((u ->> 'user')::bigint)
                               u || jsonb_build_object('contact', bool_or((u ->> 'contact')::boolean)
                                                                  OVER (PARTITION BY u ->> 'user')) AS u,
                               starts_with(lower(u ->> 'handle'), lower(request ->> 'query')) AS hm,
                               CASE WHEN starts_with(lower(u ->> 'handle'), lower(request ->> 'query'))
                                    THEN lower(u ->> 'handle') ELSE lower(u ->> 'display_name') END AS k
                          FROM unnest(frames) f, jsonb_array_elements(f -> 'result' -> 'users') u
                         ORDER BY (u ->> 'user')::bigint) d
                     ORDER BY (u ->> 'contact')::boolean DESC, hm DESC, k COLLATE "C", (u ->> 'user')::bigint
                     LIMIT coalesce(lim, 20)) page;
            RETURN jsonb_set(frames[1], '{result}', jsonb_build_object('users', merged));
        ELSIF rtype = 'presence' THEN
            SELECT coalesce(jsonb_agg(jsonb_build_object('user', uid, 'online', online, 'last_seen', seen)
                                      ORDER BY uid), '[]')
              INTO merged
              FROM (SELECT (u ->> 'user')::bigint AS uid, bool_or((u ->> 'online')::boolean) AS online,
                           max(u -> 'last_seen' #>> '{}') AS seen
                      FROM unnest(frames) f, jsonb_array_elements(f -> 'result' -> 'users') u
                     GROUP BY 1) m;
            RETURN jsonb_set(frames[1], '{result}', jsonb_build_object('users', merged));
        END IF;
        RETURN frames[1];
    ELSIF rtype IN ('keys_claim', 'to_device') THEN
        -- E2E: the peer rule over every partition, keys and inboxes on each owner's home
        RETURN chat_proxy.e2e_request(node, user_id, device_id, request);
    ELSIF rtype = 'keys_query' THEN
        -- E2E: each user's keys live on the user's home partition
        frames := chat_proxy.request_every(node, user_id, device_id, request, false);
        err := chat_proxy.first_error(frames);
        IF err IS NOT NULL THEN
            RETURN err;
        END IF;
        SELECT coalesce(jsonb_agg(d ORDER BY (d ->> 'user')::bigint, (d ->> 'device')::integer), '[]')
          INTO merged
          FROM unnest(frames) f, jsonb_array_elements(f -> 'result' -> 'devices') d;
        RETURN jsonb_set(frames[1], '{result}', jsonb_build_object('devices', merged));
    ELSIF rtype IN ('media_url', 'join', 'revoke_invite') THEN
        -- the partition holding the attachment or invite answers; the others: P0002
        FOR p IN 0 .. chat_proxy.partition_count() - 1 LOOP
            err := chat_proxy.request_one(p, node, user_id, device_id, request);
            IF err ->> 'type' <> 'error' OR err ->> 'code' <> 'P0002' THEN
                RETURN err;
            END IF;
        END LOOP;
        RETURN err;
    ELSIF rtype = 'direct' THEN
        IF chat_proxy.json_id(request -> 'user') IS NOT NULL THEN
            home := chat_proxy.pair_partition(user_id, chat_proxy.json_id(request -> 'user'));
        END IF;
    ELSIF rtype = 'create_group' THEN
        home := chat_proxy.next_partition();
    ELSIF conv IS NOT NULL THEN
        home := chat_proxy.conversation_partition(conv);
    END IF;
    RETURN chat_proxy.request_one(home, node, user_id, device_id, request);
END
$$;

REVOKE ALL ON FUNCTION chat_proxy.request_on(integer, text, bigint, integer, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat_proxy.request_all(text, bigint, integer, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat_proxy.request_one(integer, text, bigint, integer, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat_proxy.request_every(text, bigint, integer, jsonb, boolean) FROM PUBLIC;
COMMENT ON FUNCTION chat_proxy.request_one(integer, text, bigint, integer, jsonb) IS 'chat_proxy: request_on, once more after a partition restart (57P0x)';
COMMENT ON FUNCTION chat_proxy.request_every(text, bigint, integer, jsonb, boolean) IS 'chat_proxy: request_all as an array; partial: unreachable partitions left out';
REVOKE ALL ON FUNCTION chat.client_request(text, bigint, integer, jsonb) FROM PUBLIC;
COMMENT ON FUNCTION chat_proxy.request_on(integer, text, bigint, integer, jsonb) IS 'chat_proxy: one client frame on the partition of a hash';
COMMENT ON FUNCTION chat_proxy.request_all(text, bigint, integer, jsonb) IS 'chat_proxy: one client frame on every partition';
REVOKE ALL ON FUNCTION chat_proxy.presence_all(bigint, bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.presence(bigint, bigint[]) FROM PUBLIC;
COMMENT ON FUNCTION chat_proxy.presence_all(bigint, bigint[]) IS 'chat_proxy: chat.presence on every partition';
COMMENT ON FUNCTION chat.presence(bigint, bigint[]) IS 'chat_proxy (custom): presence merged over every partition (visible where any partition shows it)';
REVOKE ALL ON FUNCTION chat_proxy.session_on(integer, text, text, bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat_proxy.session_everywhere(text, text, bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.connect(text, bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.disconnect(text, bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.connect_many(text, bigint[], integer[]) FROM PUBLIC;
COMMENT ON FUNCTION chat_proxy.unreachable(text, text) IS 'chat_proxy: whether an error means the partition could not be reached';
COMMENT ON FUNCTION chat_proxy.partition_count() IS 'chat_proxy: number of partitions configured (options p0 .. of server chat_partitions)';
COMMENT ON FUNCTION chat_proxy.session_on(integer, text, text, bigint, integer) IS 'chat_proxy: chat.connect or chat.disconnect on one partition';
COMMENT ON FUNCTION chat_proxy.session_everywhere(text, text, bigint, integer) IS 'chat_proxy: a session call on every reachable partition (unreachable ones skipped with a WARNING)';
COMMENT ON FUNCTION chat.connect(text, bigint, integer) IS 'chat_proxy (custom): session on every reachable partition';
COMMENT ON FUNCTION chat.disconnect(text, bigint, integer) IS 'chat_proxy (custom): session end on every reachable partition';
COMMENT ON FUNCTION chat.connect_many(text, bigint[], integer[]) IS 'chat_proxy (custom): chat.connect for each session, one row each';
COMMENT ON FUNCTION chat_proxy.json_id(jsonb) IS 'chat_proxy: a JSON integer field as bigint, NULL when malformed';
COMMENT ON FUNCTION chat_proxy.first_error(jsonb[]) IS 'chat_proxy: the first error frame of several';
COMMENT ON FUNCTION chat.client_request(text, bigint, integer, jsonb) IS
    'chat_proxy (custom): one client frame routed by its fields; sync and conversations merged over every partition';

-- Avatars (issue 15): set_profile writes the user row on every partition
-- (users are copies), but a new avatar is a profile upload that only the
-- actor's home partition holds and checks (chat.check_user_avatar): it runs
-- there first, so that a refused avatar changes no partition; then on all
-- (the home partition again: an unchanged avatar is not checked again).
CREATE FUNCTION chat_proxy.set_profile_home(actor bigint, display_name text, about text, avatar text)
RETURNS SETOF void
LANGUAGE plproxy SECURITY DEFINER AS $$
    CLUSTER 'chat_partitions';
    RUN ON hashint8(actor);
    TARGET chat.set_profile;
$$;

CREATE FUNCTION chat_proxy.set_profile_all(actor bigint, display_name text, about text, avatar text)
RETURNS SETOF void
LANGUAGE plproxy SECURITY DEFINER AS $$
    CLUSTER 'chat_partitions';
    RUN ON ALL;
    TARGET chat.set_profile;
$$;

CREATE FUNCTION chat.set_profile(actor bigint, display_name text DEFAULT NULL, about text DEFAULT NULL, avatar text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF avatar <> '' THEN
        PERFORM FROM chat_proxy.set_profile_home(actor, display_name, about, avatar);
    END IF;
    PERFORM FROM chat_proxy.set_profile_all(actor, display_name, about, avatar);
EXCEPTION WHEN admin_shutdown OR crash_shutdown OR cannot_connect_now THEN
    PERFORM FROM chat_proxy.set_profile_all(actor, display_name, about, avatar);   -- idempotent
END
$$;
REVOKE ALL ON FUNCTION chat_proxy.set_profile_home(bigint, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat_proxy.set_profile_all(bigint, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.set_profile(bigint, text, text, text) FROM PUBLIC;
COMMENT ON FUNCTION chat_proxy.set_profile_home(bigint, text, text, text) IS 'chat_proxy: chat.set_profile on the actor''s home partition (which checks a new avatar)';
COMMENT ON FUNCTION chat_proxy.set_profile_all(bigint, text, text, text) IS 'chat_proxy: chat.set_profile on every partition';
COMMENT ON FUNCTION chat.set_profile(bigint, text, text, text) IS 'chat_proxy (custom): a new avatar checked on the home partition first, then the profile set on every partition';
