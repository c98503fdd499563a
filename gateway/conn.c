/* conn.c: the life of a client connection: its state (conn_set_state), the
 * lists the tick and the drain walk, the per-address cap of unauthenticated
 * connections, the bounded send ring and the once-a-second housekeeping.
 *
 * Habits from lws minimal-ws-server-ring and mosquitto: the per-session data
 * is a pointer to a struct conn we own; producers queue on a bounded ring
 * and ask for a writeable callback; only the writeable callback (ws.c)
 * writes, one frame per callback.  Rings are allocated on first use so that
 * an idle connection costs one small struct. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <malloc.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <time.h>
#include "gateway.h"

uint32_t conn_count, conn_count_unauth;

/* Unauthenticated connections in accept order (auth timeout), then the rest;
 * connections being closed move to their own list in close order, where the
 * once-a-second tick kills those whose close stalls (no per-connection lws
 * timer: lws keeps all timers in one sorted list, O(connections) per insert). */
static lws_dll2_owner_t unauth_list, authed_list, closing_list;
static uint32_t next_conn_id;
static struct lws_context *conn_context;
static int draining;			/* conn_drain ran: SIGTERM */
static lws_sorted_usec_list_t sul_tick;
static uint32_t ticks;
/* Connections accepted, and the most open, at the last malloc_trim. */
static uint64_t trim_conns;
static uint32_t trim_count;
#define TRIM_CHURN 256
/* No authenticated connection's token expires before this (unix seconds):
 * the tick scans for expired tokens only once it is reached. */
static int64_t earliest_exp = INT64_MAX;

/* Unauthenticated connections per source address (--max-unauth-per-ip):
 * a chained hash table of counts, an entry freed when its count drops to 0.
 * IPv6 addresses count per /64 (one host usually holds a whole /64);
 * IPv4-mapped IPv6 addresses count as the IPv4 address. */
struct ip_count {
	struct ip_count *next;
	uint32_t n;
	unsigned char key[9];		/* family tag, then 4 or 8 address bytes */
};
#define IP_BUCKETS 4096
static struct ip_count *ip_table[IP_BUCKETS];

/* The peer's key for the per-address cap; -1 when it has none (not IP). */
static int
ip_key(struct lws *wsi, unsigned char key[9])
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	int fd = (int)lws_get_socket_fd(wsi);

	memset(key, 0, 9);
	if (fd < 0 || getpeername(fd, (struct sockaddr *)&ss, &sl) != 0)
		return -1;
	if (ss.ss_family == AF_INET) {
		key[0] = 4;
		memcpy(key + 1, &((struct sockaddr_in *)&ss)->sin_addr, 4);
		return 0;
	}
	if (ss.ss_family == AF_INET6) {
		const unsigned char *a = ((struct sockaddr_in6 *)&ss)->sin6_addr.s6_addr;
		static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
		if (!memcmp(a, mapped, 12)) {
			key[0] = 4;
			memcpy(key + 1, a + 12, 4);
		} else {
			key[0] = 6;
			memcpy(key + 1, a, 8);
		}
		return 0;
	}
	return -1;
}

/* The table slot of a key (FNV-1a). */
static struct ip_count **
ip_slot(const unsigned char key[9])
{
	uint32_t h = 2166136261u;
	struct ip_count **pp;

	for (int i = 0; i < 9; i++)
		h = (h ^ key[i]) * 16777619u;
	for (pp = &ip_table[h % IP_BUCKETS]; *pp; pp = &(*pp)->next)
		if (!memcmp((*pp)->key, key, 9))
			break;
	return pp;
}

/* Unauthenticated connections open from the peer of wsi. */
uint32_t
conn_unauth_from(struct lws *wsi)
{
	unsigned char key[9];
	struct ip_count **pp;

	if (ip_key(wsi, key) != 0)
		return 0;
	pp = ip_slot(key);
	return *pp ? (*pp)->n : 0;
}

/* Counts c against its peer's address while it is unauthenticated. */
static void
ip_acquire(struct conn *c)
{
	unsigned char key[9];
	struct ip_count **pp;

	if (ip_key(c->wsi, key) != 0)
		return;
	pp = ip_slot(key);
	if (!*pp) {
		*pp = xcalloc(1, sizeof(**pp));
		memcpy((*pp)->key, key, 9);
	}
	(*pp)->n++;
	c->ip = *pp;
}

