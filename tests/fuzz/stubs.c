/* stubs.c: what the lws-free gateway sources (frame.c, request.c, auth.c,
 * route.c, alloc.c) need from the rest of the gateway, for the libFuzzer
 * harnesses.
 * Shared by every harness (tests/fuzz/NAME_fuzz.c); harness-specific
 * behaviour stays behind the stub_* variables below. */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "gateway.h"
#include "stubs.h"

struct config cfg;
static struct metrics stub_slot;
struct metrics *metrics_slots = &stub_slot;
int metrics_nslots = 1, metrics_self = 0;

/* Frames queued by conn_send (route.c deliveries). */
uint64_t stub_sends;
/* db_resolve_ref: events handed over (resolve them with route_ref_done). */
void **stub_refs;
size_t stub_n_refs, stub_cap_refs;
/* db_resolve_ref fails (returns -1) when this is nonzero. */
int stub_ref_fail;

/* Logs nowhere (the harness output stays readable). */
void
log_msg(int level, uint32_t conn, const char *fmt, ...)
{
	(void)level;
	(void)conn;
	(void)fmt;
}

/* Monotonic microseconds. */
uint64_t
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Counts a delivery; touches the frame so ASan sees a use after free. */
void
conn_send(struct conn *c, struct msg *m)
{
	(void)c;
	stub_sends += (unsigned char)MSG_DATA(m)[0] + m->len;
}

/* Records the event as pending (or fails, as a lost database would). */
int
db_resolve_ref(void *event, int64_t actor, int64_t conversation, int64_t seq)
{
	(void)actor;
	(void)conversation;
	(void)seq;
	if (stub_ref_fail)
		return -1;
	if (stub_n_refs == stub_cap_refs) {
		size_t cap = stub_cap_refs ? stub_cap_refs * 2 : 16;
		void **n = realloc(stub_refs, cap * sizeof(*n));
		if (!n)
			abort();
		stub_refs = n;
		stub_cap_refs = cap;
	}
	stub_refs[stub_n_refs++] = event;
	return 0;
}

/* Sets the configuration the harnesses rely on (the gateway's defaults). */
void
stub_config(void)
{
	static unsigned char secret[] = "fuzz-secret-0123456789abcdef";

	cfg.node = "fuzz";
	cfg.secret = secret;
	cfg.secret_len = sizeof(secret) - 1;
	cfg.max_frame = 65536;
	cfg.max_queue = 4096;
	cfg.max_queue_bytes = 1048576;
	cfg.max_token_ttl = 2592000;
	cfg.max_inflight = 16;
	cfg.log_min = LOG_ERROR + 1;
}

/* Revoked events close connections: records the code on the stub connection. */
void
conn_close(struct conn *c, enum close_code code, const char *why)
{
	(void)why;
	c->close_code = (uint16_t)code;
	c->state = CONN_CLOSING;
}
