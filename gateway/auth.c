/* auth.c: verifies HS256 JWTs locally with the shared secret (no database round trip). */
#include <string.h>
#include <time.h>
#include <stdlib.h>
#include <errno.h>
#include <openssl/hmac.h>
#include <openssl/evp.h>
#include <openssl/crypto.h>
#include <jansson.h>
#include "gateway.h"

/* Decodes base64url without padding into out (capacity cap); returns length or -1. */
static int
base64url_decode(const char *in, size_t len, unsigned char *out, size_t cap)
{
	uint32_t acc = 0;
	int bits = 0;
	size_t n = 0;

	for (size_t i = 0; i < len; i++) {
		int v;
		char ch = in[i];

		if (ch >= 'A' && ch <= 'Z') v = ch - 'A';
		else if (ch >= 'a' && ch <= 'z') v = ch - 'a' + 26;
		else if (ch >= '0' && ch <= '9') v = ch - '0' + 52;
		else if (ch == '-') v = 62;
		else if (ch == '_') v = 63;
		else if (ch == '=' && i >= len - 2) break;
		else return -1;
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			if (n >= cap)
				return -1;
			out[n++] = (unsigned char)(acc >> bits);
		}
	}
	return (int)n;
}

/* Reads a positive integer claim given as a JSON number or a decimal string. */
static int
claim_int(json_t *v, int64_t *out)
{
	if (json_is_integer(v)) {
		*out = json_integer_value(v);
		return 0;
	}
	if (json_is_real(v)) {
		double d = json_real_value(v);
		if (d != (double)(int64_t)d)
			return -1;
		*out = (int64_t)d;
		return 0;
	}
	if (json_is_string(v)) {
		const char *s = json_string_value(v);
		char *end;

		if (!*s || strlen(s) > 19)
			return -1;
		errno = 0;
		long long x = strtoll(s, &end, 10);
		if (*end || errno)
			return -1;
		*out = x;
		return 0;
	}
	return -1;
}

/* Checks signature, alg, sub, dev and exp of a compact JWS; see gateway.h. */
int
auth_verify(const char *token, size_t len, int64_t *user, int32_t *device,
	    int64_t *exp_out, const char **why)
{
	unsigned char buf[2048], mac[EVP_MAX_MD_SIZE], sig[64];
	unsigned int mac_len = 0;
	const char *dot1, *dot2;
	json_t *hdr = NULL, *claims = NULL;
	int n, ret = -1;
	int64_t sub, dev, exp;

	*why = "malformed token";
	if (len == 0 || len > 4096)
		return -1;
	dot1 = memchr(token, '.', len);
	if (!dot1)
		return -1;
	dot2 = memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token));
	if (!dot2 || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)))
		return -1;

	/* Signature first: nothing of an unsigned token is parsed further. */
	n = base64url_decode(dot2 + 1, len - (size_t)(dot2 + 1 - token), sig, sizeof(sig));
	if (!HMAC(EVP_sha256(), cfg.secret, (int)cfg.secret_len,
		  (const unsigned char *)token, (size_t)(dot2 - token), mac, &mac_len))
		return -1;
	if (n != (int)mac_len || CRYPTO_memcmp(sig, mac, mac_len) != 0) {
		*why = "bad signature";
		return -1;
	}

	n = base64url_decode(token, (size_t)(dot1 - token), buf, sizeof(buf));
	if (n < 0 || !(hdr = json_loadb((const char *)buf, (size_t)n, 0, NULL)))
		goto out;
	if (!json_is_string(json_object_get(hdr, "alg")) ||
	    strcmp(json_string_value(json_object_get(hdr, "alg")), "HS256")) {
		*why = "alg must be HS256";
		goto out;
	}

	n = base64url_decode(dot1 + 1, (size_t)(dot2 - dot1 - 1), buf, sizeof(buf));
	if (n < 0 || !(claims = json_loadb((const char *)buf, (size_t)n, 0, NULL)) ||
	    !json_is_object(claims))
		goto out;
	if (claim_int(json_object_get(claims, "sub"), &sub) || sub <= 0) {
		*why = "missing or invalid sub";
		goto out;
	}
	if (claim_int(json_object_get(claims, "dev"), &dev) || dev <= 0 || dev > INT32_MAX) {
		*why = "missing or invalid dev";
		goto out;
	}
	if (claim_int(json_object_get(claims, "exp"), &exp)) {
		*why = "missing exp";
		goto out;
	}
	if (exp <= (int64_t)time(NULL)) {
		*why = "token expired";
		goto out;
	}
	*user = sub;
	*device = (int32_t)dev;
	*exp_out = exp;
	*why = NULL;
	ret = 0;
out:
	json_decref(hdr);
	json_decref(claims);
	return ret;
}
