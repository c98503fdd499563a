/* ws.c: WebSocket clients and the small HTTP surface (/healthz, /metrics).
 *
 * Habits from lws minimal-ws-server-ring and mosquitto: the per-session data
 * is a pointer to a struct conn we own; producers queue on a bounded ring
 * and ask for a writeable callback; only LWS_CALLBACK_SERVER_WRITEABLE calls
 * lws_write, one frame per callback.  Rings and fragment buffers are
 * allocated on first use so that an idle connection costs one small struct. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <malloc.h>
#include <limits.h>
#include <errno.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <netinet/in.h>
#include <time.h>
#include <jansson.h>
#include "gateway.h"

uint32_t ws_conns_total, ws_conns_unauth;

/* Unauthenticated connections in accept order (auth timeout), then the rest;
 * connections being closed move to their own list in close order, where the
 * once-a-second tick kills those whose close stalls (no per-connection lws
 * timer: lws keeps all timers in one sorted list, O(connections) per insert). */
static lws_dll2_owner_t unauth_list, authed_list, closing_list;
static uint32_t next_conn_id;
static lws_sorted_usec_list_t sul_tick;
static uint32_t ticks;
/* No authenticated connection's token expires before this (unix seconds):
 * the tick scans for expired tokens only once it is reached. */
static int64_t earliest_exp = INT64_MAX;

static struct msg *resync_msg;

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
static uint32_t
ip_unauth(struct lws *wsi)
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
		if (!(*pp = calloc(1, sizeof(**pp))))
			return;		/* uncounted rather than refused */
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

