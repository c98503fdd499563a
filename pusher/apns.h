/*
 * apns.h: Apple Push Notification service pieces of chat-pusher: the ES256
 * provider token, the notification JSON and the answers that mean the
 * device token is gone or the provider token was refused.  No I/O, so the
 * unit test links it alone.
 */
#ifndef PUSHER_APNS_H
#define PUSHER_APNS_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include <openssl/evp.h>

/* APNs refuses tokens older than an hour and renewals more often than every 20 minutes. */
#define APNS_TOKEN_REFRESH_S 3000

/*
 * The provider token: an ES256 JWT {"alg":"ES256","kid":key_id} /
 * {"iss":team_id,"iat":now} signed with the .p8 key.  Into out; 0, or -1.
 */
extern int	apns_provider_token(EVP_PKEY *key, const char *key_id, const char *team_id, time_t now,
								char *out, size_t outsz);

/*
 * The notification for the chat payload (PROTOCOL "Push registration"):
 * {"aps":{"alert":{"title","body"?},"badge":unread,"thread-id":topic,
 * "mutable-content":1,"sound":"default"}, plus the payload's fields at the
 * top level for the app}.  malloc'd; NULL on error.
 */
extern char *apns_payload(const char *topic, const char *payload);

/* Whether an answer says the device token is gone: 410, or 400 BadDeviceToken / Unregistered. */
extern bool apns_unregistered(long status, const char *body);

/* Whether an answer refused the provider token (403 ExpiredProviderToken / InvalidProviderToken). */
extern bool apns_token_refused(long status, const char *body);

#endif
