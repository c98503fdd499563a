/* route.c: the user -> local connections table and the notification fan-in.
 *
 * A notification is "ids\njson\n" repeated.  Each event becomes one shared,
 * reference-counted frame queued on every recipient's ring: no allocation per
 * delivery.  A "ref":true message is fetched with one query first; events
 * behind it wait in arrival order so that no conversation is reordered (they
 * are rare: only bodies too large for an 8000-byte payload). */
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <jansson.h>
#include "gateway.h"

static struct conn **buckets;
static uint32_t n_buckets, n_entries;

/* An event waiting for an earlier "ref":true event to be resolved. */
struct event {
	struct event *next;
	struct msg *msg;		/* NULL while the ref is being fetched */
	int64_t sender;
	int32_t sender_device;
	int is_message;
	int waiting_ref;
	uint32_t n_users;
	int64_t users[];
};

static struct event *wait_head, *wait_tail;

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
	struct conn **nb = calloc(n, sizeof(*nb));

	if (!nb)
		return;		/* keep the longer chains */
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
	if (!buckets)
		abort();
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

/* Queues m on every local connection of the listed users. */
static void
route_deliver(struct msg *m, const int64_t *users, uint32_t n_users, int is_message,
	      int64_t sender, int32_t sender_device)
{
	for (uint32_t i = 0; i < n_users; i++) {
		struct conn *c = buckets[bucket_of(users[i], n_buckets)];
		for (; c; c = c->user_next) {
			if (c->user != users[i])
				continue;
			if (is_message && c->user == sender && c->device == sender_device) {
				stats.skipped_own++;
				continue;
			}
			ws_send(c, m);
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
				      e->sender, e->sender_device);
			msg_unref(e->msg);
		}
		free(e);
	}
}

/* Appends an event to the waiting queue; returns it or NULL (out of memory). */
static struct event *
route_wait(struct msg *m, const int64_t *users, uint32_t n_users, int is_message,
	   int64_t sender, int32_t sender_device)
{
	struct event *e = malloc(sizeof(*e) + n_users * sizeof(int64_t));

	if (!e)
		return NULL;
	e->next = NULL;
	e->msg = m;
	e->sender = sender;
	e->sender_device = sender_device;
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
	static struct msg *resync;

	if (!resync && !(resync = msg_new("{\"type\":\"resync\"}", 17)))
		abort();
	resync->refs = MSG_STATIC;
	for (uint32_t i = 0; i < n_users; i++)
		for (struct conn *c = buckets[bucket_of(users[i], n_buckets)]; c; c = c->user_next)
			if (c->user == users[i]) {
				ws_send(c, resync);
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

/* Nothing to forget here: waiting refs are failed by db.c. */
void
route_reset(void)
{
	/* Pending ref entries are failed by db.c, which calls route_ref_done. */
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

/* Validates and routes one event. */
static void
route_event(const int64_t *users, int n_users, const char *json, size_t len)
{
	json_t *ev, *type;
	int is_message = 0, is_ref = 0;
	int64_t sender = 0, conversation = 0, seq = 0;
	int32_t sender_device = 0;
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
	}
	json_decref(ev);

	/* Nobody here to receive it: no buffer, no query. */
	int any = 0;
	for (int i = 0; i < n_users && !any; i++)
		for (struct conn *c = buckets[bucket_of(users[i], n_buckets)]; c; c = c->user_next)
			if (c->user == users[i]) {
				any = 1;
				break;
			}
	if (!any)
		return;

	if (is_ref) {
		struct event *e = route_wait(NULL, users, (uint32_t)n_users, 1, sender, sender_device);
		if (!e)
			return;
		e->waiting_ref = 1;
		/* Asked as a recipient: recipients are members, the sender may have left. */
		if (db_resolve_ref(e, users[0], conversation, seq) != 0) {
			e->waiting_ref = 0;
			stats.drops++;
			route_resync_users(users, (uint32_t)n_users);
			route_drain();
		}
		return;
	}

	m = msg_new(json, len);
	if (!m)
		return;
	if (wait_head) {
		if (!route_wait(m, users, (uint32_t)n_users, is_message, sender, sender_device))
			msg_unref(m);
		return;
	}
	route_deliver(m, users, (uint32_t)n_users, is_message, sender, sender_device);
	msg_unref(m);
}

/* Splits a payload into (header, event) pairs and routes each event. */
void
route_notify(const char *payload)
{
	static int64_t users[4096];
	const char *p = payload;

	stats.notifications_in++;
	if (!buckets)
		route_grow();
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
