-- Disappearing messages (set_disappearing, the send path's expires_at,
-- expire_messages), retention (apply_retention), broadcast and the expiry
-- worker's start rule: every function, every rejection with its SQLSTATE
-- and no partial state after one.
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

SELECT chat.upsert_user(i, 'user' || i) FROM generate_series(1, 4) i;
SELECT chat.register_device(i) FROM generate_series(1, 4) i;
SELECT chat.create_group(1, 'g', ARRAY[2, 3]::bigint[]) AS g;     -- 1
SELECT chat.direct_conversation(1, 4) AS d;                      -- 2

-- set_disappearing -----------------------------------------------------
SELECT seq AS before_ttl FROM chat.send_message(1, 1, 'kept') \gset
SELECT chat.set_disappearing(1, 1, 60);
SELECT settings FROM chat.conversations WHERE id = 1;
SELECT body::jsonb FROM chat.messages WHERE conversation_id = 1 ORDER BY seq DESC LIMIT 1;
SELECT r -> 'ttl' AS listed_ttl
  FROM jsonb_array_elements(chat.client_request('n', 2, 1, '{"id":60,"type":"conversations"}') #> '{result,conversations}') r
 WHERE (r ->> 'conversation')::bigint = 1;
SELECT chat.set_disappearing(1, 1, 60);                          -- same ttl: nothing posted
SELECT last_seq FROM chat.conversations WHERE id = 1;
SELECT chat.client_request('n', 4, 1, '{"id":1,"type":"set_disappearing","conversation":2,"ttl":3600}');
SELECT settings FROM chat.conversations WHERE id = 2;
SELECT chat.block(1, 4);
SELECT pg_temp.try($$SELECT chat.set_disappearing(4, 2, 60)$$);   -- blocked by the peer
SELECT chat.unblock(1, 4);
SELECT settings FROM chat.conversations WHERE id = 2;
SELECT pg_temp.try($$SELECT chat.set_disappearing(3, 1, 30)$$);  -- plain member of a group
SELECT pg_temp.try($$SELECT chat.set_disappearing(4, 1, 30)$$);  -- not a member
SELECT pg_temp.try($$SELECT chat.set_disappearing(1, 1, 4)$$);
SELECT pg_temp.try($$SELECT chat.set_disappearing(1, 1, 31536001)$$);
SELECT pg_temp.try($$SELECT chat.set_disappearing(1, 99, 30)$$);
SELECT pg_temp.try($$SELECT chat.set_disappearing(1, NULL, 30)$$);
SELECT chat.client_request('n', 1, 1, '{"id":2,"type":"set_disappearing","conversation":1,"ttl":"soon"}') ->> 'code';
SELECT settings FROM chat.conversations WHERE id = 1;

-- expires_at on send: text messages after the timer, not before, not system
SELECT seq AS e1 FROM chat.send_message(1, 1, 'gone soon', NULL, NULL, NULL, ARRAY[2]::bigint[]) \gset
SELECT seq AS e2 FROM chat.send_message(2, 1, 'also gone') \gset
SELECT seq, kind, expires_at - created_at AS ttl FROM chat.messages
 WHERE conversation_id = 1 AND seq >= :before_ttl ORDER BY seq;
SELECT chat.edit_message(1, 1, :e1, 'gone soon, edited');
SELECT chat.react(2, 1, :e1, '👍') IS NOT NULL AS reacted;

-- expire_messages: nothing due yet; then due (as if the time had passed)
SELECT chat.expire_messages();
UPDATE chat.messages SET expires_at = now() - interval '1 s' WHERE conversation_id = 1 AND seq IN (:e1, :e2);
-- Due but not tombstoned yet: every reader shows tombstones already
-- (deleted_at = expires_at, no body, mentions, reactions; the edit entry
-- of e1 without its body), and changes are refused as for a deleted
-- message (chat.message_expired).
SELECT h.seq, h.kind, h.body, h.mentions, h.reactions, h.deleted_at = x.expires_at AS deleted_at_is_expiry
  FROM chat.history(2, 1) h JOIN chat.messages x ON x.conversation_id = 1 AND x.seq = h.seq
 WHERE h.seq IN (:e1, :e2) OR h.target = :e1 ORDER BY h.seq;
SELECT seq, kind, body IS NULL AS no_body, deleted_at IS NOT NULL AS deleted
  FROM chat.messages_after(2, 1, :e1 - 1) WHERE seq IN (:e1, :e2) OR target = :e1 ORDER BY seq;
SELECT (chat.get_message(2, 1, :e1)).body IS NULL AS get_message_hides_body;
SELECT seq, kind, body IS NULL AS no_body, deleted_at IS NOT NULL AS deleted
  FROM chat.sync(2, 1) WHERE conversation_id = 1 AND (seq IN (:e1, :e2) OR target = :e1) ORDER BY seq;
-- the C readers of client_request: history, after, sync
SELECT r ->> 'seq' AS seq, r ->> 'kind' AS kind, r ->> 'body' AS body, r ? 'deleted_at' AS deleted,
       r ? 'mentions' AS mentions, r ? 'reactions' AS reactions
  FROM jsonb_array_elements(chat.client_request('n', 2, 1, '{"id":3,"type":"history","conversation":1}')
                            #> '{result,messages}') r
 WHERE (r ->> 'seq')::bigint IN (:e1, :e2) OR (r ->> 'target')::bigint = :e1 ORDER BY 1;
SELECT r ->> 'seq' AS seq, r ->> 'body' AS body, r ? 'deleted_at' AS deleted
  FROM jsonb_array_elements(chat.client_request('n', 2, 1,
           format('{"id":4,"type":"after","conversation":1,"after_seq":%s}', :e1 - 1)::jsonb)
                            #> '{result,messages}') r
 WHERE (r ->> 'seq')::bigint IN (:e1, :e2) OR (r ->> 'target')::bigint = :e1 ORDER BY 1;
SELECT r ->> 'seq' AS seq, r ->> 'body' AS body, r ? 'deleted_at' AS deleted
  FROM jsonb_array_elements(chat.client_request('n', 3, 1, '{"id":5,"type":"sync"}') #> '{result,messages}') r
 WHERE (r ->> 'conversation')::bigint = 1
   AND ((r ->> 'seq')::bigint IN (:e1, :e2) OR (r ->> 'target')::bigint = :e1) ORDER BY 1;
SELECT count(*) AS found FROM chat.search(2, 'gone');
SELECT count(*) AS found_edited FROM chat.search(2, 'edited');
SELECT pg_temp.try(format('SELECT chat.edit_message(1, 1, %s, %L)', :e1, 'again'));
SELECT pg_temp.try(format('SELECT chat.react(3, 1, %s, %L)', :e1, '🎉'));
SELECT last_seq AS before_delete FROM chat.conversations WHERE id = 1 \gset
SELECT chat.delete_message(1, 1, :e2);                           -- already gone: nothing appended
SELECT last_seq = :before_delete AS nothing_appended FROM chat.conversations WHERE id = 1;
SELECT chat.expire_messages(1);                                  -- batch of one
SELECT chat.expire_messages();
SELECT chat.expire_messages();                                   -- nothing left
SELECT seq, kind, body, mentions, reactions, deleted_at IS NOT NULL AS tombstone, expires_at
  FROM chat.messages WHERE conversation_id = 1 AND (seq IN (:e1, :e2) OR target = :e1) ORDER BY seq;
SELECT pg_temp.try($$SELECT chat.expire_messages(0)$$);
SELECT pg_temp.try($$SELECT chat.expire_messages(NULL)$$);
SELECT pg_temp.try($$SELECT chat.expire_messages(100001)$$);
-- turning it off: later messages stay
SELECT chat.set_disappearing(1, 1, NULL);
SELECT settings FROM chat.conversations WHERE id = 1;
SELECT expires_at FROM chat.send_message(1, 1, 'stays') s
  JOIN chat.messages x ON x.conversation_id = 1 AND x.seq = s.seq;
-- due in the direct conversation: the next pass takes it
SELECT seq AS e3 FROM chat.send_message(1, 2, 'direct, disappearing') \gset
UPDATE chat.messages SET expires_at = now() - interval '1 s' WHERE conversation_id = 2 AND seq = :e3;

-- apply_retention --------------------------------------------------------
SELECT chat.apply_retention();                                   -- no retention set
SET chat.retention = '1 day';
INSERT INTO chat.receipt_times (conversation_id, user_id, kind, seq, at)
VALUES (1, 2, 'delivered', 1, now() - interval '2 days');
UPDATE chat.conversations SET created_at = now() - interval '3 days' WHERE id = 1;
UPDATE chat.messages SET created_at = now() - interval '2 days' WHERE conversation_id = 1 AND seq <= 3;
SELECT chat.apply_retention(2);
SELECT chat.apply_retention();
SELECT min(seq) AS oldest_left, count(*) FILTER (WHERE created_at < now() - interval '1 day') AS old_left
  FROM chat.messages WHERE conversation_id = 1;
SELECT count(*) AS old_receipt_times FROM chat.receipt_times WHERE at < now() - interval '1 day';
SELECT retention_at IS NOT NULL AS recorded FROM chat.maintenance;
SELECT pg_temp.try($$SET chat.retention = 'forever'$$);        -- refused when set
SHOW chat.retention;
RESET chat.retention;
SELECT pg_temp.try($$SELECT chat.apply_retention(0)$$);

-- start_expiry_worker: nothing due, nothing started -----------------------
SELECT chat.expire_messages();
SELECT chat.start_expiry_worker();

-- broadcast ---------------------------------------------------------------
SELECT chat.broadcast('Maintenance', 'tonight at 22:00') AS b \gset
SELECT title, body, recipients FROM chat.broadcasts WHERE id = :b;
SELECT m.user_id, c.kind, c.title, c.last_seq, x.sender_id, x.kind AS msg_kind, x.body::jsonb ->> 'body' AS body
  FROM chat.conversations c
  JOIN chat.members m ON m.conversation_id = c.id
  JOIN chat.messages x ON x.conversation_id = c.id
 WHERE c.kind = 'service' ORDER BY m.user_id;
-- read-only for users, and not a group
SELECT service AS s FROM (SELECT c.id AS service FROM chat.conversations c
                           WHERE c.kind = 'service' AND (c.settings ->> 'service_user')::bigint = 2) x \gset
SELECT pg_temp.try(format('SELECT chat.send_message(2, %s, %L)', :s, 'hi'));
SELECT pg_temp.try(format('SELECT chat.add_member(2, %s, 3)', :s));
SELECT pg_temp.try(format('SELECT chat.set_disappearing(2, %s, 60)', :s));
SELECT (chat.history(2, :s)).kind;
-- at most one a minute
SELECT pg_temp.try($$SELECT chat.broadcast('Again', 'too soon')$$);
UPDATE chat.broadcasts SET created_at = now() - interval '61 s';
SELECT chat.upsert_user(5, 'user5');
SELECT chat.broadcast('Again', 'a minute later') > :b AS second;
SELECT (SELECT count(*) FROM chat.conversations WHERE kind = 'service') AS services,
       (SELECT last_seq FROM chat.conversations WHERE id = :s) AS seq_of_2;
SELECT pg_temp.try($$SELECT chat.broadcast('', 'x')$$);
SELECT pg_temp.try($$SELECT chat.broadcast(NULL, 'x')$$);
SELECT pg_temp.try($$SELECT chat.broadcast(repeat('t', 256), 'x')$$);
SELECT pg_temp.try($$SELECT chat.broadcast('t', '')$$);
SELECT count(*) AS broadcasts FROM chat.broadcasts;

-- expire_messages reads only the rows of its batch: no scan of the whole
-- table (written as joins, each batch hashed all of chat.messages and every
-- edit entry, so a batch cost what the table held).
SELECT chat.create_group(1, 'big', ARRAY[2]::bigint[]) AS big \gset
INSERT INTO chat.messages (conversation_id, seq, sender_id, kind, body)
SELECT :big, s, 1, 'text', 'filler ' || s FROM generate_series(2, 20001) s;
INSERT INTO chat.messages (conversation_id, seq, sender_id, kind, body, target)
SELECT :big, 20001 + s, 1, 'edit', 'edited ' || s, s + 1 FROM generate_series(1, 10) s;
UPDATE chat.messages SET edited_at = now()              -- as edit_message leaves them
 WHERE conversation_id = :big AND seq BETWEEN 2 AND 11;
UPDATE chat.conversations SET last_seq = 20011 WHERE id = :big;
UPDATE chat.messages SET expires_at = now() - interval '1 s'
 WHERE conversation_id = :big AND seq BETWEEN 2 AND 2001;
ANALYZE chat.messages;
SELECT pg_stat_force_next_flush();    -- the counts below are this transaction's alone
BEGIN;
SELECT chat.expire_messages(1000) AS expired;
SELECT seq_scan, seq_tup_read, n_tup_upd FROM pg_stat_xact_user_tables
 WHERE relid = 'chat.messages'::regclass;
COMMIT;
SELECT count(*) FILTER (WHERE kind = 'text' AND deleted_at IS NOT NULL) AS tombstones,
       count(*) FILTER (WHERE kind = 'edit' AND body IS NULL) AS scrubbed_edits,
       count(*) FILTER (WHERE expires_at IS NOT NULL) AS still_due
  FROM chat.messages WHERE conversation_id = :big;
SELECT chat.expire_messages() AS rest;
-- The worker's pacing between full batches (expiry.c): a setting in ms, 0 = none.
SHOW chat.expire_delay;
SET chat.expire_delay = 0;   -- server-wide (postgresql.conf or ALTER SYSTEM), not per session