/* c authenticated or closed: its address may hold one more. */
static void
ip_release(struct conn *c)
{
	struct ip_count **pp;

	if (!c->ip)
		return;
	pp = ip_slot(c->ip->key);
	c->ip = NULL;
	if (*pp && --(*pp)->n == 0) {
		struct ip_count *e = *pp;
		*pp = e->next;
		free(e);
	}
}

/* Releases every queued frame (close or overflow); the ring itself stays. */
static void
ring_clear(struct conn *c)
{
	struct ring *r = c->ring;

	if (!r)
		return;
	while (r->count) {
		msg_unref(r->slot[r->head]);
		r->head = (r->head + 1) & (r->cap - 1);
		r->count--;
	}
	r->bytes = 0;
}

/* Grows the ring (power of two, at most --max-queue); -1 when at the cap. */
static int
ring_grow(struct conn *c)
{
	struct ring *r = c->ring, *n;
	uint32_t cap = r ? r->cap * 2 : 8;

	if (r && r->cap >= (uint32_t)cfg.max_queue)
		return -1;
	n = xmalloc(sizeof(*n) + cap * sizeof(struct msg *));
	n->cap = cap;
	n->head = 0;
	n->count = 0;
	n->bytes = 0;
	if (r) {
		for (uint32_t i = 0; i < r->count; i++)
			n->slot[i] = r->slot[(r->head + i) & (r->cap - 1)];
		n->count = r->count;
		n->bytes = r->bytes;
		free(r);
	}
	c->ring = n;
	return 0;
}

/* Queues m under both caps.  Pushed events (response 0): m must fit in
 * --max-queue-bytes with what is queued (an empty ring takes any frame).
 * Responses (response 1): accepted while the bytes queued are below the
 * budget, so a single page larger than the budget still goes out, but a
 * client that stops reading is closed after at most one such page. */
static void
conn_enqueue(struct conn *c, struct msg *m, int response)
{
	struct ring *r;

	if (!CONN_OPEN(c)) {
		stats.drops++;
		return;
	}
	r = c->ring;
	if (!r || r->count == r->cap) {
		if ((r && (int)r->count >= cfg.max_queue) || ring_grow(c)) {
			stats.drops++;
			log_msg(LOG_WARN, c->id, "send ring full (%u events): closing as lagging",
				c->ring ? c->ring->count : 0);
			conn_close(c, CLOSE_LAGGING, "lagging");
			return;
		}
		r = c->ring;
	}
	if (r->count && (response ? r->bytes >= (uint32_t)cfg.max_queue_bytes :
			 (uint64_t)r->bytes + m->len > (uint32_t)cfg.max_queue_bytes)) {
		stats.drops++;
		log_msg(LOG_WARN, c->id, "send ring over %d bytes: closing as lagging",
			cfg.max_queue_bytes);
		conn_close(c, CLOSE_LAGGING, "lagging");
		return;
	}
	msg_ref(m);
	r->slot[(r->head + r->count) & (r->cap - 1)] = m;
	r->count++;
	r->bytes += m->len;
	lws_callback_on_writable(c->wsi);
}

/* Queues a pushed event. */
void
conn_send(struct conn *c, struct msg *m)
{
	conn_enqueue(c, m, 0);
}

/* Queues a response or gateway frame (see conn_enqueue for the byte rule). */
void
conn_send_text(struct conn *c, const char *text, size_t len)
{
	struct msg *m;

	if (!CONN_OPEN(c)) {
		stats.drops++;		/* no copy for a client that is going */
		return;
	}
	m = msg_new(text, len);
	conn_enqueue(c, m, 1);
	msg_unref(m);
}


/* Legal transitions: a bit per target state, by source state. */
#define TO(st) (1u << (st))
static const unsigned conn_next[] = {
	[CONN_UNAUTH] = TO(CONN_REGISTERING) | TO(CONN_CLOSING) | TO(CONN_CLOSED),
	[CONN_REGISTERING] = TO(CONN_LIVE) | TO(CONN_CLOSING) | TO(CONN_CLOSED),
	[CONN_LIVE] = TO(CONN_CLOSING) | TO(CONN_CLOSED),
	[CONN_CLOSING] = TO(CONN_CLOSE_SENT) | TO(CONN_CLOSED),
	[CONN_CLOSE_SENT] = TO(CONN_CLOSED),
	[CONN_CLOSED] = 0,
};
#undef TO

/* The one place a connection changes state: checks the transition and moves
 * c to the list of its new state (no list once CLOSED; CLOSE_SENT stays on
 * the closing list so that the backstop still covers it).  An illegal
 * transition is a bug: abort rather than run on with broken lists. */
