-- The expiry worker's CPU scheduling (expiry.c): under chat.expire_idle it
-- runs as SCHED_IDLE (the kernel gives it only CPU time nothing else
-- wants), unless its backlog is older than chat.expire_max_lag, when it
-- runs at niceness chat.expire_nice so that a machine that is never idle
-- still works the backlog off; with chat.expire_idle off it never does.
-- The policy and niceness are read from /proc/<pid>/stat of the running
-- worker (fields 41 and 19), kept alive between two batches of one message
-- by a long chat.expire_delay.  Settings are server-wide (ALTER SYSTEM),
-- so this file runs outside a transaction and resets them at the end.
\set ON_ERROR_STOP 1
SET client_min_messages = warning;
SELECT plan(13);

-- Waits (up to 20 s) until the worker has tombstoned n messages, and
-- returns its /proc stat fields {policy, nice}; NULL if it never did.
CREATE FUNCTION pg_temp.worker_sched(n integer) RETURNS integer[] LANGUAGE plpgsql AS $$
DECLARE
    p integer;
    f text[];
BEGIN
    FOR i IN 1..400 LOOP
        PERFORM pg_stat_clear_snapshot();
        SELECT a.pid INTO p FROM pg_stat_activity a WHERE a.backend_type = 'chat expiry';
        IF p IS NOT NULL AND (SELECT count(*) FROM chat.messages WHERE conversation_id = 900001
                                 AND deleted_at IS NOT NULL) >= n THEN
            -- the fields after "(comm) ": state is f[1], so field k is f[k - 2]
            f := regexp_split_to_array(split_part(pg_read_file('/proc/' || p || '/stat'), ') ', 2), ' ');
            RETURN ARRAY[f[41 - 2]::integer, f[19 - 2]::integer];
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN NULL;
END $$;

-- Stops the worker and waits until it is gone.
CREATE FUNCTION pg_temp.stop_worker() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_terminate_backend(a.pid) FROM pg_stat_activity a WHERE a.backend_type = 'chat expiry';
    FOR i IN 1..400 LOOP
        PERFORM pg_stat_clear_snapshot();
        EXIT WHEN NOT EXISTS (SELECT FROM pg_stat_activity a WHERE a.backend_type = 'chat expiry');
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;

-- Nine messages of their own conversation; due ones are made so below.
INSERT INTO chat.users (id, handle) VALUES (900001, 'expiry-worker-test');
INSERT INTO chat.conversations (id, kind, title, last_seq) VALUES (900001, 'group', 'expiry worker test', 9);
INSERT INTO chat.messages (conversation_id, seq, sender_id, kind, body)
SELECT 900001, s, 900001, 'text', 'message ' || s FROM generate_series(1, 9) s;

ALTER SYSTEM SET chat.expire_batch = 1;
ALTER SYSTEM SET chat.expire_delay = '10s';
ALTER SYSTEM SET chat.expire_nice = 10;
ALTER SYSTEM SET chat.expire_max_lag = '60s';
ALTER SYSTEM SET chat.expire_idle = on;
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);

-- A fresh backlog: SCHED_IDLE (policy 5).
UPDATE chat.messages SET expires_at = now() - interval '1 s' WHERE conversation_id = 900001 AND seq IN (1, 2);
SELECT ok(chat.start_expiry_worker(), 'the worker starts for a fresh backlog');
SELECT is(pg_temp.worker_sched(1), ARRAY[5, 10], 'a fresh backlog: the worker runs SCHED_IDLE (at niceness 10)');
SELECT pg_temp.stop_worker();

-- A backlog older than chat.expire_max_lag: SCHED_OTHER (policy 0) at niceness 10.
UPDATE chat.messages SET expires_at = now() - interval '2 min' WHERE conversation_id = 900001 AND seq IN (3, 4);
SELECT ok(chat.start_expiry_worker(), 'the worker starts for a late backlog');
SELECT is(pg_temp.worker_sched(2), ARRAY[0, 10], 'a backlog due for over chat.expire_max_lag: niceness 10, not SCHED_IDLE');
SELECT pg_temp.stop_worker();

-- chat.expire_idle off: never SCHED_IDLE.
ALTER SYSTEM SET chat.expire_idle = off;
ALTER SYSTEM SET chat.expire_nice = 5;
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
UPDATE chat.messages SET expires_at = now() - interval '1 s'
 WHERE conversation_id = 900001 AND seq IN (5, 6) ;
UPDATE chat.messages SET expires_at = NULL WHERE conversation_id = 900001 AND seq IN (3, 4) AND deleted_at IS NULL;
SELECT ok(chat.start_expiry_worker(), 'the worker starts with chat.expire_idle off');
SELECT is(pg_temp.worker_sched(3), ARRAY[0, 5], 'chat.expire_idle off: niceness chat.expire_nice only');
SELECT pg_temp.stop_worker();

-- What the worker did in its batches of one: tombstones, nothing else.
SELECT is((SELECT count(*)::integer FROM chat.messages WHERE conversation_id = 900001 AND deleted_at IS NOT NULL
              AND body IS NULL AND expires_at IS NULL), 3, 'three batches of one: three tombstones');
SELECT is((SELECT count(*)::integer FROM chat.messages WHERE conversation_id = 900001 AND deleted_at IS NULL
              AND body IS NOT NULL), 6, 'the other messages keep their bodies');

-- A run under SCHED_IDLE ends after chat.expire_max_lag with work left
-- (here: after its first pause), and the next run, finding the backlog
-- late, works at niceness: a machine never idle cannot starve expiry.
ALTER SYSTEM SET chat.expire_idle = on;
ALTER SYSTEM SET chat.expire_nice = 10;
ALTER SYSTEM SET chat.expire_max_lag = '1s';
ALTER SYSTEM SET chat.expire_delay = '3s';
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
UPDATE chat.messages SET expires_at = NULL WHERE conversation_id = 900001 AND deleted_at IS NULL;
UPDATE chat.messages SET expires_at = now() WHERE conversation_id = 900001 AND seq IN (7, 8, 9);
SELECT ok(chat.start_expiry_worker(), 'the worker starts for a fresh backlog');
SELECT is(pg_temp.worker_sched(4), ARRAY[5, 10], 'a fresh backlog: SCHED_IDLE');
CREATE FUNCTION pg_temp.worker_gone_within(secs integer) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..secs * 20 LOOP
        PERFORM pg_stat_clear_snapshot();
        IF NOT EXISTS (SELECT FROM pg_stat_activity a WHERE a.backend_type = 'chat expiry') THEN
            RETURN true;
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN false;
END $$;
SELECT ok(pg_temp.worker_gone_within(10)
          AND (SELECT count(*) FROM chat.messages WHERE conversation_id = 900001 AND expires_at IS NOT NULL) = 2,
          'the SCHED_IDLE run ended after chat.expire_max_lag with two messages still due');
SELECT ok(chat.start_expiry_worker(), 'the next run starts');
SELECT is(pg_temp.worker_sched(5), ARRAY[0, 10], 'the backlog is late now: niceness 10, not SCHED_IDLE');
SELECT pg_temp.stop_worker();

ALTER SYSTEM RESET chat.expire_batch;
ALTER SYSTEM RESET chat.expire_delay;
ALTER SYSTEM RESET chat.expire_nice;
ALTER SYSTEM RESET chat.expire_max_lag;
ALTER SYSTEM RESET chat.expire_idle;
SELECT pg_reload_conf();
DELETE FROM chat.messages WHERE conversation_id = 900001;
DELETE FROM chat.conversations WHERE id = 900001;
DELETE FROM chat.users WHERE id = 900001;
SELECT * FROM finish();
