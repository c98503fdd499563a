/*
 * realtime.c: GUCs and shared memory of the realtime layer, and typing.
 *
 * Nodes, sessions and presence are SQL (sql/20_realtime.sql); typing is
 * here because its rate limit lives in shared memory: a direct-mapped table
 * of (database, user, conversation) -> last forwarded typing event.  A
 * collision overwrites, which at worst lets one extra event through; the
 * table never grows.  Without shared_preload_libraries each backend keeps
 * its own table (a per-session limit).
 */
#include "chat.h"
#include "realtime.h"

#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

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

int			chat_node_timeout = 30;
int			chat_typing_interval = 3000;
int			chat_push_max_attempts = 8;
char	   *chat_token_secret = NULL;

static TypingEntry *typing_table = NULL;
static bool typing_shared = false;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/*
 * SHOW, current_setting() and pg_settings print this instead of the secret:
 * members of pg_read_all_settings (so of pg_monitor) pass the
 * GUC_SUPERUSER_ONLY check, and the value must not reach them.  Whether a
 * secret is set stays visible ('' when not), which node_reset relies on.
 */
static const char *
TokenSecretShow(void)
{
	return (chat_token_secret != NULL && chat_token_secret[0] != '\0') ? "********" : "";
}

static const struct config_enum_entry fanout_mode_options[] = {
	{"off", FANOUT_MODE_OFF, false},
	{"direct", FANOUT_MODE_DIRECT, false},
	{"worker", FANOUT_MODE_WORKER, false},
	{NULL, 0, false}
};

PG_FUNCTION_INFO_V1(chat_typing);

/* Requests the shared memory of the notifier and the typing table. */
static void
RealtimeShmemRequest(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	NotifierRequestShmem();
	RequestAddinShmemSpace(mul_size(TYPING_SLOTS, sizeof(TypingEntry)));
}

/* Attaches to the typing table. */
static void
RealtimeShmemStartup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	typing_table = ShmemInitStruct("chat typing", mul_size(TYPING_SLOTS, sizeof(TypingEntry)),
								   &found);
	if (!found)
		memset(typing_table, 0, mul_size(TYPING_SLOTS, sizeof(TypingEntry)));
	typing_shared = true;
	LWLockRelease(AddinShmemInitLock);
}

/* Defines the realtime GUCs; when preloaded, shared memory and the worker. */
void
RealtimeInit(void)
{
	DefineCustomIntVariable("chat.node_timeout",
							"Gateway nodes silent for longer than this count as gone.",
							"Their sessions are offline for fanout and presence.",
							&chat_node_timeout, 30, 1, 86400,
							PGC_SUSET, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomStringVariable("chat.token_secret",
							   "Shared secret that signs client tokens (HS256).",
							   "Never shown: SHOW and current_setting print ******** when it is set.",
							   &chat_token_secret, NULL,
							   PGC_SUSET, GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NO_RESET_ALL,
							   NULL, NULL, TokenSecretShow);
	DefineCustomIntVariable("chat.typing_interval",
							"Least time between two typing events of a user in a conversation.",
							"Events within it are dropped, except the stop after a start.",
							&chat_typing_interval, 3000, 0, 3600 * 1000,
							PGC_SUSET, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("chat.push_max_attempts",
							"Push deliveries after which a push_outbox row is given up.",
							NULL, &chat_push_max_attempts, 8, 1, 1000,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomEnumVariable("chat.fanout_mode",
							 "How fanout notifications are sent.",
							 "worker: a background worker NOTIFYs after commit (needs "
							 "shared_preload_libraries); direct: the sending transaction "
							 "NOTIFYs; off: nothing is sent.",
							 &chat_fanout_mode, FANOUT_MODE_WORKER, fanout_mode_options,
							 PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("chat.notifier_queue_size",
							"Shared-memory queue of the notifier worker, per database.",
							"A full queue makes senders notify directly.",
							&chat_notifier_queue_kb, 1024, 64, 1024 * 1024,
							PGC_POSTMASTER, GUC_UNIT_KB, NULL, NULL, NULL);

	DefineCustomIntVariable("chat.notifier_delay",
							"How long the notifier worker lets events gather under load.",
							"After sending a batch it waits this long before the next; "
							"the first event after a quiet spell goes at once.",
							&chat_notifier_delay, 2, 0, 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);

	if (!process_shared_preload_libraries_in_progress)
	{
		typing_table = MemoryContextAllocZero(TopMemoryContext,
											  sizeof(TypingEntry) * TYPING_SLOTS);
		return;
	}
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = RealtimeShmemRequest;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = RealtimeShmemStartup;
	NotifierInit();
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
	LWLock	   *lock = typing_shared ? NotifierLock() : NULL;

	h = hash_bytes_uint32((uint32) MyDatabaseId) ^
		hash_bytes_uint32((uint32) user_id ^ (uint32) (user_id >> 32)) * 31 ^
		hash_bytes_uint32((uint32) conversation_id ^ (uint32) (conversation_id >> 32)) * 17;
	e = &typing_table[h % TYPING_SLOTS];
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
 * chat.typing(user_id, conversation_id, typing): an ephemeral typing event
 * to the other online members; never stored, rate limited.
 */
Datum
chat_typing(PG_FUNCTION_ARGS)
{
	int64		user_id = PG_GETARG_INT64(0);
	int64		conversation_id = PG_GETARG_INT64(1);
	bool		typing = PG_ARGISNULL(2) ? true : PG_GETARG_BOOL(2);
	static SPIPlanPtr plan = NULL;
	Oid			types[2] = {INT8OID, INT8OID};
	Datum		args[2];
	bool		isnull;
	bool		exists,
				member;
	char	   *event;

	SPI_connect();
	if (plan == NULL)
	{
		plan = SPI_prepare("SELECT EXISTS (SELECT 1 FROM chat.conversations WHERE id = $1),"
						   " EXISTS (SELECT 1 FROM chat.members WHERE conversation_id = $1"
						   "         AND user_id = $2 AND left_at IS NULL)", 2, types);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
	}
	args[0] = Int64GetDatum(conversation_id);
	args[1] = Int64GetDatum(user_id);
	if (SPI_execute_plan(plan, args, NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "typing membership query failed");
	exists = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	member = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	SPI_finish();
	if (!exists)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("conversation %lld does not exist", (long long) conversation_id)));
	if (!member)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("user %lld is not a member of conversation %lld",
						(long long) user_id, (long long) conversation_id)));
	if (!TypingAllowed(user_id, conversation_id, typing))
		PG_RETURN_VOID();
	event = psprintf("{\"type\":\"typing\",\"conversation\":" INT64_FORMAT
					 ",\"user\":" INT64_FORMAT ",\"typing\":%s}",
					 conversation_id, user_id, typing ? "true" : "false");
	FanoutToUsers(conversation_id, NULL, 0, user_id, event, NULL);
	PG_RETURN_VOID();
}

#include "errnames.h"

PG_FUNCTION_INFO_V1(chat_condition_name);

/* chat.condition_name(sqlstate): PostgreSQL's condition name of an SQLSTATE
 * (insufficient_privilege for 42501), NULL when unknown. */
Datum
chat_condition_name(PG_FUNCTION_ARGS)
{
	char	   *state = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int			i;

	for (i = 0; i < lengthof(ChatErrorNames); i++)
		if (strcmp(ChatErrorNames[i].sqlstate, state) == 0)
			PG_RETURN_TEXT_P(cstring_to_text(ChatErrorNames[i].name));
	PG_RETURN_NULL();
}
