-- Sync and watermarks: sync pages per device, ack (delivered), mark_read.
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
CREATE FUNCTION pg_temp.marks() RETURNS TABLE(conversation_id bigint, user_id bigint, delivered_seq bigint, read_seq bigint)
LANGUAGE sql AS $$ SELECT conversation_id, user_id, delivered_seq, read_seq FROM chat.members ORDER BY 1, 2 $$;

SELECT chat.upsert_user(id, 'user' || id) FROM generate_series(1, 3) AS id;
SELECT chat.register_device(2) AS phone, chat.register_device(2) AS laptop, chat.register_device(1) AS alice;
SELECT chat.direct_conversation(1, 2) AS c1, chat.direct_conversation(3, 2) AS c2;
SELECT count(*) FROM (SELECT chat.send_message(1, 1, 'a' || i) FROM generate_series(1, 5) AS i) AS s;
SELECT count(*) FROM (SELECT chat.send_message(3, 2, 'c' || i) FROM generate_series(1, 3) AS i) AS s;

-- A new device gets everything, by (conversation_id, seq), in pages.
SELECT conversation_id, seq, body FROM chat.sync(2, 1, 4);
SELECT conversation_id, seq, body FROM chat.sync(2, 1);
-- Acks move the device cursor and delivered_seq forward, never back.
SELECT chat.ack(2, 1, 1, 4);
SELECT chat.ack(2, 1, 1, 2);
SELECT conversation_id, seq FROM chat.sync(2, 1, 3);
SELECT chat.ack(2, 1, 1, 5), chat.ack(2, 1, 2, 3);
SELECT conversation_id, seq FROM chat.sync(2, 1);
SELECT user_id, device_id, conversation_id, acked_seq FROM chat.device_cursors ORDER BY 1, 2, 3;
-- The other device still has everything to fetch.
SELECT count(*) AS laptop_pending FROM chat.sync(2, 2);
SELECT * FROM pg_temp.marks();
-- delivered_seq is the furthest any device got.
SELECT chat.ack(2, 2, 1, 1);
SELECT delivered_seq FROM chat.members WHERE conversation_id = 1 AND user_id = 2;

-- mark_read: forward only, capped at last_seq, delivered follows.
SELECT chat.mark_read(2, 2, 2);
SELECT chat.mark_read(2, 2, 1);
SELECT * FROM pg_temp.marks();
SELECT chat.mark_read(2, 1, 1000);
SELECT * FROM pg_temp.marks();
SELECT conversation_id, unread FROM chat.conversations(2) ORDER BY 1;
-- Sending moves the sender's own watermarks to the new seq.
SELECT seq FROM chat.send_message(2, 2, 'caught up');
SELECT * FROM pg_temp.marks();

-- A member added later sees from its join on; sync starts there too.
SELECT chat.create_group(1, 'g') AS g;
SELECT seq FROM chat.send_message(1, 3, 'before');
SELECT chat.add_member(1, 3, 2);
SELECT chat.ack(2, 1, 1, 5), chat.ack(2, 1, 2, 4);
SELECT conversation_id, seq, kind FROM chat.sync(2, 1);

-- Bad input: each error with its SQLSTATE, and nothing left behind.
SELECT pg_temp.try($$ SELECT chat.ack(2, 1, 1, 99) $$);            -- beyond last_seq
SELECT pg_temp.try($$ SELECT chat.ack(2, 1, 1, -1) $$);
SELECT pg_temp.try($$ SELECT chat.ack(2, 1, 1, NULL) $$);
SELECT pg_temp.try($$ SELECT chat.ack(2, 9, 1, 1) $$);             -- unknown device
SELECT pg_temp.try($$ SELECT chat.ack(1, 1, 2, 1) $$);             -- not a member
SELECT pg_temp.try($$ SELECT chat.ack(2, 1, 99, 1) $$);            -- unknown conversation
SELECT pg_temp.try($$ SELECT chat.mark_read(1, 2, 1) $$);          -- not a member
SELECT pg_temp.try($$ SELECT chat.mark_read(2, 99, 1) $$);
SELECT pg_temp.try($$ SELECT chat.mark_read(99, 1, 1) $$);         -- unknown user
SELECT pg_temp.try($$ SELECT chat.mark_read(2, 1, -3) $$);
SELECT pg_temp.try($$ SELECT * FROM chat.sync(2, 9) $$);           -- unknown device
SELECT pg_temp.try($$ SELECT * FROM chat.sync(99, 1) $$);
SELECT pg_temp.try($$ SELECT * FROM chat.sync(2, 1, -1) $$);       -- negative limit
SELECT pg_temp.try($$ SELECT * FROM chat.sync(2, 1, 100000) $$);   -- huge limit
SELECT * FROM pg_temp.marks();
SELECT user_id, device_id, conversation_id, acked_seq FROM chat.device_cursors ORDER BY 1, 2, 3;

-- Change log: a device that was away while a message was edited and
-- another deleted gets both changes by sync, as entries after its cursor.
SELECT seq FROM chat.send_message(2, 1, 'b6');
SELECT chat.register_device(1) AS alice_laptop;
SELECT chat.ack(1, 1, 1, 6), chat.ack(1, 2, 1, 6), chat.ack(2, 1, 1, 6), chat.ack(2, 2, 1, 6);
SELECT conversation_id, seq FROM chat.sync(1, 2) WHERE conversation_id = 1;  -- laptop: nothing new
-- (laptops offline) alice edits her 5 from her phone, bob deletes his 6.
SELECT chat.edit_message(1, 1, 5, 'a5 (edited)');
SELECT chat.delete_message(2, 1, 6);
SELECT conversation_id, seq, kind, body, target FROM chat.sync(1, 2) WHERE conversation_id = 1;
SELECT conversation_id, seq, kind, body, target FROM chat.sync(2, 2) WHERE conversation_id = 1;
-- The targets show their current state to whoever reads them again.
SELECT seq, body, edited_at IS NOT NULL AS edited, deleted_at IS NOT NULL AS deleted
  FROM chat.history(2, 1) WHERE seq IN (5, 6) ORDER BY seq;
-- Acks cover entries like any seq.
SELECT chat.ack(1, 2, 1, 8);
SELECT user_id, device_id, conversation_id, acked_seq FROM chat.device_cursors
 WHERE conversation_id = 1 ORDER BY 1, 2, 3;
SELECT conversation_id, seq FROM chat.sync(1, 2) WHERE conversation_id = 1;
-- Paging walks through entries like through messages.
SELECT chat.edit_message(1, 1, 5, 'a5 (again)');
SELECT conversation_id, seq, kind, target FROM chat.sync(1, 1, 2);
SELECT chat.ack(1, 1, 1, 8);
SELECT conversation_id, seq, kind, target FROM chat.sync(1, 1, 2);
-- Unread counts skip entries; authors' watermarks moved as with a send.
SELECT * FROM pg_temp.marks() WHERE conversation_id = 1;
SELECT conversation_id, last_seq, read_seq, unread FROM chat.conversations(2) WHERE conversation_id = 1;
SELECT conversation_id, last_seq, read_seq, unread FROM chat.conversations(1) WHERE conversation_id = 1;
SELECT seq FROM chat.send_message(1, 1, 'a10');
SELECT conversation_id, last_seq, read_seq, unread FROM chat.conversations(2) WHERE conversation_id = 1;
