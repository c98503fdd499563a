-- Monitoring (issue 11): the notifier workers' histograms for the
-- gateway's /metrics (read with every node heartbeat) and for operators.

CREATE FUNCTION chat.notifier_histograms(OUT histogram text, OUT bounds double precision[],
                                         OUT cumulative bigint[], OUT sum bigint)
RETURNS SETOF record LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'chat_notifier_histograms';

REVOKE ALL ON FUNCTION chat.notifier_histograms() FROM PUBLIC;

COMMENT ON FUNCTION chat.notifier_histograms() IS
    'notifier workers since start (all databases): queue_depth (events waiting per pass) and batch_events (events per NOTIFY); cumulative counts per bound, last = +Inf';
