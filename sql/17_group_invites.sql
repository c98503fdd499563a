-- Invite links (invite_link, revoke_invite, join), message_info and the
-- receipt times behind it, and the group avatar of update_group: every
-- function, every rejection with its SQLSTATE and no partial state after
-- one.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS chat CASCADE;
CREATE EXTENSION chat;
CREATE FUNCTION pg_temp.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    -- codes are random and expiry times are now(): masked
    RETURN SQLSTATE || ': ' || regexp_replace(regexp_replace(SQLERRM, '[0-9a-f]{32}', 'CODE'),
                                              ' expired at .*$', ' expired at TIME');
END $$;
CREATE FUNCTION pg_temp.state(conv bigint) RETURNS text LANGUAGE sql AS $$
    SELECT (SELECT string_agg(user_id || ':' || role || CASE WHEN left_at IS NULL THEN '' ELSE ':left' END,
                              ' ' ORDER BY user_id)
              FROM chat.members WHERE conversation_id = conv)
           || ' | last_seq=' || c.last_seq || ' | settings=' || c.settings::text
           || ' | invites=' || (SELECT count(*) FROM chat.invites i WHERE i.conversation_id = conv)
      FROM chat.conversations c WHERE c.id = conv
$$;

SELECT chat.upsert_user(i, 'user' || i) FROM generate_series(1, 6) i;
SELECT chat.register_device(i) FROM generate_series(1, 6) i;
-- Group 1: owner 1, admin 2, member 3.  Direct 2 of 1 and 5.
SELECT chat.create_group(1, 'g', ARRAY[2, 3]::bigint[]) AS g;
SELECT chat.direct_conversation(1, 5) AS d;
SELECT chat.set_role(1, 1, 2, 'admin');

-- invite_link ------------------------------------------------------------
SELECT code ~ '^[0-9a-f]{32}$' AS code_ok, expires_at BETWEEN now() + interval '59 s' AND now() + interval '61 s' AS expiry_ok
  FROM chat.invite_link(1, 1, 60);
SELECT code AS never FROM chat.invite_link(2, 1) \gset
SELECT expires_at IS NULL AS no_expiry FROM chat.invites WHERE code = :'never';
SELECT pg_temp.state(1);
SELECT pg_temp.try($$SELECT chat.invite_link(3, 1)$$);      -- plain member
SELECT pg_temp.try($$SELECT chat.invite_link(4, 1)$$);      -- not a member
SELECT pg_temp.try($$SELECT chat.invite_link(1, 2)$$);      -- direct
SELECT pg_temp.try($$SELECT chat.invite_link(1, 99)$$);     -- unknown
SELECT pg_temp.try($$SELECT chat.invite_link(1, 1, 0)$$);
SELECT pg_temp.try($$SELECT chat.invite_link(1, 1, 31536001)$$);
SELECT pg_temp.try($$SELECT chat.invite_link(NULL, 1)$$);
SELECT pg_temp.state(1);

-- join -------------------------------------------------------------------
SELECT chat."join"(4, :'never') AS joined;
SELECT pg_temp.state(1);
SELECT body::jsonb FROM chat.messages WHERE conversation_id = 1 ORDER BY seq DESC LIMIT 1;
SELECT chat."join"(4, :'never') AS again;                   -- already a member: nothing changes
SELECT pg_temp.state(1);
SELECT pg_temp.try($$SELECT chat."join"(5, 'nope')$$);
SELECT pg_temp.try($$SELECT chat."join"(99, '$$ || :'never' || $$')$$);
SELECT pg_temp.try($$SELECT chat."join"(5, NULL)$$);
-- expired
INSERT INTO chat.invites (code, conversation_id, created_by, expires_at)
VALUES ('0123456789abcdef0123456789abcdef', 1, 1, now() - interval '1 s');
SELECT pg_temp.try($$SELECT chat."join"(5, '0123456789abcdef0123456789abcdef')$$);
-- group full
SET chat.max_group_members = 4;
SELECT pg_temp.try($$SELECT chat."join"(5, '$$ || :'never' || $$')$$);
RESET chat.max_group_members;
SELECT pg_temp.state(1);
-- a member who left joins again and sees only what comes after
SELECT chat.leave(4, 1);
SELECT chat."join"(4, :'never') AS rejoined;
SELECT user_id, role, joined_seq = (SELECT last_seq - 1 FROM chat.conversations WHERE id = 1) AS from_now
  FROM chat.members WHERE conversation_id = 1 AND user_id = 4;

