/*
 * expiry.c: the expiry worker (disappearing messages and retention) and
 * the GUCs of search, expiry and retention.
 *
 * The worker is a dynamic background worker of one database, started by
 * chat.start_expiry_worker() (23_disappearing.sql), which the gateways'
 * heartbeat calls when messages are due (chat.maintenance_due).  It runs
 * chat.expire_messages and chat.apply_retention in batches, one
 * transaction per batch, so a large backlog never holds row locks for
 * long and sends go on between batches; it exits when nothing is left.
 * Exiting matters: a worker that stayed connected would keep DROP
 * DATABASE waiting, and the next heartbeat starts a new one anyway.  Two
 * workers of one database never run at once (an advisory lock).
 */
#include "chat.h"

#include <limits.h>
#include <sys/resource.h>

#include "access/xact.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/snapmgr.h"

PG_FUNCTION_INFO_V1(chat_launch_expiry_worker);

char	   *chat_search_config = NULL;
char	   *chat_retention = NULL;
int			chat_expire_batch = 1000;
static int	chat_expire_nice = 10;
static int	chat_expire_delay = 50;
static int	chat_search_scan_limit = 5000;

/* Advisory lock key of the expiry worker ("chat" "expi"). */
#define EXPIRY_LOCK_KEY 7163082359879266409

/* Most batches one worker run takes before it leaves the rest to the next. */
#define EXPIRY_MAX_BATCHES 1000

void		ChatExpiryMain(Datum arg);

/*
 * chat.retention must be empty or an interval: a bad value is refused when
 * set, rather than failing the expiry worker at every start.
 */
static bool
CheckRetention(char **newval, void **extra, GucSource source)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool ok = true;

	if (*newval == NULL || (*newval)[0] == '\0')
		return true;
	PG_TRY();
	{
		(void) DirectFunctionCall3(interval_in, CStringGetDatum(*newval),
								   ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		FlushErrorState();
		ok = false;
	}
	PG_END_TRY();
	if (!ok)
		GUC_check_errdetail("chat.retention must be an interval such as '90 days', or empty.");
	return ok;
}

/* The GUCs of search, disappearing messages and retention. */
void
DefineExpiryGucs(void)
{
	DefineCustomStringVariable("chat.search_config",
							   "Text search configuration of chat.search.",
							   "simple works for every language; another needs its own GIN index "
							   "(docs/sql-api.md).",
							   &chat_search_config, "simple",
							   PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("chat.search_scan_limit",
							"Most messages a user sees for chat.search to read them all rather than use its GIN index.",
							"Users who see more are searched through the index (docs/sql-api.md \"Search\").",
							&chat_search_scan_limit, 5000, 0, INT_MAX,
							PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("chat.retention",
							   "Messages older than this interval are removed by the expiry worker.",
							   "Empty (the default): messages are kept.",
							   &chat_retention, "",
							   PGC_SUSET, 0, CheckRetention, NULL, NULL);
	DefineCustomIntVariable("chat.expire_batch",
							"Messages the expiry worker tombstones or removes per transaction.",
							NULL, &chat_expire_batch, 1000, 1, 100000,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("chat.expire_nice",
							"Scheduling niceness (0-19) of the expiry worker's process.",
							"Above 0 the kernel gives sends the CPU first while the worker runs; "
							"on an idle machine it still runs at full speed.",
							&chat_expire_nice, 10, 0, 19,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("chat.expire_delay",
							"Pause of the expiry worker after each full batch.",
							"Paces a backlog: with batches of 1000 (about 20 ms of work) "
							"50 ms keeps the worker under a third of one core, about "
							"14,000 messages a second; 0 works a backlog off at full speed.",
							&chat_expire_delay, 50, 0, 10000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
}

/* Between two full batches: chat.expire_delay, or until SIGTERM. */
static void
PauseBetweenBatches(void)
{
	if (chat_expire_delay <= 0)
		return;
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 chat_expire_delay, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
}

/* Runs sql (returning one integer) in a transaction of its own; its value. */
static int64
RunBatch(const char *sql)
{
	int64		n = 0;
	bool		isnull;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	ChatSpiConnect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, sql);
	if (SPI_execute(sql, false, 1) == SPI_OK_SELECT && SPI_processed == 1)
	{
		n = ChatSpiInt64(0, 1, &isnull);
		if (isnull)
			n = 0;
	}
	ChatSpiFinish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
	return n;
}

/* True when this database has the chat extension (it may be dropped). */
static bool
ExtensionPresent(void)
{
	bool		present;

	StartTransactionCommand();
	ChatSpiConnect();
	PushActiveSnapshot(GetTransactionSnapshot());
	present = SPI_execute("SELECT FROM pg_catalog.pg_extension WHERE extname = 'chat'"
						  " AND pg_catalog.pg_try_advisory_lock(" CppAsString2(EXPIRY_LOCK_KEY) ")",
						  false, 1) == SPI_OK_SELECT && SPI_processed == 1;
	ChatSpiFinish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	return present;
}

/* Background worker: tombstones expired messages, then applies retention,
 * in batches, until nothing is due; then exits. */
void
ChatExpiryMain(Datum arg)
{
	char		sql[128];
	int			i;

	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(DatumGetObjectId(arg), InvalidOid, 0);
	pgstat_report_appname("chat expiry");
	/* session-level advisory lock: held until the worker exits */
	if (!ExtensionPresent())
		proc_exit(0);

	/*
	 * The work is CPU (tombstones are non-HOT updates: every index of
	 * chat.messages gets a new entry) and on a busy machine it competes
	 * with the backends serving sends for the same cores, which shows as
	 * their latency tail.  A lower priority makes the worker take the
	 * cores sends leave idle: the backlog goes as fast when the machine is
	 * quiet, and sends keep their latency when it is not.  Locks are no
	 * issue: the worker holds no lock a send waits for (SKIP LOCKED on the
	 * message rows, no conversation row).  Only this process is affected.
	 * Niceness alone was not enough on two cores (bench/search-expiry.sh,
	 * sends at 1,000/s: p99 2.9-4.2x while a backlog went at 45,000/s), so
	 * the worker also pauses chat.expire_delay after each full batch.
	 */
	if (chat_expire_nice > 0 && setpriority(PRIO_PROCESS, 0, chat_expire_nice) != 0)
		ereport(LOG, (errmsg("chat expiry: could not set niceness %d: %m", chat_expire_nice)));
	snprintf(sql, sizeof(sql), "SELECT chat.expire_messages(%d)", chat_expire_batch);
	for (i = 0; i < EXPIRY_MAX_BATCHES; i++)
	{
		CHECK_FOR_INTERRUPTS();
		if (RunBatch(sql) < chat_expire_batch)
			break;
		PauseBetweenBatches();
	}
	snprintf(sql, sizeof(sql), "SELECT chat.apply_retention(%d)", chat_expire_batch);
	for (i = 0; i < EXPIRY_MAX_BATCHES; i++)
	{
		CHECK_FOR_INTERRUPTS();
		if (RunBatch(sql) < chat_expire_batch)
			break;
		PauseBetweenBatches();
	}
	proc_exit(0);
}

/*
 * chat.launch_expiry_worker() RETURNS boolean: registers the expiry worker
 * of the current database; false when no worker slot is free (the next
 * call tries again).  chat.start_expiry_worker decides when.
 */
Datum
chat_launch_expiry_worker(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(ChatLaunchWorker("ChatExpiryMain", "chat expiry", MyDatabaseId,
									ObjectIdGetDatum(MyDatabaseId)));
}
