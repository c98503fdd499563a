/* metrics.c: process counters and their Prometheus text rendering for /metrics. */
#include <stdio.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/mman.h>
#include "gateway.h"

static struct metrics own_slot;
struct metrics *metrics_slots = &own_slot;
int metrics_nslots = 1, metrics_self = 0;

/* --workers: one slot per worker in anonymous shared memory, mapped by the
 * supervisor before it forks, so every worker sees every slot.  Counters
 * are uint64_t written by one process each: aligned 8-byte stores, never
 * torn on the platforms we build for; a reader may see a slot a moment old. */
void
metrics_share(int workers)
{
	size_t size = (size_t)workers * sizeof(struct metrics);
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		log_msg(LOG_ERROR, 0, "metrics: mmap of %zu bytes failed: %s", size, strerror(errno));
		exit(1);
	}
	metrics_slots = p;		/* zero-filled by the kernel */
	metrics_nslots = workers;
}

/* In a worker: its slot, named after its node.  A restarted worker keeps
 * the counters of the one before it, so the series stay monotonic. */
void
metrics_take_slot(int i)
{
	metrics_self = i;
	snprintf(stats.node, sizeof(stats.node), "%s", cfg.node);
}

/* Supervisor: a dead worker holds no connections. */
void
metrics_slot_died(int i)
{
	if (i >= 0 && i < metrics_nslots) {
		metrics_slots[i].conns = 0;
		metrics_slots[i].conns_unauth = 0;
		metrics_slots[i].db_up = 0;
	}
}

/* Publishes this process's gauges (conn.c's tick, once a second). */
void
metrics_publish(uint32_t conns, uint32_t unauth, int db_up)
{
	stats.conns = conns;
	stats.conns_unauth = unauth;
	stats.db_up = (uint64_t)db_up;
	int up, n = db_partitions(&up);
	stats.partitions = (uint64_t)(n > 0 ? n : 0);
	stats.partitions_up = (uint64_t)(n > 0 ? up : 0);
}

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

/* The slots in use (a worker that never started has no name yet). */
#define for_each_slot(m) \
	for (const struct metrics *m = metrics_slots; m < metrics_slots + metrics_nslots; m++) \
		if (m->node[0] || metrics_nslots == 1)

/* The node label of a slot: a single process may not have named its slot. */
static const char *
slot_node(const struct metrics *m)
{
	return m->node[0] ? m->node : cfg.node;
}

/* Writes one counter or gauge with HELP and TYPE lines: one series per
 * process, the uint64_t field at offset off of each slot. */
static void
out_metric(struct out *o, const char *name, const char *type, const char *help, size_t off)
{
	out_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
	for_each_slot(m)
		out_printf(o, "%s{node=\"%s\"} %llu\n", name, slot_node(m),
			   (unsigned long long)*(const uint64_t *)((const char *)m + off));
}
#define METRIC(field) offsetof(struct metrics, field)

/* Like out_metric for an int64_t field that is -1 while unknown: only the
 * processes that know it have a series (none: only HELP and TYPE). */
static void
out_metric_known(struct out *o, const char *name, const char *type, const char *help, size_t off)
{
	out_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
	for_each_slot(m) {
		int64_t v = *(const int64_t *)((const char *)m + off);

		if (v >= 0)
			out_printf(o, "%s{node=\"%s\"} %lld\n", name, slot_node(m), (long long)v);
	}
}

/* The closes counter, one series per close code. */
static void
metrics_render_closes(struct out *o)
{
	out_printf(o, "# HELP chat_gateway_closes_total Connections closed, by WebSocket close code.\n"
		       "# TYPE chat_gateway_closes_total counter\n");
	for_each_slot(m)
		for (size_t i = 0; i < N_CLOSE_CODES; i++) {
			char code[16] = "other";

			if (close_codes[i])
				snprintf(code, sizeof(code), "%d", close_codes[i]);
			out_printf(o, "chat_gateway_closes_total{node=\"%s\",code=\"%s\"} %llu\n",
				   slot_node(m), code, (unsigned long long)m->closes[i]);
		}
}

/* The request latency histogram. */
static void
metrics_render_latency(struct out *o)
{
	out_printf(o, "# HELP chat_gateway_request_duration_seconds Frame received to response queued.\n"
		       "# TYPE chat_gateway_request_duration_seconds histogram\n");
	for_each_slot(m) {
		const char *node = slot_node(m);
		uint64_t cum = 0;

		for (size_t i = 0; i < N_BOUNDS; i++) {
			cum += m->latency_buckets[i];
			out_printf(o, "chat_gateway_request_duration_seconds_bucket{node=\"%s\",le=\"%g\"} %llu\n",
				   node, latency_bounds[i], (unsigned long long)cum);
		}
		cum += m->latency_buckets[N_BOUNDS];
		out_printf(o, "chat_gateway_request_duration_seconds_bucket{node=\"%s\",le=\"+Inf\"} %llu\n"
			       "chat_gateway_request_duration_seconds_sum{node=\"%s\"} %.6f\n"
			       "chat_gateway_request_duration_seconds_count{node=\"%s\"} %llu\n",
			   node, (unsigned long long)cum, node, m->latency_sum,
			   node, (unsigned long long)m->latency_count);
	}
}

/* Renders every metric as Prometheus text; caller frees.  The gauges that
 * other modules own come as arguments: metrics.c depends on none of them. */