/* Milliseconds on a wrapping 32-bit clock; compare with differences only. */
static uint32_t
now_ms(void)
{
	return (uint32_t)(now_us() / 1000);
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
	n = malloc(sizeof(*n) + cap * sizeof(struct msg *));
	if (!n)
		return -1;
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
ws_enqueue(struct conn *c, struct msg *m, int response)
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
			ws_close(c, 4009, "lagging");
			return;
		}
		r = c->ring;
	}
	if (r->count && (response ? r->bytes >= (uint32_t)cfg.max_queue_bytes :
			 (uint64_t)r->bytes + m->len > (uint32_t)cfg.max_queue_bytes)) {
		stats.drops++;
		log_msg(LOG_WARN, c->id, "send ring over %d bytes: closing as lagging",
			cfg.max_queue_bytes);
		ws_close(c, 4009, "lagging");
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
ws_send(struct conn *c, struct msg *m)
{
	ws_enqueue(c, m, 0);
}

/* Queues a response or gateway frame (see ws_enqueue for the byte rule). */
void
ws_send_text(struct conn *c, const char *text, size_t len)
{
	struct msg *m;

	if (!CONN_OPEN(c)) {
		stats.drops++;		/* no copy for a client that is going */
		return;
	}
	m = msg_new(text, len);
	if (!m)
		return;
	ws_enqueue(c, m, 1);
	msg_unref(m);
}

/* Condition names of the SQLSTATEs the gateway itself reports. */
static const char *
sqlstate_name(const char *code)
{
	static const struct { const char *code, *name; } names[] = {
		{ "22P02", "invalid_text_representation" },
		{ "22023", "invalid_parameter_value" },
		{ "53400", "configuration_limit_exceeded" },
		{ "08006", "connection_failure" },
		{ "42501", "insufficient_privilege" },
		{ "P0002", "no_data_found" },
		{ "22001", "string_data_right_truncation" },
		{ "54000", "program_limit_exceeded" },
		{ "55000", "object_not_in_prerequisite_state" },
		{ "42883", "undefined_function" },
		{ "57014", "query_canceled" },
	};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (!strcmp(names[i].code, code))
			return names[i].name;
	return "internal_error";
}

/* Queues an error frame with the SQLSTATE, its condition name and a message. */
void
ws_send_error(struct conn *c, const char *id_json, const char *code, const char *message)
{
	json_t *o = json_object();
	char *text;

	if (id_json) {
		json_t *id = json_loads(id_json, JSON_DECODE_ANY, NULL);
		if (id)
			json_object_set_new(o, "id", id);
	}
	json_object_set_new(o, "type", json_string("error"));
	json_object_set_new(o, "code", json_string(code));
	json_object_set_new(o, "error", json_string(sqlstate_name(code)));
	json_object_set_new(o, "message", json_string(message));
	text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(o);
	if (text) {
		ws_send_text(c, text, strlen(text));
		free(text);
	}
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
static void
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
ws_close(struct conn *c, int code, const char *why)
{
	if (!CONN_OPEN(c))
		return;
	c->close_code = (uint16_t)code;
	c->close_why = why;
	metrics_close(code);
	log_msg(code == 1000 || code == 1012 ? LOG_DEBUG : LOG_INFO, c->id,
		"closing %d (%s)", code, why);
	/* A lagging client loses its queue (it resyncs); others get what is
	 * already queued (e.g. the 53400 frames before a 1008) first. */
	if (code == 4009)
		ring_clear(c);
	lws_callback_on_writable(c->wsi);
	/* A peer that never reads would never give us the writeable: the tick
	 * kills it CLOSE_BACKSTOP_MS later. */
	c->close_ms = now_ms();
	conn_set_state(c, CONN_CLOSING);
}

/* A pending database entry now refers to c. */
void
ws_conn_ref(struct conn *c)
{
	c->refs++;
}

/* Drops a reference; the last one frees the connection object. */
void
ws_conn_unref(struct conn *c)
{
	if (--c->refs == 0) {
		ring_clear(c);
		free(c->ring);
		frame_reset(&c->rx);
		free(c);
	}
}

/* chat.connect found the device and committed: the connection is confirmed
 * (events and requests flow from now on); hello the first time, then resync. */
void
ws_registered(struct conn *c)
{
	char buf[256];
	int n;

	if (c->state != CONN_REGISTERING && c->state != CONN_LIVE)
		return;
	if (c->state == CONN_REGISTERING)
		conn_set_state(c, CONN_LIVE);
	if (c->hello_sent) {
		if (!resync_msg && !(resync_msg = msg_new("{\"type\":\"resync\"}", 17)))
			abort();
		resync_msg->refs = MSG_STATIC;
		ws_send(c, resync_msg);
		stats.resyncs++;
		return;
	}
	n = snprintf(buf, sizeof(buf),
		     "{\"type\":\"hello\",\"user\":%lld,\"device\":%d,\"node\":\"%s\",\"heartbeat\":%d}",
		     (long long)c->user, (int)c->device, cfg.node, cfg.heartbeat);
	c->hello_sent = 1;
	ws_send_text(c, buf, (size_t)n);
}

/* Calls fn for every authenticated connection (fn may close it). */
void
ws_foreach_authed(void (*fn)(struct conn *c, void *arg), void *arg)
{
	lws_start_foreach_dll_safe(lws_dll2_t *, d, d1, lws_dll2_get_head(&authed_list)) {
		fn(conn_of(d), arg);
	} lws_end_foreach_dll_safe(d, d1);
}

/* Notes a token expiry for the tick's scan. */
static void
ws_note_exp(int64_t exp)
{
	if (exp < earliest_exp)
		earliest_exp = exp;
}

/* Marks c authenticated as (user, device) and registers its session; the
 * device is confirmed (hello, events, requests) only once chat.connect
 * finds it. */
static void
ws_authenticated(struct conn *c, int64_t user, int32_t device, int64_t exp)
{
	ws_conns_unauth--;
	ip_release(c);
	c->user = user;
	c->device = device;
	c->exp = exp;
	ws_note_exp(exp);
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

/* Checks a token; closes with 4001 when it is bad. */
static void
ws_auth(struct conn *c, const char *token, size_t len)
{
	int64_t user, exp;
	int32_t device;
	const char *why;

	if (auth_verify(token, len, &user, &device, &exp, &why) != 0) {
		stats.auth_failures++;
		ws_close(c, 4001, why);
		return;
	}
	ws_authenticated(c, user, device, exp);
}

/* {"type":"auth"} on an authenticated connection: a valid token of the same
 * user and device moves the connection's expiry to the new token's exp and
 * is answered ({"id":..,"type":"ok","result":{"exp":..}} when the frame had
 * an id, else {"type":"auth_ok","exp":..}); any other token closes 4001. */
static void
ws_reauth(struct conn *c, json_t *tok, const char *id_json)
{
	int64_t user, exp;
	int32_t device;
	const char *why;
	char buf[256];
	int n;

	if (!json_is_string(tok)) {
		stats.auth_failures++;
		ws_close(c, 4001, "re-authentication without a token");
		return;
	}
	if (auth_verify(json_string_value(tok), json_string_length(tok), &user, &device, &exp, &why) != 0) {
		stats.auth_failures++;
		ws_close(c, 4001, why);
		return;
	}
	if (user != c->user || device != c->device) {
		stats.auth_failures++;
		log_msg(LOG_WARN, c->id, "re-authentication as user %lld device %d refused on a "
			"connection of user %lld device %d", (long long)user, (int)device,
			(long long)c->user, (int)c->device);
		ws_close(c, 4001, "token of another user or device");
		return;
	}
	if (exp > c->exp)
		c->exp = exp;		/* an older token never shortens it */
	ws_note_exp(c->exp);
	n = id_json ? snprintf(buf, sizeof(buf), "{\"id\":%s,\"type\":\"ok\",\"result\":{\"exp\":%lld}}",
				   id_json, (long long)c->exp)
		    : snprintf(buf, sizeof(buf), "{\"type\":\"auth_ok\",\"exp\":%lld}", (long long)c->exp);
	ws_send_text(c, buf, (size_t)n);
}

/* Token bucket of --rate requests/s; returns 0 when the request may pass. */
static int
ws_rate_check(struct conn *c)
{
	uint32_t now = now_ms(), elapsed = now - c->rate_ms;

	c->rate_ms = now;
	c->tokens += (float)elapsed * (float)cfg.rate / 1000.0f;
	if (c->tokens >= (float)cfg.rate) {
		c->tokens = (float)cfg.rate;
		c->strikes = 0;
	}
	if (c->tokens >= 1.0f) {
		c->tokens -= 1.0f;
		return 0;
	}
	stats.rate_limited++;
	if (c->strikes < UINT16_MAX)
		c->strikes++;
	return -1;
}

/* Handles one complete text frame. */
static void
ws_frame(struct conn *c, const char *data, size_t len)
{
	json_t *req, *type;
	json_error_t err;
	struct req_info ri;
	char *id_json = NULL;
	const char *t;

	stats.frames_in++;
	stats.bytes_in += len;
	c->missed_pongs = 0;

	req = json_loadb(data, len, 0, &err);
	type = req && json_is_object(req) ? json_object_get(req, "type") : NULL;

	if (c->state == CONN_UNAUTH) {
		json_t *tok = req ? json_object_get(req, "token") : NULL;
		if (type && json_is_string(type) && !strcmp(json_string_value(type), "auth") &&
		    json_is_string(tok))
			ws_auth(c, json_string_value(tok), json_string_length(tok));
		else {
			stats.auth_failures++;
			ws_close(c, 4001, "expected an auth frame");
		}
		json_decref(req);
		return;
	}

	if (ws_rate_check(c) != 0) {
		if (c->strikes > (uint32_t)cfg.rate) {
			ws_close(c, 1008, "request rate exceeded");
		} else {
			const char *code, *msg;
			if (req_id(req, &id_json, &code, &msg) != 0)
				id_json = NULL;		/* not echoed */
			ws_send_error(c, id_json, "53400", "request rate exceeded");
			stats.request_errors++;
		}
		goto out;
	}

	/* JSON object, a "type", an id that is a short number or string
	 * (request.c, fuzzed by tests/fuzz/request_fuzz.c). */
	if (req_check(req, &ri) != 0) {
		ws_send_error(c, ri.id_json, ri.code, ri.message);
		stats.request_errors++;
		id_json = ri.id_json;
		goto out;
	}
	id_json = ri.id_json;
	t = ri.type;
	if (!strcmp(t, "ping")) {
		char buf[200];
		int n = id_json ? snprintf(buf, sizeof(buf), "{\"id\":%s,\"type\":\"pong\"}", id_json)
				: snprintf(buf, sizeof(buf), "{\"type\":\"pong\"}");
		ws_send_text(c, buf, (size_t)n);
		goto out;
	}
	if (!strcmp(t, "auth")) {
		ws_reauth(c, json_object_get(req, "token"), id_json);
		goto out;
	}
	if (c->state != CONN_LIVE) {
		/* Nothing runs for a device chat.connect has not found yet. */
		ws_send_error(c, id_json, "55000", "device not confirmed yet: wait for hello");
		stats.request_errors++;
		goto out;
	}
	/* A client may not pile up work (and answers) faster than it reads:
	 * beyond --max-inflight unanswered requests it gets 53400 at once. */
	if (c->inflight >= (uint32_t)cfg.max_inflight) {
		ws_send_error(c, id_json, "53400", "too many requests in flight");
		stats.request_errors++;
		stats.inflight_refused++;
		goto out;
	}
	db_request(c, data, len, id_json);
out:
	free(id_json);
	json_decref(req);
}

/* Writes a small HTTP response from the HTTP callback (bodies of a few KB). */
static int
http_reply(struct lws *wsi, unsigned int status, const char *ctype, const char *body, size_t len)
{
	unsigned char hdr[LWS_PRE + 512], *start = hdr + LWS_PRE, *p = start,
		      *end = hdr + sizeof(hdr) - 1;
	unsigned char *buf;
	int n;

	if (lws_add_http_common_headers(wsi, status, ctype, (lws_filepos_t)len, &p, end) ||
	    lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_CACHE_CONTROL,
					 (const unsigned char *)"no-store", 8, &p, end) ||
	    lws_finalize_write_http_header(wsi, start, &p, end))
		return -1;
	buf = malloc(LWS_PRE + len + 1);
	if (!buf)
		return -1;
	memcpy(buf + LWS_PRE, body, len);
	n = lws_write(wsi, buf + LWS_PRE, len, LWS_WRITE_HTTP_FINAL);
	free(buf);
	if (n < (int)len)
		return -1;
	return lws_http_transaction_completed(wsi) ? -1 : 0;
}

/* Ends an HTTP transaction with a bodiless status. */
static int
http_status(struct lws *wsi, unsigned int status)
{
	lws_return_http_status(wsi, status, NULL);
	return lws_http_transaction_completed(wsi) ? -1 : 0;
}

/* Serves a file of --static.  lws's file mounts follow symlinks wherever
 * they point, so the path is resolved here (realpath) and must stay inside
 * the resolved root: a symlink out of the root is 404, as is anything that
 * is not a regular file.  (A symlink to a file inside the root is fine.) */
static int
http_static(struct lws *wsi, const char *uri)
{
	static char *root;
	static size_t root_len;
	char path[PATH_MAX], real[PATH_MAX];
	const char *mime;
	struct stat st;
	int n;

	if (!root) {
		if (!(root = realpath(cfg.static_dir, NULL))) {
			log_msg(LOG_WARN, 0, "--static %s: %s", cfg.static_dir, strerror(errno));
			return http_status(wsi, HTTP_STATUS_NOT_FOUND);
		}
		root_len = strlen(root);
	}
	if (uri[0] != '/' || strstr(uri, "/../") ||
	    (strlen(uri) >= 3 && !strcmp(uri + strlen(uri) - 3, "/..")))
		return http_status(wsi, HTTP_STATUS_FORBIDDEN);
	n = snprintf(path, sizeof(path), "%s%s%s", root, uri,
		     uri[strlen(uri) - 1] == '/' ? "index.html" : "");
	if (n < 0 || (size_t)n >= sizeof(path) || !realpath(path, real))
		return http_status(wsi, HTTP_STATUS_NOT_FOUND);
	if (strncmp(real, root, root_len) || (real[root_len] != '/' && real[root_len] != '\0'))
		return http_status(wsi, HTTP_STATUS_NOT_FOUND);
	if (stat(real, &st) == 0 && S_ISDIR(st.st_mode)) {
		n = snprintf(path, sizeof(path), "%s/index.html", real);
		if (n < 0 || (size_t)n >= sizeof(path) || !realpath(path, real) ||
		    strncmp(real, root, root_len) || real[root_len] != '/')
			return http_status(wsi, HTTP_STATUS_NOT_FOUND);
	}
	if (stat(real, &st) != 0 || !S_ISREG(st.st_mode))
		return http_status(wsi, HTTP_STATUS_NOT_FOUND);
	mime = lws_get_mimetype(real, NULL);
	n = lws_serve_http_file(wsi, real, mime ? mime : "application/octet-stream", NULL, 0);
	if (n < 0 || (n > 0 && lws_http_transaction_completed(wsi)))
		return -1;
	return 0;
}

/* Dispatches /healthz, /metrics (unless --metrics-listen moved it; on that
 * listener nothing else) and --static files; anything else is 404. */
static int
http_request(struct lws *wsi, int metrics_vhost)
{
	char uri[1024];

	if (lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) <= 0)
		return http_status(wsi, HTTP_STATUS_METHOD_NOT_ALLOWED);
	if (lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) >= (int)sizeof(uri) ||
	    lws_hdr_copy(wsi, uri, sizeof(uri), WSI_TOKEN_GET_URI) <= 0)
		return http_status(wsi, HTTP_STATUS_NOT_FOUND);
	if (!strcmp(uri, "/healthz")) {
		if (db_ready() && !draining)
			return http_reply(wsi, 200, "text/plain", "ok\n", 3);
		return http_reply(wsi, 503, "text/plain",
				  draining ? "draining\n" : "database unavailable\n",
				  draining ? 9 : 21);
	}
	if (!strcmp(uri, "/metrics") && (metrics_vhost || !cfg.metrics_listen)) {
		size_t len;
		char *body = metrics_render(&len);
		int r = http_reply(wsi, 200, "text/plain; version=0.0.4", body, len);
		free(body);
		return r;
	}
	if (!metrics_vhost && cfg.static_dir)
		return http_static(wsi, uri);
	return http_status(wsi, HTTP_STATUS_NOT_FOUND);
}

