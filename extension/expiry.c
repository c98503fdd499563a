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
#include <sched.h>
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
static int	chat_expire_delay = 200;
static bool chat_expire_idle = true;
static int	chat_expire_max_lag = 60;
static int	chat_search_scan_limit = 5000;

/* Advisory lock key of the expiry worker ("chat" "expi"). */
#define EXPIRY_LOCK_KEY 7163082359879266409

/* Seconds from 1970-01-01 to PostgreSQL's epoch, 2000-01-01. */
#define UNIX_EPOCH_OFFSET \
	((double) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY)

/* The worker's argument: its database, and whether it runs SCHED_IDLE. */
#define EXPIRY_ARG(db, idle)	UInt64GetDatum((uint64) (db) | ((uint64) ((idle) ? 1 : 0) << 32))
#define EXPIRY_ARG_DB(arg)		((Oid) (DatumGetUInt64(arg) & 0xFFFFFFFF))
#define EXPIRY_ARG_IDLE(arg)	((DatumGetUInt64(arg) >> 32) & 1)

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
	DefineCustomBoolVariable("chat.expire_idle",
							 "Runs the expiry worker under the kernel's SCHED_IDLE policy.",
							 "The worker then takes only CPU time nothing else wants, "
							 "unless the backlog is older than chat.expire_max_lag.",
							 &chat_expire_idle, true,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("chat.expire_max_lag",
							"Age of the oldest due message beyond which the expiry worker leaves SCHED_IDLE.",
							"A machine that is never idle still works the backlog off, "
							"at niceness chat.expire_nice.",
							&chat_expire_max_lag, 60, 0, 86400,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("chat.expire_delay",
							"Pause of the expiry worker after each full batch.",
							"Paces a backlog: with batches of 1000 (about 20 ms of work) "
							"200 ms keeps the worker near a tenth of one core, about "
							"5,000 messages a second; 0 works a backlog off at full speed.",
							&chat_expire_delay, 200, 0, 10000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
}

/*
 * Between two full batches: chat.expire_delay, or until SIGTERM.  The
 * latch may be set already (a worker starts with it set), so it waits
 * until the time is up, not for the first wakeup.
 */
static void
PauseBetweenBatches(void)
{
	TimestampTz end;
	long		left;

	if (chat_expire_delay <= 0)
		return;
	end = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), chat_expire_delay);
	while ((left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), end)) > 0)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 left, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
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
	/* a batch's start and end as Unix times (log_min_messages = debug1), to
	 * line batches up with send latencies when the two are measured together */
	elog(DEBUG1, "chat expiry batch %.6f %.6f %ld",
		 (double) GetCurrentStatementStartTimestamp() / USECS_PER_SEC + UNIX_EPOCH_OFFSET,
		 (double) GetCurrentTimestamp() / USECS_PER_SEC + UNIX_EPOCH_OFFSET, (long) n);
	return n;
}

/*
 * True when a message past its ttl has been due longer than
 * chat.expire_max_lag: the machine had no idle time for the worker, which
 * must then take its share.  (messages_expiry_idx: one index probe.)  The
 * launcher asks, in its own transaction, so that the worker can take its
 * policy before it does anything else.
 */
static bool
BacklogIsLate(void)
{
	bool		late;
	char		sql[256];

	snprintf(sql, sizeof(sql),
			 "SELECT FROM chat.messages x WHERE x.expires_at <= now() - %d * interval '1 s'"
			 " LIMIT 1", chat_expire_max_lag);
	ChatSpiConnect();
	late = SPI_execute(sql, true, 1) == SPI_OK_SELECT && SPI_processed == 1;
	ChatSpiFinish();
	return late;
}

/*
 * True when a run under SCHED_IDLE has lasted chat.expire_max_lag: it
 * ends, so that on a machine never idle the next run (the heartbeat starts
 * one within seconds) finds the backlog late and works at niceness instead
 * of starving on.  idle_until 0: not under SCHED_IDLE.
 */
static bool
IdleRunIsOver(TimestampTz idle_until)
{
	return idle_until != 0 && GetCurrentTimestamp() >= idle_until;
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
	TimestampTz idle_until = 0;

	/*
	 * The policy first: connecting (the backend start-up, the catalog
	 * caches) is work too, and the worker starts often (every run).
	 */
	if (chat_expire_nice > 0 && setpriority(PRIO_PROCESS, 0, chat_expire_nice) != 0)
		ereport(LOG, (errmsg("chat expiry: could not set niceness %d: %m", chat_expire_nice)));
	if (EXPIRY_ARG_IDLE(arg))
	{
		struct sched_param sp = {0};

		if (sched_setscheduler(0, SCHED_IDLE, &sp) == 0)
			idle_until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													 chat_expire_max_lag * 1000);
		else
			ereport(LOG, (errmsg("chat expiry: could not set SCHED_IDLE: %m")));
	}
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(EXPIRY_ARG_DB(arg), InvalidOid, 0);
	pgstat_report_appname("chat expiry");
	/* session-level advisory lock: held until the worker exits */
	if (!ExtensionPresent())
		proc_exit(0);

	/*
	 * The work is CPU (tombstones are non-HOT updates: a new heap tuple and
	 * primary key entry each), and sends feel it in their latency tail
	 * when the worker holds a core they want: a woken backend waits for
	 * the running worker's time slice to end, niced or not (EEVDF lets a
	 * running task finish its slice).  Under SCHED_IDLE the kernel counts
	 * the worker's core as idle when it places a woken task, and preempts
	 * the worker at once: the worker gets only the time nothing else
	 * wants (bench/search-expiry.sh, sends at 1,000/s on two cores: p99
	 * during expiry over p99 without 0.89-1.03 under SCHED_IDLE, 1.08-1.65
	 * at niceness 10, both at about 14,500 tombstones/s).  A machine that
	 * is never idle would starve it, so a backlog older than
	 * chat.expire_max_lag is worked at niceness chat.expire_nice instead
	 * (a process cannot leave SCHED_IDLE without privileges: the choice
	 * is made per worker run, by its launcher, and taken first thing
	 * above; a run under SCHED_IDLE ends after
	 * chat.expire_max_lag, IdleRunIsOver).  Locks are no issue:
	 * the worker holds no lock a send waits for (SKIP LOCKED on the
	 * message rows, no conversation row).  SCHED_IDLE alone left the send
	 * p99 1.2x as high while a backlog went at 14,600/s (the worker's
	 * WAL, caches and start-up remain); the pause of chat.expire_delay
	 * (200 ms) after each full batch keeps it within 1.1x at 4,900/s.
	 */
	snprintf(sql, sizeof(sql), "SELECT chat.expire_messages(%d)", chat_expire_batch);
	for (i = 0; i < EXPIRY_MAX_BATCHES && !IdleRunIsOver(idle_until); i++)
	{
		CHECK_FOR_INTERRUPTS();
		if (RunBatch(sql) < chat_expire_batch)
			break;
		PauseBetweenBatches();
	}
	snprintf(sql, sizeof(sql), "SELECT chat.apply_retention(%d)", chat_expire_batch);
	for (i = 0; i < EXPIRY_MAX_BATCHES && !IdleRunIsOver(idle_until); i++)
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
	bool		idle = chat_expire_idle && !BacklogIsLate();

	PG_RETURN_BOOL(ChatLaunchWorker("ChatExpiryMain", "chat expiry", MyDatabaseId,
									EXPIRY_ARG(MyDatabaseId, idle)));
}
