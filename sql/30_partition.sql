-- Partitioned deployments (PL/Proxy, docs/scaling.md): conversation ids
-- allocated by a partition carry its number in their low bits; unpartitioned
-- (chat.partitions = 1, the default) ids stay plain sequence values.
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
SELECT chat.upsert_user(u, 'p' || u) FROM generate_series(1, 4) u;

-- Default: one database, ids 1, 2, 3 as before.
SHOW chat.partitions;
SHOW chat.partition;
SELECT chat.direct_conversation(1, 2) AS d12, chat.create_group(1, 'g', '{2}') AS g1,
       chat.direct_conversation(1, 3) AS d13;

-- Partition 3 of 4: every new id is 3 mod 4 (the low bits route).
SET chat.partitions = 4;
SET chat.partition = 3;
SELECT id, id % 4 AS part FROM (
    SELECT chat.direct_conversation(2, 3) AS id
    UNION ALL SELECT chat.create_group(1, 'g2', '{2}')
    UNION ALL SELECT chat.direct_conversation(1, 4)) x ORDER BY id;
-- get-or-create still finds the existing pair, whatever the partition.
SELECT chat.direct_conversation(2, 1) AS d12_again;

-- Bad settings: not a power of two (22023), a partition beyond the count.
SELECT pg_temp.try('SET chat.partitions = 3');
SELECT pg_temp.try('SET chat.partitions = 0');
SET chat.partition = 4;
SELECT pg_temp.try('SELECT chat.create_group(1, ''bad'', ''{}'')');
SELECT count(*) AS groups_named_bad FROM chat.conversations WHERE title = 'bad';
RESET chat.partition;
RESET chat.partitions;
SELECT chat.create_group(1, 'back to one', '{}') AS plain_sequence_value;
