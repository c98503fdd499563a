/*
 * chat.c: module initialisation of the chat extension (the pg_cron
 * pattern): every GUC, the one shared-memory request/startup pair, and the
 * checked SPI helpers every query of the extension goes through.
 *
 * Preloading (shared_preload_libraries = 'chat') gives the notifier worker
 * its ring and the typing rate limit its shared table.  Loaded late (by
 * CREATE EXTENSION or the first call), the library still works: fanout
 * NOTIFYs directly and typing limits are per session.  That is reported
 * with a WARNING, never silently.
 */
#include "chat.h"

#include <limits.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/guc.h"

PG_MODULE_MAGIC;

int			chat_max_body_bytes = 65536;
int			chat_max_group_members = 1024;
int			chat_edit_window = 900;
int			chat_node_timeout = 30;
int			chat_typing_interval = 3000;
int			chat_push_max_attempts = 8;
static int	chat_push_coalesce_ms = 0;	/* read in SQL: chat.claim_push, next_push_due */
int			chat_fanout_mode = FANOUT_MODE_WORKER;
int			chat_notifier_queue_kb = 1024;
int			chat_notifier_delay = 2;
static int	chat_presence_grace = 5000;	/* read by SQL: chat.presence_grace() */
char	   *chat_token_secret = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static const struct config_enum_entry fanout_mode_options[] = {
	{"off", FANOUT_MODE_OFF, false},
	{"direct", FANOUT_MODE_DIRECT, false},
	{"worker", FANOUT_MODE_WORKER, false},
	{NULL, 0, false}
};

void		_PG_init(void);

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

/* The GUCs of the message core: body size, group size, edit window. */
static void
DefineCoreGucs(void)
{
	DefineCustomIntVariable("chat.max_body_bytes",
							"Largest message body accepted, in bytes.",
							NULL, &chat_max_body_bytes, 65536, 1, 1024 * 1024 * 1024,
							PGC_SUSET, GUC_UNIT_BYTE, NULL, NULL, NULL);
	DefineCustomIntVariable("chat.max_group_members",
							"Largest number of members a group conversation may have.",
							NULL, &chat_max_group_members, 1024, 2, 1000000,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("chat.edit_window",
							"How long after sending a message its sender may edit it.",
							NULL, &chat_edit_window, 900, 0, INT_MAX,
							PGC_SUSET, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("chat.push_max_attempts",
							"Push deliveries after which a push_outbox row is given up.",
							NULL, &chat_push_max_attempts, 8, 1, 1000,
							PGC_SUSET, 0, NULL, NULL, NULL);
	/* Push coalescing (issue 14): milliseconds, no unit, so SQL reads it as an integer. */
	DefineCustomIntVariable("chat.push_coalesce_ms",
							"Milliseconds a queued push waits before it may be claimed, so that "
							"the messages of a burst coalesce into one notification.",
							"0 (the default) claims at once.",
							&chat_push_coalesce_ms, 0, 0, 60000,
							PGC_SUSET, 0, NULL, NULL, NULL);
}

/* The GUCs of the realtime layer: nodes, tokens, typing, fanout, notifier. */
static void
DefineRealtimeGucs(void)
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
	DefineCustomIntVariable("chat.presence_grace",
							"How long a user whose last device left may take to come back before being announced offline.",
							"A reconnect within it sends neither offline nor online; 0 announces at once.",
							&chat_presence_grace, 5000, 0, 3600 * 1000,
							PGC_SUSET, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("chat.typing_interval",
							"Least time between two typing events of a user in a conversation.",
							"Events within it are dropped, except the stop after a start.",
							&chat_typing_interval, 3000, 0, 3600 * 1000,
							PGC_SUSET, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomEnumVariable("chat.fanout_mode",
							 "How fanout notifications are sent.",
							 "worker: a background worker NOTIFYs after commit (needs "
							 "shared_preload_libraries); direct: the sending transaction "
							 "NOTIFYs; off: nothing is sent.",
							 &chat_fanout_mode, FANOUT_MODE_WORKER, fanout_mode_options,
							 PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("chat.notifier_delay",
							"How long the notifier worker lets events gather under load.",
							"After sending a batch it waits this long before the next when "
							"more events came meanwhile; an event into an empty queue goes at once.",
							&chat_notifier_delay, 2, 0, 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
}

/*
 * The GUCs that size shared memory (PGC_POSTMASTER): PostgreSQL refuses to
 * define them after startup (FATAL), so a library loaded late leaves them
 * undefined, as it has no shared memory to size.
 */
static void
DefinePreloadGucs(void)
{
	DefineCustomIntVariable("chat.notifier_queue_size",
							"Shared-memory queue of the notifier worker, per database.",
							"A full queue makes senders notify directly.",
							&chat_notifier_queue_kb, 1024, 64, 1024 * 1024,
							PGC_POSTMASTER, GUC_UNIT_KB, NULL, NULL, NULL);
}

/* The one shared-memory request: the notifier's rings and the typing table. */
static void
ChatShmemRequest(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	NotifierShmemRequest();
	TypingShmemRequest();
}

/* The one shared-memory startup: attaches to (or creates) both areas. */
static void
ChatShmemStartup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	NotifierShmemInit();
	TypingShmemInit();
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Defines every GUC; when preloaded, hooks shared memory (the notifier
 * worker and the typing table live there).  Loaded late, warns: the
 * library works, but with per-session typing limits and direct NOTIFY.
 */
void
_PG_init(void)
{
	DefineCoreGucs();
	DefineRealtimeGucs();
	DefinePartitionGucs();	/* partition.c: PL/Proxy partitions */
	DefineExpiryGucs();
	if (process_shared_preload_libraries_in_progress)
		DefinePreloadGucs();
	MediaDefineGucs();			/* media (issue 13) */
	MarkGUCPrefixReserved("chat");

	if (!process_shared_preload_libraries_in_progress)
	{
		TypingLocalInit();
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("chat is not in shared_preload_libraries"),
				 errdetail("Without it chat.fanout_mode = worker notifies directly from "
						   "each sending transaction and typing limits are per session."),
				 errhint("Add chat to shared_preload_libraries in postgresql.conf and restart.")));
		return;
	}
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = ChatShmemRequest;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = ChatShmemStartup;
}

/*
 * Registers one of the extension's dynamic background workers (the notifier,
 * the expiry worker): function in chat.so, named "<type> for database <oid>",
 * never restarted by the postmaster (its launcher decides).  False when no
 * worker slot is free.
 */
bool
ChatLaunchWorker(const char *function, const char *type, Oid dboid, Datum arg)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "chat");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "%s", function);
	snprintf(worker.bgw_name, BGW_MAXLEN, "%s for database %u", type, dboid);
	snprintf(worker.bgw_type, BGW_MAXLEN, "%s", type);
	worker.bgw_main_arg = arg;
	worker.bgw_notify_pid = 0;
	return RegisterDynamicBackgroundWorker(&worker, &handle);
}

