-- Messages: send_message (gapless seqs, idempotency, watermarks), edit,
-- delete, history, messages_after, get_message.
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

SELECT chat.upsert_user(1, 'alice'), chat.upsert_user(2, 'bob'), chat.upsert_user(3, 'carol');
SELECT chat.register_device(1) AS alice_dev, chat.register_device(2) AS bob_dev;
SELECT chat.direct_conversation(1, 2) AS conv;

-- Seqs are 1, 2, 3 ...; a repeated client_msg_id returns the first result.
SELECT conversation_id, seq, duplicate FROM chat.send_message(1, 1, 'hello', 'c-1', NULL, 1);
SELECT conversation_id, seq, duplicate FROM chat.send_message(1, 1, 'hello again?', 'c-1', NULL, 1);
SELECT conversation_id, seq, duplicate FROM chat.send_message(2, 1, 'hi alice', 'c-1');  -- other sender, own key
SELECT conversation_id, seq, duplicate FROM chat.send_message(2, 1, 'reply', NULL, 1);
SELECT conversation_id, seq, duplicate FROM chat.send_message(1, 1, 'three');
SELECT seq, sender_id, sender_device, kind, body, client_msg_id, reply_to FROM chat.messages ORDER BY seq;
-- created_at of the duplicate is the original one.
SELECT (SELECT created_at FROM chat.send_message(1, 1, 'x', 'c-1')) = (SELECT created_at FROM chat.messages WHERE seq = 1) AS same_created_at;
-- Sending counts as reading; last_seq and last_activity follow.
SELECT user_id, delivered_seq, read_seq FROM chat.members ORDER BY user_id;
SELECT last_seq, last_activity = (SELECT max(created_at) FROM chat.messages) AS activity FROM chat.conversations;

-- Reads.
SELECT seq, body FROM chat.history(2, 1);
SELECT seq, body FROM chat.history(2, 1, 4, 2);
SELECT seq, body FROM chat.history(2, 1, 1);
SELECT seq, body FROM chat.messages_after(1, 1, 2);
SELECT seq, body FROM chat.messages_after(1, 1, 0, 1);
SELECT seq, sender_id, body FROM chat.get_message(2, 1, 3);

-- Edit and delete.
SELECT chat.edit_message(1, 1, 4, 'three (edited)');
SELECT seq, body, edited_at IS NOT NULL AS edited FROM chat.get_message(2, 1, 4);
SELECT chat.delete_message(2, 1, 3);
SELECT chat.delete_message(2, 1, 3);                 -- deleting a tombstone does nothing
SELECT seq, body, deleted_at IS NOT NULL AS deleted FROM chat.history(1, 1) ORDER BY seq;

-- Bad input: each error with its SQLSTATE, and nothing left behind.
SET chat.max_body_bytes = 10;
SELECT pg_temp.try($$ SELECT * FROM chat.send_message(3, 1, 'not mine') $$);          -- non-member
SELECT pg_temp.try($$ SELECT * FROM chat.send_message(99, 1, 'who') $$);              -- unknown user
SELECT pg_temp.try($$ SELECT * FROM chat.send_message(1, 99, 'where') $$);            -- unknown conversation
SELECT pg_temp.try($$ SELECT * FROM chat.send_message(1, 1, NULL) $$);
SELECT pg_temp.try($$ SELECT * FROM chat.send_message(1, 1, '') $$);
SELECT pg_temp.try($$ SELECT * FROM chat.send_message(1, 1, 'eleven byte') $$);
SELECT pg_temp.try($$ SELECT * FROM chat.send_message(1, 1, 'ok', '') $$);
SELECT pg_temp.try($$ SELECT * FROM chat.send_message(1, 1, 'ok', repeat('k', 129)) $$);
SELECT pg_temp.try($$ SELECT * FROM chat.send_message(1, 1, 'ok', NULL, 99) $$);      -- reply to nothing
SELECT pg_temp.try($$ SELECT * FROM chat.send_message(1, 1, 'ok', NULL, NULL, 7) $$); -- unknown device
SELECT pg_temp.try($$ SELECT * FROM chat.send_message(NULL, 1, 'ok') $$);
SELECT pg_temp.try($$ SELECT * FROM chat.send_message(1, NULL, 'ok') $$);
RESET chat.max_body_bytes;
SELECT pg_temp.try($$ SELECT * FROM chat.history(3, 1) $$);                          -- non-member reads
SELECT pg_temp.try($$ SELECT * FROM chat.history(1, 99) $$);
SELECT pg_temp.try($$ SELECT * FROM chat.history(1, 1, NULL, -1) $$);                -- negative limit
SELECT pg_temp.try($$ SELECT * FROM chat.history(1, 1, NULL, 0) $$);
SELECT pg_temp.try($$ SELECT * FROM chat.history(1, 1, NULL, 1000000) $$);           -- huge limit
SELECT pg_temp.try($$ SELECT * FROM chat.messages_after(3, 1, 0) $$);
SELECT pg_temp.try($$ SELECT * FROM chat.messages_after(1, 1, 0, -5) $$);
SELECT pg_temp.try($$ SELECT * FROM chat.messages_after(1, 1, 0, 2000000000) $$);
SELECT pg_temp.try($$ SELECT * FROM chat.get_message(3, 1, 1) $$);
SELECT pg_temp.try($$ SELECT * FROM chat.get_message(1, 1, 99) $$);
SELECT pg_temp.try($$ SELECT chat.edit_message(2, 1, 4, 'not yours') $$);
SELECT pg_temp.try($$ SELECT chat.edit_message(1, 1, 99, 'nothing') $$);
SELECT pg_temp.try($$ SELECT chat.edit_message(2, 1, 3, 'deleted') $$);
SELECT pg_temp.try($$ SELECT chat.edit_message(1, 1, 4, '') $$);
SELECT pg_temp.try($$ SELECT chat.edit_message(1, 1, 4, NULL) $$);
SELECT pg_temp.try($$ SELECT chat.edit_message(3, 1, 4, 'outsider') $$);
SET chat.edit_window = 0;
SELECT pg_temp.try($$ SELECT chat.edit_message(1, 1, 1, 'too late') $$);
RESET chat.edit_window;
SELECT pg_temp.try($$ SELECT chat.delete_message(1, 1, 2) $$);                       -- bob's message
SELECT pg_temp.try($$ SELECT chat.delete_message(3, 1, 2) $$);
SELECT pg_temp.try($$ SELECT chat.delete_message(1, 1, 99) $$);
SELECT (SELECT count(*) FROM chat.messages) AS messages,
       (SELECT last_seq FROM chat.conversations WHERE id = 1) AS last_seq,
       (SELECT string_agg(coalesce(body, '-'), ',' ORDER BY seq) FROM chat.messages) AS bodies,
       (SELECT string_agg(user_id || ':' || read_seq, ',' ORDER BY user_id) FROM chat.members) AS read;

