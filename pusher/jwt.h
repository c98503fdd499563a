/*
 * jwt.h: compact JWS signing (RFC 7515/7519) with OpenSSL: ES256 for an EC
 * P-256 key (VAPID, the APNs provider token), RS256 for an RSA key (the FCM
 * OAuth2 grant of a service account).  No I/O, so the tests link it alone.
 */
#ifndef PUSHER_JWT_H
#define PUSHER_JWT_H

#include <stddef.h>

#include <openssl/evp.h>

/*
 * header_json.claims_json signed with key into out as
 * "<b64url header>.<b64url claims>.<b64url signature>": ES256 (raw r || s)
 * when key is EC, RS256 (PKCS #1 v1.5, SHA-256) when it is RSA.  The caller
 * puts the matching "alg" in header_json.  Returns 0, or -1 on error
 * (other key type, signing failure, out too small).
 */
extern int	jwt_sign(EVP_PKEY *key, const char *header_json, const char *claims_json,
					 char *out, size_t outsz);

#endif
