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

/* ---- Monitoring (issue 11): delivery latency, connection lifetimes,
 * the notifier's histograms. ---- */

/* Delivery latency bounds in seconds (commit to socket write). */
static const double delivery_bounds[] = {
	0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
};
#define N_DELIVERY (sizeof(delivery_bounds) / sizeof(delivery_bounds[0]))

/* Connection lifetime bounds in seconds: scanners and failed auths, quick
 * reconnects, a session of minutes, hours, a day. */
static const double lifetime_bounds[] = {
	0.1, 1, 10, 60, 300, 900, 3600, 10800, 43200, 86400
};
#define N_LIFETIME (sizeof(lifetime_bounds) / sizeof(lifetime_bounds[0]))

/* The index of the first bound >= v (n: +Inf). */
static size_t
bucket_of_value(const double *bounds, size_t n, double v)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (v <= bounds[i])
			break;
	return i;
}

/* Records one event frame written: now (the gateway's CLOCK_REALTIME)
 * minus its commit stamp (the database server's clock).  A stamp in the
 * future can only mean the two clocks differ: counted apart, not timed. */
void
metrics_delivery(uint64_t commit_us)
{
	uint64_t now = trace_wall_us();

	if (now < commit_us) {
		stats.delivery_skewed++;
		return;
	}
	stats.delivery_buckets[bucket_of_value(delivery_bounds, N_DELIVERY,
					       (double)(now - commit_us) / 1e6)]++;
	stats.delivery_sum_us += now - commit_us;
}

/* Records the lifetime of a connection that is gone. */
void
metrics_conn_gone(uint32_t born_ms)
{
	uint32_t ms = now_ms() - born_ms;	/* wraps correctly within 49 days */

	stats.lifetime_buckets[bucket_of_value(lifetime_bounds, N_LIFETIME, (double)ms / 1e3)]++;
	stats.lifetime_sum_ms += ms;
}

/* Parses a one-dimensional numeric array text ("{1,2,4}") into at most
 * cap doubles; the count, or -1 when it is not one. */
static int
parse_array(const char *s, double *out, int cap)
{
	int n = 0;
	char *e;

	if (!s || *s++ != '{')
		return -1;
	if (*s == '}')
		return s[1] ? -1 : 0;
	for (;;) {
		if (n >= cap)
			return -1;
		errno = 0;
		out[n++] = strtod(s, &e);
		if (e == s || errno)
			return -1;
		if (*e == '}')
			return e[1] ? -1 : n;
		if (*e != ',')
			return -1;
		s = e + 1;
	}
}

/* Begins or ends a write of the notifier copy (odd: being written). */
static void
nhist_seq_bump(void)
{
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	__atomic_store_n(&stats.nhist_seq, stats.nhist_seq + 1, __ATOMIC_SEQ_CST);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
}

/* Parses one row of chat.notifier_histograms() into *h: validated (bounds
 * increasing, counts cumulative, one more count than bounds; nbounds -1
 * otherwise).  Returns which histogram it is (0 queue_depth, 1
 * batch_events), or -1 for a name of a later version (not ours to show). */
static int
nhist_parse(const char *name, const char *bounds, const char *cumulative, const char *sum,
	    struct metrics_nhist *h)
{
	double counts[17];
	int which, nc, ok;
	char *e = NULL;

	if (!strcmp(name, "queue_depth"))
		which = 0;
	else if (!strcmp(name, "batch_events"))
		which = 1;
	else
		return -1;
	h->nbounds = parse_array(bounds, h->bounds, 16);
	nc = parse_array(cumulative, counts, 17);
	errno = 0;
	h->sum = sum ? strtoll(sum, &e, 10) : -1;
	ok = h->nbounds >= 1 && nc == h->nbounds + 1 && sum && *sum && !*e && !errno && h->sum >= 0;
	for (int i = 0; ok && i < nc; i++) {
		h->cumulative[i] = (int64_t)counts[i];
		ok = counts[i] >= 0 && counts[i] < 9.2e18 && (i == 0 || counts[i] >= counts[i - 1]) &&
		     (i == 0 || i >= h->nbounds || h->bounds[i] > h->bounds[i - 1]);
	}
	if (!ok)
		h->nbounds = -1;
	return which;
}

