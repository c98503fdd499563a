/*
 * webpush.c: RFC 8291 payload encryption (ECDH P-256, HKDF-SHA-256,
 * AES-128-GCM, one aes128gcm record) and RFC 8292 VAPID (ES256 JWT) with
 * OpenSSL 3 EVP.  Checked byte for byte against RFC 8291 Appendix A by
 * test_webpush.c.
 */
#include "webpush.h"
#include "jwt.h"

#include <stdio.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/hmac.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>

#define SHA256_LEN 32

/* base64url without padding; -1 when out is too small. */
int
b64url_encode(const unsigned char *in, size_t len, char *out, size_t outsz)
{
	size_t		need = 4 * ((len + 2) / 3) + 1;
	int			n;

	if (outsz < need)
		return -1;
	n = EVP_EncodeBlock((unsigned char *) out, in, (int) len);
	while (n > 0 && out[n - 1] == '=')
		n--;
	out[n] = '\0';
	for (int i = 0; i < n; i++)
	{
		if (out[i] == '+')
			out[i] = '-';
		else if (out[i] == '/')
			out[i] = '_';
	}
	return n;
}

/* base64url (padding optional) into out; the length, or -1. */
int
b64url_decode(const char *in, unsigned char *out, size_t outsz)
{
	char		std[1024];
	unsigned char raw[768];
	size_t		len = strlen(in);
	size_t		i;
	int			pad,
				n;

	while (len > 0 && in[len - 1] == '=')
		len--;
	if (len % 4 == 1 || len + 4 >= sizeof(std))
		return -1;
	for (i = 0; i < len; i++)
	{
		char		c = in[i];

		if (c == '-')
			c = '+';
		else if (c == '_')
			c = '/';
		else if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')))
			return -1;
		std[i] = c;
	}
	pad = (int) ((4 - len % 4) % 4);
	for (int p = 0; p < pad; p++)
		std[i++] = '=';
	std[i] = '\0';
	n = EVP_DecodeBlock(raw, (unsigned char *) std, (int) i);
	if (n < 0)
		return -1;
	n -= pad;					/* EVP_DecodeBlock counts padding as zero bytes */
	if ((size_t) n > outsz)
		return -1;
	memcpy(out, raw, n);
	return n;
}

/* A new P-256 key pair; NULL on error. */
EVP_PKEY *
wp_generate_key(void)
{
	return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
}

/* The P-256 key pair of private scalar d; NULL on error. */
EVP_PKEY *
wp_key_from_private(const unsigned char d[32])
{
	EC_GROUP   *group = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
	EC_POINT   *pub = NULL;
	BIGNUM	   *priv = BN_bin2bn(d, 32, NULL);
	OSSL_PARAM_BLD *bld = NULL;
	OSSL_PARAM *params = NULL;
	EVP_PKEY_CTX *ctx = NULL;
	EVP_PKEY   *key = NULL;
	unsigned char point[WP_POINT_LEN];

	if (group == NULL || priv == NULL)
		goto done;
	/* The public point is d*G: the key is imported with both halves. */
	pub = EC_POINT_new(group);
	if (pub == NULL || !EC_POINT_mul(group, pub, priv, NULL, NULL, NULL) ||
		EC_POINT_point2oct(group, pub, POINT_CONVERSION_UNCOMPRESSED, point, sizeof(point), NULL) != sizeof(point))
		goto done;
	bld = OSSL_PARAM_BLD_new();
	if (bld == NULL ||
		!OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) ||
		!OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PRIV_KEY, priv) ||
		!OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, sizeof(point)))
		goto done;
	params = OSSL_PARAM_BLD_to_param(bld);
	ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
	if (params == NULL || ctx == NULL || EVP_PKEY_fromdata_init(ctx) <= 0 ||
		EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_KEYPAIR, params) <= 0)
		key = NULL;
done:
	EVP_PKEY_CTX_free(ctx);
	OSSL_PARAM_free(params);
	OSSL_PARAM_BLD_free(bld);
	EC_POINT_free(pub);
	BN_clear_free(priv);
	EC_GROUP_free(group);
	return key;
}

