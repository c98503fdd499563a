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

/* Decodes canonical base64url (RFC 7515: no padding, no other alphabet, no
 * length of 1 mod 4, zero unused bits in the last character) into out
 * (capacity cap); returns the length or -1.  Only one text encodes a given
 * signature, so a token cannot be varied without changing its bytes. */
static int
base64url_decode(const char *in, size_t len, unsigned char *out, size_t cap)
{
	uint32_t acc = 0;
	int bits = 0;
	size_t n = 0;

	if (len % 4 == 1)
		return -1;
	for (size_t i = 0; i < len; i++) {
		int v;
		char ch = in[i];

		if (ch >= 'A' && ch <= 'Z') v = ch - 'A';
		else if (ch >= 'a' && ch <= 'z') v = ch - 'a' + 26;
		else if (ch >= '0' && ch <= '9') v = ch - '0' + 52;
		else if (ch == '-') v = 62;
		else if (ch == '_') v = 63;
		else return -1;
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			if (n >= cap)
				return -1;
			out[n++] = (unsigned char)(acc >> bits);
		}
		acc &= (1u << bits) - 1;
	}
	if (acc != 0)
		return -1;		/* stray low bits in the last character */
	return (int)n;
}

/* Reads a claim that must be a JSON integer (NumericDate or id). */
static int
claim_json_int(json_t *v, int64_t *out)
{
	if (!json_is_integer(v))
		return -1;
	*out = json_integer_value(v);
	return 0;
}

/* Reads an id claim (sub, dev): a positive JSON integer or a string of
 * decimal digits with no sign, space or leading zero, at most max. */
static int
claim_id(json_t *v, int64_t max, int64_t *out)
{
	if (json_is_integer(v)) {
		*out = json_integer_value(v);
		return *out > 0 && *out <= max ? 0 : -1;
	}
	if (json_is_string(v)) {
		const char *s = json_string_value(v);
		size_t n = json_string_length(v);
		int64_t x = 0;

		if (n == 0 || n > 19 || s[0] == '0')
			return -1;
		for (size_t i = 0; i < n; i++) {
			if (s[i] < '0' || s[i] > '9')
				return -1;
			if (x > (max - (s[i] - '0')) / 10)
				return -1;
			x = x * 10 + (s[i] - '0');
		}
		*out = x;
		return 0;
	}
	return -1;
}

/* Seconds of clock skew allowed between the token issuer and the gateway
 * for iat and nbf. */
#define AUTH_LEEWAY 60

/* Checks a compact JWS strictly; see gateway.h.  Signature first (nothing
 * of an unsigned token is parsed); then header alg exactly HS256 (typ JWT
 * when present), sub and dev canonical ids, exp a required integer, nbf and
 * iat honoured when present, and exp - (iat or now) <= --max-token-ttl.
 * Longer than 80 lines on purpose: one flat sequence of checks in the order
 * they must run (signature before any parsing), each with its reason; the
 * fuzz harness (tests/fuzz/auth_fuzz.c) drives it as one unit. */
int
auth_verify(const char *token, size_t len, int64_t *user, int32_t *device,
	    int64_t *exp_out, const char **why)
{
	unsigned char buf[2048], mac[EVP_MAX_MD_SIZE], sig[64];
	unsigned int mac_len = 0;
	const char *dot1, *dot2;
	json_t *hdr = NULL, *claims = NULL;
	int n, ret = -1;
	int64_t sub, dev, exp, nbf, iat, now = (int64_t)time(NULL);
	json_t *v;

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
	if (n < 0 || !(hdr = json_loadb((const char *)buf, (size_t)n, JSON_REJECT_DUPLICATES, NULL)) ||
	    !json_is_object(hdr))
		goto out;
	v = json_object_get(hdr, "alg");
	if (!json_is_string(v) || json_string_length(v) != 5 || strcmp(json_string_value(v), "HS256")) {
		*why = "alg must be HS256";
		goto out;
	}
	v = json_object_get(hdr, "typ");
	if (v && (!json_is_string(v) || json_string_length(v) != 3 || strcmp(json_string_value(v), "JWT"))) {
		*why = "typ must be JWT";
		goto out;
	}

	n = base64url_decode(dot1 + 1, (size_t)(dot2 - dot1 - 1), buf, sizeof(buf));
	if (n < 0 || !(claims = json_loadb((const char *)buf, (size_t)n, JSON_REJECT_DUPLICATES, NULL)) ||
	    !json_is_object(claims))
		goto out;
	if (claim_id(json_object_get(claims, "sub"), INT64_MAX, &sub)) {
		*why = "missing or invalid sub";
		goto out;
	}
	if (claim_id(json_object_get(claims, "dev"), INT32_MAX, &dev)) {
		*why = "missing or invalid dev";
		goto out;
	}
	if (claim_json_int(json_object_get(claims, "exp"), &exp)) {
		*why = "missing or invalid exp";
		goto out;
	}
	if (exp <= now) {
		*why = "token expired";
		goto out;
	}
	if ((v = json_object_get(claims, "nbf")) && claim_json_int(v, &nbf)) {
		*why = "invalid nbf";
		goto out;
	}
	if (v && nbf > now + AUTH_LEEWAY) {
		*why = "token not valid yet (nbf)";
		goto out;
	}
	if ((v = json_object_get(claims, "iat")) && claim_json_int(v, &iat)) {
		*why = "invalid iat";
		goto out;
	}
	if (v && iat > now + AUTH_LEEWAY) {
		*why = "token issued in the future (iat)";
		goto out;
	}
	/* A stolen long-lived token is a long-lived account: the lifetime is
	 * capped from issue time (or from now when the token does not say). */
	/* exp > now >= base: the unsigned difference cannot wrap. */
	if ((uint64_t)exp - (uint64_t)(v && iat < now ? iat : now) > (uint64_t)cfg.max_token_ttl) {
		*why = "token lifetime exceeds --max-token-ttl";
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
