/*
 * typing.c: chat.typing, an ephemeral event whose rate limit lives in
 * shared memory: a direct-mapped table of (database, user, conversation)
 * -> last forwarded typing event, under its own lock.  A collision
 * overwrites, which at worst lets one extra event through; the table never
 * grows.  Without shared_preload_libraries each backend keeps its own table
 * (a per-session limit; chat.c warns when the library is loaded late).
 */
#include "chat.h"

#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/shmem.h"
#include "utils/memutils.h"

#define TYPING_SLOTS 8192

/* Last forwarded typing event of a (database, user, conversation). */
typedef struct TypingEntry
{
	Oid			dboid;
	int64		user_id;
	int64		conversation_id;
	TimestampTz sent_at;
	bool		typing;
} TypingEntry;

/* The table and its lock (NULL lock: a backend-local table). */
typedef struct TypingTable
{
	LWLock	   *lock;
	TypingEntry entries[TYPING_SLOTS];
} TypingTable;

static TypingTable *typing_table = NULL;

PG_FUNCTION_INFO_V1(chat_typing);

/* Shared memory of the typing table. */
Size
TypingShmemSize(void)
{
	return sizeof(TypingTable);
}

/* From the shmem request hook: the table and its own lock tranche. */
void
TypingShmemRequest(void)
{
	RequestAddinShmemSpace(TypingShmemSize());
	RequestNamedLWLockTranche("chat typing", 1);
}

/* From the shmem startup hook (AddinShmemInitLock held): attaches. */
void
TypingShmemInit(void)
{
	bool		found;

	typing_table = ShmemInitStruct("chat typing", TypingShmemSize(), &found);
	if (!found)
	{
		memset(typing_table, 0, TypingShmemSize());
		typing_table->lock = &(GetNamedLWLockTranche("chat typing"))->lock;
	}
}

/* Not preloaded: a table of this backend only, needing no lock. */
void
TypingLocalInit(void)
{
	typing_table = MemoryContextAllocZero(TopMemoryContext, TypingShmemSize());
}

/*
 * Decides whether a typing event goes out: at most one per interval per
 * (user, conversation), but a stop right after a forwarded start always
 * goes (so typing indicators do not stick).  Records a forwarded event.
 */
static bool
TypingAllowed(int64 user_id, int64 conversation_id, bool typing)
{
	uint32		h;
	TypingEntry *e;
	TimestampTz now = GetCurrentTimestamp();
	bool		allowed;
	LWLock	   *lock = typing_table->lock;

	h = hash_bytes_uint32((uint32) MyDatabaseId) ^
		hash_bytes_uint32((uint32) user_id ^ (uint32) (user_id >> 32)) * 31 ^
		hash_bytes_uint32((uint32) conversation_id ^ (uint32) (conversation_id >> 32)) * 17;
	e = &typing_table->entries[h % TYPING_SLOTS];
	if (lock)
		LWLockAcquire(lock, LW_EXCLUSIVE);
	if (e->dboid != MyDatabaseId || e->user_id != user_id ||
		e->conversation_id != conversation_id)
		allowed = true;
	else if (!typing && e->typing)
		allowed = true;
	else
		allowed = TimestampDifferenceExceeds(e->sent_at, now, chat_typing_interval);
	if (allowed)
	{
		e->dboid = MyDatabaseId;
		e->user_id = user_id;
		e->conversation_id = conversation_id;
		e->sent_at = now;
		e->typing = typing;
	}
	if (lock)
		LWLockRelease(lock);
	return allowed;
}

/*
 * A typing event of user_id in conversation_id to the other online
 * members, unless rate limited; the user must be a member (the errors of
 * chat.require_member).  Members in a block with the typist, either way,
 * get nothing.  One query finds the membership and the audience
 * (TypingRoutes); with nobody else who may see it, nothing is sent and the
 * rate limit is not charged.  chat.typing and client_request's "typing"
 * both come here.
 */
void
SendTyping(int64 user_id, int64 conversation_id, bool typing)
{
	MemoryContext cxt = CurrentMemoryContext;	/* outlives SPI */
	char	   *event;
	List	   *routes;
	bool		audience;

	ChatSpiConnect();
	routes = TypingRoutes(user_id, conversation_id, cxt, &audience);
	ChatSpiFinish();
	if (!audience)
		return;
	if (!TypingAllowed(user_id, conversation_id, typing))
		return;
	event = psprintf("{\"type\":\"typing\",\"conversation\":" INT64_FORMAT
					 ",\"user\":" INT64_FORMAT ",\"typing\":%s}",
					 conversation_id, user_id, typing ? "true" : "false");
	FanoutRoutes(routes, event);
}

/*
 * chat.typing(user_id, conversation_id, typing): an ephemeral typing event
 * to the other online members; never stored, rate limited (SendTyping).
 */
Datum
chat_typing(PG_FUNCTION_ARGS)
{
	bool		typing = PG_ARGISNULL(2) ? true : PG_GETARG_BOOL(2);

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("user_id must not be null")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("conversation_id must not be null")));
	SendTyping(PG_GETARG_INT64(0), PG_GETARG_INT64(1), typing);
	PG_RETURN_VOID();
}