/* The P-256 public key of an uncompressed point; NULL when it is not on the curve. */
static EVP_PKEY *
PublicFromPoint(const unsigned char point[WP_POINT_LEN])
{
	OSSL_PARAM	params[3];
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
	EVP_PKEY   *key = NULL;
	EVP_PKEY_CTX *check = NULL;

	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *) "prime256v1", 0);
	params[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, (void *) point, WP_POINT_LEN);
	params[2] = OSSL_PARAM_construct_end();
	if (ctx == NULL || EVP_PKEY_fromdata_init(ctx) <= 0 ||
		EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_PUBLIC_KEY, params) <= 0)
		key = NULL;
	EVP_PKEY_CTX_free(ctx);
	/* An off-curve point would leak key bits through ECDH: refuse it. */
	if (key != NULL)
	{
		check = EVP_PKEY_CTX_new_from_pkey(NULL, key, NULL);
		if (check == NULL || EVP_PKEY_public_check(check) != 1)
		{
			EVP_PKEY_free(key);
			key = NULL;
		}
		EVP_PKEY_CTX_free(check);
	}
	return key;
}

/* The uncompressed public point of key. */
int
wp_public_point(EVP_PKEY *key, unsigned char out[WP_POINT_LEN])
{
	size_t		len = 0;

	if (EVP_PKEY_get_octet_string_param(key, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, out, WP_POINT_LEN, &len) != 1 ||
		len != WP_POINT_LEN || out[0] != 0x04)
		return -1;
	return 0;
}

/* HMAC-SHA-256 of the concatenation of two buffers (the HKDF steps need one call each). */
static int
Hmac(const unsigned char *key, size_t keylen, const unsigned char *a, size_t alen,
	 const unsigned char *b, size_t blen, unsigned char out[SHA256_LEN])
{
	unsigned char buf[256];
	unsigned int outlen = 0;

	if (alen + blen > sizeof(buf))
		return -1;
	memcpy(buf, a, alen);
	if (blen > 0)
		memcpy(buf + alen, b, blen);
	if (HMAC(EVP_sha256(), key, (int) keylen, buf, alen + blen, out, &outlen) == NULL || outlen != SHA256_LEN)
		return -1;
	return 0;
}

/* RFC 8291 section 3.4 and RFC 8188 section 2: the aes128gcm body of one record. */
int
wp_encrypt(const unsigned char ua_public[WP_POINT_LEN], const unsigned char auth[WP_AUTH_LEN],
		   EVP_PKEY *as_key, const unsigned char salt[WP_SALT_LEN],
		   const unsigned char *plain, size_t plain_len, unsigned char *out)
{
	static const unsigned char key_label[] = "WebPush: info";	/* + its NUL */
	static const unsigned char cek_info[] = "Content-Encoding: aes128gcm\0\1";
	static const unsigned char nonce_info[] = "Content-Encoding: nonce\0\1";
	unsigned char as_public[WP_POINT_LEN];
	unsigned char secret[SHA256_LEN];
	unsigned char key_info[sizeof(key_label) + 2 * WP_POINT_LEN + 1];
	unsigned char prk_key[SHA256_LEN],
				ikm[SHA256_LEN],
				prk[SHA256_LEN],
				cek[SHA256_LEN],
				nonce[SHA256_LEN];
	size_t		secret_len = sizeof(secret);
	EVP_PKEY   *ua_key = NULL;
	EVP_PKEY_CTX *dh = NULL;
	EVP_CIPHER_CTX *gcm = NULL;
	unsigned char *p;
	int			len,
				total = -1;
	unsigned char delimiter = 0x02;	/* last record, no padding */

	if (plain_len > WP_MAX_PLAINTEXT || wp_public_point(as_key, as_public) != 0)
		return -1;
	ua_key = PublicFromPoint(ua_public);
	if (ua_key == NULL)
		return -1;
	dh = EVP_PKEY_CTX_new_from_pkey(NULL, as_key, NULL);
	if (dh == NULL || EVP_PKEY_derive_init(dh) <= 0 || EVP_PKEY_derive_set_peer(dh, ua_key) <= 0 ||
		EVP_PKEY_derive(dh, secret, &secret_len) <= 0 || secret_len != SHA256_LEN)
		goto done;

	/* key_info = "WebPush: info" || 0x00 || ua_public || as_public, then || 0x01 */
	memcpy(key_info, key_label, sizeof(key_label));
	memcpy(key_info + sizeof(key_label), ua_public, WP_POINT_LEN);
	memcpy(key_info + sizeof(key_label) + WP_POINT_LEN, as_public, WP_POINT_LEN);
	key_info[sizeof(key_info) - 1] = 0x01;
	if (Hmac(auth, WP_AUTH_LEN, secret, secret_len, NULL, 0, prk_key) != 0 ||
		Hmac(prk_key, sizeof(prk_key), key_info, sizeof(key_info), NULL, 0, ikm) != 0 ||
		Hmac(salt, WP_SALT_LEN, ikm, sizeof(ikm), NULL, 0, prk) != 0 ||
		Hmac(prk, sizeof(prk), cek_info, sizeof(cek_info) - 1, NULL, 0, cek) != 0 ||
		Hmac(prk, sizeof(prk), nonce_info, sizeof(nonce_info) - 1, NULL, 0, nonce) != 0)
		goto done;

	/* header: salt || rs (uint32 BE) || idlen || keyid (as_public) */
	p = out;
	memcpy(p, salt, WP_SALT_LEN);
	p += WP_SALT_LEN;
	*p++ = (WP_RS >> 24) & 0xff;
	*p++ = (WP_RS >> 16) & 0xff;
	*p++ = (WP_RS >> 8) & 0xff;
	*p++ = WP_RS & 0xff;
	*p++ = WP_POINT_LEN;
	memcpy(p, as_public, WP_POINT_LEN);
	p += WP_POINT_LEN;

	gcm = EVP_CIPHER_CTX_new();
	if (gcm == NULL || EVP_EncryptInit_ex(gcm, EVP_aes_128_gcm(), NULL, cek, nonce) != 1)
		goto done;
	if (EVP_EncryptUpdate(gcm, p, &len, plain, (int) plain_len) != 1)
		goto done;
	p += len;
	if (EVP_EncryptUpdate(gcm, p, &len, &delimiter, 1) != 1)
		goto done;
	p += len;
	if (EVP_EncryptFinal_ex(gcm, p, &len) != 1)
		goto done;
	p += len;
	if (EVP_CIPHER_CTX_ctrl(gcm, EVP_CTRL_GCM_GET_TAG, WP_TAG_LEN, p) != 1)
		goto done;
	p += WP_TAG_LEN;
	total = (int) (p - out);
done:
	OPENSSL_cleanse(secret, sizeof(secret));
	OPENSSL_cleanse(prk_key, sizeof(prk_key));
	OPENSSL_cleanse(ikm, sizeof(ikm));
	OPENSSL_cleanse(prk, sizeof(prk));
	OPENSSL_cleanse(cek, sizeof(cek));
	EVP_CIPHER_CTX_free(gcm);
	EVP_PKEY_CTX_free(dh);
	EVP_PKEY_free(ua_key);
	return total;
}

