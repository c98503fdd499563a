/* notify_fuzz.c: NOTIFY payload parsing and routing (gateway/route.c,
 * route_notify) with local connections for users 1..4.  "ref":true events
 * are resolved right after (with a message, or failed: resync), alternately
 * db_resolve_ref itself fails, so that the waiting queue is exercised and
 * always drained.  ws_send is a stub that reads the queued frame. */
#include <stdlib.h>
#include <string.h>
#include <assert.h>
#include "gateway.h"
#include "stubs.h"

static struct conn conns[6];

/* Registers the local connections once. */
static void
setup(void)
{
	static const int64_t users[6] = { 1, 2, 2, 3, 4, 17 };

	stub_config();
	for (int i = 0; i < 6; i++) {
		conns[i].user = users[i];
		conns[i].device = i + 1;
		conns[i].authed = 1;
		route_add(&conns[i]);
	}
}

/* One payload (NUL-terminated, as libpq hands it over). */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready;
	static unsigned round;
	char *payload;

	if (!ready) {
		setup();
		ready = 1;
	}
	if (size > 16384)
		return 0;
	payload = malloc(size + 1);
	if (!payload)
		return 0;
	memcpy(payload, data, size);
	payload[size] = '\0';
	stub_ref_fail = (++round % 5) == 0;
	route_notify(payload);
	free(payload);
	/* Resolve what waits, in order; a resolution may deliver the rest. */
	for (size_t i = 0; i < stub_n_refs; i++) {
		static const char body[] = "{\"type\":\"message\",\"conversation\":7,\"seq\":3,\"body\":\"resolved\"}";
		if ((i + round) % 3 == 0)
			route_ref_done(stub_refs[i], NULL, 0);
		else
			route_ref_done(stub_refs[i], body, sizeof(body) - 1);
	}
	stub_n_refs = 0;
	return 0;
}
