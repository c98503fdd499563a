/*
 * chat.h: declarations shared by the C files of the chat extension.
 *
 * One file per concern:
 *   chat.c        _PG_init, every GUC, the shared-memory request/startup pair,
 *                 the checked SPI helpers
 *   member.c      the membership rule (mirrors chat.require_member)
 *   send.c        chat.send_message and chat.append_message: the one append
 *   fanout.c      routing events to the gateway nodes of online members
 *   push.c        the push rule and the push outbox rows of offline members
 *   event_json.c  the JSON of message events and timestamps
 *   typing.c      chat.typing and its shared rate-limit table
 *   notifier.c    delivery after commit (direct NOTIFY or the worker)
 *   token.c       chat.issue_token
 *   errors.c      chat.condition_name (errnames.h)
 *   request.c     chat.client_request: the request dispatcher, hot types in C
 *   hotpath.c     index probes of the request path that skip the executor
 *   expiry.c      the expiry worker (disappearing messages, retention) and
 *                 the GUCs of search and retention
 */
#ifndef CHAT_H
#define CHAT_H

#include "postgres.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "storage/lwlock.h"
#include "utils/array.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

/* GUCs (all defined in chat.c) */
extern int	chat_max_body_bytes;
extern int	chat_max_group_members;
extern int	chat_edit_window;		/* seconds */
extern int	chat_node_timeout;		/* seconds */
extern int	chat_typing_interval;	/* milliseconds */
extern int	chat_push_max_attempts;
extern int	chat_fanout_mode;
extern int	chat_notifier_queue_kb;
extern int	chat_notifier_delay;	/* milliseconds */
extern char *chat_token_secret;

/* partition.c: PL/Proxy partitions (chat.partitions, chat.partition) */
extern int	chat_partitions;
extern int	chat_partition;
extern void DefinePartitionGucs(void);

/* chat.fanout_mode */
#define FANOUT_MODE_OFF		0
#define FANOUT_MODE_DIRECT	1
#define FANOUT_MODE_WORKER	2

/*
 * Every payload starts with the line "v1 <64 hex digits of HMAC-SHA256>\n"
 * (notifier.c): CHAT_NOTIFY_SIG_LEN bytes.  CHAT_NOTIFY_MAX is what is left
 * for the events themselves; with the line the payload stays under the
 * 8000 bytes PostgreSQL accepts.
 */
#define CHAT_NOTIFY_SIG_LEN 68
/*
 * Monitoring (issue 11): a payload may also carry "commit stamps", pairs
 * with an empty recipient line and {"type":"committed","at":<unix us>},
 * naming when the events after it committed (notifier.c); the gateway
 * measures commit -> socket write from them.  Room for one is kept out of
 * CHAT_NOTIFY_MAX so that an entry plus its stamp always fits.
 */
#define CHAT_NOTIFY_STAMP_MAX 48
#define CHAT_NOTIFY_MAX (7999 - CHAT_NOTIFY_SIG_LEN - CHAT_NOTIFY_STAMP_MAX)

/* A stored message, as the write path and fanout see it. */
typedef struct ChatMessage
{
	int64		conversation_id;
	int64		seq;
	int64		sender_id;
	int32		sender_device;	/* 0 when not known */
	const char *kind;			/* text, system, e2e, edit, delete, reaction */
	const char *body;			/* NULL for a tombstone */
	const char *client_msg_id;	/* NULL when none */
	int64		reply_to;		/* 0 when none */
	int64		target;			/* log entries (edit, delete, reaction): seq changed; else 0 */
	TimestampTz created_at;
	const char *attachments;	/* JSON array of attachment objects; NULL when none */
	const char *extra;			/* NULL, or JSON members appended to the event:
								 * "mentions":[..], "reactions":{..}, or a
								 * reaction entry's "emoji":..,"removed":.. */
} ChatMessage;