/* Copies h into this process's slot as histogram which (seqlocked). */
static void
nhist_store(int which, const struct metrics_nhist *h)
{
	nhist_seq_bump();
	stats.nhist[which] = *h;
	nhist_seq_bump();
}

/* One row of chat.notifier_histograms() into this process's slot; NULL
 * name: the query failed, both unknown. */
void
metrics_notifier_hist(const char *name, const char *bounds, const char *cumulative, const char *sum)
{
	struct metrics_nhist h = { .nbounds = -1 };
	int which;

	if (!name) {
		nhist_store(0, &h);
		nhist_store(1, &h);
		return;
	}
	if ((which = nhist_parse(name, bounds, cumulative, sum, &h)) >= 0)
		nhist_store(which, &h);
}

/* Sharded: every partition has a notifier of its own.  Each partition's
 * last copy is kept here (this process only), and the slot shows their
 * merge: bucket counts and sums added over the partitions known, when
 * their bounds agree (the same extension version); unknown otherwise. */
static struct metrics_nhist (*part_nhist)[2];
static int part_n;

/* Merges the partitions' copies of histogram which into the slot. */
static void
nhist_merge_parts(int which)
{
	struct metrics_nhist m = { .nbounds = -1 };

	for (int p = 0; p < part_n; p++) {
		const struct metrics_nhist *h = &part_nhist[p][which];

		if (h->nbounds < 1)
			continue;
		if (m.nbounds < 1) {
			m = *h;
			continue;
		}
		if (h->nbounds != m.nbounds || memcmp(h->bounds, m.bounds, sizeof(double) * (size_t)h->nbounds)) {
			m.nbounds = -1;		/* bounds differ: no honest sum */
			break;
		}
		for (int i = 0; i <= m.nbounds; i++)
			m.cumulative[i] += h->cumulative[i];
		m.sum += h->sum;
	}
	nhist_store(which, &m);
}

/* One row of partition part's chat.notifier_histograms() (of nparts);
 * NULL name: its query failed, that partition's copies unknown. */
void
metrics_notifier_hist_part(int part, int nparts, const char *name, const char *bounds,
			   const char *cumulative, const char *sum)
{
	struct metrics_nhist h = { .nbounds = -1 };
	int which;

	if (part < 0 || nparts < 1)
		return;
	if (!part_nhist) {
		part_nhist = xcalloc((size_t)nparts, sizeof(*part_nhist));
		part_n = nparts;
		for (int p = 0; p < part_n; p++)
			part_nhist[p][0].nbounds = part_nhist[p][1].nbounds = -1;
	}
	if (part >= part_n)
		return;
	if (!name) {
		part_nhist[part][0] = part_nhist[part][1] = h;
		nhist_merge_parts(0);
		nhist_merge_parts(1);
		return;
	}
	if ((which = nhist_parse(name, bounds, cumulative, sum, &h)) < 0)
		return;
	part_nhist[part][which] = h;
	nhist_merge_parts(which);
}

/* Reads slot m's copy of notifier histogram which consistently (retrying
 * while its worker writes it); 0 when known. */
