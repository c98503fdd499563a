-- End-to-end encryption (docs/e2e.md, docs/sql-api.md "End-to-end
-- encryption"): the key directory of every device, the per-device
-- to-device inbox that carries key-sharing envelopes, and the switch that
-- makes a conversation accept only ciphertext.
--
-- The server never sees plaintext: keys are opaque base64 strings, an
-- envelope's ciphertext is stored and relayed as given, and an e2e
-- message's body is stored like any other but never parsed, put in a push
-- payload or searched.  The e2e switch lives in conversations.settings
-- ('e2e': true, like only_admins_send), so that the send path (send.c)
-- reads it from the row it locks anyway: no column is added to a released
-- table and a send costs nothing more.
--
-- Device-scoped events (to_device, keys_low) name their recipient device
-- in "device"; the gateway hands them to that device's connections only.

-- A device's public keys: identity key, signed prekey (id, key, signature)
-- and fallback key (handed out, marked, once the one-time keys run out).
CREATE TABLE chat.device_keys (
    user_id            bigint NOT NULL,
    device_id          integer NOT NULL,
    identity_key       text NOT NULL,
    signed_prekey      jsonb NOT NULL,   -- {"id","key","signature"}
    fallback_key       jsonb,            -- {"id","key","signature"}
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, device_id),
    FOREIGN KEY (user_id, device_id) REFERENCES chat.devices ON DELETE CASCADE
);

CREATE SEQUENCE chat.one_time_keys_id_seq;
-- The pool of one-time prekeys of each device; a claim deletes the key it
-- hands out (DELETE ... RETURNING over FOR UPDATE SKIP LOCKED): once only.
CREATE TABLE chat.one_time_keys (
    user_id    bigint NOT NULL,
    device_id  integer NOT NULL,
    key_id     text NOT NULL,
    key        text NOT NULL,
    id         bigint NOT NULL DEFAULT nextval('chat.one_time_keys_id_seq'),  -- upload order
    PRIMARY KEY (user_id, device_id, key_id),
    FOREIGN KEY (user_id, device_id) REFERENCES chat.device_keys ON DELETE CASCADE
);
ALTER SEQUENCE chat.one_time_keys_id_seq OWNED BY chat.one_time_keys.id;
CREATE INDEX one_time_keys_claim_idx ON chat.one_time_keys (user_id, device_id, id);

CREATE SEQUENCE chat.to_device_id_seq;
-- Envelopes waiting for one device (deleted by chat.to_device_ack).
CREATE TABLE chat.to_device (
    id           bigint PRIMARY KEY DEFAULT nextval('chat.to_device_id_seq'),
    user_id      bigint NOT NULL,
    device_id    integer NOT NULL,
    from_user    bigint NOT NULL,
    from_device  integer NOT NULL,
    message_type text NOT NULL,
    ciphertext   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (user_id, device_id) REFERENCES chat.devices ON DELETE CASCADE
);
ALTER SEQUENCE chat.to_device_id_seq OWNED BY chat.to_device.id;
CREATE INDEX to_device_inbox_idx ON chat.to_device (user_id, device_id, id);

-- The txns a sending device used (chat.to_device is idempotent per txn),
-- kept for a day.
CREATE TABLE chat.to_device_txns (
    user_id    bigint NOT NULL,
    device_id  integer NOT NULL,
    txn        text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, device_id, txn),
    FOREIGN KEY (user_id, device_id) REFERENCES chat.devices ON DELETE CASCADE
);
CREATE INDEX to_device_txns_age_idx ON chat.to_device_txns (created_at);

