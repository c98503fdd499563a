/* metrics.c: process counters and their Prometheus text rendering for /metrics. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include "gateway.h"

struct metrics stats;

/* Close codes counted separately; anything else lands in the last slot. */
static const int close_codes[] = {
	CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_UNSUPPORTED, CLOSE_INVALID_DATA, CLOSE_POLICY,
	CLOSE_TOO_BIG, CLOSE_INTERNAL, CLOSE_RESTART, CLOSE_AUTH, CLOSE_REVOKED,
	CLOSE_AUTH_TIMEOUT, CLOSE_LAGGING, 0
};
#define N_CLOSE_CODES (sizeof(close_codes) / sizeof(close_codes[0]))

/* Request latency bucket bounds in seconds. */
static const double latency_bounds[] = {
	0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
	0.1, 0.25, 0.5, 1.0, 2.5
};
#define N_BOUNDS (sizeof(latency_bounds) / sizeof(latency_bounds[0]))

/* Counts a close the gateway initiated (or the peer's code). */
void
metrics_close(int code)
{
	size_t i;

	for (i = 0; i < N_CLOSE_CODES - 1; i++)
		if (close_codes[i] == code)
			break;
	stats.closes[i]++;
}

/* Records one request's latency (frame received to response queued). */
void
metrics_latency(uint64_t us)
{
	double s = (double)us / 1e6;
	size_t i;

	for (i = 0; i < N_BOUNDS; i++)
		if (s <= latency_bounds[i])
			break;
	stats.latency_buckets[i]++;
	stats.latency_count++;
	stats.latency_sum += s;
}

struct out {
	char *buf;
	size_t len, cap;
};

/* Appends formatted text, growing the buffer. */
static void __attribute__((format(printf, 2, 3)))
out_printf(struct out *o, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		size_t room = o->cap - o->len;
		va_start(ap, fmt);
		n = vsnprintf(o->buf + o->len, room, fmt, ap);
		va_end(ap);
		if (n >= 0 && (size_t)n < room) {
			o->len += (size_t)n;
			return;
		}
		o->cap *= 2;
		o->buf = xrealloc(o->buf, o->cap);
	}
}

/* Writes one counter or gauge with HELP and TYPE lines. */
static void
out_metric(struct out *o, const char *name, const char *type, const char *help,
	   uint64_t value)
{
	out_printf(o, "# HELP %s %s\n# TYPE %s %s\n%s{node=\"%s\"} %llu\n",
		   name, help, name, type, name, cfg.node, (unsigned long long)value);
}

/* The closes counter, one series per close code. */
static void
metrics_render_closes(struct out *o)
{
	out_printf(o, "# HELP chat_gateway_closes_total Connections closed, by WebSocket close code.\n"
		       "# TYPE chat_gateway_closes_total counter\n");
	for (size_t i = 0; i < N_CLOSE_CODES; i++) {
		if (close_codes[i])
			out_printf(o, "chat_gateway_closes_total{node=\"%s\",code=\"%d\"} %llu\n",
				   cfg.node, close_codes[i], (unsigned long long)stats.closes[i]);
		else
			out_printf(o, "chat_gateway_closes_total{node=\"%s\",code=\"other\"} %llu\n",
				   cfg.node, (unsigned long long)stats.closes[i]);
	}
}

/* The request latency histogram. */
static void
metrics_render_latency(struct out *o)
{
	uint64_t cum = 0;

	out_printf(o, "# HELP chat_gateway_request_duration_seconds Frame received to response queued.\n"
		       "# TYPE chat_gateway_request_duration_seconds histogram\n");
	for (size_t i = 0; i < N_BOUNDS; i++) {
		cum += stats.latency_buckets[i];
		out_printf(o, "chat_gateway_request_duration_seconds_bucket{node=\"%s\",le=\"%g\"} %llu\n",
			   cfg.node, latency_bounds[i], (unsigned long long)cum);
	}
	cum += stats.latency_buckets[N_BOUNDS];
	out_printf(o, "chat_gateway_request_duration_seconds_bucket{node=\"%s\",le=\"+Inf\"} %llu\n"
		       "chat_gateway_request_duration_seconds_sum{node=\"%s\"} %.6f\n"
		       "chat_gateway_request_duration_seconds_count{node=\"%s\"} %llu\n",
		   cfg.node, (unsigned long long)cum, cfg.node, stats.latency_sum,
		   cfg.node, (unsigned long long)stats.latency_count);
}

