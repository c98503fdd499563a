/* request.c: validation of a client request frame before the database sees it.
 *
 * No lws dependency, so that tests/fuzz/request_fuzz.c can drive it exactly
 * as ws_frame does: json_loadb, then req_check.  The id is echoed in the
 * answer, so it is bounded here: a number or a string of at most
 * REQ_ID_MAX bytes; any other id is refused without being echoed. */
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include "gateway.h"

/* The id of a request as compact JSON in *id_json (malloc'd; NULL when the
 * frame has none).  Returns 0, or -1 with *code and *message set when the id
 * must not be echoed (22P02 not a number or string, 22023 too long). */
int
req_id(json_t *req, char **id_json, const char **code, const char **message)
{
	json_t *id = json_is_object(req) ? json_object_get(req, "id") : NULL;
	char *text;

	*id_json = NULL;
	if (!id)
		return 0;
	if (!json_is_string(id) && !json_is_integer(id) && !json_is_real(id)) {
		*code = "22P02";
		*message = "\"id\" must be a number or a string";
		return -1;
	}
	if (json_is_string(id) && json_string_length(id) > REQ_ID_MAX) {
		*code = "22023";
		*message = "\"id\" is longer than 128 characters";
		return -1;
	}
	text = json_dumps(id, JSON_ENCODE_ANY | JSON_COMPACT);
	if (!text) {
		*code = "53200";
		*message = "out of memory";
		return -1;
	}
	/* Numbers: jansson refuses integers beyond 64 bits and reals out of
	 * range, so their text is short; checked anyway. */
	if (!json_is_string(id) && strlen(text) > REQ_ID_MAX) {
		free(text);
		*code = "22023";
		*message = "\"id\" is longer than 128 characters";
		return -1;
	}
	*id_json = text;
	return 0;
}

/* Checks a parsed frame (req NULL: not JSON): 0 with out->type and
 * out->id_json set, or -1 with out->code and out->message (and out->id_json
 * when the id itself is fine). */
int
req_check(json_t *req, struct req_info *out)
{
	json_t *type;

	memset(out, 0, sizeof(*out));
	if (!req || !json_is_object(req)) {
		out->code = "22P02";
		out->message = req ? "frame is not a JSON object" : "frame is not valid JSON";
		return -1;
	}
	if (req_id(req, &out->id_json, &out->code, &out->message) != 0)
		return -1;
	type = json_object_get(req, "type");
	if (!type || !json_is_string(type)) {
		out->code = "22P02";
		out->message = "frame has no \"type\"";
		return -1;
	}
	out->type = json_string_value(type);
	return 0;
}