static int
nhist_read(const struct metrics *m, int which, struct metrics_nhist *out)
{
	for (int tries = 0; tries < 100; tries++) {
		uint64_t seq = __atomic_load_n(&m->nhist_seq, __ATOMIC_SEQ_CST);

		if (seq & 1)
			continue;
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
		memcpy(out, &m->nhist[which], sizeof(*out));
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
		if (__atomic_load_n(&m->nhist_seq, __ATOMIC_SEQ_CST) == seq)
			return out->nbounds >= 1 ? 0 : -1;
	}
	return -1;
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

/* Writes one histogram of cumulative counts (n bounds, n + 1 counts). */
static void
out_histogram(struct out *o, const char *name, const char *help, const double *bounds, size_t n,
	      const uint64_t *cum, double sum)
{
	out_printf(o, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
	for (size_t i = 0; i < n; i++)
		out_printf(o, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i], (unsigned long long)cum[i]);
	out_printf(o, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n",
		   name, (unsigned long long)cum[n], name, sum, name, (unsigned long long)cum[n]);
}

/* Sums a per-slot bucket array over the workers into cumulative counts. */
static void
sum_buckets(size_t off, size_t n, uint64_t *cum)
{
	memset(cum, 0, (n + 1) * sizeof(*cum));
	for_each_slot(m)
		for (size_t i = 0; i <= n; i++)
			cum[i] += ((const uint64_t *)((const char *)m + off))[i];
	for (size_t i = 1; i <= n; i++)
		cum[i] += cum[i - 1];
}

/* Sums one uint64_t field over the workers. */
static uint64_t
sum_field(size_t off)
{
	uint64_t t = 0;

	for_each_slot(m)
		t += *(const uint64_t *)((const char *)m + off);
	return t;
}

/* Monitoring (issue 11): delivery latency and connection lifetimes summed
 * over the workers (one series each: a worker is not a unit an operator
 * acts on), and the notifier's histograms (server-wide values from the
 * database: the freshest copy of any worker, never summed). */
static void
metrics_render_histograms(struct out *o)
{
	static const char *const nhist_name[2] = {
		"chat_notifier_queue_depth_events", "chat_notifier_batch_events"
	};
	static const char *const nhist_help[2] = {
		"Events waiting in the notifier ring when a worker pass began "
		"(chat.notifier_histograms(), server-wide, since PostgreSQL started).",
		"Events per NOTIFY sent by the notifier workers "
		"(chat.notifier_histograms(), server-wide, since PostgreSQL started)."
	};
	uint64_t cum[18];

	sum_buckets(METRIC(delivery_buckets), N_DELIVERY, cum);
	out_histogram(o, "chat_gateway_delivery_latency_seconds",
		      "Commit of an event's transaction (database clock) to its write to a client "
		      "socket (gateway clock), every worker.",
		      delivery_bounds, N_DELIVERY, cum, (double)sum_field(METRIC(delivery_sum_us)) / 1e6);
	out_printf(o, "# HELP chat_gateway_delivery_clock_skew_total Deliveries not timed: their commit "
		       "stamp was later than the gateway's clock (database and gateway clocks differ).\n"
		       "# TYPE chat_gateway_delivery_clock_skew_total counter\n"
		       "chat_gateway_delivery_clock_skew_total %llu\n",
		   (unsigned long long)sum_field(METRIC(delivery_skewed)));
	sum_buckets(METRIC(lifetime_buckets), N_LIFETIME, cum);
	out_histogram(o, "chat_gateway_connection_duration_seconds",
		      "Lifetime of closed WebSocket connections, accept to gone, every worker "
		      "(_count: connections closed).",
		      lifetime_bounds, N_LIFETIME, cum, (double)sum_field(METRIC(lifetime_sum_ms)) / 1e3);

	for (int which = 0; which < 2; which++) {
		struct metrics_nhist best = { .nbounds = -1 }, h;

		for_each_slot(m)
			if (nhist_read(m, which, &h) == 0 &&
			    (best.nbounds < 1 || h.cumulative[h.nbounds] > best.cumulative[best.nbounds]))
				best = h;
		if (best.nbounds < 1) {		/* unknown: HELP and TYPE only */
			out_printf(o, "# HELP %s %s\n# TYPE %s histogram\n", nhist_name[which],
				   nhist_help[which], nhist_name[which]);
			continue;
		}
		for (int i = 0; i <= best.nbounds; i++)
			cum[i] = (uint64_t)best.cumulative[i];
		out_histogram(o, nhist_name[which], nhist_help[which], best.bounds, (size_t)best.nbounds,
			      cum, (double)best.sum);
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
	out_metric(&o, "chat_gateway_partial_writes_total", "counter",
		   "Frames whose send the socket took only in part (the rest waits for it to drain).",
		   METRIC(partial_writes));
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
	metrics_render_histograms(&o);
	*len = o.len;
	return o.buf;
}
