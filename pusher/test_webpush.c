/*
 * test_webpush.c: webpush.c against RFC 8291 Appendix A (exact bytes), a
 * VAPID header checked the way a push service checks it, and bad input.
 * Run by `make -C pusher test` (tests/pusher/run.sh); exits non-zero on the
 * first failure.
 */
#include "webpush.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/ec.h>

static int	failures = 0;

/* Records a failed check. */
static void
Check(int ok, const char *what)
{
	printf("%s: %s\n", ok ? "ok" : "FAIL", what);
	if (!ok)
		failures++;
}

/* Decodes a base64url constant of the RFC into out; exits when it is not one. */
static int
Decode(const char *in, unsigned char *out, size_t outsz)
{
	int			n = b64url_decode(in, out, outsz);

	if (n < 0)
	{
		fprintf(stderr, "bad test constant %s\n", in);
		exit(2);
	}
	return n;
}

/* RFC 8291 Appendix A: the same keys and salt give the published body. */
static void
TestRfc8291(void)
{
	static const char *plaintext = "When I grow up, I want to be a watermelon";
	static const char *as_private = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw";
	static const char *as_public = "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8";
	static const char *ua_public = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
	static const char *salt = "DGv6ra1nlYgDCS1FRnbzlw";
	static const char *auth = "BTBZMqHH6r4Tts7J_aSIgg";
	static const char *body =
		"DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN";
	unsigned char d[32],
				pub[WP_POINT_LEN],
				want_pub[WP_POINT_LEN],
				ua[WP_POINT_LEN],
				s[WP_SALT_LEN],
				a[WP_AUTH_LEN],
				want[512],
				got[WP_BODY_LEN(64)];
	int			want_len,
				got_len;
	EVP_PKEY   *key;

	Decode(as_private, d, sizeof(d));
	Decode(as_public, want_pub, sizeof(want_pub));
	Decode(ua_public, ua, sizeof(ua));
	Decode(salt, s, sizeof(s));
	Decode(auth, a, sizeof(a));
	want_len = Decode(body, want, sizeof(want));
	key = wp_key_from_private(d);
	Check(key != NULL, "RFC 8291 sender key imports");
	if (key == NULL)
		return;
	Check(wp_public_point(key, pub) == 0 && memcmp(pub, want_pub, WP_POINT_LEN) == 0,
		  "RFC 8291 as_public derived from as_private");
	got_len = wp_encrypt(ua, a, key, s, (const unsigned char *) plaintext, strlen(plaintext), got);
	Check(got_len == want_len, "RFC 8291 body length (144)");
	Check(got_len == want_len && memcmp(got, want, want_len) == 0, "RFC 8291 Appendix A body, byte for byte");

	/* Bad input: a point off the curve, a plaintext over the limit. */
	{
		unsigned char bad[WP_POINT_LEN];
		static unsigned char big[WP_MAX_PLAINTEXT + 1];
		static unsigned char out[WP_BODY_LEN(WP_MAX_PLAINTEXT + 1)];

		memcpy(bad, ua, sizeof(bad));
		bad[64] ^= 1;
		Check(wp_encrypt(bad, a, key, s, (const unsigned char *) "x", 1, got) == -1,
			  "a p256dh off the curve is refused");
		Check(wp_encrypt(ua, a, key, s, big, sizeof(big), out) == -1, "a plaintext over 3993 bytes is refused");
		Check(wp_encrypt(ua, a, key, s, big, WP_MAX_PLAINTEXT, out) == 4096, "3993 bytes give a 4096-byte body");
	}
	EVP_PKEY_free(key);
}

/* base64url round trips and rejections. */
static void
TestBase64url(void)
{
	unsigned char buf[64];
	char		text[100];

	Check(b64url_decode("", buf, sizeof(buf)) == 0, "empty base64url");
	Check(b64url_decode("AQ", buf, sizeof(buf)) == 1 && buf[0] == 1, "base64url without padding");
	Check(b64url_decode("AQ==", buf, sizeof(buf)) == 1, "base64url with padding");
	Check(b64url_decode("A", buf, sizeof(buf)) == -1, "base64url of 1 char mod 4 is refused");
	Check(b64url_decode("A+B/", buf, sizeof(buf)) == -1, "standard base64 characters are refused");
	Check(b64url_decode("AAAAAAAA", buf, 5) == -1, "base64url longer than the buffer is refused");
	buf[0] = 0xfb;
	buf[1] = 0xff;
	Check(b64url_encode(buf, 2, text, sizeof(text)) == 3 && strcmp(text, "-_8") == 0, "base64url alphabet");
	Check(b64url_encode(buf, 2, text, 4) == -1, "base64url output that does not fit is refused");
}

