-- Conversations and members: direct_conversation, create_group, add_member,
-- remove_member, conversations (the chat list).
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
-- state(): members and messages of conversation c, for before/after checks.
CREATE FUNCTION pg_temp.state(c bigint) RETURNS text LANGUAGE sql AS $$
    SELECT 'last_seq=' || (SELECT last_seq FROM chat.conversations WHERE id = c)
        || ' members=' || coalesce((SELECT string_agg(user_id || ':' || role || CASE WHEN left_at IS NULL THEN '' ELSE '(left)' END, ',' ORDER BY user_id)
                                      FROM chat.members WHERE conversation_id = c), '')
        || ' messages=' || (SELECT count(*) FROM chat.messages WHERE conversation_id = c)
$$;

SELECT chat.upsert_user(id, 'user' || id, 'User ' || id) FROM generate_series(1, 6) AS id;

-- One direct conversation per pair, whichever way round.
SELECT chat.direct_conversation(1, 2) AS ab, chat.direct_conversation(2, 1) AS ba,
       chat.direct_conversation(1, 3) AS ac;
SELECT id, kind, direct_low, direct_high, last_seq FROM chat.conversations ORDER BY id;
SELECT conversation_id, user_id, role, joined_seq FROM chat.members ORDER BY 1, 2;

-- A group: creator is owner; duplicates and the creator in members are ignored.
SELECT chat.create_group(1, 'Team', ARRAY[2, 3, 2, 1]) AS team;
SELECT pg_temp.state(3);
SELECT seq, sender_id, kind, body FROM chat.messages WHERE conversation_id = 3 ORDER BY seq;

-- add_member: posts a system message; the new member sees from its join on.
SELECT seq FROM chat.send_message(2, 3, 'before 4 joined');
SELECT chat.add_member(1, 3, 4);
SELECT chat.add_member(1, 3, 5, 'admin');
SELECT pg_temp.state(3);
SELECT user_id, joined_seq, delivered_seq, read_seq FROM chat.members WHERE conversation_id = 3 ORDER BY user_id;
SELECT seq, kind, body FROM chat.history(4, 3);
-- Re-adding an active member with another role changes the role, no message.
SELECT chat.add_member(5, 3, 4, 'admin');
SELECT chat.add_member(5, 3, 4, 'admin');            -- same role: nothing
SELECT pg_temp.state(3);

-- remove_member: admins remove others, anyone leaves.
SELECT chat.remove_member(5, 3, 2);
SELECT chat.remove_member(3, 3, 3);
SELECT pg_temp.state(3);
SELECT seq, sender_id, body FROM chat.messages WHERE conversation_id = 3 AND seq > 4 ORDER BY seq;
SELECT pg_temp.try($$ SELECT * FROM chat.send_message(2, 3, 'removed members cannot send') $$);
SELECT pg_temp.try($$ SELECT * FROM chat.history(2, 3) $$);
-- The last owner leaving hands the group to the longest-standing admin.
SELECT chat.remove_member(1, 3, 1);
SELECT pg_temp.state(3);
-- A removed member can be added back; it sees only what follows.
SELECT chat.add_member(5, 3, 2);
SELECT seq, kind, body FROM chat.history(2, 3);

-- The chat list: newest activity first, unread counts, previews.
SELECT seq FROM chat.send_message(1, 1, 'hello bob');
SELECT seq FROM chat.send_message(1, 1, repeat('long ', 60));
SELECT conversation_id, kind, title, last_seq, read_seq, unread, peer_id,
       last_message->>'seq' AS msg_seq, length(last_message->>'body') AS preview_len
  FROM chat.conversations(2);
SELECT conversation_id, title, unread FROM chat.conversations(2, 1);
SELECT conversation_id FROM chat.conversations(2, 50, (SELECT last_activity FROM chat.conversations WHERE id = 1));
SELECT conversation_id, title, unread, last_message IS NULL AS no_preview FROM chat.conversations(3);

-- Group cap.
SET chat.max_group_members = 3;
SELECT chat.create_group(6, 'Small', ARRAY[1, 2]) AS small;
SELECT pg_temp.state(4);

-- Bad input: each error with its SQLSTATE, and nothing left behind.
SELECT pg_temp.try($$ SELECT chat.add_member(6, 4, 3) $$);                -- group full
SELECT pg_temp.try($$ SELECT chat.create_group(6, 'Big', ARRAY[1, 2, 3]) $$);
RESET chat.max_group_members;
SELECT pg_temp.try($$ SELECT chat.add_member(6, 4, 3, 'boss') $$);        -- bad role
SELECT pg_temp.try($$ SELECT chat.add_member(6, 4, 3, NULL) $$);
SELECT pg_temp.try($$ SELECT chat.add_member(1, 4, 3) $$);                -- plain member adds
SELECT pg_temp.try($$ SELECT chat.add_member(3, 4, 5) $$);                -- non-member adds
SELECT pg_temp.try($$ SELECT chat.add_member(6, 4, 99) $$);               -- unknown user
SELECT pg_temp.try($$ SELECT chat.add_member(6, 99, 3) $$);               -- unknown conversation
SELECT pg_temp.try($$ SELECT chat.add_member(1, 1, 3) $$);                -- direct conversation
SELECT pg_temp.try($$ SELECT chat.add_member(5, 3, 6, 'owner') $$);       -- admin makes an owner
SELECT pg_temp.try($$ SELECT chat.add_member(6, 4, 6, 'member') $$);      -- last owner demotes itself
SELECT pg_temp.try($$ SELECT chat.remove_member(1, 4, 2) $$);             -- plain member removes
SELECT pg_temp.try($$ SELECT chat.remove_member(6, 4, 3) $$);             -- not a member
SELECT pg_temp.try($$ SELECT chat.remove_member(3, 4, 3) $$);             -- non-member leaves
SELECT pg_temp.try($$ SELECT chat.remove_member(6, 99, 1) $$);
SELECT pg_temp.try($$ SELECT chat.remove_member(1, 1, 2) $$);             -- direct conversation
SELECT chat.add_member(6, 4, 1, 'admin');
SELECT pg_temp.try($$ SELECT chat.remove_member(1, 4, 6) $$);             -- admin removes the owner
SELECT pg_temp.try($$ SELECT chat.direct_conversation(1, 1) $$);
SELECT pg_temp.try($$ SELECT chat.direct_conversation(1, 99) $$);
SELECT pg_temp.try($$ SELECT chat.direct_conversation(NULL, 1) $$);
SELECT pg_temp.try($$ SELECT chat.create_group(99, 'x') $$);
SELECT pg_temp.try($$ SELECT chat.create_group(1, 'x', ARRAY[2, 98]) $$);
SELECT pg_temp.try($$ SELECT chat.create_group(1, 'x', ARRAY[2, NULL]) $$);
SELECT pg_temp.try($$ SELECT chat.create_group(NULL, 'x') $$);
SELECT pg_temp.try($$ SELECT chat.create_group(1, repeat('t', 256)) $$);
SELECT pg_temp.try($$ SELECT * FROM chat.conversations(1, -1) $$);
SELECT pg_temp.try($$ SELECT * FROM chat.conversations(1, 5000) $$);
SELECT pg_temp.try($$ SELECT * FROM chat.conversations(99) $$);
SELECT pg_temp.state(3), pg_temp.state(4);
SELECT count(*) AS conversations, (SELECT count(*) FROM chat.members) AS members FROM chat.conversations;
