-- Profiles, find_user, blocking, reports and privacy: every function, every
-- rejection with its SQLSTATE and no partial state after one; the block in
-- the send path; presence, typing audience and privacy settings.
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

SELECT chat.upsert_user(i, 'User' || i, CASE WHEN i = 1 THEN 'Alice' END) FROM generate_series(1, 5) i;
SELECT chat.register_device(i) FROM generate_series(1, 5) i;
-- 1-2 direct (both send: contacts), 1-3 direct, group 3 of 1, 2, 4.
SELECT chat.direct_conversation(1, 2) AS c12, chat.direct_conversation(1, 3) AS c13;
SELECT chat.create_group(1, 'g', ARRAY[2, 4]::bigint[]) AS g;
SELECT seq FROM chat.send_message(1, 1, 'hi 2');
SELECT seq FROM chat.send_message(2, 1, 'hi 1');

-- Profiles -------------------------------------------------------------
SELECT * FROM chat.profile(1, ARRAY[3, 1, 99, 1]);
-- avatars are ready image profile uploads of the user's own (36_avatars
-- tests the checks); two with fixed ids, as chat-media leaves them
INSERT INTO chat.attachments (id, owner_id, conversation_id, mime, size, sha256, state)
SELECT i::uuid, 1, NULL, 'image/png', 10, repeat('a', 64), 'ready'
  FROM unnest(ARRAY['00000000-0000-4000-8000-0000000000a1', '00000000-0000-4000-8000-0000000000a2']) i;
SELECT chat.set_profile(1, '  Alice A.  ', 'about me', '00000000-0000-4000-8000-0000000000a1');
SELECT * FROM chat.profile(2, ARRAY[1]);
-- NULL keeps a field, '' clears it (display_name falls back to nothing).
SELECT chat.set_profile(1, NULL, NULL, NULL);
SELECT display_name, about, avatar FROM chat.profile(2, ARRAY[1]);
SELECT chat.set_profile(1, '', NULL, '');
SELECT display_name, about, avatar FROM chat.profile(2, ARRAY[1]);
SELECT chat.set_profile(1, 'Alice', 'x', '00000000-0000-4000-8000-0000000000a2');
-- Rejections, each leaving the profile as it was.
SELECT pg_temp.try($$SELECT chat.set_profile(1, repeat('n', 65))$$);
SELECT pg_temp.try($$SELECT chat.set_profile(1, 'ok name', repeat('a', 501))$$);
SELECT pg_temp.try($$SELECT chat.set_profile(1, 'ok name', 'ok', 'no spaces allowed')$$);
SELECT pg_temp.try($$SELECT chat.set_profile(1, 'ok name', 'ok', repeat('a', 129))$$);
SELECT pg_temp.try($$SELECT chat.set_profile(1, E'tab\there')$$);
SELECT pg_temp.try($$SELECT chat.set_profile(99, 'x')$$);
SELECT pg_temp.try($$SELECT chat.set_profile(NULL, 'x')$$);
SELECT display_name, about, avatar FROM chat.profile(2, ARRAY[1]);
SELECT chat.set_profile(1, repeat('n', 64), repeat('a', 500));
SELECT length(display_name), length(about) FROM chat.profile(2, ARRAY[1]);
SELECT chat.set_profile(1, 'Alice', 'x');
SELECT pg_temp.try($$SELECT chat.profile(1, NULL)$$);
SELECT pg_temp.try($$SELECT chat.profile(99, ARRAY[1])$$);
SELECT pg_temp.try($$SELECT chat.profile(1, ARRAY(SELECT generate_series(1, 1001)::bigint))$$);
SELECT count(*) FROM chat.profile(1, ARRAY(SELECT generate_series(1, 1000)::bigint));

