/*
 * realtime.h: declarations shared by the realtime layer of the extension
 * (fanout.c, notifier.c, realtime.c, token.c).
 */
#ifndef CHAT_REALTIME_H
#define CHAT_REALTIME_H

#include "postgres.h"
#include "lib/stringinfo.h"
#include "storage/lwlock.h"

/*
 * Every payload starts with the line "v1 <64 hex digits of HMAC-SHA256>\n"
 * (notifier.c): CHAT_NOTIFY_SIG_LEN bytes.  CHAT_NOTIFY_MAX is what is left
 * for the events themselves; with the line the payload stays under the
 * 8000 bytes PostgreSQL accepts.
 */
#define CHAT_NOTIFY_SIG_LEN 68
#define CHAT_NOTIFY_MAX (7999 - CHAT_NOTIFY_SIG_LEN)

/* chat.fanout_mode */
#define FANOUT_MODE_OFF		0
#define FANOUT_MODE_DIRECT	1
#define FANOUT_MODE_WORKER	2

/* GUCs (realtime.c, notifier.c) */
extern int	chat_node_timeout;		/* seconds */
extern int	chat_typing_interval;	/* milliseconds */
extern int	chat_push_max_attempts;
extern int	chat_fanout_mode;
extern int	chat_notifier_queue_kb;
extern int	chat_notifier_delay;		/* milliseconds */
extern char *chat_token_secret;

/* notifier.c */
extern void NotifierQueue(const char *node, const char *payload, int len);
extern Size NotifierShmemSize(void);
extern void NotifierRequestShmem(void);
extern void NotifierInit(void);
extern LWLock *NotifierLock(void);

/* fanout.c */
extern void FanoutToUsers(int64 conversation_id, const int64 *user_ids, int nusers,
						  int64 exclude_user, const char *event, const char *ref_event);
extern void AppendJsonTimestamp(StringInfo buf, TimestampTz ts);

#endif							/* CHAT_REALTIME_H */