/* Tags the connections accepted on --metrics-listen (opaque user data). */
char ws_metrics_tag;

/* lws callback of the --metrics-listen vhost: plain HTTP, no upgrade.  lws
 * may move a connection to another vhost by its Host header (and move one
 * of the main listener here), so what a connection may reach is decided by
 * the listener that accepted it (WS_IS_METRICS), never by the vhost. */
int
ws_metrics_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
		    size_t len)
{
	if (reason == LWS_CALLBACK_HTTP)
		return http_request(wsi, WS_IS_METRICS(wsi));
	if (reason == LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION)
		return 1;		/* no WebSocket here */
	return lws_callback_http_dummy(wsi, reason, user, in, len);
}

/* lws callback of the chat.v1 protocol (and default HTTP handler). */
int
ws_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
	struct conn **pss = user, *c = pss ? *pss : NULL;

	switch (reason) {
	case LWS_CALLBACK_HTTP:
		return http_request(wsi, WS_IS_METRICS(wsi));

	case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
		if (draining || WS_IS_METRICS(wsi))
			return 1;
		if (ws_conns_total >= (uint32_t)cfg.max_conns ||
		    ws_conns_unauth >= (uint32_t)cfg.max_unauth) {
			log_msg(LOG_WARN, 0, "connection refused: %u open, %u unauthenticated",
				ws_conns_total, ws_conns_unauth);
			return 1;
		}
		/* One host holding idle sockets must not lock everyone out. */
		if (ip_unauth(wsi) >= (uint32_t)cfg.max_unauth_per_ip) {
			char peer[64];
			stats.unauth_per_ip_refused++;
			lws_get_peer_simple(wsi, peer, sizeof(peer));
			log_msg(LOG_WARN, 0, "connection refused: %d unauthenticated from %s",
				cfg.max_unauth_per_ip, peer);
			return 1;
		}
		return 0;

	case LWS_CALLBACK_ESTABLISHED: {
		char buf[2048];
		const char *token;

		c = pss ? calloc(1, sizeof(*c)) : NULL;
		if (!c)
			return -1;
		*pss = c;
		c->wsi = wsi;
		c->id = ++next_conn_id;
		c->refs = 1;
		c->born_ms = c->rate_ms = now_ms();
		c->tokens = (float)cfg.rate;
		c->state = CONN_UNAUTH;
		lws_dll2_add_tail(&c->list, &unauth_list);
		ws_conns_total++;
		ws_conns_unauth++;
		ip_acquire(c);
		stats.connections_total++;
		token = lws_get_urlarg_by_name(wsi, "token=", buf, sizeof(buf));
		if (token && *token)
			ws_auth(c, token, strlen(token));
		return 0;
	}

	case LWS_CALLBACK_RECEIVE: {
		size_t remaining;
		int final;

		if (!c || !CONN_OPEN(c))
			return 0;
		if (lws_frame_is_binary(wsi)) {
			ws_close(c, 1003, "binary frames are not part of chat.v1");
			return 0;
		}
		remaining = lws_remaining_packet_payload(wsi);
		final = lws_is_final_fragment(wsi);
		if (final && !c->rx.len) {
			if (len > (size_t)cfg.max_frame) {
				ws_close(c, 1009, "frame too large");
				return 0;
			}
			ws_frame(c, in, len);	/* whole frame in one piece: no copy */
			return 0;
		}
		if (frame_append(&c->rx, in, len, remaining, (size_t)cfg.max_frame)) {
			frame_reset(&c->rx);
			ws_close(c, 1009, "frame too large");
			return 0;
		}
		if (final && !remaining) {
			struct frame_buf rx = c->rx;
			memset(&c->rx, 0, sizeof(c->rx));
			ws_frame(c, rx.data, rx.len);
			free(rx.data);
		}
		return 0;
	}

	case LWS_CALLBACK_RECEIVE_PONG:
		if (c)
			c->missed_pongs = 0;
		return 0;

	case LWS_CALLBACK_SERVER_WRITEABLE: {
		struct ring *r;
		struct msg *m;

		if (!c)
			return 0;
		if (!CONN_OPEN(c) && (!c->ring || !c->ring->count)) {
			/* Once: lws sends the close frame and waits for the peer's.
			 * A second -1 would kill the socket with the peer's unread
			 * frames still queued, an RST that loses what we sent. */
			if (c->state != CONN_CLOSING)
				return 0;
			conn_set_state(c, CONN_CLOSE_SENT);
			/* The reason goes in the close frame (at most 123 bytes). */
			lws_close_reason(wsi, (enum lws_close_status)c->close_code,
					 (unsigned char *)(uintptr_t)c->close_why,
					 c->close_why ? strnlen(c->close_why, 123) : 0);
			return -1;
		}
		if (c->ping_due && CONN_OPEN(c)) {
			/* A payload: lws 4.1 reports no RECEIVE_PONG for an empty pong. */
			unsigned char ping[LWS_PRE + 4];
			c->ping_due = 0;
			memcpy(ping + LWS_PRE, "chat", 4);
			if (lws_write(wsi, ping + LWS_PRE, 4, LWS_WRITE_PING) < 4)
				return -1;
			if (c->ring && c->ring->count)
				lws_callback_on_writable(wsi);
			return 0;
		}
		r = c->ring;
		if (!r || !r->count)
			return 0;
		m = r->slot[r->head];
		if (lws_write(wsi, (unsigned char *)MSG_DATA(m), m->len, LWS_WRITE_TEXT) < (int)m->len)
			return -1;
		stats.frames_out++;
		stats.bytes_out += m->len;
		r->head = (r->head + 1) & (r->cap - 1);
		r->count--;
		r->bytes -= m->len;
		msg_unref(m);
		if (r->count || !CONN_OPEN(c))
			lws_callback_on_writable(wsi);
		return 0;
	}

	case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
		if (c && len >= 2)
			metrics_close(((const unsigned char *)in)[0] << 8 | ((const unsigned char *)in)[1]);
		return 0;

	case LWS_CALLBACK_CLOSED:
		if (!c)
			return 0;
		*pss = NULL;
		ws_conns_total--;
		conn_set_state(c, CONN_CLOSED);
		if (CONN_AUTHENTICATED(c)) {
			route_remove(c);
			/* The same device may hold another socket here (a reconnect
			 * racing the old one): its session row stays. */
			if (c->reg_sent && !draining && !route_has_device(c->user, c->device))
				db_session_disconnect(c);
		} else {
			ws_conns_unauth--;
			ip_release(c);
		}
		log_msg(LOG_DEBUG, c->id, "closed");
		c->wsi = NULL;
		ring_clear(c);
		ws_conn_unref(c);
		return 0;

	default:
		/* Static files (http_static): lws_callback_http_dummy finishes
		 * each HTTP transaction (FILE_COMPLETION) so keep-alive
		 * connections can carry the next request. */
		return lws_callback_http_dummy(wsi, reason, user, in, len);
	}
}