/* A VAPID header: JWT fields, and the signature verifies with k. */
static void
TestVapid(void)
{
	EVP_PKEY   *key = wp_generate_key();
	char		header[1024],
				origin[128];
	char	   *t,
			   *k,
			   *dot2;
	unsigned char sig[64],
				pub[WP_POINT_LEN],
				claims[512],
				der[80];
	int			n;

	Check(wp_origin("https://push.example:8443/a/b?c", origin, sizeof(origin)) == 0 &&
		  strcmp(origin, "https://push.example:8443") == 0, "origin of an endpoint");
	Check(wp_origin("push.example/a", origin, sizeof(origin)) == -1, "no origin without a scheme");
	Check(wp_vapid_authorization(key, "https://push.example/x", "mailto:a@b", 1000, 24 * 3600 + 1,
								 header, sizeof(header)) == -1, "exp over 24 hours is refused");
	Check(wp_vapid_authorization(key, "https://push.example/x", "mailto:\"a", 1000, 60,
								 header, sizeof(header)) == -1, "a quote in sub is refused");
	Check(wp_vapid_authorization(key, "https://push.example:8443/x/y", "mailto:ops@example.com", 1000, 43200,
								 header, sizeof(header)) == 0, "VAPID header built");
	t = header + strlen("vapid t=");
	k = strstr(header, ", k=");
	Check(strncmp(header, "vapid t=", 8) == 0 && k != NULL, "header is vapid t=..., k=...");
	if (k == NULL)
		return;
	*k = '\0';
	k += 4;
	dot2 = strrchr(t, '.');
	claims[0] = '\0';
	if (dot2 != NULL && strchr(t, '.') < dot2)
	{
		/* the claims part lies between the two dots */
		char		part[512];
		const char *from = strchr(t, '.') + 1;
		size_t		plen = dot2 - from;

		if (plen < sizeof(part))
		{
			memcpy(part, from, plen);
			part[plen] = '\0';
			n = b64url_decode(part, claims, sizeof(claims) - 1);
			claims[n < 0 ? 0 : n] = '\0';
		}
	}
	Check(strcmp((char *) claims,
				 "{\"aud\":\"https://push.example:8443\",\"exp\":44200,\"sub\":\"mailto:ops@example.com\"}") == 0,
		  "JWT claims aud, exp, sub");
	Check(b64url_decode(k, pub, sizeof(pub)) == WP_POINT_LEN && pub[0] == 4, "k is the uncompressed public key");
	Check(dot2 != NULL && b64url_decode(dot2 + 1, sig, sizeof(sig)) == 64, "signature is 64 bytes (r || s)");
	if (dot2 != NULL)
	{
		/* verify as a push service would: DER from r || s, ECDSA-SHA-256 over "header.claims" */
		ECDSA_SIG  *es = ECDSA_SIG_new();
		unsigned char *p = der;
		EVP_MD_CTX *md = EVP_MD_CTX_new();
		int			der_len;

		ECDSA_SIG_set0(es, BN_bin2bn(sig, 32, NULL), BN_bin2bn(sig + 32, 32, NULL));
		der_len = i2d_ECDSA_SIG(es, &p);
		*dot2 = '\0';
		Check(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
			  EVP_DigestVerify(md, der, der_len, (unsigned char *) t, strlen(t)) == 1,
			  "the JWT signature verifies with the VAPID public key");
		t[0] ^= 1;
		EVP_MD_CTX_reset(md);
		Check(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
			  EVP_DigestVerify(md, der, der_len, (unsigned char *) t, strlen(t)) != 1,
			  "a changed JWT does not verify");
		EVP_MD_CTX_free(md);
		ECDSA_SIG_free(es);
	}
	EVP_PKEY_free(key);
}

/* Runs every check. */
int
main(void)
{
	TestRfc8291();
	TestBase64url();
	TestVapid();
	printf("%s\n", failures == 0 ? "all webpush checks passed" : "webpush checks FAILED");
	return failures == 0 ? 0 : 1;
}
