/*
 * jwt.c: compact JWS signing for chat-pusher (see jwt.h).
 */
#include "jwt.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/ecdsa.h>

#include "webpush.h"				/* b64url_encode */

/* The signature of data with key: raw r || s (64 bytes) for EC, PKCS #1 for RSA; its length or -1. */
static int
Sign(EVP_PKEY *key, const char *data, unsigned char *sig, size_t sigsz)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned char *der = NULL;
	size_t		der_len = 0;
	const unsigned char *q;
	ECDSA_SIG  *es = NULL;
	const BIGNUM *r,
			   *s;
	int			rc = -1;
	bool		ec = EVP_PKEY_is_a(key, "EC");

	if (!ec && !EVP_PKEY_is_a(key, "RSA"))
		goto done;
	if (md == NULL || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) != 1 ||
		EVP_DigestSign(md, NULL, &der_len, (const unsigned char *) data, strlen(data)) != 1 ||
		(der = malloc(der_len)) == NULL ||
		EVP_DigestSign(md, der, &der_len, (const unsigned char *) data, strlen(data)) != 1)
		goto done;
	if (!ec)
	{
		if (der_len > sigsz)
			goto done;
		memcpy(sig, der, der_len);
		rc = (int) der_len;
		goto done;
	}
	/* JWS wants the fixed-width r || s, OpenSSL gives DER. */
	q = der;
	es = d2i_ECDSA_SIG(NULL, &q, (long) der_len);
	if (es == NULL || sigsz < 64)
		goto done;
	ECDSA_SIG_get0(es, &r, &s);
	if (BN_bn2binpad(r, sig, 32) != 32 || BN_bn2binpad(s, sig + 32, 32) != 32)
		goto done;
	rc = 64;
done:
	ECDSA_SIG_free(es);
	free(der);
	EVP_MD_CTX_free(md);
	return rc;
}

/* header.claims.signature, each part base64url. */
int
jwt_sign(EVP_PKEY *key, const char *header_json, const char *claims_json, char *out, size_t outsz)
{
	unsigned char sig[1024];		/* RSA up to 8192 bits */
	int			n,
				m,
				siglen;

	n = b64url_encode((const unsigned char *) header_json, strlen(header_json), out, outsz);
	if (n < 0 || (size_t) n + 2 >= outsz)
		return -1;
	out[n++] = '.';
	m = b64url_encode((const unsigned char *) claims_json, strlen(claims_json), out + n, outsz - n);
	if (m < 0 || (size_t) (n + m) + 2 >= outsz)
		return -1;
	n += m;
	siglen = Sign(key, out, sig, sizeof(sig));
	if (siglen < 0)
		return -1;
	out[n++] = '.';
	return b64url_encode(sig, (size_t) siglen, out + n, outsz - n) < 0 ? -1 : 0;
}