/* scheme://host[:port] of url. */
int
wp_origin(const char *url, char *out, size_t outsz)
{
	const char *sep = strstr(url, "://");
	size_t		len;

	if (sep == NULL || sep == url)
		return -1;
	len = strcspn(sep + 3, "/?#");
	if (len == 0)
		return -1;
	len += (size_t) (sep + 3 - url);
	if (len + 1 > outsz)
		return -1;
	memcpy(out, url, len);
	out[len] = '\0';
	return 0;
}

/* "vapid t=<JWT>, k=<public key>" for a push to endpoint. */
int
wp_vapid_authorization(EVP_PKEY *key, const char *endpoint, const char *subject,
					   time_t now, long ttl, char *out, size_t outsz)
{
	static const char header[] = "{\"typ\":\"JWT\",\"alg\":\"ES256\"}";
	char		aud[512],
				claims[1024],
				jwt[2048],
				pub_b64[100];
	unsigned char pub[WP_POINT_LEN];
	int			n;

	if (ttl <= 0 || ttl > 24 * 3600 || wp_origin(endpoint, aud, sizeof(aud)) != 0 ||
		strpbrk(aud, "\"\\") != NULL || strpbrk(subject, "\"\\") != NULL)
		return -1;
	n = snprintf(claims, sizeof(claims), "{\"aud\":\"%s\",\"exp\":%lld,\"sub\":\"%s\"}",
				 aud, (long long) now + ttl, subject);
	if (n < 0 || (size_t) n >= sizeof(claims))
		return -1;
	if (!EVP_PKEY_is_a(key, "EC") || jwt_sign(key, header, claims, jwt, sizeof(jwt)) != 0 ||
		wp_public_point(key, pub) != 0 || b64url_encode(pub, sizeof(pub), pub_b64, sizeof(pub_b64)) < 0)
		return -1;
	n = snprintf(out, outsz, "vapid t=%s, k=%s", jwt, pub_b64);
	return (n < 0 || (size_t) n >= outsz) ? -1 : 0;
}
