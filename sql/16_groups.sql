-- Group administration: members, set_role, leave, update_group (and the
-- only_admins_send check of the send path): every function, every
-- rejection with its SQLSTATE and no partial state after one.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS chat CASCADE;
CREATE EXTENSION chat;
CREATE FUNCTION pg_temp.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
-- What a rejection must leave alone: roles, memberships, log, settings.
CREATE FUNCTION pg_temp.state(conv bigint) RETURNS text LANGUAGE sql AS $$
    SELECT (SELECT string_agg(user_id || ':' || role || CASE WHEN left_at IS NULL THEN '' ELSE ':left' END,
                              ' ' ORDER BY user_id)
              FROM chat.members WHERE conversation_id = conv)
           || ' | last_seq=' || c.last_seq || ' | title=' || coalesce(c.title, '-')
           || ' | settings=' || c.settings::text
      FROM chat.conversations c WHERE c.id = conv
$$;

SELECT chat.upsert_user(i, 'user' || i) FROM generate_series(1, 6) i;
SELECT chat.register_device(i) FROM generate_series(1, 6) i;
-- Group 1: owner 1, members 2, 3, 4.  Direct 2 of 1 and 5.
SELECT chat.create_group(1, 'g', ARRAY[2, 3, 4]::bigint[]) AS g;
SELECT chat.direct_conversation(1, 5) AS d;
SELECT chat.add_member(1, 1, 2, 'admin');

-- members --------------------------------------------------------------
SELECT user_id, role, joined_at IS NOT NULL AS has_joined_at FROM chat.members(3, 1);
SELECT user_id, role FROM chat.members(5, 2);
SELECT pg_temp.try($$SELECT chat.members(5, 1)$$);
SELECT pg_temp.try($$SELECT chat.members(1, 99)$$);
SELECT pg_temp.try($$SELECT chat.members(99, 1)$$);
SELECT pg_temp.try($$SELECT chat.members(NULL, 1)$$);
SELECT pg_temp.try($$SELECT chat.members(1, NULL)$$);

-- set_role -------------------------------------------------------------
SELECT pg_temp.state(1);
SELECT chat.set_role(2, 1, 3, 'admin');
SELECT pg_temp.state(1);
SELECT kind, body::jsonb FROM chat.messages WHERE conversation_id = 1 ORDER BY seq DESC LIMIT 1;
-- Same role again: nothing changes, nothing is posted.
SELECT chat.set_role(1, 1, 3, 'admin');
SELECT pg_temp.state(1);
SELECT chat.set_role(1, 1, 3, 'member');
SELECT pg_temp.state(1);
-- Rejections, each leaving the state as it was.
SELECT pg_temp.try($$SELECT chat.set_role(3, 1, 4, 'admin')$$);
SELECT pg_temp.try($$SELECT chat.set_role(2, 1, 1, 'member')$$);
SELECT pg_temp.try($$SELECT chat.set_role(1, 1, 1, 'admin')$$);
SELECT pg_temp.try($$SELECT chat.set_role(1, 1, 4, 'owner')$$);
SELECT pg_temp.try($$SELECT chat.set_role(1, 1, 4, 'boss')$$);
SELECT pg_temp.try($$SELECT chat.set_role(1, 1, 4, NULL)$$);
SELECT pg_temp.try($$SELECT chat.set_role(1, 1, 5, 'admin')$$);
SELECT pg_temp.try($$SELECT chat.set_role(1, 1, 99, 'admin')$$);
SELECT pg_temp.try($$SELECT chat.set_role(5, 1, 4, 'admin')$$);
SELECT pg_temp.try($$SELECT chat.set_role(1, 99, 4, 'admin')$$);
SELECT pg_temp.try($$SELECT chat.set_role(1, 2, 5, 'admin')$$);
SELECT pg_temp.try($$SELECT chat.set_role(NULL, 1, 4, 'admin')$$);
SELECT pg_temp.try($$SELECT chat.set_role(1, 1, NULL, 'admin')$$);
SELECT pg_temp.state(1);

