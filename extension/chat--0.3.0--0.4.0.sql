-- chat 0.3.0 -> 0.4.0
--
-- complain if this script is sourced in psql rather than run by ALTER EXTENSION
\echo Use "ALTER EXTENSION chat UPDATE TO '0.4.0'" to load this file. \quit

-- Monitoring (issue 11): the notifier workers' histograms.
CREATE FUNCTION chat.notifier_histograms(OUT histogram text, OUT bounds double precision[],
                                         OUT cumulative bigint[], OUT sum bigint)
RETURNS SETOF record LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'chat_notifier_histograms';
REVOKE ALL ON FUNCTION chat.notifier_histograms() FROM PUBLIC;
COMMENT ON FUNCTION chat.notifier_histograms() IS
    'notifier workers since start (all databases): queue_depth (events waiting per pass) and batch_events (events per NOTIFY); cumulative counts per bound, last = +Inf';