void
conn_set_state(struct conn *c, enum conn_state to)
{
	static const char *const names[] = { "unauth", "registering", "live", "closing",
					     "close-sent", "closed" };

	if (!(conn_next[c->state] & (1u << to))) {
		log_msg(LOG_ERROR, c->id, "illegal connection state change %s -> %s",
			names[c->state], names[to]);
		abort();
	}
	c->state = (uint8_t)to;
	switch (to) {
	case CONN_REGISTERING:
		lws_dll2_remove(&c->list);
		lws_dll2_add_head(&c->list, &authed_list);
		break;
	case CONN_CLOSING:
		lws_dll2_remove(&c->list);
		lws_dll2_add_tail(&c->list, &closing_list);
		break;
	case CONN_CLOSED:
		lws_dll2_remove(&c->list);
		break;
	default:		/* LIVE and CLOSE_SENT keep their list */
		break;
	}
}

/* The connection behind a list link. */
static struct conn *
conn_of(lws_dll2_t *d)
{
	return d ? lws_container_of(d, struct conn, list) : NULL;
}

/* Starts closing c with code (sent after the queued frames, 4009 drops them);
 * why must be a static string: it is sent as the close reason. */
void
conn_close(struct conn *c, enum close_code code, const char *why)
{
	if (!CONN_OPEN(c))
		return;
	c->close_code = (uint16_t)code;
	c->close_why = why;
	metrics_close(code);
	log_msg(code == CLOSE_NORMAL || code == CLOSE_RESTART ? LOG_DEBUG : LOG_INFO, c->id,
		"closing %d (%s)", code, why);
	/* A lagging client loses its queue (it resyncs); others get what is
	 * already queued (e.g. the 53400 frames before a 1008) first. */
	if (code == CLOSE_LAGGING)
		ring_clear(c);
	lws_callback_on_writable(c->wsi);
	/* A peer that never reads would never give us the writeable: the tick
	 * kills it CLOSE_BACKSTOP_MS later. */
	c->close_ms = now_ms();
	conn_set_state(c, CONN_CLOSING);
}

/* A pending database entry now refers to c. */
void
conn_ref(struct conn *c)
{
	c->refs++;
}

/* Drops a reference; the last one frees the connection object. */
void
conn_unref(struct conn *c)
{
	if (--c->refs == 0) {
		ring_clear(c);
		free(c->ring);
		frame_reset(&c->rx);
		slab_conn_free(c);
	}
}

/* lws accepted a chat.v1 connection: a new, unauthenticated conn. */
struct conn *
conn_new(struct lws *wsi)
{
	struct conn *c = slab_conn_alloc(sizeof(*c));

	c->wsi = wsi;
	c->id = ++next_conn_id;
	c->refs = 1;
	c->born_ms = c->rate_ms = now_ms();
	c->tokens = (float)cfg.rate;
	c->state = CONN_UNAUTH;
	lws_dll2_add_tail(&c->list, &unauth_list);
	conn_count++;
	conn_count_unauth++;
	ip_acquire(c);
	stats.connections_total++;
	return c;
}

/* lws closed the socket: c leaves its list, the route table and the counts;
 * chat.disconnect goes unless another socket of the device holds the session. */
void
conn_gone(struct conn *c)
{
	conn_count--;
	conn_set_state(c, CONN_CLOSED);
	if (CONN_AUTHENTICATED(c)) {
		route_remove(c);
		/* The same device may hold another socket here (a reconnect
		 * racing the old one): its session row stays. */
		if (c->reg_sent && !route_has_device(c->user, c->device))
			db_session_disconnect(c);
	} else {
		conn_count_unauth--;
		ip_release(c);
	}
	log_msg(LOG_DEBUG, c->id, "closed");
	metrics_conn_gone(c->born_ms);	/* monitoring (issue 11): churn */
	c->wsi = NULL;
	ring_clear(c);
	conn_unref(c);
}

/* The oldest queued frame, or NULL when the ring is empty. */
struct msg *
conn_next_frame(struct conn *c)
{
	return c->ring && c->ring->count ? c->ring->slot[c->ring->head] : NULL;
}

/* The oldest queued frame was written: counts and releases it.  A ring
 * that runs empty is freed: an idle connection holds no ring (80 bytes of
 * the smallest ring, 96 with malloc's header, per connection), and the
 * next frame allocates one again (cheap next to the frame itself). */