-- find_user: regardless of case; P0002 when none.
SELECT * FROM chat.find_user(2, 'user1');
SELECT user_id FROM chat.find_user(2, 'USER3');
SELECT pg_temp.try($$SELECT chat.find_user(2, 'nobody')$$);
SELECT pg_temp.try($$SELECT chat.find_user(2, '')$$);
SELECT pg_temp.try($$SELECT chat.find_user(2, NULL)$$);
SELECT pg_temp.try($$SELECT chat.find_user(2, repeat('h', 65))$$);
SELECT pg_temp.try($$SELECT chat.find_user(99, 'user1')$$);

-- The chat list names the peer of a direct conversation.
SELECT conversation_id, kind, title, peer_id FROM chat.conversations(1) ORDER BY 1;

-- Blocking -------------------------------------------------------------
SELECT chat.block(2, 1);
SELECT chat.block(2, 1);   -- again: no change
SELECT chat.block(2, 4);
SELECT * FROM chat.blocked(2);
SELECT * FROM chat.blocked(1);
SELECT chat.is_blocked(1, 2), chat.is_blocked(2, 1), chat.is_blocked(1, 3);
SELECT pg_temp.try($$SELECT chat.block(2, 2)$$);
SELECT pg_temp.try($$SELECT chat.block(2, 99)$$);
SELECT pg_temp.try($$SELECT chat.block(99, 2)$$);
SELECT pg_temp.try($$SELECT chat.block(2, NULL)$$);
SELECT pg_temp.try($$SELECT chat.unblock(2, 2)$$);
SELECT pg_temp.try($$SELECT chat.unblock(2, 99)$$);
SELECT pg_temp.try($$SELECT chat.blocked(99)$$);
SELECT blocker, blocked FROM chat.blocks ORDER BY 1, 2;

-- The blocked user cannot send into the direct conversation with the
-- blocker (42501, nothing written); the blocker still can; the group is
-- not affected.
SELECT last_seq FROM chat.conversations WHERE id = 1;
SELECT pg_temp.try($$SELECT chat.send_message(1, 1, 'let me in', 'blk-1')$$);
SELECT last_seq FROM chat.conversations WHERE id = 1;
SELECT count(*) FROM chat.messages WHERE client_msg_id = 'blk-1';
SELECT seq FROM chat.send_message(2, 1, 'from the blocker');
SELECT seq FROM chat.send_message(1, 3, 'in the group');
-- A retry of a send made before the block still gets its answer.
SELECT chat.unblock(2, 1);
SELECT seq, duplicate FROM chat.send_message(1, 1, 'before', 'retry-1');
SELECT chat.block(2, 1);
SELECT seq, duplicate FROM chat.send_message(1, 1, 'before', 'retry-1');
SELECT pg_temp.try($$SELECT chat.send_message(1, 1, 'after', 'retry-2')$$);
-- Nor edit there (an edit brings new text); deleting its own message stays allowed.
SELECT pg_temp.try($$SELECT chat.edit_message(1, 1, 4, 'edited while blocked')$$);
SELECT body, edited_at IS NULL AS not_edited FROM chat.messages WHERE conversation_id = 1 AND seq = 4;
SELECT count(*) AS edit_entries FROM chat.messages WHERE conversation_id = 1 AND kind = 'edit';
SELECT seq FROM chat.send_message(2, 1, 'the blocker writes');
SELECT chat.edit_message(2, 1, 5, 'the blocker edits');
SELECT chat.delete_message(1, 1, 4);
SELECT seq, kind, target, body FROM chat.messages WHERE conversation_id = 1 AND seq > 4 ORDER BY seq;
-- Over client_request too.
SELECT chat.client_request('n1', 1, 1, '{"id":1,"type":"send","conversation":1,"body":"x"}') - 'message';

-- Presence stops between the two, both ways, whatever the privacy.
SELECT chat.node_reset('gw1');
SELECT chat.connect('gw1', 1, 1), chat.connect('gw1', 2, 1), chat.connect('gw1', 4, 1);
SELECT 'viewer 1' AS v, user_id, online FROM chat.presence(1, ARRAY[2, 4]);
SELECT 'viewer 2' AS v, user_id, online FROM chat.presence(2, ARRAY[1, 4]);
SELECT 'viewer 4' AS v, user_id, online FROM chat.presence(4, ARRAY[1, 2]);
SELECT chat.presence_audience(1) AS audience_1, chat.presence_audience(2) AS audience_2;

