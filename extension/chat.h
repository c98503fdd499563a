/*
 * chat.h: shared declarations of the chat extension.
 *
 * Files by SQL area: chat.c (module init, GUCs), send.c (send_message and
 * append_message: the one message write path), fanout.c (NOTIFY routing
 * and the push outbox), realtime.c (nodes, sessions, typing, presence),
 * token.c (issue_token).
 */
#ifndef CHAT_H
#define CHAT_H

#include "postgres.h"
#include "utils/timestamp.h"

/* GUCs (chat.c) */
extern int	chat_max_body_bytes;
extern int	chat_max_group_members;
extern int	chat_edit_window;		/* seconds */

/* A stored message, as fanout needs it. */
typedef struct ChatMessage
{
	int64		conversation_id;
	int64		seq;
	int64		sender_id;
	int32		sender_device;	/* 0 when not known */
	const char *kind;			/* text, system, e2e, edit, delete */
	const char *body;			/* NULL for a tombstone */
	const char *client_msg_id;	/* NULL when none */
	int64		reply_to;		/* 0 when none */
	int64		target;			/* log entries (edit, delete): seq changed; else 0 */
	TimestampTz created_at;
} ChatMessage;

/*
 * fanout.c: called inside the writing transaction.  Notifies the nodes of
 * the online members (PostgreSQL delivers at commit, so a rollback notifies
 * no one) and queues push_outbox rows for offline devices.
 */
extern void FanoutMessage(const ChatMessage *msg);

/* realtime.c: GUCs and shared memory of the realtime layer, from _PG_init. */
extern void RealtimeInit(void);

#endif							/* CHAT_H */
