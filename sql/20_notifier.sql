-- chat.notifier_stats: the notifier's state for monitoring.  The regression
-- cluster preloads the library, so the shared ring exists.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS chat CASCADE;
CREATE EXTENSION chat;

SELECT preloaded,
       ring_bytes = pg_size_bytes(current_setting('chat.notifier_queue_size')) AS ring_is_the_setting,
       queued_bytes >= 0 AND queued_bytes <= ring_bytes AS queued_in_range,
       fallbacks >= 0 AS fallbacks_counted
  FROM chat.notifier_stats();

-- Monitoring roles get it by an explicit GRANT only.
SELECT has_function_privilege('public', 'chat.notifier_stats()', 'EXECUTE') AS public_may_execute;
