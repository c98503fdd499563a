/* notify_fuzz.c: NOTIFY payload verification, parsing and routing
 * (gateway/route.c) with local connections for users 1..4.  The first byte
 * picks the path: the events after a valid signature (route_notify_verified,
 * most rounds), a payload the harness signs itself (route_notify: the
 * signature check passes), or the raw bytes (route_notify: nearly always
 * rejected, which exercises the check itself).  "ref":true events
 * are resolved right after (with a message, or failed: resync), alternately
 * db_resolve_ref itself fails, so that the waiting queue is exercised and
 * always drained.  conn_send is a stub that reads the queued frame. */
#include <stdlib.h>
#include <string.h>
#include <assert.h>
#include <stdio.h>
#include <openssl/hmac.h>
#include <openssl/evp.h>
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
		conns[i].state = CONN_LIVE;
		route_add(&conns[i]);
	}
}

/* Returns "v1 <hex HMAC>\n" + events as the extension signs them (malloc'd). */
static char *
sign(const char *events, size_t len)
{
	unsigned char key[EVP_MAX_MD_SIZE], mac[EVP_MAX_MD_SIZE];
	unsigned int key_len = 0, mac_len = 0;
	char *out = malloc(3 + 64 + 1 + len + 1);

	if (!out ||
	    !HMAC(EVP_sha256(), cfg.secret, (int)cfg.secret_len,
		  (const unsigned char *)"chat-notify", 11, key, &key_len) ||
	    !HMAC(EVP_sha256(), key, (int)key_len, (const unsigned char *)events, len, mac, &mac_len))
		abort();
	memcpy(out, "v1 ", 3);
	for (unsigned int i = 0; i < mac_len; i++)
		snprintf(out + 3 + 2 * i, 3, "%02x", mac[i]);
	out[3 + 2 * mac_len] = '\n';
	memcpy(out + 4 + 2 * mac_len, events, len + 1);
	return out;
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
	if (size < 1 || size > 16384)
		return 0;
	payload = malloc(size);
	if (!payload)
		return 0;
	memcpy(payload, data + 1, size - 1);
	payload[size - 1] = '\0';
	stub_ref_fail = (++round % 5) == 0;
	if (data[0] % 8 == 0) {
		route_notify(payload);
	} else if (data[0] % 8 == 1) {
		char *signed_payload = sign(payload, strlen(payload));
		route_notify(signed_payload);
		free(signed_payload);
	} else {
		route_notify_verified(payload);
	}
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
