/*
 * fcm.h: Firebase Cloud Messaging HTTP v1 for chat-pusher: the service
 * account, its OAuth2 JWT grant (RFC 7523, RS256), the token answer, the
 * message and the "unregistered" answers.  No I/O beyond reading the
 * credentials file, so the unit test links it alone.
 */
#ifndef PUSHER_FCM_H
#define PUSHER_FCM_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include <openssl/evp.h>

#define FCM_SCOPE "https://www.googleapis.com/auth/firebase.messaging"
#define FCM_DEFAULT_TOKEN_URI "https://oauth2.googleapis.com/token"
#define FCM_GRANT_TTL 3600			/* the longest assertion Google accepts */

/* A service account (the JSON file the Firebase console hands out). */
typedef struct FcmAccount
{
	char	   *client_email;
	char	   *project_id;
	char	   *token_uri;
	EVP_PKEY   *key;			/* RSA */
} FcmAccount;

/*
 * Reads a service-account JSON file ("type":"service_account", client_email,
 * project_id, private_key as an RSA PEM, token_uri optional) into a.
 * Returns 0, or -1 with a reason in err.
 */
extern int	fcm_load_account(const char *path, FcmAccount *a, char *err, size_t errsz);

/* Frees what fcm_load_account allocated. */
extern void fcm_free_account(FcmAccount *a);

/*
 * The form body of the token request: the jwt-bearer grant with an RS256
 * assertion {iss, scope, aud, iat, exp} where aud is token_uri (the
 * endpoint the grant is sent to).  malloc'd; NULL on error.
 */
extern char *fcm_grant_body(const FcmAccount *a, const char *token_uri, time_t now);

/*
 * Parses the token endpoint's JSON answer: the access token (malloc'd into
 * *token) and its lifetime in seconds.  Returns 0, or -1 when the answer has
 * no bearer token.
 */
extern int	fcm_parse_token(const char *body, char **token, long *expires_in);

/*
 * The HTTP v1 message for registration token of the chat notification
 * payload (PROTOCOL "Push registration"): data (every field as a string),
 * android collapse_key and notification tag = topic, high priority, ttl,
 * notification_count = the badge (unread), and the apns badge and
 * collapse id for iOS apps reached through FCM.  malloc'd; NULL on error.
 */
extern char *fcm_message(const char *token, const char *topic, const char *payload, long ttl);

/* Whether an FCM answer says the registration token is gone (404, UNREGISTERED). */
extern bool fcm_unregistered(long status, const char *body);

#endif