/* Renders every metric as Prometheus text; caller frees.  The gauges that
 * other modules own come as arguments: metrics.c depends on none of them. */
char *
metrics_render(size_t *len, uint32_t conns, uint32_t unauth, int db_up)
{
	struct out o = { xmalloc(8192), 0, 8192 };

	out_metric(&o, "chat_gateway_connections", "gauge",
		   "Open WebSocket connections.", conns);
	out_metric(&o, "chat_gateway_connections_unauthenticated", "gauge",
		   "Open connections that have not authenticated yet.", unauth);
	out_metric(&o, "chat_gateway_connections_total", "counter",
		   "WebSocket connections accepted.", stats.connections_total);
	out_metric(&o, "chat_gateway_auth_failures_total", "counter",
		   "Connections closed for a bad, expired or missing token.", stats.auth_failures);
	out_metric(&o, "chat_gateway_frames_in_total", "counter",
		   "Complete frames received from clients.", stats.frames_in);
	out_metric(&o, "chat_gateway_frames_out_total", "counter",
		   "Frames written to clients.", stats.frames_out);
	out_metric(&o, "chat_gateway_bytes_in_total", "counter",
		   "Payload bytes received from clients.", stats.bytes_in);
	out_metric(&o, "chat_gateway_bytes_out_total", "counter",
		   "Payload bytes written to clients.", stats.bytes_out);
	out_metric(&o, "chat_gateway_notifications_total", "counter",
		   "NOTIFY payloads received from the database.", stats.notifications_in);
	out_metric(&o, "chat_gateway_notifications_rejected_total", "counter",
		   "NOTIFY payloads dropped: no valid v1 signature (forged or misconfigured secret).",
		   stats.notifications_rejected);
	out_metric(&o, "chat_gateway_revoked_total", "counter",
		   "Connections closed 4003 because their device was removed or is unknown.",
		   stats.revoked);
	out_metric(&o, "chat_gateway_events_total", "counter",
		   "Events parsed from notifications.", stats.events_in);
	out_metric(&o, "chat_gateway_events_invalid_total", "counter",
		   "Notification events that failed validation.", stats.events_invalid);
	out_metric(&o, "chat_gateway_deliveries_total", "counter",
		   "Events queued to a client connection.", stats.deliveries);
	out_metric(&o, "chat_gateway_drops_total", "counter",
		   "Events dropped (ring overflow, closing connection, failed ref).", stats.drops);
	out_metric(&o, "chat_gateway_skipped_own_total", "counter",
		   "Message events not sent back to the sending device.", stats.skipped_own);
	out_metric(&o, "chat_gateway_requests_total", "counter",
		   "Client requests relayed to chat.client_request.", stats.requests);
	out_metric(&o, "chat_gateway_request_errors_total", "counter",
		   "Requests answered with a gateway-made error frame.", stats.request_errors);
	out_metric(&o, "chat_gateway_rate_limited_total", "counter",
		   "Requests refused by the per-connection rate limit.", stats.rate_limited);
	out_metric(&o, "chat_gateway_inflight_refused_total", "counter",
		   "Requests refused with 53400 beyond --max-inflight.", stats.inflight_refused);
	out_metric(&o, "chat_gateway_unauth_per_ip_refused_total", "counter",
		   "Connections refused by --max-unauth-per-ip.", stats.unauth_per_ip_refused);
	out_metric(&o, "chat_gateway_refs_resolved_total", "counter",
		   "\"ref\":true message events fetched with chat.get_message.", stats.refs_resolved);
	out_metric(&o, "chat_gateway_db_reconnects_total", "counter",
		   "Database connections re-established.", stats.db_reconnects);
	out_metric(&o, "chat_gateway_resyncs_total", "counter",
		   "Resync frames sent to clients.", stats.resyncs);
	out_metric(&o, "chat_gateway_db_up", "gauge",
		   "1 when the LISTEN connection and the pool are ready.", (uint64_t)db_up);
	/* Sharded (--listen-dsn): per-partition health; a partition down
	 * stops only its conversations' events, so /healthz stays 200. */
	{
		int up, n = db_partitions(&up);
		if (n > 0) {
			out_metric(&o, "chat_gateway_partitions", "gauge",
				   "Partitions given with --listen-dsn.", (uint64_t)n);
			out_metric(&o, "chat_gateway_partitions_up", "gauge",
				   "Partitions whose LISTEN connection is ready.", (uint64_t)up);
		}
	}

	metrics_render_closes(&o);
	metrics_render_latency(&o);
	*len = o.len;
	return o.buf;
}