-- Unblocking restores everything.
SELECT chat.unblock(2, 1);
SELECT chat.unblock(2, 1);   -- again: no change
SELECT * FROM chat.blocked(2);
SELECT 'viewer 1' AS v, user_id, online FROM chat.presence(1, ARRAY[2]);
SELECT seq FROM chat.send_message(1, 1, 'unblocked');
SELECT chat.unblock(2, 4);

-- Reports --------------------------------------------------------------
SELECT chat.report(1, 2, NULL, NULL, 'spam') AS user_report;
SELECT chat.report(1, NULL, 1, 2, 'rude') AS message_report;
SELECT chat.report(4, NULL, 3, NULL, 'group is spam') AS conversation_report;
SELECT id, reporter, reported_user, conversation_id, seq, reason,
       message ->> 'body' AS body, message ->> 'sender' AS sender
  FROM chat.reports ORDER BY id;
SELECT id, reporter_handle, reported_handle FROM chat.reports_for_moderators ORDER BY id;
-- The copy stays when the message changes.
SELECT chat.delete_message(2, 1, 2);
SELECT message ->> 'body' AS body FROM chat.reports WHERE id = 2;
-- Rejections: nothing stored.
SELECT pg_temp.try($$SELECT chat.report(1, 2, NULL, NULL, NULL)$$);
SELECT pg_temp.try($$SELECT chat.report(1, 2, NULL, NULL, '   ')$$);
SELECT pg_temp.try($$SELECT chat.report(1, 2, NULL, NULL, repeat('r', 1001))$$);
SELECT pg_temp.try($$SELECT chat.report(1, NULL, NULL, NULL, 'r')$$);
SELECT pg_temp.try($$SELECT chat.report(1, NULL, NULL, 1, 'r')$$);
SELECT pg_temp.try($$SELECT chat.report(1, 2, NULL, 1, 'r')$$);
SELECT pg_temp.try($$SELECT chat.report(1, 1, NULL, NULL, 'r')$$);
SELECT pg_temp.try($$SELECT chat.report(1, 99, NULL, NULL, 'r')$$);
SELECT pg_temp.try($$SELECT chat.report(99, 2, NULL, NULL, 'r')$$);
SELECT pg_temp.try($$SELECT chat.report(3, NULL, 1, NULL, 'not a member')$$);
SELECT pg_temp.try($$SELECT chat.report(3, NULL, 1, 1, 'not a member')$$);
SELECT pg_temp.try($$SELECT chat.report(1, NULL, 999, NULL, 'r')$$);
SELECT pg_temp.try($$SELECT chat.report(1, NULL, 1, 999, 'r')$$);
SELECT pg_temp.try($$SELECT chat.report(1, NULL, 1, 1, 'own message')$$);
SELECT pg_temp.try($$SELECT chat.report(1, 4, 1, 2, 'not the sender')$$);
-- A member added later cannot report what came before it joined.
SELECT chat.add_member(1, 3, 5);
SELECT joined_seq FROM chat.members WHERE conversation_id = 3 AND user_id = 5;
SELECT pg_temp.try($$SELECT chat.report(5, NULL, 3, 1, 'before joining')$$);
SELECT count(*) AS reports FROM chat.reports;
-- At most 20 reports per reporter per hour.
SELECT count(chat.report(4, 5, NULL, NULL, 'flood ' || i)) FROM generate_series(1, 19) i;
SELECT pg_temp.try($$SELECT chat.report(4, 5, NULL, NULL, 'one too many')$$);
SELECT count(*) AS reports_of_4 FROM chat.reports WHERE reporter = 4;
-- The view is granted to no one; the tables are user data pg_dump keeps.
SELECT has_table_privilege('public', 'chat.reports_for_moderators', 'SELECT') AS public_select;
SELECT c.relname FROM pg_extension e, unnest(e.extconfig) AS t(oid) JOIN pg_class c ON c.oid = t.oid
 WHERE e.extname = 'chat' AND c.relname IN ('blocks', 'reports', 'reports_id_seq') ORDER BY 1;

