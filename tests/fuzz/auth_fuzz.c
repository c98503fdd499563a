/* auth_fuzz.c: JWT verification (gateway/auth.c, auth_verify).
 *
 * Byte 0 picks how the rest becomes a token, so that the fuzzer also gets
 * past the signature: 0 the rest is the token as is; 1 the rest is
 * "header.payload" (base64url text) and gets a valid signature; 2 the rest
 * is header JSON, a NUL, payload JSON: both are encoded and signed.  Checks:
 * success gives a positive user and device and no reason, failure a reason. */
#include <stdlib.h>
#include <string.h>
#include <assert.h>
#include <time.h>
#include <openssl/hmac.h>
#include <openssl/evp.h>
#include "gateway.h"
#include "stubs.h"

/* base64url without padding of in into out (room for 4/3 len + 4). */
static size_t
b64url(const unsigned char *in, size_t len, char *out)
{
	int n = EVP_EncodeBlock((unsigned char *)out, in, (int)len);

	while (n > 0 && out[n - 1] == '=')
		n--;
	for (int i = 0; i < n; i++)
		out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
	out[n] = '\0';
	return (size_t)n;
}

/* Appends ".<signature>" to the signing input tok[0..len). */
static size_t
sign(char *tok, size_t len)
{
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int mac_len = 0;

	HMAC(EVP_sha256(), cfg.secret, (int)cfg.secret_len, (unsigned char *)tok, len, mac, &mac_len);
	tok[len++] = '.';
	return len + b64url(mac, mac_len, tok + len);
}

/* One token. */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char tok[3 * 8192];
	const char *why = NULL;
	int64_t user = 0;
	int32_t device = 0;
	int64_t exp = 0;
	size_t len;

	if (!cfg.secret)
		stub_config();
	if (size < 1 || size > 6000)
		return 0;
	switch (data[0] % 3) {
	case 0:
		len = size - 1;
		memcpy(tok, data + 1, len);
		break;
	case 1:
		memcpy(tok, data + 1, size - 1);
		len = sign(tok, size - 1);
		break;
	default: {
		const uint8_t *nul = memchr(data + 1, 0, size - 1);
		size_t hl = nul ? (size_t)(nul - data - 1) : size - 1;
		size_t pl = nul ? size - 2 - hl : 0;
		len = b64url(data + 1, hl, tok);
		tok[len++] = '.';
		len += b64url(nul ? nul + 1 : (const uint8_t *)"", pl, tok + len);
		len = sign(tok, len);
		break;
	}
	}
	if (auth_verify(tok, len, &user, &device, &exp, &why) == 0)
		assert(user > 0 && device > 0 && why == NULL && exp > (int64_t)time(NULL) - 1);
	else
		assert(why != NULL && *why);
	return 0;
}
