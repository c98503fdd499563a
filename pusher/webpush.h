/*
 * webpush.h: Web Push message encryption (RFC 8291, aes128gcm) and VAPID
 * (RFC 8292) with OpenSSL; no I/O, so the test links it alone.
 */
#ifndef PUSHER_WEBPUSH_H
#define PUSHER_WEBPUSH_H

#include <stddef.h>
#include <time.h>

#include <openssl/evp.h>

#define WP_POINT_LEN 65			/* uncompressed P-256 point */
#define WP_AUTH_LEN 16			/* subscription auth secret */
#define WP_SALT_LEN 16
#define WP_RS 4096				/* record size: one record holds the message */
#define WP_HEADER_LEN (WP_SALT_LEN + 4 + 1 + WP_POINT_LEN)
#define WP_TAG_LEN 16
/* Push services take 4096 bytes of body: header, delimiter and tag included. */
#define WP_MAX_PLAINTEXT (4096 - WP_HEADER_LEN - 1 - WP_TAG_LEN)
#define WP_BODY_LEN(plain_len) (WP_HEADER_LEN + (plain_len) + 1 + WP_TAG_LEN)

/* base64url without padding into out (size outsz, NUL-terminated); -1 when it does not fit. */
extern int	b64url_encode(const unsigned char *in, size_t len, char *out, size_t outsz);

/* Decodes base64url (padding optional) into out; the length, or -1 when invalid or too long. */
extern int	b64url_decode(const char *in, unsigned char *out, size_t outsz);

/* A new P-256 key pair; NULL on error. */
extern EVP_PKEY *wp_generate_key(void);

/* The P-256 key pair of private scalar d (32 bytes); NULL on error. */
extern EVP_PKEY *wp_key_from_private(const unsigned char d[32]);

/* The uncompressed public point of key into out; 0, or -1 on error. */
extern int	wp_public_point(EVP_PKEY *key, unsigned char out[WP_POINT_LEN]);

/*
 * Encrypts plain (at most WP_MAX_PLAINTEXT bytes) for a subscription's
 * ua_public and auth with the sender key as_key (ephemeral, one per
 * message) and salt (random, one per message) into out, which has room for
 * WP_BODY_LEN(plain_len) bytes: the aes128gcm body of RFC 8291 section 4.
 * Returns the body length, or -1 on error (bad point, OpenSSL failure).
 */
extern int	wp_encrypt(const unsigned char ua_public[WP_POINT_LEN], const unsigned char auth[WP_AUTH_LEN],
					   EVP_PKEY *as_key, const unsigned char salt[WP_SALT_LEN],
					   const unsigned char *plain, size_t plain_len, unsigned char *out);

/*
 * The origin (scheme://host[:port]) of url into out: the VAPID audience.
 * Returns 0, or -1 when url has no origin or it does not fit.
 */
extern int	wp_origin(const char *url, char *out, size_t outsz);

/*
 * The Authorization header value of RFC 8292 section 3 for a push to
 * endpoint: "vapid t=<ES256 JWT>, k=<public key>", with aud the endpoint's
 * origin, exp = now + ttl (at most 24 hours) and sub subject.  Into out;
 * returns 0, or -1 on error.
 */
extern int	wp_vapid_authorization(EVP_PKEY *key, const char *endpoint, const char *subject,
								   time_t now, long ttl, char *out, size_t outsz);

#endif
