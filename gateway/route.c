/* route.c: the user -> local connections table and the notification fan-in.
 *
 * A notification is "v1 <hex HMAC-SHA256>\n" followed by "ids\njson\n"
 * repeated.  Any role that can connect to the database may NOTIFY our
 * channel, so a payload whose MAC (keyed with HMAC(secret, "chat-notify"))
 * does not verify is dropped whole.  Each event becomes one shared,
 * reference-counted frame queued on every recipient's ring: no allocation per
 * delivery.  Connections whose device chat.connect has not confirmed yet are
 * in the table but get nothing.  A "ref":true message is fetched once per
 * recipient user, as that user (a lookup never serves another user); events
 * behind it wait in arrival order so that no conversation is reordered (they
 * are rare: only bodies too large for an 8000-byte payload). */
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <stddef.h>
#include <time.h>
#include <jansson.h>
#include <openssl/hmac.h>
#include <openssl/evp.h>
#include <openssl/crypto.h>
#include "gateway.h"

#define SIG_LINE_LEN 68		/* "v1 " + 64 hex digits + "\n" */

static struct conn **buckets;
static uint32_t n_buckets, n_entries;

/* An event waiting for an earlier "ref":true event to be resolved. */
struct event {
	struct event *next;
	struct msg *msg;		/* NULL while the ref is being fetched */
	int64_t sender;
	int32_t sender_device;
	int32_t only_device;		/* > 0: that device's connections only */
	int is_message;
	int waiting_ref;
	uint32_t n_users;
	int64_t users[];
};

static struct event *wait_head, *wait_tail;

/* Monitoring (issue 11): the commit stamp of the events being routed
 * (unix microseconds, database clock; 0: the payload had none). */
static uint64_t route_commit_us;

/* Fibonacci hashing of a user id into the table. */
static uint32_t
bucket_of(int64_t user, uint32_t n)
{
	return (uint32_t)(((uint64_t)user * 11400714819323198485ull) >> 32) & (n - 1);
}

/* Doubles the table; O(n) once per doubling. */
static void
route_grow(void)
{
	uint32_t n = n_buckets ? n_buckets * 2 : 1024;
	struct conn **nb = xcalloc(n, sizeof(*nb));

	for (uint32_t i = 0; i < n_buckets; i++) {
		struct conn *c = buckets[i], *next;
		for (; c; c = next) {
			uint32_t b = bucket_of(c->user, n);
			next = c->user_next;
			c->user_next = nb[b];
			nb[b] = c;
		}
	}
	free(buckets);
	buckets = nb;
	n_buckets = n;
}

/* Makes an authenticated connection reachable by its user id. */
void
route_add(struct conn *c)
{
	uint32_t b;

	if (n_entries >= n_buckets)
		route_grow();
	b = bucket_of(c->user, n_buckets);
	c->user_next = buckets[b];
	buckets[b] = c;
	n_entries++;
}

/* Removes a connection from the table (no-op when absent). */
void
route_remove(struct conn *c)
{
	struct conn **pp;

	if (!buckets)
		return;
	for (pp = &buckets[bucket_of(c->user, n_buckets)]; *pp; pp = &(*pp)->user_next)
		if (*pp == c) {
			*pp = c->user_next;
			c->user_next = NULL;
			n_entries--;
			return;
		}
}

/* True when another local connection of (user, device) sent chat.connect. */
int
route_has_device(int64_t user, int32_t device)
{
	if (!buckets)
		return 0;
	for (struct conn *c = buckets[bucket_of(user, n_buckets)]; c; c = c->user_next)
		if (c->user == user && c->device == device && c->reg_sent)
			return 1;
	return 0;
}

/* Queues m on every local connection of the listed users (of device
 * only_device alone when it is > 0: e2e to_device and keys_low). */
