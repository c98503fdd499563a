/* trace.c: --trace-latency 1, hop timestamps for the latency anatomy bench.
 *
 * Off (the default) nothing here runs: every caller tests cfg.trace_latency
 * first.  On, a response gets
 *   "trace":{"gw_rx":T,"db_call":T,"commit":T,"write":"T"}
 * and an event
 *   "trace":{"notify":T,"write":"T"}
 * as its last member, T being CLOCK_REALTIME microseconds (the load client
 * on the same host compares them with its own clock).  "write" is a
 * 16-digit string filled in at each socket write: an event frame is shared
 * by all its recipients and is stamped again, in place, before every write.
 * No lws calls, so the fuzz harnesses link it with route.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "gateway.h"

/* The tail every traced frame ends with; the 16 characters are the write time. */
#define TRACE_TAIL_FMT ",\"write\":\"%016llu\"}}"
#define TRACE_TAIL_LEN 29	/* ,"write":" (10) + 16 digits + "}} (3) */

uint64_t trace_rx_us;

/* CLOCK_REALTIME in microseconds: comparable with the client's clock. */
uint64_t
trace_wall_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Appends ,"trace":{<fields>,"write":"0..."}} to an object's JSON (its
 * closing brace dropped) into a malloc'd buffer; NULL when json is not an
 * object text. */
static char *
trace_append(const char *json, size_t len, const char *fields, size_t *out_len)
{
	size_t flen = strlen(fields), n;
	char *buf;

	while (len && (json[len - 1] == ' ' || json[len - 1] == '\n'))
		len--;
	if (len < 2 || json[len - 1] != '}')
		return NULL;
	len--;			/* the object's closing brace */
	buf = xmalloc(len + flen + 16 + TRACE_TAIL_LEN + 1);
	memcpy(buf, json, len);
	n = len;
	n += (size_t)sprintf(buf + n, "%s\"trace\":{%s", len > 1 ? "," : "", fields);
	n += (size_t)sprintf(buf + n, TRACE_TAIL_FMT, 0ULL);
	*out_len = n;
	return buf;
}

/* A response with its request's hops: gateway receive, database call start,
 * commit (the pipeline sync answered).  Malloc'd; NULL: send it untraced. */
char *
trace_response(const char *json, size_t len, uint64_t rx, uint64_t db_call, size_t *out_len)
{
	char fields[96];

	snprintf(fields, sizeof(fields), "\"gw_rx\":%llu,\"db_call\":%llu,\"commit\":%llu",
		 (unsigned long long)rx, (unsigned long long)db_call,
		 (unsigned long long)trace_wall_us());
	return trace_append(json, len, fields, out_len);
}

/* An event frame stamped with the notification's arrival (refs 1). */
struct msg *
trace_event_msg(const char *json, size_t len)
{
	char fields[40], *buf;
	size_t n;
	struct msg *m;

	snprintf(fields, sizeof(fields), "\"notify\":%llu", (unsigned long long)trace_wall_us());
	buf = trace_append(json, len, fields, &n);
	if (!buf)
		return msg_new(json, len);
	m = msg_new(buf, n);
	free(buf);
	return m;
}

/* Fills in the write time of a traced frame just before it is written. */
void
trace_stamp_write(struct msg *m)
{
	char digits[17], *tail;

	if (m->refs == MSG_STATIC || m->len < TRACE_TAIL_LEN)
		return;
	tail = MSG_DATA(m) + m->len - TRACE_TAIL_LEN;
	if (memcmp(tail, ",\"write\":\"", 10) != 0 || memcmp(tail + 26, "\"}}", 3) != 0)
		return;
	snprintf(digits, sizeof(digits), "%016llu", (unsigned long long)trace_wall_us() % 10000000000000000ULL);
	memcpy(tail + 10, digits, 16);
}