-- update_group ---------------------------------------------------------
SELECT seq FROM chat.send_message(3, 1, 'before the switch', 'c-before');
SELECT chat.update_group(2, 1, 'new title', 'about us', true);
SELECT pg_temp.state(1);
SELECT body::jsonb FROM chat.messages WHERE conversation_id = 1 ORDER BY seq DESC LIMIT 1;
-- NULL keeps every field: nothing posted.
SELECT chat.update_group(1, 1, NULL, NULL, NULL);
SELECT chat.update_group(1, 1, 'new title', 'about us', true);
SELECT pg_temp.state(1);
-- '' clears the description.
SELECT chat.update_group(1, 1, NULL, '', NULL);
SELECT pg_temp.state(1);
SELECT body::jsonb FROM chat.messages WHERE conversation_id = 1 ORDER BY seq DESC LIMIT 1;
-- only_admins_send: a plain member's send is refused, admins and owner send.
SELECT pg_temp.try($$SELECT seq FROM chat.send_message(3, 1, 'hi')$$);
SELECT chat.client_request('n', 3, 1, '{"type":"send","conversation":1,"body":"hi"}') ->> 'code' AS code;
-- A retry of a send made before the switch still gets its answer.
SELECT seq, duplicate FROM chat.send_message(3, 1, 'before the switch', 'c-before');
SELECT seq FROM chat.send_message(2, 1, 'admin speaks');
SELECT seq FROM chat.send_message(1, 1, 'owner speaks');
SELECT pg_temp.state(1);
SELECT chat.update_group(1, 1, NULL, NULL, false);
SELECT seq FROM chat.send_message(3, 1, 'member speaks again');
SELECT chat.update_group(1, 1, NULL, NULL, true);
-- Rejections, each leaving the state as it was.
SELECT pg_temp.state(1);
SELECT pg_temp.try($$SELECT chat.update_group(3, 1, 'x')$$);
SELECT pg_temp.try($$SELECT chat.update_group(5, 1, 'x')$$);
SELECT pg_temp.try($$SELECT chat.update_group(1, 1, repeat('t', 256))$$);
SELECT pg_temp.try($$SELECT chat.update_group(1, 1, 'x', repeat('d', 1001))$$);
SELECT pg_temp.try($$SELECT chat.update_group(1, 99, 'x')$$);
SELECT pg_temp.try($$SELECT chat.update_group(1, 2, 'x')$$);
SELECT pg_temp.try($$SELECT chat.update_group(NULL, 1, 'x')$$);
SELECT pg_temp.try($$SELECT chat.update_group(1, NULL, 'x')$$);
SELECT pg_temp.state(1);
SELECT chat.update_group(1, 1, repeat('t', 255), NULL, false);
SELECT length(title) FROM chat.conversations WHERE id = 1;
SELECT chat.update_group(1, 1, 'g2');

-- leave ----------------------------------------------------------------
SELECT pg_temp.try($$SELECT chat.leave(1, 2)$$);
SELECT pg_temp.try($$SELECT chat.leave(5, 1)$$);
SELECT pg_temp.try($$SELECT chat.leave(1, 99)$$);
SELECT pg_temp.try($$SELECT chat.leave(99, 1)$$);
SELECT pg_temp.try($$SELECT chat.leave(NULL, 1)$$);
SELECT pg_temp.try($$SELECT chat.leave(1, NULL)$$);
SELECT pg_temp.state(1);
SELECT pg_temp.state(2);
SELECT chat.leave(4, 1);
SELECT pg_temp.state(1);
SELECT body::jsonb FROM chat.messages WHERE conversation_id = 1 ORDER BY seq DESC LIMIT 1;
SELECT pg_temp.try($$SELECT chat.leave(4, 1)$$);
SELECT pg_temp.try($$SELECT chat.members(4, 1)$$);
-- The owner leaves: the admin (2) becomes owner, not the member (3).
SELECT chat.leave(1, 1);
SELECT user_id, role FROM chat.members(2, 1);
-- With no admin left, the longest-standing member inherits.
SELECT chat.add_member(2, 1, 6);
SELECT chat.leave(2, 1);
SELECT user_id, role FROM chat.members(3, 1);
-- The last member leaves: the group stays, without members.
SELECT chat.leave(6, 1);
SELECT chat.leave(3, 1);
SELECT pg_temp.state(1);

-- client_request -------------------------------------------------------
SELECT chat.create_group(1, 'w', ARRAY[2, 3]::bigint[]) AS w;
SELECT jsonb_path_query_array(chat.client_request('n', 2, 1, '{"id":1,"type":"members","conversation":3}'),
                              '$.result.members[*].user') AS users,
       jsonb_path_query_array(chat.client_request('n', 2, 1, '{"id":1,"type":"members","conversation":3}'),
                              '$.result.members[*].role') AS roles,
       chat.client_request('n', 2, 1, '{"id":1,"type":"members","conversation":3}') #>> '{result,members,0,joined_at}' IS NOT NULL AS has_joined_at;
SELECT chat.client_request('n', 1, 1, '{"id":2,"type":"set_role","conversation":3,"user":2,"role":"admin"}');
SELECT chat.client_request('n', 2, 1, '{"id":3,"type":"update_group","conversation":3,"title":"W","description":"d","only_admins_send":true}');
SELECT chat.client_request('n', 3, 1, '{"id":4,"type":"leave","conversation":3}');
SELECT pg_temp.state(3);
-- Rejections over the wire keep the contract's codes.
SELECT chat.client_request('n', 2, 1, '{"id":5,"type":"members","conversation":1}') -> 'code';
SELECT chat.client_request('n', 2, 1, '{"id":6,"type":"members"}') -> 'code';
SELECT chat.client_request('n', 2, 1, '{"id":7,"type":"set_role","conversation":3,"user":1,"role":"member"}') -> 'code';
SELECT chat.client_request('n', 2, 1, '{"id":8,"type":"set_role","conversation":3,"user":1}') -> 'code';
SELECT chat.client_request('n', 2, 1, '{"id":9,"type":"update_group","conversation":3,"only_admins_send":"yes"}') -> 'code';
SELECT chat.client_request('n', 1, 1, '{"id":10,"type":"leave","conversation":2}') -> 'code';
SELECT pg_temp.state(3);