-- revoke_invite ----------------------------------------------------------
SELECT pg_temp.try($$SELECT chat.revoke_invite(3, '$$ || :'never' || $$')$$);   -- plain member
SELECT pg_temp.try($$SELECT chat.revoke_invite(5, '$$ || :'never' || $$')$$);   -- not a member
SELECT pg_temp.try($$SELECT chat.revoke_invite(1, 'nope')$$);
SELECT pg_temp.try($$SELECT chat.revoke_invite(1, NULL)$$);
SELECT revoked_at IS NULL AS still_valid FROM chat.invites WHERE code = :'never';
SELECT chat.revoke_invite(2, :'never');
SELECT chat.revoke_invite(2, :'never');                     -- again: nothing changes
SELECT pg_temp.try($$SELECT chat."join"(5, '$$ || :'never' || $$')$$);
SELECT pg_temp.state(1);

-- update_group: avatar ---------------------------------------------------
-- a group picture is a ready image uploaded to the group (36_avatars tests
-- the checks); two with fixed ids, as chat-media leaves them
INSERT INTO chat.attachments (id, owner_id, conversation_id, mime, size, sha256, state)
SELECT i::uuid, 1, 1, 'image/png', 10, repeat('b', 64), 'ready'
  FROM unnest(ARRAY['00000000-0000-4000-8000-0000000000b1', '00000000-0000-4000-8000-0000000000b3']) i;
SELECT chat.update_group(1, 1, avatar => '00000000-0000-4000-8000-0000000000b1');
SELECT settings ->> 'avatar' AS avatar FROM chat.conversations WHERE id = 1;
SELECT body::jsonb FROM chat.messages WHERE conversation_id = 1 ORDER BY seq DESC LIMIT 1;
SELECT pg_temp.try($$SELECT chat.update_group(1, 1, avatar => 'bad id!')$$);
SELECT pg_temp.try($$SELECT chat.update_group(3, 1, avatar => 'att_2')$$);
SELECT settings ->> 'avatar' AS avatar FROM chat.conversations WHERE id = 1;
SELECT chat.update_group(1, 1, avatar => '');
SELECT settings ? 'avatar' AS has_avatar FROM chat.conversations WHERE id = 1;
-- the client request
SELECT chat.client_request('n', 1, 1, '{"id":1,"type":"update_group","conversation":1,"avatar":"00000000-0000-4000-8000-0000000000b3"}');
SELECT chat.client_request('n', 1, 1, '{"id":2,"type":"update_group","conversation":1,"avatar":true}') ->> 'code';

-- message_info -----------------------------------------------------------
SELECT seq AS m FROM chat.send_message(1, 1, 'info please') \gset
SELECT count(*) AS times_before FROM chat.receipt_times WHERE conversation_id = 1 AND seq >= :m;
SELECT chat.ack(2, 1, 1, :m);
SELECT chat.mark_read(3, 1, :m);
SELECT user_id, kind, seq = :m AS at_m FROM chat.receipt_times
 WHERE conversation_id = 1 AND seq >= :m ORDER BY user_id, kind;
SELECT user_id, delivered_at IS NOT NULL AS delivered, read_at IS NOT NULL AS read
  FROM chat.message_info(1, 1, :m);
-- a later mark covers the message too; read receipts off hide read_at only
SELECT chat.set_privacy(3, read_receipts => false);
SELECT user_id, delivered_at IS NOT NULL AS delivered, read_at IS NOT NULL AS read
  FROM chat.message_info(2, 1, :m);                            -- admin
SELECT chat.client_request('n', 1, 1, format('{"id":3,"type":"message_info","conversation":1,"seq":%s}', :m)::jsonb)
       #> '{result,members}' @? '$[*] ? (@.user == 3 && @.read_at == null && @.delivered_at != null)' AS hidden;
SELECT pg_temp.try(format('SELECT chat.message_info(3, 1, %s)', :m));   -- plain member, not the sender
SELECT pg_temp.try(format('SELECT chat.message_info(5, 1, %s)', :m));   -- not a member
SELECT pg_temp.try($$SELECT chat.message_info(1, 1, 999)$$);
SELECT pg_temp.try($$SELECT chat.message_info(1, 1, 1)$$);             -- system message
SELECT pg_temp.try($$SELECT chat.message_info(1, 1, NULL)$$);
-- a member who joined after the message is not listed
SELECT chat.add_member(1, 1, 6);
SELECT user_id FROM chat.message_info(1, 1, :m);