void
conn_sent(struct conn *c)
{
	struct ring *r = c->ring;
	struct msg *m = r->slot[r->head];

	stats.frames_out++;
	stats.bytes_out += m->len;
	r->head = (r->head + 1) & (r->cap - 1);
	r->count--;
	r->bytes -= m->len;
	msg_unref(m);
	if (!r->count) {
		free(r);
		c->ring = NULL;
	}
}

/* chat.connect found the device and committed: the connection is confirmed
 * (events and requests flow from now on); hello the first time, then resync. */
void
conn_confirmed(struct conn *c)
{
	char buf[640];
	int n;

	if (c->state != CONN_REGISTERING && c->state != CONN_LIVE)
		return;
	if (c->state == CONN_REGISTERING)
		conn_set_state(c, CONN_LIVE);
	if (c->hello_sent) {
		conn_send(c, msg_resync());
		stats.resyncs++;
		return;
	}
	/* node is [a-z0-9_]{1,40} and the key base64url: nothing to escape */
	n = snprintf(buf, sizeof(buf),
		     "{\"type\":\"hello\",\"user\":%lld,\"device\":%d,\"node\":\"%s\",\"heartbeat\":%d%s%s%s%s%s%s}",
		     (long long)c->user, (int)c->device, cfg.node, cfg.heartbeat,
		     cfg.vapid_public_key ? ",\"vapid_public_key\":\"" : "",
		     cfg.vapid_public_key ? cfg.vapid_public_key : "", cfg.vapid_public_key ? "\"" : "",
		     /* media (issue 13): checked URL-safe by config_media_url */
		     cfg.media_url ? ",\"media_url\":\"" : "", cfg.media_url ? cfg.media_url : "",
		     cfg.media_url ? "\"" : "");
	c->hello_sent = 1;
	conn_send_text(c, buf, (size_t)n);
}

/* Calls fn for every authenticated connection (fn may close it). */
void
conn_foreach_authed(void (*fn)(struct conn *c, void *arg), void *arg)
{
	lws_start_foreach_dll_safe(lws_dll2_t *, d, d1, lws_dll2_get_head(&authed_list)) {
		fn(conn_of(d), arg);
	} lws_end_foreach_dll_safe(d, d1);
}

/* Notes a token expiry for the tick's scan. */
void
conn_note_exp(int64_t exp)
{
	if (exp < earliest_exp)
		earliest_exp = exp;
}

/* Marks c authenticated as (user, device) and registers its session; the
 * device is confirmed (hello, events, requests) only once chat.connect
 * finds it. */
void
conn_authenticated(struct conn *c, int64_t user, int32_t device, int64_t exp)
{
	conn_count_unauth--;
	ip_release(c);
	c->user = user;
	c->device = device;
	c->exp = exp;
	conn_note_exp(exp);
	conn_set_state(c, CONN_REGISTERING);
	route_add(c);
	log_msg(LOG_DEBUG, c->id, "authenticated user %lld device %d", (long long)user, (int)device);
	/* hello once the session row exists, so that the client's first sync
	 * sees everything it will not be notified of, and only for a device
	 * that exists (chat.connect raises P0002: close 4003).  Database down:
	 * the client waits; the session is registered once it is back. */
	if (db_session_connect(c) != 0)
		log_msg(LOG_DEBUG, c->id, "database unavailable: device confirmation waits");
}