static void
route_deliver(struct msg *m, const int64_t *users, uint32_t n_users, int is_message,
	      int64_t sender, int32_t sender_device, int32_t only_device)
{
	for (uint32_t i = 0; i < n_users; i++) {
		struct conn *c = buckets[bucket_of(users[i], n_buckets)];
		for (; c; c = c->user_next) {
			if (c->user != users[i] || c->state != CONN_LIVE)
				continue;
			if (only_device > 0 && c->device != only_device)
				continue;
			if (is_message && c->user == sender && c->device == sender_device) {
				stats.skipped_own++;
				continue;
			}
			conn_send(c, m);
			stats.deliveries++;
		}
	}
}

/* Delivers waiting events up to the next unresolved ref. */
static void
route_drain(void)
{
	while (wait_head && !wait_head->waiting_ref) {
		struct event *e = wait_head;

		wait_head = e->next;
		if (!wait_head)
			wait_tail = NULL;
		if (e->msg) {
			route_deliver(e->msg, e->users, e->n_users, e->is_message,
				      e->sender, e->sender_device, e->only_device);
			msg_unref(e->msg);
		}
		free(e);
	}
}

/* Appends an event to the waiting queue; returns it. */
static struct event *
route_wait(struct msg *m, const int64_t *users, uint32_t n_users, int is_message,
	   int64_t sender, int32_t sender_device, int32_t only_device)
{
	struct event *e = xmalloc(sizeof(*e) + n_users * sizeof(int64_t));

	e->next = NULL;
	e->msg = m;
	e->sender = sender;
	e->sender_device = sender_device;
	e->only_device = only_device;
	e->is_message = is_message;
	e->waiting_ref = 0;
	e->n_users = n_users;
	memcpy(e->users, users, n_users * sizeof(int64_t));
	if (wait_tail)
		wait_tail->next = e;
	else
		wait_head = e;
	wait_tail = e;
	return e;
}

/* Sends resync to every local connection of the event's users (its data is lost). */
static void
route_resync_users(const int64_t *users, uint32_t n_users)
{
	for (uint32_t i = 0; i < n_users; i++)
		for (struct conn *c = buckets[bucket_of(users[i], n_buckets)]; c; c = c->user_next)
			if (c->user == users[i] && c->state == CONN_LIVE) {
				conn_send(c, msg_resync());
				stats.resyncs++;
			}
}

/* A ref lookup finished: delivers it (or resyncs its users) and what waited behind it. */
void
route_ref_done(void *event, const char *json, size_t len)
{
	struct event *e = event;

	e->waiting_ref = 0;
	if (json) {
		e->msg = msg_new(json, len);
		stats.refs_resolved++;
	} else {
		stats.drops++;
		route_resync_users(e->users, e->n_users);
	}
	route_drain();
}

/* Parses the header line "17,42" into users; returns the count or -1. */
static int
parse_users(const char *p, const char *end, int64_t *users, int cap)
{
	int n = 0;

	while (p < end) {
		char *e;
		errno = 0;
		long long v = strtoll(p, &e, 10);
		if (e == p || errno || n >= cap)
			return -1;
		users[n++] = v;
		p = e;
		if (p < end) {
			if (*p != ',')
				return -1;
			p++;
		}
	}
	return n;
}

/* True when a confirmed local connection of user is open. */
static int
route_user_here(int64_t user)
{
	for (struct conn *c = buckets[bucket_of(user, n_buckets)]; c; c = c->user_next)
		if (c->user == user && c->state == CONN_LIVE)
			return 1;
	return 0;
}

/* {"type":"revoked","user","device"}: closes that device's local
 * connections with 4003 (the user's other devices stay). */
static void
route_revoked(json_t *ev)
{
	json_t *u = json_object_get(ev, "user"), *d = json_object_get(ev, "device");
	int64_t user;
	int64_t device;

	if (!json_is_integer(u) || !json_is_integer(d)) {
		stats.events_invalid++;
		log_msg(LOG_WARN, 0, "revoked event without an integer user and device");
		return;
	}
	user = json_integer_value(u);
	device = json_integer_value(d);
	for (struct conn *c = buckets[bucket_of(user, n_buckets)], *next; c; c = next) {
		next = c->user_next;
		if (c->user != user || c->device != device || !CONN_OPEN(c))
			continue;
		stats.revoked++;
		conn_close(c, CLOSE_REVOKED, "device revoked");
	}
}

