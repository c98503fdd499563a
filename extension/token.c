/*
 * token.c: chat.issue_token, HS256 JSON Web Tokens (RFC 7519) for clients.
 *
 * The token carries sub (user id, as a string), dev (device id), iat and
 * exp (unix seconds), signed with HMAC-SHA256 under chat.token_secret, the
 * same secret the gateway verifies with.
 */
#include "chat.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(chat_issue_token);

/* Appends len bytes base64url-encoded without padding (RFC 7515 sec. 2). */
static void
AppendBase64Url(StringInfo buf, const unsigned char *data, size_t len)
{
	static const char alphabet[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	size_t		i;

	for (i = 0; i + 2 < len; i += 3)
	{
		uint32		v = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2];

		appendStringInfoChar(buf, alphabet[(v >> 18) & 63]);
		appendStringInfoChar(buf, alphabet[(v >> 12) & 63]);
		appendStringInfoChar(buf, alphabet[(v >> 6) & 63]);
		appendStringInfoChar(buf, alphabet[v & 63]);
	}
	if (len - i == 1)
	{
		uint32		v = data[i] << 16;

		appendStringInfoChar(buf, alphabet[(v >> 18) & 63]);
		appendStringInfoChar(buf, alphabet[(v >> 12) & 63]);
	}
	else if (len - i == 2)
	{
		uint32		v = (data[i] << 16) | (data[i + 1] << 8);

		appendStringInfoChar(buf, alphabet[(v >> 18) & 63]);
		appendStringInfoChar(buf, alphabet[(v >> 12) & 63]);
		appendStringInfoChar(buf, alphabet[(v >> 6) & 63]);
	}
}

/* chat.issue_token(user_id, device_id, ttl): a signed HS256 JWT. */
Datum
chat_issue_token(PG_FUNCTION_ARGS)
{
	int64		user_id = PG_GETARG_INT64(0);
	int32		device_id = PG_GETARG_INT32(1);
	Interval   *ttl = PG_GETARG_INTERVAL_P(2);
	double		ttl_secs;
	int64		now;
	char	   *claims;
	StringInfoData token;
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int maclen = 0;
	static const char header[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";

	if (chat_token_secret == NULL || chat_token_secret[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("chat.token_secret is not set"),
				 errhint("Set chat.token_secret in postgresql.conf to the secret of the gateway's --token-secret-file and reload.")));
	if (device_id <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid device id %d", device_id)));
	ttl_secs = ttl->time / (double) USECS_PER_SEC +
		ttl->day * (double) SECS_PER_DAY + ttl->month * 30.0 * SECS_PER_DAY;
	if (ttl_secs < 1 || ttl_secs > 366.0 * SECS_PER_DAY)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("token lifetime of %.0f seconds is out of range", ttl_secs),
				 errhint("Use a lifetime between 1 second and 366 days.")));

	now = (int64) time(NULL);
	claims = psprintf("{\"sub\":\"" INT64_FORMAT "\",\"dev\":%d,\"iat\":" INT64_FORMAT
					  ",\"exp\":" INT64_FORMAT "}",
					  user_id, device_id, now, now + (int64) ttl_secs);

	initStringInfo(&token);
	AppendBase64Url(&token, (const unsigned char *) header, strlen(header));
	appendStringInfoChar(&token, '.');
	AppendBase64Url(&token, (const unsigned char *) claims, strlen(claims));
	if (HMAC(EVP_sha256(), chat_token_secret, strlen(chat_token_secret),
			 (const unsigned char *) token.data, token.len, mac, &maclen) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not compute the token signature")));
	appendStringInfoChar(&token, '.');
	AppendBase64Url(&token, mac, maclen);
	PG_RETURN_TEXT_P(cstring_to_text_with_len(token.data, token.len));
}