SELECT pg_catalog.pg_extension_config_dump('chat.device_keys', '');
SELECT pg_catalog.pg_extension_config_dump('chat.one_time_keys', '');
SELECT pg_catalog.pg_extension_config_dump('chat.one_time_keys_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('chat.to_device', '');
SELECT pg_catalog.pg_extension_config_dump('chat.to_device_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('chat.to_device_txns', '');

REVOKE ALL ON TABLE chat.device_keys, chat.one_time_keys, chat.to_device, chat.to_device_txns FROM PUBLIC;
REVOKE ALL ON SEQUENCE chat.one_time_keys_id_seq, chat.to_device_id_seq FROM PUBLIC;

COMMENT ON TABLE chat.device_keys IS 'e2e key directory: identity key, signed prekey and fallback key of each device';
COMMENT ON TABLE chat.one_time_keys IS 'e2e one-time prekeys of each device; a claim deletes the key it hands out';
COMMENT ON TABLE chat.to_device IS 'e2e to-device inbox: envelopes waiting for one device until it acks them';
COMMENT ON TABLE chat.to_device_txns IS 'txns of chat.to_device calls of the last day (a repeated txn stores nothing)';
COMMENT ON SEQUENCE chat.one_time_keys_id_seq IS 'upload order of chat.one_time_keys';
COMMENT ON SEQUENCE chat.to_device_id_seq IS 'ids of chat.to_device';

-- Raises 22023 unless k is a key as the directory stores them: base64 or
-- base64url text of 1 to 1024 characters.  what names it in the message.
CREATE FUNCTION chat.check_e2e_key(k text, what text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF k IS NULL OR length(k) > 1024 OR k !~ '^[A-Za-z0-9+/_-]+={0,2}$' THEN
        RAISE EXCEPTION '% "%" is not a base64 key', what, left(coalesce(k, 'NULL'), 80)
            USING ERRCODE = '22023', HINT = 'Keys are base64 or base64url text of at most 1024 characters.';
    END IF;
    RETURN k;
END
$$;

-- Raises 22023 unless k is a signed key object {"id","key","signature"};
-- returns it with only those fields (id as text).
CREATE FUNCTION chat.check_signed_key(k jsonb, what text)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF jsonb_typeof(k) IS DISTINCT FROM 'object'
       OR jsonb_typeof(k -> 'id') NOT IN ('string', 'number')
       OR jsonb_typeof(k -> 'key') IS DISTINCT FROM 'string'
       OR jsonb_typeof(k -> 'signature') IS DISTINCT FROM 'string' THEN
        RAISE EXCEPTION '% must be an object {"id","key","signature"}, not %', what, left(coalesce(k::text, 'NULL'), 80)
            USING ERRCODE = '22023';
    END IF;
    IF length(k ->> 'id') NOT BETWEEN 1 AND 64 THEN
        RAISE EXCEPTION '% id "%" must have 1 to 64 characters', what, left(k ->> 'id', 80) USING ERRCODE = '22023';
    END IF;
    RETURN jsonb_build_object('id', k ->> 'id',
                              'key', chat.check_e2e_key(k ->> 'key', what || ' key'),
                              'signature', chat.check_e2e_key(k ->> 'signature', what || ' signature'));
END
$$;

-- The users who share a current conversation with user_id, and user_id
-- itself (its other devices): who hears of its identity key changes.
CREATE FUNCTION chat.e2e_peers(user_id bigint)
RETURNS bigint[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ARRAY(SELECT DISTINCT o.user_id
                   FROM chat.members m
                   JOIN chat.members o ON o.conversation_id = m.conversation_id AND o.left_at IS NULL
                  WHERE m.user_id = e2e_peers.user_id AND m.left_at IS NULL
                 UNION
                 SELECT e2e_peers.user_id
                  ORDER BY 1)
$$;

-- Raises 42501 unless users a and b are one user or share a current
-- conversation: keys are claimed and envelopes sent only between them, so
-- that strangers can neither drain a pool nor fill an inbox.
CREATE FUNCTION chat.require_e2e_peer(a bigint, b bigint)
RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF a = b OR EXISTS (SELECT FROM chat.members m
                          JOIN chat.members o ON o.conversation_id = m.conversation_id
                                             AND o.user_id = b AND o.left_at IS NULL
                         WHERE m.user_id = a AND m.left_at IS NULL) THEN
        RETURN;
    END IF;
    RAISE EXCEPTION 'user % shares no conversation with user %', a, b
        USING ERRCODE = '42501', HINT = 'Keys and envelopes go only to the devices of users one talks to.';
END
$$;

-- Uploads a device's keys; returns how many one-time keys it has now.
-- The first upload needs identity_key and signed_prekey.  A new identity
-- key (different from the stored one) replaces the device's keys: the
-- signed prekey must come with it, the old one-time and fallback keys are
-- dropped, and the peers get {"type":"identity_changed","user","device"}.
-- one_time_keys: [{"id","key"}], at most 100 a call and 200 in the pool
-- (54000 beyond); an id already in the pool keeps its key (a retried
-- upload is harmless).
CREATE FUNCTION chat.keys_upload(user_id bigint, device_id integer, identity_key text DEFAULT NULL,
                                 signed_prekey jsonb DEFAULT NULL, one_time_keys jsonb DEFAULT NULL,
                                 fallback_key jsonb DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    uid bigint := keys_upload.user_id;
    did integer := keys_upload.device_id;
    old chat.device_keys;
    spk jsonb;
    fbk jsonb;
    otk jsonb;
    n integer;
    pool integer;
BEGIN
    PERFORM chat.require_device(uid, did);
    IF identity_key IS NOT NULL THEN
        PERFORM chat.check_e2e_key(identity_key, 'identity_key');
    END IF;
    IF signed_prekey IS NOT NULL AND jsonb_typeof(signed_prekey) <> 'null' THEN
        spk := chat.check_signed_key(signed_prekey, 'signed_prekey');
    END IF;
    IF fallback_key IS NOT NULL AND jsonb_typeof(fallback_key) <> 'null' THEN
        fbk := chat.check_signed_key(fallback_key, 'fallback_key');
    END IF;
    IF one_time_keys IS NOT NULL AND jsonb_typeof(one_time_keys) <> 'null' THEN
        IF jsonb_typeof(one_time_keys) <> 'array' THEN
            RAISE EXCEPTION 'one_time_keys must be an array of {"id","key"}, not %', left(one_time_keys::text, 80)
                USING ERRCODE = '22023';
        END IF;
        IF jsonb_array_length(one_time_keys) > 100 THEN
            RAISE EXCEPTION '% one-time keys in one upload exceed 100', jsonb_array_length(one_time_keys)
                USING ERRCODE = '54000', HINT = 'Upload them in batches of 100.';
        END IF;
        FOR otk IN SELECT value FROM jsonb_array_elements(one_time_keys) LOOP
            IF jsonb_typeof(otk) IS DISTINCT FROM 'object'
               OR jsonb_typeof(otk -> 'id') NOT IN ('string', 'number')
               OR jsonb_typeof(otk -> 'key') IS DISTINCT FROM 'string'
               OR length(otk ->> 'id') NOT BETWEEN 1 AND 64 THEN
                RAISE EXCEPTION 'one-time key % must be an object {"id","key"} with an id of 1 to 64 characters',
                    left(otk::text, 80) USING ERRCODE = '22023';
            END IF;
            PERFORM chat.check_e2e_key(otk ->> 'key', 'one-time key ' || (otk ->> 'id'));
        END LOOP;
    END IF;

    SELECT * INTO old FROM chat.device_keys WHERE user_id = uid AND device_id = did FOR UPDATE;
    IF NOT FOUND THEN
        IF identity_key IS NULL OR spk IS NULL THEN
            RAISE EXCEPTION 'device % of user % has no keys yet: the first upload needs identity_key and signed_prekey', did, uid
                USING ERRCODE = '22023';
        END IF;
        INSERT INTO chat.device_keys (user_id, device_id, identity_key, signed_prekey, fallback_key)
        VALUES (uid, did, identity_key, spk, fbk);
    ELSIF identity_key IS NOT NULL AND identity_key <> old.identity_key THEN
        IF spk IS NULL THEN
            RAISE EXCEPTION 'a new identity key of device % of user % needs a new signed_prekey', did, uid
                USING ERRCODE = '22023', HINT = 'The signed prekey is signed by the identity key: upload both.';
        END IF;
        DELETE FROM chat.one_time_keys WHERE user_id = uid AND device_id = did;
        UPDATE chat.device_keys
           SET identity_key = keys_upload.identity_key, signed_prekey = spk, fallback_key = fbk,
               updated_at = now()
         WHERE user_id = uid AND device_id = did;
        PERFORM chat.fanout_event(NULL, chat.e2e_peers(uid),
            jsonb_build_object('type', 'identity_changed', 'user', uid, 'device', did));
    ELSIF spk IS NOT NULL OR fbk IS NOT NULL THEN
        UPDATE chat.device_keys
           SET signed_prekey = coalesce(spk, signed_prekey), fallback_key = coalesce(fbk, fallback_key),
               updated_at = now()
         WHERE user_id = uid AND device_id = did;
    END IF;

    IF one_time_keys IS NOT NULL AND jsonb_typeof(one_time_keys) = 'array' THEN
        INSERT INTO chat.one_time_keys (user_id, device_id, key_id, key)
        SELECT uid, did, k.value ->> 'id', k.value ->> 'key'
          FROM jsonb_array_elements(one_time_keys) WITH ORDINALITY AS k
         ORDER BY k.ordinality
        ON CONFLICT DO NOTHING;
    END IF;
    SELECT count(*) INTO pool FROM chat.one_time_keys WHERE user_id = uid AND device_id = did;
    IF pool > 200 THEN
        RAISE EXCEPTION 'device % of user % would hold % one-time keys, more than 200', did, uid, pool
            USING ERRCODE = '54000', HINT = 'Upload keys when keys_low says the pool runs low.';
    END IF;
    RETURN pool;
END
$$;

-- The devices of user_ids that have keys, with their identity key and
-- signed prekey, for any user (what a sender needs to start a session).
-- P0002 for an unknown user; at most 1000 users.
CREATE FUNCTION chat.keys_query(actor bigint, user_ids bigint[])
RETURNS TABLE(user_id bigint, device_id integer, identity_key text, signed_prekey jsonb)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM chat.require_actor(actor);
    IF user_ids IS NULL THEN
        RAISE EXCEPTION 'user_ids must not be null' USING ERRCODE = '22023';
    END IF;
    IF cardinality(user_ids) > 1000 THEN
        RAISE EXCEPTION '% users in one keys_query exceed 1000', cardinality(user_ids) USING ERRCODE = '54000';
    END IF;
    PERFORM chat.require_users(user_ids);
    RETURN QUERY
    SELECT k.user_id, k.device_id, k.identity_key, k.signed_prekey
      FROM chat.device_keys k
     WHERE k.user_id = ANY (user_ids)
     ORDER BY k.user_id, k.device_id;
END
$$;

-- Claims one key bundle per listed device ([{"user","device"}], at most
-- 1000): identity key, signed prekey and one one-time key, which is
-- deleted as it is handed out, so that no two claims ever get the same
-- one (concurrent claims skip each other's locked keys).  A device whose
-- pool is empty hands out its fallback key instead, with fallback true
-- (one_time_key NULL when it has none either).  The owner of a pool that
-- fell below 10 gets {"type":"keys_low","count","device"} on that device.
-- P0002 for a device without keys, 42501 for a user who shares no
-- conversation with the claimer (check_peers; chat.keys_claim checks).
-- check_peers false is for chat_proxy only (docs/scaling.md): in a sharded
-- install keys live on their owner's home partition while the conversation
-- two users share may live on another, so the proxy checks the rule over
-- every partition and claims here without it.
CREATE FUNCTION chat.keys_claim_local(user_id bigint, device_id integer, devices jsonb, check_peers boolean)
RETURNS TABLE(claimed_user bigint, claimed_device integer, identity_key text, signed_prekey jsonb,
              one_time_key jsonb, fallback boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    d jsonb;
    cu bigint;
    cd integer;
    k chat.device_keys;
    otk record;
    left_keys integer;
BEGIN
    PERFORM chat.require_device(keys_claim_local.user_id, keys_claim_local.device_id);
    IF jsonb_typeof(devices) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'devices must be an array of {"user","device"}, not %', left(coalesce(devices::text, 'NULL'), 80)
            USING ERRCODE = '22023';
    END IF;
    IF jsonb_array_length(devices) > 1000 THEN
        RAISE EXCEPTION '% devices in one keys_claim exceed 1000', jsonb_array_length(devices)
            USING ERRCODE = '54000', HINT = 'Claim in batches of 1000.';
    END IF;
    FOR d IN SELECT value FROM jsonb_array_elements(devices) LOOP
        IF jsonb_typeof(d) IS DISTINCT FROM 'object' OR jsonb_typeof(d -> 'user') IS DISTINCT FROM 'number'
           OR jsonb_typeof(d -> 'device') IS DISTINCT FROM 'number'
           OR (d ->> 'user') !~ '^-?[0-9]{1,18}$' OR (d ->> 'device') !~ '^[0-9]{1,9}$' THEN
            RAISE EXCEPTION 'device % must be an object {"user","device"} of integers', left(d::text, 80)
                USING ERRCODE = '22P02';
        END IF;
        cu := (d ->> 'user')::bigint;
        cd := (d ->> 'device')::integer;
        IF check_peers THEN
            PERFORM chat.require_e2e_peer(keys_claim_local.user_id, cu);
        END IF;
        SELECT * INTO k FROM chat.device_keys x WHERE x.user_id = cu AND x.device_id = cd;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'device % of user % has no keys', cd, cu
                USING ERRCODE = 'P0002', HINT = 'keys_query lists the devices that uploaded keys.';
        END IF;
        DELETE FROM chat.one_time_keys o
         WHERE o.ctid = (SELECT x.ctid FROM chat.one_time_keys x
                          WHERE x.user_id = cu AND x.device_id = cd
                          ORDER BY x.id LIMIT 1 FOR UPDATE SKIP LOCKED)
        RETURNING o.key_id, o.key INTO otk;
        claimed_user := cu;
        claimed_device := cd;
        identity_key := k.identity_key;
        signed_prekey := k.signed_prekey;
        IF otk.key_id IS NOT NULL THEN
            one_time_key := jsonb_build_object('id', otk.key_id, 'key', otk.key);
            fallback := false;
        ELSE
            one_time_key := k.fallback_key;
            fallback := true;
        END IF;
        otk := NULL;
        SELECT count(*) INTO left_keys FROM chat.one_time_keys x WHERE x.user_id = cu AND x.device_id = cd;
        IF left_keys < 10 THEN
            PERFORM chat.fanout_event(NULL, ARRAY[cu],
                jsonb_build_object('type', 'keys_low', 'count', left_keys, 'device', cd));
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Claims one key bundle per listed device ([{"user","device"}], at most
-- 1000): see chat.keys_claim_local, with the peer rule (42501).
CREATE FUNCTION chat.keys_claim(user_id bigint, device_id integer, devices jsonb)
RETURNS TABLE(claimed_user bigint, claimed_device integer, identity_key text, signed_prekey jsonb,
              one_time_key jsonb, fallback boolean)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM chat.keys_claim_local(user_id, device_id, devices, true)
$$;

-- Queues envelopes [{"user","device","type","ciphertext"}] (at most 1024,
-- ciphertext base64 of at most 6000 characters so that the live event fits
-- a notification) from (user_id, device_id) to those devices, each of which
-- gets {"type":"to_device","id","from_user","from_device","message_type",
-- "ciphertext","device"} if online and finds it in sync until it acks it.
-- Idempotent per txn: a txn the sending device used in the last day stores
-- nothing new.  A device's inbox holds at most 1000 envelopes (54000).
-- Recipients are the sender's own devices and the devices of users who
-- share a conversation with it (42501 otherwise; check_peers false is for
-- chat_proxy only, which checks that over every partition and queues each
-- envelope on its recipient's home partition).
CREATE FUNCTION chat.to_device_local(user_id bigint, device_id integer, messages jsonb, txn text,
                                     check_peers boolean)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    uid bigint := to_device_local.user_id;
    did integer := to_device_local.device_id;
    m jsonb;
    ru bigint;
    rd integer;
    new_id bigint;
BEGIN
    PERFORM chat.require_device(uid, did);
    IF txn IS NULL OR length(txn) NOT BETWEEN 1 AND 128 THEN
        RAISE EXCEPTION 'txn "%" must have 1 to 128 characters', left(coalesce(txn, 'NULL'), 80)
            USING ERRCODE = '22023', HINT = 'A txn makes a retry store nothing twice: use a fresh one per call.';
    END IF;
    IF jsonb_typeof(messages) IS DISTINCT FROM 'array' OR jsonb_array_length(messages) = 0 THEN
        RAISE EXCEPTION 'messages must be a non-empty array of {"user","device","type","ciphertext"}'
            USING ERRCODE = '22023';
    END IF;
    IF jsonb_array_length(messages) > 1024 THEN
        RAISE EXCEPTION '% envelopes in one to_device call exceed 1024', jsonb_array_length(messages)
            USING ERRCODE = '54000';
    END IF;
    DELETE FROM chat.to_device_txns x
     WHERE x.user_id = uid AND x.device_id = did AND x.created_at < now() - interval '1 day';
    INSERT INTO chat.to_device_txns (user_id, device_id, txn) VALUES (uid, did, txn)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN;                 -- a retry: everything was queued the first time
    END IF;
    FOR m IN SELECT value FROM jsonb_array_elements(messages) LOOP
        IF jsonb_typeof(m) IS DISTINCT FROM 'object' OR jsonb_typeof(m -> 'user') IS DISTINCT FROM 'number'
           OR jsonb_typeof(m -> 'device') IS DISTINCT FROM 'number'
           OR (m ->> 'user') !~ '^-?[0-9]{1,18}$' OR (m ->> 'device') !~ '^[0-9]{1,9}$'
           OR jsonb_typeof(m -> 'type') IS DISTINCT FROM 'string'
           OR jsonb_typeof(m -> 'ciphertext') IS DISTINCT FROM 'string' THEN
            RAISE EXCEPTION 'envelope % must be an object {"user","device","type","ciphertext"}', left(m::text, 80)
                USING ERRCODE = '22P02';
        END IF;
        IF (m ->> 'type') !~ '^[A-Za-z0-9_.:-]{1,32}$' THEN
            RAISE EXCEPTION 'envelope type "%" must be 1 to 32 letters, digits or _.:-', left(m ->> 'type', 80)
                USING ERRCODE = '22023';
        END IF;
        -- base64 only: the live event's size then follows from the length
        -- (no escaping, one byte a character) and always fits a notification.
        IF (m ->> 'ciphertext') !~ '^[A-Za-z0-9+/_=-]+$' THEN
            RAISE EXCEPTION 'envelope ciphertext "%" is not base64 text', left(m ->> 'ciphertext', 40)
                USING ERRCODE = '22023';
        END IF;
        IF length(m ->> 'ciphertext') > 6000 THEN
            RAISE EXCEPTION 'envelope ciphertext of % characters exceeds 6000', length(m ->> 'ciphertext')
                USING ERRCODE = '22001', HINT = 'Envelopes carry keys; messages go through send.';
        END IF;
    END LOOP;
    -- The recipients: each must exist and be a peer; their device rows are
    -- locked in (user, device) order, so that senders with overlapping
    -- recipients queue behind each other instead of deadlocking, and the
    -- inbox bound holds under concurrent senders.
    FOR ru, rd IN
        SELECT DISTINCT (e.value ->> 'user')::bigint, (e.value ->> 'device')::integer
          FROM jsonb_array_elements(messages) e ORDER BY 1, 2
    LOOP
        PERFORM chat.require_device(ru, rd);
        IF check_peers THEN
            PERFORM chat.require_e2e_peer(uid, ru);
        END IF;
    END LOOP;
    PERFORM FROM chat.devices x
     WHERE (x.user_id, x.device_id) IN (SELECT (e.value ->> 'user')::bigint, (e.value ->> 'device')::integer
                                           FROM jsonb_array_elements(messages) e)
     ORDER BY x.user_id, x.device_id
       FOR NO KEY UPDATE;
    SELECT r.u, r.d INTO ru, rd
      FROM (SELECT (e.value ->> 'user')::bigint AS u, (e.value ->> 'device')::integer AS d, count(*) AS n
              FROM jsonb_array_elements(messages) e GROUP BY 1, 2) r
     WHERE r.n + (SELECT count(*) FROM chat.to_device x WHERE x.user_id = r.u AND x.device_id = r.d) > 1000
     ORDER BY 1, 2 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'to-device inbox of device % of user % is full (1000 envelopes)', rd, ru
            USING ERRCODE = '54000', HINT = 'The device must sync and ack its inbox; retry later.';
    END IF;
    FOR m IN SELECT e.value FROM jsonb_array_elements(messages) WITH ORDINALITY AS e ORDER BY e.ordinality LOOP
        ru := (m ->> 'user')::bigint;
        rd := (m ->> 'device')::integer;
        INSERT INTO chat.to_device (user_id, device_id, from_user, from_device, message_type, ciphertext)
        VALUES (ru, rd, uid, did, m ->> 'type', m ->> 'ciphertext')
        RETURNING id INTO new_id;
        PERFORM chat.fanout_event(NULL, ARRAY[ru],
            jsonb_build_object('type', 'to_device', 'id', new_id, 'from_user', uid, 'from_device', did,
                               'message_type', m ->> 'type', 'ciphertext', m ->> 'ciphertext',
                               'device', rd));
    END LOOP;
END
$$;

-- Queues envelopes for single devices: see chat.to_device_local, with the
-- peer rule (42501).
CREATE FUNCTION chat.to_device(user_id bigint, device_id integer, messages jsonb, txn text)
RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT chat.to_device_local(user_id, device_id, messages, txn, true)
$$;

-- The oldest lim envelopes of a device's inbox as the JSON array sync
-- returns ("to_device"): the live event objects.
CREATE FUNCTION chat.to_device_pending(user_id bigint, device_id integer, lim integer DEFAULT 100)
RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_object('type', 'to_device', 'id', t.id, 'from_user', t.from_user,
                                                 'from_device', t.from_device, 'message_type', t.message_type,
                                                 'ciphertext', t.ciphertext, 'device', t.device_id)
                              ORDER BY t.id), '[]')
      FROM (SELECT * FROM chat.to_device x
             WHERE x.user_id = to_device_pending.user_id AND x.device_id = to_device_pending.device_id
             ORDER BY x.id LIMIT lim) t
$$;

-- Deletes the device's envelopes up to id up_to (it has stored them);
-- returns how many.
CREATE FUNCTION chat.to_device_ack(user_id bigint, device_id integer, up_to bigint)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    n integer;
BEGIN
    PERFORM chat.require_device(to_device_ack.user_id, to_device_ack.device_id);
    IF up_to IS NULL OR up_to < 0 THEN
        RAISE EXCEPTION 'up_to % is not a valid to-device id', coalesce(up_to::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    DELETE FROM chat.to_device x
     WHERE x.user_id = to_device_ack.user_id AND x.device_id = to_device_ack.device_id AND x.id <= up_to;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- Makes a conversation end-to-end encrypted, for good: from then on only
-- kind e2e sends are accepted (send.c, 22023 otherwise) and edits are
-- refused.  Any member of a direct conversation, owners and admins of a
-- group; posts a system message {"action":"e2e","by"}.  Enabling it again
-- does nothing.
CREATE FUNCTION chat.enable_e2e(actor bigint, conversation_id bigint)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    conv bigint := enable_e2e.conversation_id;
    c chat.conversations;
    m chat.members;
BEGIN
    IF actor IS NULL OR conv IS NULL THEN
        RAISE EXCEPTION 'actor and conversation_id must not be null' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO c FROM chat.conversations x WHERE x.id = conv FOR NO KEY UPDATE;
    m := chat.require_member(actor, conv);
    IF c.kind = 'group' AND m.role = 'member' THEN
        RAISE EXCEPTION 'user % may not enable e2e in conversation %', actor, conv
            USING ERRCODE = '42501', HINT = 'Only owners and admins of a group switch it to end-to-end encryption.';
    END IF;
    IF coalesce((c.settings ->> 'e2e')::boolean, false) THEN
        RETURN;
    END IF;
    UPDATE chat.conversations x SET settings = x.settings || '{"e2e": true}' WHERE x.id = conv;
    PERFORM chat.post_system_message(conv, actor, jsonb_build_object('action', 'e2e', 'by', actor));
END
$$;

-- True when the conversation is end-to-end encrypted.
CREATE FUNCTION chat.is_e2e(conversation_id bigint)
RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT (c.settings ->> 'e2e')::boolean FROM chat.conversations c
                      WHERE c.id = is_e2e.conversation_id), false)
$$;

-- chat.send_message for a ciphertext: the same send with kind 'e2e', only
-- in an e2e conversation (22023 otherwise).  body is opaque; mentions are
-- member ids as in send_message (the body is never parsed for them).
CREATE FUNCTION chat.send_e2e(sender bigint, conversation_id bigint, body text,
                              client_msg_id text DEFAULT NULL, reply_to bigint DEFAULT NULL,
                              sender_device integer DEFAULT NULL, mentions bigint[] DEFAULT NULL,
                              attachments jsonb DEFAULT NULL)
RETURNS TABLE(conversation_id bigint, seq bigint, created_at timestamptz, duplicate boolean)
LANGUAGE c SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'chat_send_e2e';

REVOKE ALL ON FUNCTION chat.check_e2e_key(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.check_signed_key(jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.e2e_peers(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.require_e2e_peer(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.keys_upload(bigint, integer, text, jsonb, jsonb, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.keys_query(bigint, bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.keys_claim(bigint, integer, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.keys_claim_local(bigint, integer, jsonb, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.to_device_local(bigint, integer, jsonb, text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.to_device(bigint, integer, jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.to_device_pending(bigint, integer, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.to_device_ack(bigint, integer, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.enable_e2e(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.is_e2e(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION chat.send_e2e(bigint, bigint, text, text, bigint, integer, bigint[], jsonb) FROM PUBLIC;

COMMENT ON FUNCTION chat.check_e2e_key(text, text) IS 'internal: 22023 unless the key is base64 text of 1 to 1024 characters';
COMMENT ON FUNCTION chat.check_signed_key(jsonb, text) IS 'internal: 22023 unless the key is {"id","key","signature"}';
COMMENT ON FUNCTION chat.e2e_peers(bigint) IS 'internal: the users sharing a conversation with a user, and the user';
COMMENT ON FUNCTION chat.require_e2e_peer(bigint, bigint) IS 'internal: 42501 unless two users are one or share a current conversation';
COMMENT ON FUNCTION chat.keys_upload(bigint, integer, text, jsonb, jsonb, jsonb) IS
    'e2e: uploads a device''s identity key, signed prekey, one-time keys and fallback key; returns the one-time key count';
COMMENT ON FUNCTION chat.keys_query(bigint, bigint[]) IS 'e2e: identity keys and signed prekeys of the devices of users';
COMMENT ON FUNCTION chat.keys_claim(bigint, integer, jsonb) IS
    'e2e: one key bundle per device; each one-time key is handed out once only, then the fallback key (fallback true)';
COMMENT ON FUNCTION chat.to_device(bigint, integer, jsonb, text) IS
    'e2e: queues envelopes for single devices (idempotent per txn; inboxes bounded at 1000)';
COMMENT ON FUNCTION chat.keys_claim_local(bigint, integer, jsonb, boolean) IS
    'internal (chat_proxy): keys_claim with the peer rule optional (the proxy checks it over every partition)';
COMMENT ON FUNCTION chat.to_device_local(bigint, integer, jsonb, text, boolean) IS
    'internal (chat_proxy): to_device with the peer rule optional (the proxy checks it over every partition)';
COMMENT ON FUNCTION chat.to_device_pending(bigint, integer, integer) IS 'e2e: the oldest envelopes of a device''s inbox as JSON';
COMMENT ON FUNCTION chat.to_device_ack(bigint, integer, bigint) IS 'e2e: deletes a device''s envelopes up to an id';
COMMENT ON FUNCTION chat.enable_e2e(bigint, bigint) IS 'e2e: makes a conversation end-to-end encrypted (one-way; system message)';
COMMENT ON FUNCTION chat.is_e2e(bigint) IS 'true when the conversation is end-to-end encrypted';
COMMENT ON FUNCTION chat.send_e2e(bigint, bigint, text, text, bigint, integer, bigint[], jsonb) IS
    'e2e: sends a ciphertext message (kind e2e) to an e2e conversation';
