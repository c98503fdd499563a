-- chat.notifier_histograms (monitoring, issue 11): the notifier workers'
-- queue depth and batch size histograms, server-wide.  The regression
-- cluster preloads the library, so the workers' shared memory exists.
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

-- Shape: two histograms, 14 power-of-two bounds, 15 cumulative counts
-- (the last is +Inf = the count), never decreasing along the bounds.
SELECT histogram, array_length(bounds, 1) AS n_bounds, bounds[1] AS first, bounds[14] AS last,
       array_length(cumulative, 1) AS n_counts,
       (SELECT bool_and(cumulative[i] <= cumulative[i + 1]) FROM generate_series(1, 14) i) AS cumulative_ok,
       sum >= cumulative[15] AS sum_at_least_count
  FROM chat.notifier_histograms() ORDER BY histogram;

-- A delivered send moves both: the worker takes the events in one pass
-- (depth >= 1) and NOTIFYs them (batch >= 1).  The counters are
-- server-wide (other databases may add): only growth is checked.
CREATE TEMP TABLE before AS SELECT histogram, cumulative[15] AS n, sum FROM chat.notifier_histograms();
SET chat.fanout_mode = worker;
SELECT chat.upsert_user(i, 'user' || i) FROM generate_series(1, 2) i;
SELECT chat.register_device(i) FROM generate_series(1, 2) i;
SELECT chat.direct_conversation(1, 2) AS conv;
SELECT chat.node_reset('gw1');
SELECT chat.connect('gw1', 2, 1);
SELECT seq FROM chat.send_message(1, 1, 'one');
SELECT seq FROM chat.send_message(1, 1, 'two');
DO $$
BEGIN
    FOR i IN 1..200 LOOP
        EXIT WHEN (SELECT bool_and(h.cumulative[15] >= b.n + 1)
                     FROM chat.notifier_histograms() h JOIN before b USING (histogram));
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
SELECT h.histogram, h.cumulative[15] > b.n AS count_moved, h.sum - b.sum >= h.cumulative[15] - b.n AS sum_moved
  FROM chat.notifier_histograms() h JOIN before b USING (histogram) ORDER BY 1;

-- Monitoring roles get it by an explicit GRANT only; others are refused
-- with 42501.
SELECT has_function_privilege('public', 'chat.notifier_histograms()', 'EXECUTE') AS public_may_execute;
CREATE ROLE chat_regress_nohist;
GRANT USAGE ON SCHEMA chat TO chat_regress_nohist;
SET ROLE chat_regress_nohist;
SELECT pg_temp.try('SELECT * FROM chat.notifier_histograms()');
RESET ROLE;
GRANT EXECUTE ON FUNCTION chat.notifier_histograms() TO chat_regress_nohist;
SET ROLE chat_regress_nohist;
SELECT count(*) AS rows_when_granted FROM chat.notifier_histograms();
RESET ROLE;
REVOKE ALL ON FUNCTION chat.notifier_histograms() FROM chat_regress_nohist;
REVOKE USAGE ON SCHEMA chat FROM chat_regress_nohist;
DROP ROLE chat_regress_nohist;