-- After the errors the seqs continue without a gap.
SELECT seq FROM chat.send_message(2, 1, 'next');

-- Change log: an edit and a delete each append an entry (kind edit/delete,
-- target = the seq changed) at the next seq, and change the target in place.
SELECT chat.upsert_user(4, 'dave');
SELECT chat.register_device(3, 'ios', 'tok-carol') AS carol_dev, chat.register_device(4, 'ios', 'tok-dave') AS dave_dev;
SELECT chat.create_group(1, 'log', ARRAY[2, 3]::bigint[]) AS g;
SELECT seq FROM chat.send_message(1, 2, 'first draft');
SELECT seq FROM chat.send_message(2, 2, 'bob here');
DELETE FROM chat.push_outbox;
SELECT chat.edit_message(1, 2, 2, 'second draft');
SELECT seq, sender_id, sender_device, kind, body, target, client_msg_id,
       created_at = (SELECT edited_at FROM chat.messages WHERE conversation_id = 2 AND seq = 2) AS at_edit_time
  FROM chat.messages WHERE conversation_id = 2 AND seq > 3 ORDER BY seq;
SELECT seq, body, edited_at IS NOT NULL AS edited FROM chat.messages WHERE conversation_id = 2 AND seq = 2;
-- The editor's watermarks move as with a send; last_activity does not.
SELECT c.last_seq, c.last_activity = (SELECT created_at FROM chat.messages WHERE conversation_id = 2 AND seq = 3) AS activity_of_last_send
  FROM chat.conversations c WHERE c.id = 2;
SELECT user_id, delivered_seq, read_seq, last_sent_seq FROM chat.members WHERE conversation_id = 2 ORDER BY user_id;
-- A second edit, then a delete: the delete clears the bodies of the edits.
SELECT chat.edit_message(1, 2, 2, 'third draft');
SELECT chat.delete_message(1, 2, 2);
SELECT seq, kind, body, target, deleted_at IS NOT NULL AS deleted FROM chat.messages WHERE conversation_id = 2 ORDER BY seq;
-- Every read carries the entries, with target, as messages.
SELECT seq, kind, body, target FROM chat.history(3, 2);
SELECT seq, kind, body, target FROM chat.messages_after(3, 2, 3);
SELECT seq, kind, target FROM chat.get_message(3, 2, 6);
SELECT chat.message_json(m) - 'created_at' AS json FROM chat.get_message(3, 2, 6) m;
SELECT chat.message_json(m) - 'created_at' - 'edited_at' AS json FROM chat.get_message(3, 2, 3) m;
-- Entries are no news: no push rows, not unread, not the last message.
SELECT count(*) AS pushes_for_entries FROM chat.push_outbox;
SELECT conversation_id, last_seq, read_seq, unread, last_message ->> 'seq' AS last_message_seq,
       last_message ->> 'kind' AS last_message_kind
  FROM chat.conversations(3) ORDER BY conversation_id;