/* SPI_connect, raising on failure. */
void
ChatSpiConnect(void)
{
	int			ret = SPI_connect();

	if (ret != SPI_OK_CONNECT)
		elog(ERROR, "chat: SPI_connect failed: %s", SPI_result_code_string(ret));
}

/* SPI_finish, raising on failure. */
void
ChatSpiFinish(void)
{
	int			ret = SPI_finish();

	if (ret != SPI_OK_FINISH)
		elog(ERROR, "chat: SPI_finish failed: %s", SPI_result_code_string(ret));
}

/*
 * Prepares sql into *plan and keeps it for the session (first use in the
 * backend); returns *plan.  Always the generic plan: every statement of the
 * extension is a keyed lookup whose plan does not depend on the values, and
 * replanning on every call would cost more than running it.
 */
SPIPlanPtr
ChatPrepare(SPIPlanPtr *plan, const char *sql, int nargs, Oid *types)
{
	SPIPlanPtr	p;

	if (*plan != NULL)
		return *plan;
	p = SPI_prepare_cursor(sql, nargs, types, CURSOR_OPT_GENERIC_PLAN);
	if (p == NULL)
		elog(ERROR, "chat: SPI_prepare failed for \"%s\": %s", sql,
			 SPI_result_code_string(SPI_result));
	if (SPI_keepplan(p) != 0)
		elog(ERROR, "chat: SPI_keepplan failed");
	*plan = p;
	return p;
}

/* Runs a prepared plan; raises unless it returns expected (what names it). */
void
ChatExecute(SPIPlanPtr plan, Datum *args, const char *nulls, bool read_only,
			long count, int expected, const char *what)
{
	int			ret = SPI_execute_plan(plan, args, nulls, read_only, count);

	if (ret != expected)
		elog(ERROR, "chat: %s failed: %s", what, SPI_result_code_string(ret));
}

/* Reads an int8 column of a row of the last SPI result. */
int64
ChatSpiInt64(uint64 row, int col, bool *isnull)
{
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[row],
									   SPI_tuptable->tupdesc, col, isnull));
}
