/*
 * fcm.c: FCM HTTP v1 pieces of chat-pusher (see fcm.h).
 */
#include "fcm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <openssl/pem.h>

#include "jwt.h"

/* Copies a string member of obj, or NULL when absent or not a string. */
static char *
Member(json_t *obj, const char *name)
{
	const char *s = json_string_value(json_object_get(obj, name));

	return (s != NULL && *s) ? strdup(s) : NULL;
}

/* The service account of the JSON file at path. */
int
fcm_load_account(const char *path, FcmAccount *a, char *err, size_t errsz)
{
	json_error_t jerr;
	json_t	   *root = json_load_file(path, 0, &jerr);
	const char *type,
			   *pem;
	BIO		   *bio = NULL;
	int			rc = -1;

	memset(a, 0, sizeof(*a));
	if (root == NULL)
	{
		snprintf(err, errsz, "not a JSON file: %s (line %d)", jerr.text, jerr.line);
		return -1;
	}
	type = json_string_value(json_object_get(root, "type"));
	pem = json_string_value(json_object_get(root, "private_key"));
	a->client_email = Member(root, "client_email");
	a->project_id = Member(root, "project_id");
	a->token_uri = Member(root, "token_uri");
	if (type == NULL || strcmp(type, "service_account") != 0)
		snprintf(err, errsz, "\"type\" is not \"service_account\"");
	else if (a->client_email == NULL || a->project_id == NULL || pem == NULL)
		snprintf(err, errsz, "needs client_email, project_id and private_key");
	else if (strpbrk(a->client_email, "\"\\") != NULL || strspn(a->project_id,
			 "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:") != strlen(a->project_id))
		snprintf(err, errsz, "client_email or project_id has characters it cannot have");
	else if (a->token_uri == NULL && (a->token_uri = strdup(FCM_DEFAULT_TOKEN_URI)) == NULL)
		snprintf(err, errsz, "out of memory");
	else if ((bio = BIO_new_mem_buf(pem, -1)) == NULL ||
			 (a->key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL)) == NULL || !EVP_PKEY_is_a(a->key, "RSA"))
		snprintf(err, errsz, "private_key is not a PEM RSA private key");
	else
		rc = 0;
	BIO_free(bio);
	json_decref(root);
	if (rc != 0)
		fcm_free_account(a);
	return rc;
}

/* Frees the account's strings and key. */
void
fcm_free_account(FcmAccount *a)
{
	free(a->client_email);
	free(a->project_id);
	free(a->token_uri);
	EVP_PKEY_free(a->key);
	memset(a, 0, sizeof(*a));
}

/* grant_type=...jwt-bearer&assertion=<RS256 JWT>. */
char *
fcm_grant_body(const FcmAccount *a, const char *token_uri, time_t now)
{
	static const char prefix[] = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=";
	json_t	   *claims = json_pack("{s:s,s:s,s:s,s:I,s:I}", "iss", a->client_email, "scope", FCM_SCOPE,
								   "aud", token_uri, "iat", (json_int_t) now,
								   "exp", (json_int_t) now + FCM_GRANT_TTL);
	char	   *text = claims ? json_dumps(claims, JSON_COMPACT) : NULL;
	size_t		size = 8192;
	char	   *body = text ? malloc(size) : NULL;

	if (body != NULL)
	{
		memcpy(body, prefix, sizeof(prefix));
		/* base64url and '.' need no form escaping */
		if (jwt_sign(a->key, "{\"alg\":\"RS256\",\"typ\":\"JWT\"}", text, body + sizeof(prefix) - 1,
					 size - sizeof(prefix) + 1) != 0)
		{
			free(body);
			body = NULL;
		}
	}
	free(text);
	json_decref(claims);
	return body;
}

/* {"access_token","expires_in","token_type":"Bearer"}. */
int
fcm_parse_token(const char *body, char **token, long *expires_in)
{
	json_t	   *root = json_loads(body, 0, NULL);
	const char *t = json_string_value(json_object_get(root, "access_token"));
	const char *type = json_string_value(json_object_get(root, "token_type"));
	json_t	   *exp = json_object_get(root, "expires_in");
	int			rc = -1;

	*token = NULL;
	if (t != NULL && *t && strspn(t, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~+/=")
		== strlen(t) && (type == NULL || strcasecmp(type, "Bearer") == 0) && json_is_integer(exp) &&
		json_integer_value(exp) > 0 && (*token = strdup(t)) != NULL)
	{
		*expires_in = (long) json_integer_value(exp);
		rc = 0;
	}
	json_decref(root);
	return rc;
}

/* The message of fcm.h, built from the notification payload. */
char *
fcm_message(const char *token, const char *topic, const char *payload, long ttl)
{
	json_t	   *p = json_loads(payload, 0, NULL);
	json_t	   *data = json_object();
	json_t	   *msg = NULL,
			   *notification;
	const char *key;
	json_t	   *v;
	json_int_t	unread = json_integer_value(json_object_get(p, "unread"));
	const char *body = json_string_value(json_object_get(p, "body"));
	char		ttl_text[32],
			   *out = NULL;

	if (!json_is_object(p) || data == NULL)
		goto done;
	json_object_foreach(p, key, v)
	{
		char		num[32];

		if (json_is_string(v))
			json_object_set(data, key, v);
		else if (json_is_integer(v))
		{
			snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
			json_object_set_new(data, key, json_string(num));
		}
	}
	snprintf(ttl_text, sizeof(ttl_text), "%lds", ttl);
	notification = json_pack("{s:s,s:s,s:I}", "title", "New message", "tag", topic,
							 "notification_count", unread);
	if (notification != NULL && body != NULL)
		json_object_set_new(notification, "body", json_string(body));
	msg = json_pack("{s:{s:s,s:O,s:{s:s,s:s,s:s,s:o},s:{s:{s:s},s:{s:{s:I}}}}}",
					"message", "token", token, "data", data,
					"android", "collapse_key", topic, "priority", "high", "ttl", ttl_text,
					"notification", notification,
					"apns", "headers", "apns-collapse-id", topic, "payload", "aps", "badge", unread);
	if (msg != NULL)
		out = json_dumps(msg, JSON_COMPACT);
done:
	json_decref(msg);
	json_decref(data);
	json_decref(p);
	return out;
}

/* 404, or an FcmError detail with errorCode UNREGISTERED. */
bool
fcm_unregistered(long status, const char *body)
{
	json_t	   *root,
			   *details,
			   *d;
	size_t		i;
	bool		gone = false;

	if (status == 404)
		return true;
	if (status < 400 || body == NULL)
		return false;
	root = json_loads(body, 0, NULL);
	details = json_object_get(json_object_get(root, "error"), "details");
	json_array_foreach(details, i, d)
	{
		const char *code = json_string_value(json_object_get(d, "errorCode"));

		if (code != NULL && strcmp(code, "UNREGISTERED") == 0)
			gone = true;
	}
	json_decref(root);
	return gone;
}
