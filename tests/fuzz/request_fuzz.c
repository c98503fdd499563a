/* request_fuzz.c: the gateway's pre-database handling of a request frame,
 * exactly as ws_frame does it: json_loadb, then req_check (gateway/request.c).
 * Checks: a valid result has a type; an echoed id is a number or a string
 * of at most 128 bytes and parses back; a refusal has a SQLSTATE. */
#include <stdlib.h>
#include <string.h>
#include <assert.h>
#include <jansson.h>
#include "gateway.h"
#include "stubs.h"

/* One frame. */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_error_t err;
	json_t *req = json_loadb((const char *)data, size, 0, &err);
	struct req_info ri;
	int rc = req_check(req, &ri);

	if (rc == 0)
		assert(ri.type != NULL);
	else
		assert(ri.code && strlen(ri.code) == 5 && ri.message);
	if (ri.id_json) {
		json_t *id = json_loads(ri.id_json, JSON_DECODE_ANY, NULL);
		assert(id && (json_is_string(id) || json_is_number(id)));
		assert(!json_is_string(id) || json_string_length(id) <= REQ_ID_MAX);
		assert(strlen(ri.id_json) <= 6 * REQ_ID_MAX + 2);
		json_decref(id);
		free(ri.id_json);
	}
	json_decref(req);
	return 0;
}