-- Privacy --------------------------------------------------------------
SELECT chat.set_privacy(3, 'nobody', NULL);
SELECT presence_privacy, read_receipts FROM chat.users WHERE id = 3;
SELECT chat.set_privacy(3, NULL, false);
SELECT presence_privacy, read_receipts FROM chat.users WHERE id = 3;
SELECT chat.set_privacy(3, 'contacts', true);
SELECT presence_privacy, read_receipts FROM chat.users WHERE id = 3;
SELECT pg_temp.try($$SELECT chat.set_privacy(3, 'peers', false)$$);
SELECT pg_temp.try($$SELECT chat.set_privacy(99, 'nobody', NULL)$$);
SELECT pg_temp.try($$SELECT chat.set_privacy(NULL, 'nobody', NULL)$$);
SELECT presence_privacy, read_receipts FROM chat.users WHERE id = 3;

-- The requests over client_request -------------------------------------
SELECT chat.client_request('n1', 2, 1, '{"id":1,"type":"profile","users":[1,2,99]}');
SELECT chat.client_request('n1', 2, 1, '{"id":1,"type":"profile"}');
SELECT chat.client_request('n1', 2, 1, '{"id":1,"type":"profile","users":5}');
SELECT chat.client_request('n1', 2, 1, '{"id":2,"type":"set_profile","display_name":"Bob","about":"hi"}');
SELECT chat.client_request('n1', 1, 1, '{"id":3,"type":"find_user","handle":"USER2"}');
SELECT chat.client_request('n1', 1, 1, '{"id":4,"type":"find_user","handle":"nope"}');
SELECT chat.client_request('n1', 1, 1, '{"id":5,"type":"find_user"}');
SELECT chat.client_request('n1', 1, 1, '{"id":6,"type":"block","user":3}');
SELECT chat.client_request('n1', 1, 1, '{"id":7,"type":"blocked"}');
SELECT chat.client_request('n1', 1, 1, '{"id":8,"type":"unblock","user":3}');
SELECT chat.client_request('n1', 1, 1, '{"id":9,"type":"blocked"}');
SELECT chat.client_request('n1', 1, 1, '{"id":10,"type":"block","user":"x"}');
SELECT chat.client_request('n1', 1, 1, '{"id":11,"type":"block"}');
SELECT chat.client_request('n1', 1, 1, '{"id":12,"type":"report","user":3,"reason":"spam"}') - 'result' AS report_ok;
SELECT chat.client_request('n1', 1, 1, '{"id":13,"type":"report","user":3}');
SELECT chat.client_request('n1', 1, 1, '{"id":14,"type":"set_privacy","last_seen":"nobody","read_receipts":false}');
SELECT presence_privacy, read_receipts FROM chat.users WHERE id = 1;
SELECT chat.client_request('n1', 1, 1, '{"id":15,"type":"set_privacy","read_receipts":"no"}');
SELECT chat.client_request('n1', 1, 1, '{"id":16,"type":"set_privacy","last_seen":"friends"}');
SELECT presence_privacy, read_receipts FROM chat.users WHERE id = 1;
SELECT chat.client_request('n1', 1, 1, '{"id":17,"type":"set_profile","avatar":"bad id"}');
SELECT chat.client_request('n1', 1, 1, '{"id":18,"type":"conversations"}') #> '{result,conversations}'
       @> '[{"conversation":1,"peer":{"user":2,"handle":"User2","display_name":"Bob"}},{"conversation":3,"peer":null}]' AS peers_named;