char *
metrics_render(size_t *len, uint32_t conns, uint32_t unauth, int db_up)
{
	struct out o = { xmalloc(8192), 0, 8192 };

	metrics_publish(conns, unauth, db_up);	/* this process's, fresh */
	out_metric(&o, "chat_gateway_connections", "gauge",
		   "Open WebSocket connections.", METRIC(conns));
	out_metric(&o, "chat_gateway_connections_unauthenticated", "gauge",
		   "Open connections that have not authenticated yet.", METRIC(conns_unauth));
	out_metric(&o, "chat_gateway_connections_total", "counter",
		   "WebSocket connections accepted.", METRIC(connections_total));
	out_metric(&o, "chat_gateway_auth_failures_total", "counter",
		   "Connections closed for a bad, expired or missing token.", METRIC(auth_failures));
	out_metric(&o, "chat_gateway_frames_in_total", "counter",
		   "Complete frames received from clients.", METRIC(frames_in));
	out_metric(&o, "chat_gateway_frames_out_total", "counter",
		   "Frames written to clients.", METRIC(frames_out));
	out_metric(&o, "chat_gateway_bytes_in_total", "counter",
		   "Payload bytes received from clients.", METRIC(bytes_in));
	out_metric(&o, "chat_gateway_bytes_out_total", "counter",
		   "Payload bytes written to clients.", METRIC(bytes_out));
	out_metric(&o, "chat_gateway_notifications_total", "counter",
		   "NOTIFY payloads received from the database.", METRIC(notifications_in));
	out_metric(&o, "chat_gateway_notifications_rejected_total", "counter",
		   "NOTIFY payloads dropped: no valid v1 signature (forged or misconfigured secret).",
		   METRIC(notifications_rejected));
	out_metric(&o, "chat_gateway_revoked_total", "counter",
		   "Connections closed 4003 because their device was removed or is unknown.",
		   METRIC(revoked));
	out_metric(&o, "chat_gateway_events_total", "counter",
		   "Events parsed from notifications.", METRIC(events_in));
	out_metric(&o, "chat_gateway_events_invalid_total", "counter",
		   "Notification events that failed validation.", METRIC(events_invalid));
	out_metric(&o, "chat_gateway_deliveries_total", "counter",
		   "Events queued to a client connection.", METRIC(deliveries));
	out_metric(&o, "chat_gateway_drops_total", "counter",
		   "Events dropped (ring overflow, closing connection, failed ref).", METRIC(drops));
	out_metric(&o, "chat_gateway_skipped_own_total", "counter",
		   "Message events not sent back to the sending device.", METRIC(skipped_own));
	out_metric(&o, "chat_gateway_requests_total", "counter",
		   "Client requests relayed to chat.client_request.", METRIC(requests));
	out_metric(&o, "chat_gateway_request_errors_total", "counter",
		   "Requests answered with a gateway-made error frame.", METRIC(request_errors));
	out_metric(&o, "chat_gateway_rate_limited_total", "counter",
		   "Requests refused by the per-connection rate limit.", METRIC(rate_limited));
	out_metric(&o, "chat_gateway_inflight_refused_total", "counter",
		   "Requests refused with 53400 beyond --max-inflight.", METRIC(inflight_refused));
	out_metric(&o, "chat_gateway_unauth_per_ip_refused_total", "counter",
		   "Connections refused by --max-unauth-per-ip.", METRIC(unauth_per_ip_refused));
	out_metric(&o, "chat_gateway_refs_resolved_total", "counter",
		   "\"ref\":true message events fetched with chat.get_message.", METRIC(refs_resolved));
	out_metric(&o, "chat_gateway_db_reconnects_total", "counter",
		   "Database connections re-established.", METRIC(db_reconnects));
	out_metric(&o, "chat_gateway_resyncs_total", "counter",
		   "Resync frames sent to clients.", METRIC(resyncs));
	out_metric(&o, "chat_gateway_db_timeouts_total", "counter",
		   "Database connections closed because a query had no answer within --request-timeout.",
		   METRIC(db_timeouts));
	out_metric(&o, "chat_gateway_busy_total", "counter",
		   "Requests refused with 53400 busy: the pool connection's queue was full or slow.",
		   METRIC(busy_refused));
	/* The database's notifier (issue 17): events it could not ring and
	 * NOTIFYed directly; unknown (not rendered) until first read. */
	out_metric_known(&o, "chat_notifier_fallbacks_total", "counter",
			 "Transactions that found the notifier ring full and sent their NOTIFY "
			 "themselves (chat.notifier_stats(), server-wide, since it started).",
			 METRIC(notifier_fallbacks));
	out_metric_known(&o, "chat_notifier_queued_bytes", "gauge",
			 "Bytes waiting in this database's notifier ring (chat.notifier_stats()).",
			 METRIC(notifier_queued_bytes));
	out_metric(&o, "chat_gateway_db_up", "gauge",
		   "1 when the LISTEN connection and the pool are ready.", METRIC(db_up));
	/* Sharded (--listen-dsn): per-partition health; a partition down
	 * stops only its conversations' events, so /healthz stays 200. */
	if (stats.partitions > 0) {
		out_metric(&o, "chat_gateway_partitions", "gauge",
			   "Partitions given with --listen-dsn.", METRIC(partitions));
		out_metric(&o, "chat_gateway_partitions_up", "gauge",
			   "Partitions whose LISTEN connection is ready.", METRIC(partitions_up));
	}

	metrics_render_closes(&o);
	metrics_render_latency(&o);
	*len = o.len;
	return o.buf;
}