/* Once a second: auth timeouts; every --heartbeat seconds: pings and dead peers. */
static void
ws_tick(lws_sorted_usec_list_t *sul)
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
	/* In accept order; ws_close moves each to the closing list. */
	while ((c = conn_of(lws_dll2_get_head(&unauth_list)))) {
		if (now - c->born_ms < limit)
			break;
		stats.auth_failures++;
		ws_close(c, 4008, "authentication timeout");
	}
	/* Tokens that expired without re-authentication: 4001.  Scanned only
	 * once the earliest known exp is reached, which also recomputes it. */
	if ((int64_t)time(NULL) >= earliest_exp) {
		int64_t wall = (int64_t)time(NULL), next_exp = INT64_MAX;

		lws_start_foreach_dll_safe(lws_dll2_t *, d, d1, lws_dll2_get_head(&authed_list)) {
			c = conn_of(d);		/* ws_close moves c to the closing list */
			if (c->exp <= wall) {
				stats.auth_failures++;
				ws_close(c, 4001, "token expired");
			} else if (c->exp < next_exp) {
				next_exp = c->exp;
			}
		} lws_end_foreach_dll_safe(d, d1);
		earliest_exp = next_exp;
	}
	/* Connection storms leave freed memory inside the heap (pending queries,
	 * handshakes): give whole free pages back now and then. */
	if (ticks % 10 == 9)
		malloc_trim(0);
	/* Each connection is pinged every --heartbeat seconds, in slices by
	 * id, so that 19,000 pings are not all written in the same second. */
	slice = ++ticks % (uint32_t)cfg.heartbeat;
	lws_start_foreach_dll_safe(lws_dll2_t *, d, d1, lws_dll2_get_head(&authed_list)) {
		/* No continue in here: the macro advances at its end. */
		c = conn_of(d);		/* ws_close moves c to the closing list */
		if (c->id % (uint32_t)cfg.heartbeat != slice) {
			/* another slice */
		} else if (c->missed_pongs >= 2) {
			ws_close(c, 1001, "two heartbeat pings unanswered");
		} else {
			c->missed_pongs++;
			c->ping_due = 1;
			lws_callback_on_writable(c->wsi);
		}
	} lws_end_foreach_dll_safe(d, d1);
	lws_sul_schedule(context, 0, &sul_tick, ws_tick, LWS_US_PER_SEC);
}

/* Starts the once-a-second housekeeping tick. */
void
ws_start_timers(void)
{
	lws_sul_schedule(context, 0, &sul_tick, ws_tick, LWS_US_PER_SEC);
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
ws_drain_step(lws_sorted_usec_list_t *sul)
{
	uint32_t closing_n = closing_list.count;
	uint32_t n = closing_n < DRAIN_INFLIGHT - DRAIN_MIN_STEP ?
		     DRAIN_INFLIGHT - closing_n : DRAIN_MIN_STEP;

	(void)sul;
	for (; unauth_list.head && n; n--)
		ws_close(conn_of(unauth_list.head), 1012, "server shutting down");
	for (; authed_list.head && n; n--)
		ws_close(conn_of(authed_list.head), 1012, "server shutting down");
	if (unauth_list.head || authed_list.head)
		lws_sul_schedule(context, 0, &sul_drain_step, ws_drain_step, LWS_US_PER_MS);
}

void
ws_drain(void)
{
	ws_drain_step(&sul_drain_step);
}