/* Validates and routes one event. */
static void
route_event(const int64_t *users, int n_users, const char *json, size_t len)
{
	json_t *ev, *type;
	int is_message = 0, is_ref = 0;
	int64_t sender = 0, conversation = 0, seq = 0;
	int32_t sender_device = 0, only_device = 0;
	struct msg *m;

	stats.events_in++;
	ev = json_loadb(json, len, 0, NULL);
	if (!ev || !json_is_object(ev) || !json_is_string(type = json_object_get(ev, "type"))) {
		stats.events_invalid++;
		log_msg(LOG_WARN, 0, "invalid notification event: %.*s", (int)(len > 200 ? 200 : len), json);
		json_decref(ev);
		return;
	}
	if (!strcmp(json_string_value(type), "message")) {
		is_message = 1;
		sender = json_integer_value(json_object_get(ev, "sender"));
		sender_device = (int32_t)json_integer_value(json_object_get(ev, "sender_device"));
		conversation = json_integer_value(json_object_get(ev, "conversation"));
		seq = json_integer_value(json_object_get(ev, "seq"));
		is_ref = json_is_true(json_object_get(ev, "ref"));
	} else if (!strcmp(json_string_value(type), "revoked")) {
		/* For the gateway, not the client: it closes connections. */
		route_revoked(ev);
		json_decref(ev);
		return;
	} else if (!strcmp(json_string_value(type), "to_device") ||
		   !strcmp(json_string_value(type), "keys_low")) {
		/* E2E: for one device of the user (its "device"), never the
		 * others; an event that names none is dropped, not broadcast. */
		json_t *d = json_object_get(ev, "device");

		if (!json_is_integer(d) || json_integer_value(d) <= 0 ||
		    json_integer_value(d) > INT32_MAX) {
			stats.events_invalid++;
			log_msg(LOG_WARN, 0, "%s event without a device", json_string_value(type));
			json_decref(ev);
			return;
		}
		only_device = (int32_t)json_integer_value(d);
	}
	json_decref(ev);

	/* Nobody here to receive it: no buffer, no query. */
	int any = 0;
	for (int i = 0; i < n_users && !any; i++)
		any = route_user_here(users[i]);
	if (!any)
		return;

	if (is_ref) {
		/* One lookup per recipient user, made as that user: get_message
		 * checks membership, so a listed user who is not a member gets
		 * nothing (a resync), never another user's lookup. */
		for (int i = 0; i < n_users; i++) {
			struct event *e;

			if (!route_user_here(users[i]))
				continue;
			e = route_wait(NULL, &users[i], 1, 1, sender, sender_device, 0);
			e->waiting_ref = 1;
			if (db_resolve_ref(e, users[i], conversation, seq) != 0) {
				e->waiting_ref = 0;
				stats.drops++;
				route_resync_users(&users[i], 1);
			}
		}
		route_drain();
		return;
	}

	m = cfg.trace_latency ? trace_event_msg(json, len) : msg_new(json, len);
	m->commit_us = route_commit_us;
	if (wait_head) {
		route_wait(m, users, (uint32_t)n_users, is_message, sender, sender_device,
			   only_device);
		return;
	}
	route_deliver(m, users, (uint32_t)n_users, is_message, sender, sender_device, only_device);
	msg_unref(m);
}

/* Checks the "v1 <hex>\n" line against HMAC(key, rest of payload) in
 * constant time; key = HMAC(secret, "chat-notify"), derived once. */