/* Once a second: auth timeouts; every --heartbeat seconds: pings and dead peers. */
static void
conn_tick(lws_sorted_usec_list_t *sul)
{
	uint32_t now = now_ms(), limit = (uint32_t)cfg.auth_timeout * 1000, slice;
	enum { CLOSE_BACKSTOP_MS = 5000 };
	struct conn *c;

	(void)sul;
	/* Closes that stalled (peer not reading, close never acknowledged). */
	while ((c = conn_of(lws_dll2_get_head(&closing_list)))) {
		if (now - c->close_ms < CLOSE_BACKSTOP_MS)
			break;			/* list is in close order */
		lws_dll2_remove(&c->list);	/* killed once; CLOSED finds it in no list */
		if (c->wsi)
			lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
	}
	/* In accept order; conn_close moves each to the closing list. */
	while ((c = conn_of(lws_dll2_get_head(&unauth_list)))) {
		if (now - c->born_ms < limit)
			break;
		stats.auth_failures++;
		conn_close(c, CLOSE_AUTH_TIMEOUT, "authentication timeout");
	}
	/* Tokens that expired without re-authentication: 4001.  Scanned only
	 * once the earliest known exp is reached, which also recomputes it. */
	if ((int64_t)time(NULL) >= earliest_exp) {
		int64_t wall = (int64_t)time(NULL), next_exp = INT64_MAX;

		lws_start_foreach_dll_safe(lws_dll2_t *, d, d1, lws_dll2_get_head(&authed_list)) {
			c = conn_of(d);		/* conn_close moves c to the closing list */
			if (c->exp <= wall) {
				stats.auth_failures++;
				conn_close(c, CLOSE_AUTH, "token expired");
			} else if (c->exp < next_exp) {
				next_exp = c->exp;
			}
		} lws_end_foreach_dll_safe(d, d1);
		earliest_exp = next_exp;
	}
	/* Connection storms leave freed memory inside the heap (pending queries,
	 * handshakes): give whole free pages back now and then, and in the
	 * tick after a burst of connections opened or closed (the objects a
	 * connection keeps live in slab.c, so the heap then holds only what
	 * the burst left; a trim of it takes well under a millisecond). */
	if (ticks % 10 == 9 || stats.connections_total - trim_conns >= TRIM_CHURN ||
	    trim_count - conn_count >= TRIM_CHURN) {
		malloc_trim(0);
		trim_conns = stats.connections_total;
		trim_count = conn_count;
	}
	if (conn_count > trim_count)
		trim_count = conn_count;
	/* The other workers render this one's gauges from its shared slot. */
	metrics_publish(conn_count, conn_count_unauth, db_ready());
	/* Each connection is pinged every --heartbeat seconds, in slices by
	 * id, so that 19,000 pings are not all written in the same second. */
	slice = ++ticks % (uint32_t)cfg.heartbeat;
	lws_start_foreach_dll_safe(lws_dll2_t *, d, d1, lws_dll2_get_head(&authed_list)) {
		/* No continue in here: the macro advances at its end. */
		c = conn_of(d);		/* conn_close moves c to the closing list */
		if (c->id % (uint32_t)cfg.heartbeat != slice) {
			/* another slice */
		} else if (c->missed_pongs >= 2) {
			conn_close(c, CLOSE_GOING_AWAY, "two heartbeat pings unanswered");
		} else {
			c->missed_pongs++;
			c->ping_due = 1;
			lws_callback_on_writable(c->wsi);
		}
	} lws_end_foreach_dll_safe(d, d1);
	lws_sul_schedule(conn_context, 0, &sul_tick, conn_tick, LWS_US_PER_SEC);
}

/* Starts the once-a-second housekeeping tick. */
void
conn_start_timers(struct lws_context *ctx)
{
	conn_context = ctx;
	lws_sul_schedule(conn_context, 0, &sul_tick, conn_tick, LWS_US_PER_SEC);
}


/* SIGTERM: closes every client with 1012, at most DRAIN_INFLIGHT closes
 * pending at a time.  Each close makes lws insert close-send, close-ack and
 * shutdown-flush timeouts in its one sorted timer list, O(timers pending)
 * each: closing 10,000 at once costs O(n^2) and overruns --drain-timeout.
 * Stalled closes (peers not reading) cannot hold the others back for long:
 * each step starts at least DRAIN_MIN_STEP closes. */
#ifndef DRAIN_INFLIGHT
#define DRAIN_INFLIGHT 4096
#endif
#define DRAIN_MIN_STEP 16	/* per 1 ms step however many closes stall */
static lws_sorted_usec_list_t sul_drain_step;

static void
conn_drain_step(lws_sorted_usec_list_t *sul)
{
	uint32_t closing_n = closing_list.count;
	uint32_t n = closing_n < DRAIN_INFLIGHT - DRAIN_MIN_STEP ?
		     DRAIN_INFLIGHT - closing_n : DRAIN_MIN_STEP;

	(void)sul;
	for (; unauth_list.head && n; n--)
		conn_close(conn_of(unauth_list.head), CLOSE_RESTART, "server shutting down");
	for (; authed_list.head && n; n--)
		conn_close(conn_of(authed_list.head), CLOSE_RESTART, "server shutting down");
	if (unauth_list.head || authed_list.head)
		lws_sul_schedule(conn_context, 0, &sul_drain_step, conn_drain_step, LWS_US_PER_MS);
}

void
conn_drain(void)
{
	draining = 1;
	conn_drain_step(&sul_drain_step);
}


/* True once SIGTERM started the drain: no new connections, /healthz 503. */
int
conn_draining(void)
{
	return draining;
}
