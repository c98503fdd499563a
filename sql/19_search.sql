-- chat.search: what the actor can see (not e2e, not deleted, nothing
-- before joined_seq, nothing after it left), best match first, the GIN
-- index, the chat.search_config setting, and every rejection.
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
CREATE FUNCTION pg_temp.found(actor bigint, q text, conv bigint DEFAULT NULL) RETURNS text
LANGUAGE sql AS $$
    SELECT coalesce(string_agg(conversation_id || ':' || seq, ' '), '-')
      FROM chat.search(actor, q, conv)
$$;

SELECT chat.upsert_user(i, 'user' || i) FROM generate_series(1, 4) i;
SELECT chat.register_device(i) FROM generate_series(1, 4) i;
SELECT chat.create_group(1, 'g', ARRAY[2]::bigint[]) AS g;     -- 1
SELECT chat.direct_conversation(1, 3) AS d;                    -- 2
SELECT seq FROM chat.send_message(1, 1, 'the quick brown fox');              -- 1:2
SELECT seq FROM chat.send_message(2, 1, 'fox fox fox, a very foxy fox');     -- 1:3
SELECT seq FROM chat.send_message(1, 2, 'a fox in the direct chat');         -- 2:1
SELECT seq FROM chat.send_message(1, 1, 'Привет, лиса: fox');                -- 1:4
SELECT chat.append_message(1, 1, 'system', '{"fox": true}');                 -- 1:5 system
UPDATE chat.messages SET kind = 'e2e' WHERE conversation_id = 1 AND seq = 4;  -- as if e2e

-- what each user sees, best match first
SELECT pg_temp.found(1, 'fox');
SELECT pg_temp.found(2, 'fox');
SELECT pg_temp.found(3, 'fox');
SELECT pg_temp.found(4, 'fox');
SELECT pg_temp.found(1, 'fox', 2);
SELECT pg_temp.found(1, '"quick brown"');
SELECT pg_temp.found(1, 'fox -quick');
SELECT pg_temp.found(1, 'QUICK');
SELECT pg_temp.found(1, 'лиса');
UPDATE chat.messages SET kind = 'text' WHERE conversation_id = 1 AND seq = 4;
SELECT pg_temp.found(1, 'лиса');
-- deleted and edited
SELECT chat.delete_message(1, 1, 2);
SELECT pg_temp.found(1, 'quick');
SELECT chat.edit_message(2, 1, 3, 'now about cats');
SELECT pg_temp.found(1, 'cats'), pg_temp.found(1, 'foxy');
-- a member sees nothing before it joined, and nothing after it left
SELECT chat.add_member(1, 1, 4);
SELECT seq FROM chat.send_message(1, 1, 'fox for four');
SELECT pg_temp.found(4, 'fox');
SELECT chat.leave(4, 1);
SELECT seq FROM chat.send_message(1, 1, 'fox after four left');
SELECT pg_temp.found(4, 'fox'), pg_temp.found(1, 'left');
-- The two plans (chat.search_scan_limit: reading every message the actor
-- sees, or the GIN index) find the same, in the same order, rejoined
-- members and former members included.
SELECT chat.add_member(1, 1, 4);
SELECT seq FROM chat.send_message(1, 1, 'fox back with four');
CREATE TEMP TABLE probes AS
SELECT a AS actor, q, c AS conv
  FROM generate_series(1, 4) a, unnest(ARRAY['fox', 'cats', 'fox -four', '"fox for"', 'left | four', 'лиса']) q,
       unnest(ARRAY[NULL, 1, 2]::bigint[]) c
 WHERE c IS NULL OR EXISTS (SELECT FROM chat.members m WHERE m.user_id = a AND m.conversation_id = c);
CREATE TEMP TABLE scanned AS SELECT actor, q, conv, pg_temp.found(actor, q, conv) AS hits FROM probes;
SHOW chat.search_scan_limit;
SET chat.search_scan_limit = 0;
SELECT p.actor, p.q, p.conv, s.hits AS scanned, pg_temp.found(p.actor, p.q, p.conv) AS indexed
  FROM probes p JOIN scanned s USING (actor, q) WHERE s.conv IS NOT DISTINCT FROM p.conv
   AND s.hits IS DISTINCT FROM pg_temp.found(p.actor, p.q, p.conv);
SELECT count(*) AS probes, count(*) FILTER (WHERE hits <> '-') AS with_hits FROM scanned;
SET chat.search_config = 'english';
SELECT pg_temp.found(1, 'foxes');
RESET chat.search_config;
RESET chat.search_scan_limit;
SELECT pg_temp.try($$SET chat.search_scan_limit = -1$$);
-- the message objects of the request
SELECT m ->> 'seq' AS seq, m ->> 'body' AS body
  FROM jsonb_array_elements(chat.client_request('n', 1, 1, '{"id":1,"type":"search","query":"fox","limit":2}')
                            #> '{result,messages}') m;
SELECT chat.client_request('n', 1, 1, '{"id":2,"type":"search","query":"fox","conversation":2}') #>> '{result,messages,0,body}';
SELECT chat.client_request('n', 1, 1, '{"id":3,"type":"search"}') ->> 'code';
SELECT chat.client_request('n', 1, 1, '{"id":4,"type":"search","query":"x","limit":0}') ->> 'code';
SELECT chat.client_request('n', 1, 1, '{"id":5,"type":"search","query":"x","conversation":"y"}') ->> 'code';
-- rejections
SELECT pg_temp.try($$SELECT chat.search(1, '')$$);
SELECT pg_temp.try($$SELECT chat.search(1, '   ')$$);
SELECT pg_temp.try($$SELECT chat.search(1, NULL)$$);
SELECT pg_temp.try($$SELECT chat.search(1, repeat('a', 257))$$);
SELECT pg_temp.try($$SELECT chat.search(NULL, 'fox')$$);
SELECT pg_temp.try($$SELECT chat.search(3, 'fox', 1)$$);     -- not a member
SELECT pg_temp.try($$SELECT chat.search(1, 'fox', 99)$$);
SELECT pg_temp.try($$SELECT chat.search(1, 'fox', NULL, 1001)$$);
-- punctuation alone makes an empty query: nothing found, no error
SELECT pg_temp.found(1, '!!!');
-- the configuration comes from chat.search_config
SET chat.search_config = 'english';
SELECT pg_temp.found(1, 'foxes');
SET chat.search_config = 'no_such_config';
SELECT pg_temp.try($$SELECT chat.search(1, 'fox')$$);
RESET chat.search_config;
SELECT pg_temp.found(1, 'foxes');
-- the GIN index serves the default configuration
SET enable_seqscan = off;
EXPLAIN (COSTS OFF)
SELECT x.seq FROM chat.messages x
 WHERE to_tsvector('simple'::regconfig, x.body) @@ websearch_to_tsquery('simple'::regconfig, 'fox')
   AND x.kind = 'text' AND x.deleted_at IS NULL;
RESET enable_seqscan;
