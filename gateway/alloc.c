/* alloc.c: the gateway's one out-of-memory policy.  A server that cannot
 * allocate a few bytes cannot keep its promises (queues, pipeline order), so
 * every allocation either succeeds or logs and aborts; the supervisor (or
 * systemd) restarts the process and clients reconnect and resync.  No caller
 * checks for NULL, and no OOM turns into a silent drop or a close code. */
#include <stdlib.h>
#include <string.h>
#include "gateway.h"

/* Logs the failed size and aborts. */
static void __attribute__((noreturn))
out_of_memory(size_t size)
{
	log_msg(LOG_ERROR, 0, "out of memory allocating %zu bytes", size);
	abort();
}

/* malloc that never returns NULL (size 0 gets a unique pointer). */
void *
xmalloc(size_t size)
{
	void *p = malloc(size ? size : 1);

	if (!p)
		out_of_memory(size);
	return p;
}

/* calloc that never returns NULL (and checks n * size for overflow). */
void *
xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);

	if (!p)
		out_of_memory(n * size);
	return p;
}

/* realloc that never returns NULL. */
void *
xrealloc(void *p, size_t size)
{
	void *q = realloc(p, size ? size : 1);

	if (!q)
		out_of_memory(size);
	return q;
}

/* strdup that never returns NULL. */
char *
xstrdup(const char *s)
{
	size_t n = strlen(s) + 1;

	return memcpy(xmalloc(n), s, n);
}
