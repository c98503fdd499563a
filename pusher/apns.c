/*
 * apns.c: APNs pieces of chat-pusher (see apns.h).
 */
#include "apns.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "jwt.h"

/* {"alg":"ES256","kid"} . {"iss","iat"}. */
int
apns_provider_token(EVP_PKEY *key, const char *key_id, const char *team_id, time_t now,
					char *out, size_t outsz)
{
	json_t	   *header = json_pack("{s:s,s:s}", "alg", "ES256", "kid", key_id);
	json_t	   *claims = json_pack("{s:s,s:I}", "iss", team_id, "iat", (json_int_t) now);
	char	   *h = header ? json_dumps(header, JSON_COMPACT) : NULL;
	char	   *c = claims ? json_dumps(claims, JSON_COMPACT) : NULL;
	int			rc = -1;

	if (h != NULL && c != NULL && EVP_PKEY_is_a(key, "EC"))
		rc = jwt_sign(key, h, c, out, outsz);
	free(h);
	free(c);
	json_decref(header);
	json_decref(claims);
	return rc;
}

/* The aps dictionary plus the chat fields. */
char *
apns_payload(const char *topic, const char *payload)
{
	json_t	   *p = json_loads(payload, 0, NULL);
	json_t	   *alert,
			   *root = NULL;
	const char *body = json_string_value(json_object_get(p, "body"));
	char	   *out = NULL;

	if (!json_is_object(p))
		goto done;
	alert = json_pack("{s:s}", "title", "New message");
	if (alert != NULL && body != NULL)
		json_object_set_new(alert, "body", json_string(body));
	root = json_pack("{s:{s:o,s:I,s:s,s:i,s:s}}", "aps", "alert", alert,
					 "badge", json_integer_value(json_object_get(p, "unread")),
					 "thread-id", topic, "mutable-content", 1, "sound", "default");
	if (root == NULL)
		goto done;
	/* the app reads conversation, seq, first_seq, sender (and body) from the top level */
	json_object_del(p, "aps");
	json_object_update(root, p);
	out = json_dumps(root, JSON_COMPACT);
done:
	json_decref(root);
	json_decref(p);
	return out;
}

/* The "reason" of an APNs error answer, or NULL; *root is to be freed. */
static const char *
Reason(const char *body, json_t **root)
{
	*root = body ? json_loads(body, 0, NULL) : NULL;
	return json_string_value(json_object_get(*root, "reason"));
}

/* 410, or 400 with BadDeviceToken / Unregistered. */
bool
apns_unregistered(long status, const char *body)
{
	json_t	   *root;
	const char *reason;
	bool		gone;

	if (status == 410)
		return true;
	if (status != 400)
		return false;
	reason = Reason(body, &root);
	gone = reason != NULL && (!strcmp(reason, "BadDeviceToken") || !strcmp(reason, "Unregistered"));
	json_decref(root);
	return gone;
}

/* 403 with ExpiredProviderToken / InvalidProviderToken. */
bool
apns_token_refused(long status, const char *body)
{
	json_t	   *root;
	const char *reason;
	bool		refused;

	if (status != 403)
		return false;
	reason = Reason(body, &root);
	refused = reason != NULL && (!strcmp(reason, "ExpiredProviderToken") || !strcmp(reason, "InvalidProviderToken"));
	json_decref(root);
	return refused;
}