static int
route_verify(const char *payload, size_t len)
{
	static unsigned char key[EVP_MAX_MD_SIZE];
	static unsigned int key_len;
	unsigned char mac[EVP_MAX_MD_SIZE], given[32];
	unsigned int mac_len = 0;

	if (!key_len && !HMAC(EVP_sha256(), cfg.secret, (int)cfg.secret_len,
			      (const unsigned char *)"chat-notify", 11, key, &key_len))
		return -1;
	if (len < SIG_LINE_LEN || memcmp(payload, "v1 ", 3) != 0 || payload[SIG_LINE_LEN - 1] != '\n')
		return -1;
	for (int i = 0; i < 32; i++) {
		int hi = OPENSSL_hexchar2int((unsigned char)payload[3 + 2 * i]);
		int lo = OPENSSL_hexchar2int((unsigned char)payload[4 + 2 * i]);

		if (hi < 0 || lo < 0)
			return -1;
		given[i] = (unsigned char)(hi << 4 | lo);
	}
	if (!HMAC(EVP_sha256(), key, (int)key_len, (const unsigned char *)payload + SIG_LINE_LEN,
		  len - SIG_LINE_LEN, mac, &mac_len) || mac_len != 32)
		return -1;
	return CRYPTO_memcmp(mac, given, 32) == 0 ? 0 : -1;
}

/* Verifies a payload, splits it into (header, event) pairs and routes each event. */
void
route_notify(const char *payload)
{
	static time_t last_reject_log;
	static uint64_t rejects_unlogged;

	stats.notifications_in++;
	if (route_verify(payload, strlen(payload)) != 0) {
		time_t now = time(NULL);

		stats.notifications_rejected++;
		/* At most one line per 10 s: a flood of forgeries must not flood the log. */
		if (now - last_reject_log >= 10) {
			log_msg(LOG_WARN, 0, "dropped a notification of %zu bytes without a valid "
				"signature (%llu more since the last report): forged, or chat.token_secret "
				"differs from --token-secret-file", strlen(payload),
				(unsigned long long)rejects_unlogged);
			last_reject_log = now;
			rejects_unlogged = 0;
		} else {
			rejects_unlogged++;
		}
		return;
	}
	route_notify_verified(payload + SIG_LINE_LEN);
}

/* Monitoring (issue 11): a commit stamp pair (empty recipients, then
 * {"type":"committed","at":<unix us>}, exactly as notifier.c writes it)
 * sets the time the next events are measured from; 1 when json is one. */
static int
route_stamp(const char *hdr, const char *hdr_end, const char *json, const char *json_end)
{
	static const char prefix[] = "{\"type\":\"committed\",\"at\":";
	const size_t plen = sizeof(prefix) - 1;
	uint64_t at = 0;
	const char *q;

	if (hdr != hdr_end || (size_t)(json_end - json) < plen + 2 || memcmp(json, prefix, plen) != 0)
		return 0;
	for (q = json + plen; q < json_end - 1 && *q >= '0' && *q <= '9' && q - json < (ptrdiff_t)plen + 18; q++)
		at = at * 10 + (uint64_t)(*q - '0');
	if (q != json_end - 1 || *q != '}' || q == json + plen)
		return 0;
	route_commit_us = at;
	return 1;
}

/* Splits verified events ("ids\njson\n" repeated) into pairs and routes each. */
void
route_notify_verified(const char *events)
{
	static int64_t users[4096];
	const char *p = events;

	if (!buckets)
		route_grow();
	route_commit_us = 0;	/* a payload without stamps is not timed */
	while (*p) {
		const char *hdr_end = strchr(p, '\n'), *json, *json_end;
		int n;

		if (!hdr_end) {
			stats.events_invalid++;
			log_msg(LOG_WARN, 0, "notification without an event line");
			return;
		}
		json = hdr_end + 1;
		json_end = strchr(json, '\n');
		if (!json_end)
			json_end = json + strlen(json);
		if (route_stamp(p, hdr_end, json, json_end)) {
			p = *json_end ? json_end + 1 : json_end;
			continue;
		}
		n = parse_users(p, hdr_end, users, (int)(sizeof(users) / sizeof(users[0])));
		if (n < 0) {
			stats.events_invalid++;
			log_msg(LOG_WARN, 0, "invalid notification header: %.*s",
				(int)(hdr_end - p > 200 ? 200 : hdr_end - p), p);
		} else if (json_end > json) {
			route_event(users, n, json, (size_t)(json_end - json));
		}
		p = *json_end ? json_end + 1 : json_end;
	}
}
