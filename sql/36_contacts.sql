-- Contact search (issue 15): chat.search_users and the search_users
-- request: prefix of handle or display name regardless of case, contacts
-- first, the actor and users who blocked it left out, limits; every
-- rejection with its SQLSTATE; the prefix indexes used.
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
CREATE FUNCTION pg_temp.req(u bigint, r jsonb) RETURNS jsonb LANGUAGE sql AS $$
    SELECT chat.client_request('n1', u, 1, r) - 'id'
$$;

-- 1 alice (the actor), 2 alan (contact: both sent), 3 albert (direct, only
-- alice sent: no contact), 4 zed "Alma Z" (display name match), 5 alvin
-- (blocked alice), 6 bob, 7 al_x / 8 al%y (LIKE characters), 9 alfred whom
-- alice blocked (still found: only a block by the other side hides).
SELECT chat.upsert_user(1, 'alice', 'Alice A'), chat.upsert_user(2, 'Alan', 'Alan B'),
       chat.upsert_user(3, 'albert'), chat.upsert_user(4, 'zed', 'Alma Z'),
       chat.upsert_user(5, 'alvin'), chat.upsert_user(6, 'bob', 'Bob'),
       chat.upsert_user(7, 'al_x'), chat.upsert_user(8, 'al%y'), chat.upsert_user(9, 'alfred');
SELECT chat.register_device(i) FROM generate_series(1, 9) i;
SELECT chat.direct_conversation(1, 2) AS c12, chat.direct_conversation(1, 3) AS c13;
SELECT seq FROM chat.send_message(1, 1, 'hi alan');
SELECT seq FROM chat.send_message(2, 1, 'hi alice');
SELECT seq FROM chat.send_message(1, 2, 'hi albert');
SELECT chat.block(5, 1), chat.block(1, 9);
SELECT * FROM chat.contacts(1);

-- contacts first, then handle matches by handle, then display names
SELECT * FROM chat.search_users(1, 'al');
SELECT user_id, handle, contact FROM chat.search_users(1, 'AL');
SELECT user_id, handle FROM chat.search_users(1, 'alm');       -- display name only
SELECT user_id, handle FROM chat.search_users(1, 'alan b');    -- display name with a space
SELECT user_id, handle FROM chat.search_users(1, 'al_');       -- _ is a character, not a wildcard
SELECT user_id, handle FROM chat.search_users(1, 'al%');       -- % too
SELECT user_id, handle FROM chat.search_users(1, 'nobody');
SELECT user_id, handle FROM chat.search_users(1, 'al', 2);     -- the limit keeps contacts first
SELECT user_id FROM chat.search_users(5, 'ali');               -- 5 blocked alice: 5 still finds her
SELECT user_id FROM chat.search_users(9, 'ali');               -- alice blocked 9: hidden from 9
SELECT user_id FROM chat.search_users(2, 'ALI');               -- contact seen from the other side
SELECT user_id, contact FROM chat.search_users(3, 'ali');      -- only alice sent there: no contact

-- rejections
SELECT pg_temp.try($$SELECT chat.search_users(1, '')$$);
SELECT pg_temp.try($$SELECT chat.search_users(1, '   ')$$);
SELECT pg_temp.try($$SELECT chat.search_users(1, NULL)$$);
SELECT pg_temp.try($$SELECT chat.search_users(1, repeat('a', 65))$$);
SELECT pg_temp.try($$SELECT chat.search_users(1, 'al', 0)$$);
SELECT pg_temp.try($$SELECT chat.search_users(1, 'al', 51)$$);
SELECT pg_temp.try($$SELECT chat.search_users(1, 'al', NULL)$$);
SELECT pg_temp.try($$SELECT chat.search_users(99, 'al')$$);
SELECT pg_temp.try($$SELECT chat.search_users(NULL, 'al')$$);
SELECT count(*) FROM chat.search_users(1, repeat('a', 64));
SELECT count(*) FROM chat.search_users(1, 'a', 50);

-- over client_request
SELECT pg_temp.req(1, '{"type":"search_users","query":"al","limit":3}');
SELECT pg_temp.req(1, '{"type":"search_users","query":"zz"}');
SELECT pg_temp.req(1, '{"type":"search_users"}');
SELECT pg_temp.req(1, '{"type":"search_users","query":""}');
SELECT pg_temp.req(1, '{"type":"search_users","query":["al"]}');
SELECT pg_temp.req(1, jsonb_build_object('type', 'search_users', 'query', repeat('x', 65)));
SELECT pg_temp.req(1, '{"type":"search_users","query":"al","limit":0}');
SELECT pg_temp.req(1, '{"type":"search_users","query":"al","limit":51}');
SELECT pg_temp.req(1, '{"type":"search_users","query":"al","limit":99999999999}');
SELECT pg_temp.req(1, '{"type":"search_users","query":"al","limit":"x"}');
-- read-only: nothing written by any of it
SELECT count(*) AS messages FROM chat.messages;

-- the prefix indexes make a prefix an index range
SELECT chat.upsert_user(100 + i, 'bulk' || i, 'Bulk ' || i) FROM generate_series(1, 2000) i \g /dev/null
ANALYZE chat.users;
SET enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT u.id FROM chat.users u
 WHERE lower(u.handle) COLLATE "C" LIKE 'bulk1%' ORDER BY lower(u.handle) COLLATE "C" LIMIT 20;
EXPLAIN (COSTS OFF) SELECT u.id FROM chat.users u
 WHERE lower(u.display_name) COLLATE "C" LIKE 'bulk 1%' AND u.display_name IS NOT NULL
 ORDER BY lower(u.display_name) COLLATE "C" LIMIT 20;
RESET enable_seqscan;
SELECT user_id, handle FROM chat.search_users(1, 'bulk199', 5);