SELECT chat.mark_read(3, 2, 3);
SELECT unread FROM chat.conversations(3) WHERE conversation_id = 2;
SELECT seq FROM chat.send_message(2, 2, 'news');
SELECT unread, last_message ->> 'seq' AS last_message_seq FROM chat.conversations(3) WHERE conversation_id = 2;
SELECT count(*) AS pushes_for_news FROM chat.push_outbox WHERE conversation_id = 2 AND seq = 7;

-- A member who joins later gets the entries of older messages (its seqs stay
-- gapless) but without the body of a message it never saw.
SELECT seq FROM chat.send_message(2, 2, 'before dave');
SELECT chat.add_member(1, 2, 4);
SELECT chat.edit_message(2, 2, 8, 'before dave, edited');
SELECT seq FROM chat.send_message(4, 2, 'dave here');
SELECT chat.edit_message(4, 2, 11, 'dave here!');
SELECT seq, kind, body, target FROM chat.history(4, 2);
SELECT seq, kind, body, target FROM chat.get_message(4, 2, 10);
SELECT seq, kind, body, target FROM chat.get_message(3, 2, 10);

-- Rejected edits and deletes: each with its SQLSTATE, and no seq allocated.
SELECT pg_temp.try($$ SELECT chat.edit_message(2, 2, 11, 'not mine') $$);
SELECT pg_temp.try($$ SELECT chat.edit_message(1, 2, 99, 'nothing') $$);
SELECT pg_temp.try($$ SELECT chat.edit_message(1, 2, 2, 'deleted') $$);
SELECT pg_temp.try($$ SELECT chat.edit_message(1, 2, 4, 'an entry') $$);
SELECT pg_temp.try($$ SELECT chat.edit_message(2, 2, 1, 'system') $$);
SELECT pg_temp.try($$ SELECT chat.edit_message(4, 2, 11, '') $$);
SELECT pg_temp.try($$ SELECT chat.edit_message(4, 2, 11, NULL) $$);
SELECT pg_temp.try($$ SELECT chat.edit_message(4, 2, NULL, 'x') $$);
SELECT pg_temp.try($$ SELECT chat.edit_message(4, 2, 8, 'before my time') $$);
SELECT pg_temp.try($$ SELECT chat.edit_message(4, 99, 1, 'where') $$);
SET chat.max_body_bytes = 10;
SELECT pg_temp.try($$ SELECT chat.edit_message(4, 2, 11, 'eleven byte') $$);
RESET chat.max_body_bytes;
SET chat.edit_window = 0;
SELECT pg_temp.try($$ SELECT chat.edit_message(4, 2, 11, 'too late') $$);
RESET chat.edit_window;
SELECT pg_temp.try($$ SELECT chat.delete_message(2, 2, 11) $$);
SELECT pg_temp.try($$ SELECT chat.delete_message(1, 2, 4) $$);
SELECT pg_temp.try($$ SELECT chat.delete_message(1, 2, 99) $$);
SELECT pg_temp.try($$ SELECT chat.delete_message(1, 2, NULL) $$);
SELECT pg_temp.try($$ SELECT chat.delete_message(99, 2, 3) $$);
SELECT chat.delete_message(1, 2, 2);                 -- a tombstone again: no entry
-- The internal write path refuses what is not a system message or an entry.
SELECT pg_temp.try($$ SELECT chat.append_message(2, 1, 'text', 'x') $$);
SELECT pg_temp.try($$ SELECT chat.append_message(2, 1, 'edit', 'x') $$);
SELECT pg_temp.try($$ SELECT chat.append_message(2, 1, 'system', 'x', 3) $$);
SELECT pg_temp.try($$ SELECT chat.append_message(2, 1, 'delete', 'x', 3) $$);
SELECT pg_temp.try($$ SELECT chat.append_message(2, 1, 'edit', 'x', 99) $$);
SELECT pg_temp.try($$ SELECT chat.append_message(99, 1, 'system', '{}') $$);
SELECT pg_temp.try($$ SELECT chat.append_message(2, 1, NULL, '{}') $$);
SELECT (SELECT last_seq FROM chat.conversations WHERE id = 2) AS last_seq,
       (SELECT count(*) FROM chat.messages WHERE conversation_id = 2) AS messages,
       (SELECT max(seq) FROM chat.messages WHERE conversation_id = 2) AS max_seq,
       (SELECT string_agg(coalesce(body, '-'), ',' ORDER BY seq) FROM chat.messages
         WHERE conversation_id = 2 AND seq > 7) AS bodies;
SELECT seq FROM chat.send_message(4, 2, 'no gap');