/* The arguments of a send (send.c), checked by SendMessage. */
typedef struct SendArgs
{
	int64		sender;
	int64		conversation_id;
	text	   *body;			/* NULL: missing (22023) */
	text	   *client_msg_id;	/* NULL: none */
	int64		reply_to;		/* 0: none */
	int32		sender_device;	/* 0: not known */
	Jsonb	   *attachments;	/* upload ids (jsonb array); NULL: none */
	ArrayType  *mentions;		/* NULL: none; bigint[] of members to mention */
	const char *kind;			/* "text" or "e2e" (NULL: "text") */
	bool		device_checked; /* the caller found sender_device in this
								 * statement: the lock query skips it */
} SendArgs;

/* The answer of a send: the row written, or the earlier one of a retry. */
typedef struct SendResult
{
	int64		seq;
	TimestampTz created_at;
	bool		duplicate;
} SendResult;

/* chat.c: checked SPI plumbing, used by every query of the extension. */
extern void ChatSpiConnect(void);
extern bool ChatLaunchWorker(const char *function, const char *type, Oid dboid, Datum arg);
extern void ChatSpiFinish(void);
extern SPIPlanPtr ChatPrepare(SPIPlanPtr *plan, const char *sql, int nargs, Oid *types);
extern void ChatExecute(SPIPlanPtr plan, Datum *args, const char *nulls, bool read_only,
						long count, int expected, const char *what);
extern int64 ChatSpiInt64(uint64 row, int col, bool *isnull);

/* hotpath.c */
extern bool DeviceExists(int64 user_id, int32 device_id);

/* member.c */
extern void RequireMember(int64 user_id, int64 conversation_id);
extern void RaiseNotMember(int64 user_id, int64 conversation_id) pg_attribute_noreturn();
extern void LockMember(int64 user_id, int64 conversation_id, int64 *delivered_seq,
					   int64 *read_seq);

/* send.c */
extern void SendMessage(const SendArgs *a, SendResult *r);

/* errors.c */
extern const char *ConditionName(const char *sqlstate);

/* fanout.c */
extern void FanoutMessage(const ChatMessage *msg);
extern void FanoutToUsers(int64 conversation_id, const int64 *user_ids, int nusers,
						  int64 exclude_user, const char *event, const char *ref_event);
extern void FanoutReceipt(int64 conversation_id, int64 reader, int64 from_seq, int64 to_seq,
						  const char *kind);
extern List *TypingRoutes(int64 user_id, int64 conversation_id, MemoryContext cxt, bool *audience);
extern void FanoutRoutes(List *routes, const char *event);

/* media.c */
extern void MediaDefineGucs(void);
extern char *SendAttachments(const SendArgs *a);
extern void AttachToMessage(const SendArgs *a, int64 seq);

/* push.c */
extern bool MessageWantsPush(const ChatMessage *msg);
extern void QueuePushes(const ChatMessage *msg, Datum *push_ids, int npush,
						const char *payload);

/*
 * The push rule, member half (push.c holds the rest): member m of
 * conversation $1 wants a push of message $2 unless it muted the
 * conversation and is not mentioned in it.
 */
#define PUSH_WANTED_SQL \
	"(m.muted_until IS NULL OR m.muted_until <= now()" \
	" OR EXISTS (SELECT 1 FROM chat.messages x WHERE x.conversation_id = $1" \
	"            AND x.seq = $2 AND m.user_id = ANY (x.mentions)))"

/* event_json.c */
extern void AppendJsonTimestamp(StringInfo buf, TimestampTz ts);
extern void AppendMessageJson(StringInfo buf, const ChatMessage *msg, TimestampTz edited_at,
							  TimestampTz deleted_at, bool ref);
extern char *MessageExtraJson(const char *kind, ArrayType *mentions, Jsonb *reactions);

/* typing.c */
extern Size TypingShmemSize(void);
extern void TypingShmemRequest(void);
extern void TypingShmemInit(void);
extern void TypingLocalInit(void);
extern void SendTyping(int64 user_id, int64 conversation_id, bool typing);

/* expiry.c */
extern char *chat_search_config;
extern char *chat_retention;
extern int	chat_expire_batch;
extern void DefineExpiryGucs(void);

/* notifier.c */
extern void NotifierQueue(const char *node, const char *payload, int len);
extern Size NotifierShmemSize(void);
extern void NotifierShmemRequest(void);
extern void NotifierShmemInit(void);

#endif							/* CHAT_H */
