-- Mentions (send), reactions (react: change-log entries and the aggregated
-- map), pins and mute (with the push rule: a mention overrides mute):
-- every function, every rejection with its SQLSTATE and no partial state
-- after one.
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
-- The log of a conversation as short lines.
CREATE FUNCTION pg_temp.log(conv bigint) RETURNS SETOF text LANGUAGE sql AS $$
    SELECT seq || ' ' || kind || ' by ' || sender_id || coalesce(' -> ' || target, '')
           || coalesce(' "' || body || '"', '') || coalesce(' mentions=' || mentions::text, '')
           || coalesce(' reactions=' || reactions::text, '')
      FROM chat.messages WHERE conversation_id = conv ORDER BY seq
$$;

SELECT chat.upsert_user(i, 'user' || i) FROM generate_series(1, 5) i;
SELECT chat.register_device(i, 'web', 'tok' || i) FROM generate_series(1, 5) i;
SELECT chat.create_group(1, 'g', ARRAY[2, 3]::bigint[]) AS g;   -- 1
SELECT chat.direct_conversation(1, 4) AS d;                     -- 2

-- mentions -----------------------------------------------------------------
SELECT seq FROM chat.send_message(1, 1, 'hi @user2 @user3', 'm1', NULL, 1, ARRAY[3, 2, 3]::bigint[]);
SELECT seq, duplicate FROM chat.send_message(1, 1, 'hi @user2 @user3', 'm1', NULL, 1, ARRAY[3, 2]::bigint[]);
SELECT seq FROM chat.send_message(1, 1, 'nobody', 'm2', NULL, 1, '{}');
SELECT pg_temp.try($$SELECT chat.send_message(1, 1, 'x', 'm3', NULL, 1, ARRAY[4]::bigint[])$$);
SELECT pg_temp.try($$SELECT chat.send_message(1, 1, 'x', 'm3', NULL, 1, ARRAY[99]::bigint[])$$);
SELECT pg_temp.try($$SELECT chat.send_message(1, 1, 'x', 'm3', NULL, 1, ARRAY[2, NULL]::bigint[])$$);
SELECT pg_temp.try($$SELECT chat.send_message(1, 1, 'x', 'm3', NULL, 1, array_fill(2::bigint, ARRAY[51]))$$);
SELECT * FROM pg_temp.log(1);
-- through client_request (C) and in the message objects
SELECT chat.client_request('n', 2, 1, '{"id":1,"type":"send","conversation":1,"body":"yo","mentions":["1"]}') #>> '{result,seq}';
SELECT chat.client_request('n', 2, 1, '{"id":2,"type":"send","conversation":1,"body":"yo","mentions":[5]}') ->> 'code';
SELECT chat.client_request('n', 2, 1, '{"id":3,"type":"send","conversation":1,"body":"yo","mentions":5}') ->> 'code';
SELECT chat.client_request('n', 2, 1, '{"id":4,"type":"send","conversation":1,"body":"yo","mentions":[1.5]}') ->> 'code';
SELECT m -> 'seq' AS seq, m -> 'mentions' AS mentions
  FROM jsonb_array_elements(chat.client_request('n', 3, 1, '{"id":5,"type":"history","conversation":1}')
                            #> '{result,messages}') m;
-- a retry of a send whose mentioned user left since keeps its answer
SELECT seq FROM chat.send_message(2, 1, 'to 3', 'm5', NULL, 1, ARRAY[3]::bigint[]);
SELECT chat.add_member(1, 1, 5);
SELECT seq FROM chat.send_message(2, 1, 'to 5', 'm6', NULL, 1, ARRAY[5]::bigint[]);
SELECT chat.remove_member(1, 1, 5);
SELECT seq, duplicate FROM chat.send_message(2, 1, 'to 5', 'm6', NULL, 1, ARRAY[5]::bigint[]);
SELECT pg_temp.try($$SELECT chat.send_message(2, 1, 'to 5', 'm7', NULL, 1, ARRAY[5]::bigint[])$$);

-- mute and push: muted members get no push row unless mentioned -----------
SELECT chat.mute(3, 1, now() + interval '1 hour');
SELECT muted_until > now() AS muted FROM chat.members WHERE conversation_id = 1 AND user_id = 3;
DELETE FROM chat.push_outbox;
SELECT seq AS plain FROM chat.send_message(1, 1, 'no mention') \gset
SELECT seq AS mention FROM chat.send_message(1, 1, 'hey @user3', NULL, NULL, NULL, ARRAY[3]::bigint[]) \gset
SELECT user_id, seq = :mention AS mentioned FROM chat.push_outbox ORDER BY seq, user_id;
SELECT chat.mute(3, 1, NULL);
SELECT muted_until FROM chat.members WHERE conversation_id = 1 AND user_id = 3;
SELECT chat.client_request('n', 3, 1, '{"id":6,"type":"mute","conversation":1,"until":"2099-01-01T00:00:00Z"}');
SELECT muted_until FROM chat.members WHERE conversation_id = 1 AND user_id = 3;
SELECT r ->> 'muted_until' AS listed_muted_until
  FROM jsonb_array_elements(chat.client_request('n', 3, 1, '{"id":60,"type":"conversations"}') #> '{result,conversations}') r
 WHERE (r ->> 'conversation')::bigint = 1;
SELECT chat.client_request('n', 3, 1, '{"id":7,"type":"mute","conversation":1,"until":"soon"}') ->> 'code';
SELECT chat.client_request('n', 3, 1, '{"id":8,"type":"mute","conversation":1}');
SELECT muted_until FROM chat.members WHERE conversation_id = 1 AND user_id = 3;
SELECT pg_temp.try($$SELECT chat.mute(4, 1, NULL)$$);
SELECT pg_temp.try($$SELECT chat.mute(3, 99, NULL)$$);

-- react --------------------------------------------------------------------
SELECT chat.react(2, 1, 2, '👍') AS entry;
SELECT chat.react(3, 1, 2, '👍') AS entry;
SELECT chat.react(3, 1, 2, '❤') AS entry;
SELECT chat.react(3, 1, 2, '❤') AS unchanged;                 -- already there
SELECT chat.react(2, 1, 2, '❤', true) AS unchanged;           -- not there
SELECT chat.react(3, 1, 2, '👍', true) AS entry;
SELECT reactions FROM chat.messages WHERE conversation_id = 1 AND seq = 2;
SELECT * FROM pg_temp.log(1) l WHERE l LIKE '% reaction %';
-- the entries and the map in message objects (history, sync, get_message)
SELECT m ->> 'seq' AS seq, m ->> 'kind' AS kind, m -> 'target' AS target, m -> 'emoji' AS emoji,
       m -> 'removed' AS removed, m -> 'reactions' AS reactions
  FROM jsonb_array_elements(chat.client_request('n', 1, 1, '{"id":9,"type":"history","conversation":1}')
                            #> '{result,messages}') m
 WHERE m ->> 'kind' = 'reaction' OR m ? 'reactions';
SELECT chat.message_json(chat.get_message(1, 1, 2)) -> 'reactions' AS get_message;
SELECT count(*) AS in_sync FROM chat.sync(1, 1) s WHERE s.kind = 'reaction';
-- reaction entries make no unread count and no push
SELECT unread FROM chat.conversations(1) WHERE conversation_id = 1;
SELECT count(*) AS pushes FROM chat.push_outbox p JOIN chat.messages x
    ON x.conversation_id = p.conversation_id AND x.seq = p.seq WHERE x.kind = 'reaction';
-- client_request
SELECT (chat.client_request('n', 1, 1, '{"id":10,"type":"react","conversation":1,"seq":2,"emoji":"🎉"}') -> 'result') - 'entry';
SELECT chat.client_request('n', 1, 1, '{"id":11,"type":"react","conversation":1,"seq":2,"emoji":"🎉","remove":true}') #> '{result,entry}' IS NOT NULL AS removed;
SELECT chat.client_request('n', 1, 1, '{"id":12,"type":"react","conversation":1,"seq":2}') ->> 'code';
SELECT chat.client_request('n', 1, 1, '{"id":13,"type":"react","conversation":1,"seq":2,"emoji":"x","remove":"yes"}') ->> 'code';
-- rejections leave nothing behind
SELECT last_seq AS before FROM chat.conversations WHERE id = 1 \gset
SELECT pg_temp.try($$SELECT chat.react(2, 1, 2, '')$$);
SELECT pg_temp.try($$SELECT chat.react(2, 1, 2, NULL)$$);
SELECT pg_temp.try($$SELECT chat.react(2, 1, 2, 'a b')$$);
SELECT pg_temp.try($$SELECT chat.react(2, 1, 2, repeat('x', 17))$$);
SELECT pg_temp.try($$SELECT chat.react(2, 1, NULL, 'x')$$);
SELECT pg_temp.try($$SELECT chat.react(2, 1, 2, 'x', NULL)$$);
SELECT pg_temp.try($$SELECT chat.react(4, 1, 2, 'x')$$);        -- not a member
SELECT pg_temp.try($$SELECT chat.react(2, 1, 999, 'x')$$);
SELECT pg_temp.try($$SELECT chat.react(2, 1, 1, 'x')$$);        -- system message
SELECT pg_temp.try(format('SELECT chat.react(2, 1, %s, %L)', (SELECT max(seq) FROM chat.messages WHERE conversation_id = 1 AND kind = 'reaction'), 'x'));
SELECT pg_temp.try($$SELECT chat.react(2, 99, 2, 'x')$$);
-- 20 different emoji at most
SELECT count(chat.react(1, 1, 3, 'e' || i)) FROM generate_series(1, 20) i;
SELECT pg_temp.try($$SELECT chat.react(2, 1, 3, 'e21')$$);
SELECT chat.react(2, 1, 3, 'e1') IS NOT NULL AS existing_emoji_ok;
SELECT last_seq - :before AS appended FROM chat.conversations WHERE id = 1;
-- deleted message: 55000; a tombstone keeps no reactions
SELECT chat.delete_message(1, 1, 3);
SELECT reactions FROM chat.messages WHERE conversation_id = 1 AND seq = 3;
SELECT pg_temp.try($$SELECT chat.react(2, 1, 3, 'e1')$$);
-- blocked in a direct conversation
SELECT seq FROM chat.send_message(1, 2, 'direct');
SELECT chat.block(1, 4);
SELECT pg_temp.try($$SELECT chat.react(4, 2, 1, 'x')$$);
SELECT chat.unblock(1, 4);
SELECT chat.react(4, 2, 1, 'x') IS NOT NULL AS after_unblock;
-- a member who joined after the message gets the entry without its emoji
SELECT chat.add_member(1, 1, 4);
SELECT chat.react(2, 1, 2, '🙂') AS late_entry \gset
SELECT m ->> 'kind' AS kind, m -> 'body' AS body, m -> 'emoji' AS emoji
  FROM jsonb_array_elements(chat.client_request('n', 4, 1, '{"id":14,"type":"history","conversation":1}')
                            #> '{result,messages}') m
 WHERE (m ->> 'seq')::bigint = :late_entry;

-- pin / pins ---------------------------------------------------------------
SELECT chat.pin(2, 1, 2, true);
SELECT chat.pin(3, 1, :plain, true);
SELECT chat.pin(3, 1, :plain, true);                            -- again: nothing
SELECT chat.pins(1, 1);
SELECT settings -> 'pinned' AS pinned FROM chat.conversations WHERE id = 1;
SELECT body::jsonb FROM chat.messages WHERE conversation_id = 1 AND kind = 'system' ORDER BY seq DESC LIMIT 1;
SELECT chat.client_request('n', 1, 1, '{"id":15,"type":"pins","conversation":1}');
SELECT chat.client_request('n', 1, 1, '{"id":16,"type":"pin","conversation":1,"seq":2,"pinned":false}');
SELECT chat.pins(1, 1);
SELECT chat.pins(4, 1) AS visible_to_late_member;               -- pinned before it joined
SELECT last_seq AS before FROM chat.conversations WHERE id = 1 \gset
SELECT pg_temp.try($$SELECT chat.pin(5, 1, 2, true)$$);         -- not a member (left)
SELECT pg_temp.try($$SELECT chat.pin(2, 1, 999, true)$$);
SELECT pg_temp.try($$SELECT chat.pin(2, 1, 1, true)$$);         -- system message
SELECT pg_temp.try($$SELECT chat.pin(2, 1, 2, NULL)$$);
SELECT pg_temp.try($$SELECT chat.pins(5, 1)$$);
SELECT count(*) FROM (SELECT (chat.send_message(1, 1, 'p' || i)).seq FROM generate_series(1, 20) i) s;
SELECT count(chat.pin(1, 1, seq, true)) FROM chat.messages
 WHERE conversation_id = 1 AND body LIKE 'p%' AND body <> 'p20';
SELECT pg_temp.try(format('SELECT chat.pin(1, 1, %s, true)',
                          (SELECT seq FROM chat.messages WHERE conversation_id = 1 AND body = 'p20')));
SELECT jsonb_array_length(settings -> 'pinned') AS pins FROM chat.conversations WHERE id = 1;
SELECT chat.client_request('n', 1, 1, '{"id":17,"type":"pin","conversation":1,"seq":"x"}') ->> 'code';
