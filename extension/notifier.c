/*
 * notifier.c: delivers fanout notifications after commit.
 *
 * Fanout (fanout.c) hands each routed event to NotifierQueue(), which keeps
 * it in a transaction-local list (subtransaction aware: a rolled back
 * savepoint drops its events).  At pre-commit the list is batched per node
 * (several events per notification, each payload under 8000 bytes) and
 * then, by chat.fanout_mode:
 *
 *   direct  the sending transaction NOTIFYs itself;
 *   worker  the batches are copied into a shared-memory ring at commit and a
 *           background worker of the database NOTIFYs them;
 *   off     nothing is sent (benchmark baseline; sync still sees all).
 *
 * Why a worker: NOTIFY takes a cluster-wide lock from pre-commit until the
 * end of commit, so notifying transactions commit one at a time, each
 * holding the lock across its WAL flush.  With the worker the senders never
 * touch that lock; the worker takes it once per batch, for many senders.
 * The ring space is reserved at pre-commit (where failing is still
 * allowed) and filled at commit, after the transaction is durable and
 * visible and before its row locks are released, so events of one
 * conversation enter the ring in seq order.  A transaction that finds no
 * room (ring full, no worker slot) falls back to direct NOTIFY: slower,
 * never lost.  Events in the ring are lost if the server crashes, which is
 * what NOTIFY promises anyway: the tables stay the truth and sync repairs.
 *
 * One worker per database (NOTIFY is per database), started on demand and
 * leaving after a second of idleness so that DROP DATABASE is not blocked.
 */
#include "chat.h"

#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/crypto.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "port/atomics.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#define NOTIFIER_SLOTS			8		/* databases with a worker at once */
#define NOTIFIER_IDLE_MS		1000	/* a worker idle this long exits */
#define NOTIFIER_MAX_DRAIN		(256 * 1024)	/* bytes taken per pass */

#define SLOT_FREE		0
#define SLOT_STARTING	1
#define SLOT_RUNNING	2

/* One queued batch: channel node and payload, in transaction memory. */
typedef struct PendingNotify
{
	char	   *node;
	char	   *payload;
	int			len;
	int			nestlevel;
	int			nevents;		/* events (header+event pairs) in payload */
} PendingNotify;

/* Ring of one database; positions grow forever, index = pos % size. */
typedef struct NotifierSlot
{
	Oid			dboid;
	int			state;
	pid_t		pid;
	Latch	   *latch;
	uint64		head;			/* next write position */
	uint64		tail;			/* next read position */
	uint64		reserved;		/* bytes promised to committing xacts */
	uint64		fallbacks;		/* xacts that had to NOTIFY directly */
	TimestampTz launched_at;	/* when the worker was last registered */
	Size		ring_offset;	/* from the start of NotifierShared */
} NotifierSlot;

/*
 * Monitoring (issue 11): a server-wide histogram of the workers, updated
 * with atomics (no lock; workers of several databases may add at once).
 * Bucket i counts observations v <= 2^i; the last one the rest (+Inf).
 */
#define NOTIFIER_HIST_BOUNDS	14	/* 1, 2, 4, ... 8192 */
typedef struct NotifierHist
{
	pg_atomic_uint64 buckets[NOTIFIER_HIST_BOUNDS + 1];
	pg_atomic_uint64 sum;
} NotifierHist;

typedef struct NotifierShared
{
	LWLock	   *lock;
	Size		ring_size;
	uint64		fallbacks_total;	/* xacts of any database that NOTIFYed directly */
	NotifierSlot slots[NOTIFIER_SLOTS];
	NotifierHist depth;			/* events waiting when a worker pass begins */
	NotifierHist batch;			/* events per NOTIFY a worker sends */
} NotifierShared;

/* Entry header in the ring, followed by node and payload bytes. */
typedef struct RingEntry
{
	uint32		node_len;
	uint32		payload_len;
	uint32		nevents;		/* events in the payload (batch histogram) */
	uint32		unused;
	int64		commit_us;		/* Unix microseconds of the commit (the stamp) */
} RingEntry;

static NotifierShared *notifier = NULL;
static List *pending = NIL;		/* of PendingNotify, TopTransactionContext */
static List *batches = NIL;		/* built at pre-commit */
static int	reserved_slot = -1;
static uint64 reserved_bytes = 0;
static bool callbacks_registered = false;
static bool worker_warned = false;	/* this backend warned of a fallback */

PGDLLEXPORT void ChatNotifierMain(Datum arg);

/* Bytes a batch occupies in the ring. */
static Size
EntrySize(const PendingNotify *b)
{
	return MAXALIGN(sizeof(RingEntry) + strlen(b->node) + b->len);
}

/* Shared memory the notifier needs (called from the shmem request hook). */
Size
NotifierShmemSize(void)
{
	return add_size(MAXALIGN(sizeof(NotifierShared)),
					mul_size(NOTIFIER_SLOTS, (Size) chat_notifier_queue_kb * 1024));
}

/* From the shmem request hook: the rings and the notifier's own lock. */
void
NotifierShmemRequest(void)
{
	RequestAddinShmemSpace(NotifierShmemSize());
	RequestNamedLWLockTranche("chat notifier", 1);
}

/* From the shmem startup hook (AddinShmemInitLock held): attaches or creates. */
void
NotifierShmemInit(void)
{
	bool		found;

	notifier = ShmemInitStruct("chat notifier", NotifierShmemSize(), &found);
	if (!found)
	{
		int			i;

		memset(notifier, 0, sizeof(NotifierShared));
		notifier->lock = &(GetNamedLWLockTranche("chat notifier"))->lock;
		notifier->ring_size = (Size) chat_notifier_queue_kb * 1024;
		for (i = 0; i < NOTIFIER_SLOTS; i++)
			notifier->slots[i].ring_offset = MAXALIGN(sizeof(NotifierShared)) +
				(Size) i * notifier->ring_size;
		for (i = 0; i <= NOTIFIER_HIST_BOUNDS; i++)
		{
			pg_atomic_init_u64(&notifier->depth.buckets[i], 0);
			pg_atomic_init_u64(&notifier->batch.buckets[i], 0);
		}
		pg_atomic_init_u64(&notifier->depth.sum, 0);
		pg_atomic_init_u64(&notifier->batch.sum, 0);
	}
}

/* Copies len bytes into the ring at pos, wrapping around. */
static void
RingWrite(NotifierSlot *slot, uint64 pos, const char *data, Size len)
{
	char	   *ring = (char *) notifier + slot->ring_offset;
	Size		size = notifier->ring_size;
	Size		at = pos % size;
	Size		first = Min(len, size - at);

	memcpy(ring + at, data, first);
	if (len > first)
		memcpy(ring, data + first, len - first);
}

/* Copies len bytes out of the ring at pos, wrapping around. */
static void
RingRead(NotifierSlot *slot, uint64 pos, char *data, Size len)
{
	char	   *ring = (char *) notifier + slot->ring_offset;
	Size		size = notifier->ring_size;
	Size		at = pos % size;
	Size		first = Min(len, size - at);

	memcpy(data, ring + at, first);
	if (len > first)
		memcpy(data + first, ring, len - first);
}

/* Drops the events of aborted subtransactions, hands up committed ones. */
static void
NotifierSubXactCallback(SubXactEvent event, SubTransactionId mySubid,
						SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	ListCell   *lc;

	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		List	   *kept = NIL;
		MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);

		foreach(lc, pending)
		{
			PendingNotify *p = lfirst(lc);

			if (p->nestlevel < level)
				kept = lappend(kept, p);
		}
		MemoryContextSwitchTo(old);
		pending = kept;
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		foreach(lc, pending)
		{
			PendingNotify *p = lfirst(lc);

			if (p->nestlevel >= level)
				p->nestlevel = level - 1;
		}
	}
}

/*
 * Batches the pending events per node in their order, concatenating events
 * of one node into payloads of at most CHAT_NOTIFY_MAX bytes.
 */
static List *
BuildBatches(void)
{
	List	   *out = NIL;
	List	   *nodes = NIL;
	ListCell   *lc,
			   *nc;
	MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);

	foreach(lc, pending)
	{
		PendingNotify *p = lfirst(lc);
		bool		seen = false;

		foreach(nc, nodes)
			if (strcmp(lfirst(nc), p->node) == 0)
				seen = true;
		if (!seen)
			nodes = lappend(nodes, p->node);
	}
	foreach(nc, nodes)
	{
		const char *node = lfirst(nc);
		StringInfoData buf;
		int			nevents = 0;

		initStringInfo(&buf);
		foreach(lc, pending)
		{
			PendingNotify *p = lfirst(lc);

			if (strcmp(p->node, node) != 0)
				continue;
			if (buf.len > 0 && buf.len + 1 + p->len > CHAT_NOTIFY_MAX)
			{
				PendingNotify *b = palloc0(sizeof(PendingNotify));

				b->node = pstrdup(node);
				b->payload = buf.data;
				b->len = buf.len;
				b->nevents = nevents;
				out = lappend(out, b);
				initStringInfo(&buf);
				nevents = 0;
			}
			if (buf.len > 0)
				appendStringInfoChar(&buf, '\n');
			appendBinaryStringInfo(&buf, p->payload, p->len);
			nevents++;
		}
		if (buf.len > 0)
		{
			PendingNotify *b = palloc0(sizeof(PendingNotify));

			b->node = pstrdup(node);
			b->payload = buf.data;
			b->len = buf.len;
			b->nevents = nevents;
			out = lappend(out, b);
		}
	}
	MemoryContextSwitchTo(old);
	return out;
}

/*
 * The payload as sent: "v1 <hex HMAC-SHA256>\n" then the events, the MAC
 * keyed with HMAC(chat.token_secret, "chat-notify") over the events.  Any
 * role that can connect may NOTIFY a gateway's channel; a gateway drops
 * what does not verify.  NULL (nothing to send) when no secret is set.
 */
static char *
SignPayload(const char *events, int len)
{
	static const char hex[] = "0123456789abcdef";
	unsigned char key[EVP_MAX_MD_SIZE],
				mac[EVP_MAX_MD_SIZE];
	unsigned int keylen = 0,
				maclen = 0;
	char	   *out;
	unsigned int i;

	if (chat_token_secret == NULL || chat_token_secret[0] == '\0')
		return NULL;
	if (HMAC(EVP_sha256(), chat_token_secret, strlen(chat_token_secret),
			 (const unsigned char *) "chat-notify", 11, key, &keylen) == NULL ||
		HMAC(EVP_sha256(), key, keylen, (const unsigned char *) events, len,
			 mac, &maclen) == NULL || maclen != 32)
		elog(ERROR, "could not compute the notification signature");
	OPENSSL_cleanse(key, sizeof(key));
	out = palloc(CHAT_NOTIFY_SIG_LEN + len + 1);
	memcpy(out, "v1 ", 3);
	for (i = 0; i < maclen; i++)
	{
		out[3 + 2 * i] = hex[mac[i] >> 4];
		out[4 + 2 * i] = hex[mac[i] & 15];
	}
	out[CHAT_NOTIFY_SIG_LEN - 1] = '\n';
	memcpy(out + CHAT_NOTIFY_SIG_LEN, events, len);
	out[CHAT_NOTIFY_SIG_LEN + len] = '\0';
	return out;
}

/* Signs and NOTIFYs one payload on chat_node_<node>; elevel reports a missing secret. */
static void
NotifySigned(const char *node, const char *events, int len, int elevel)
{
	char		channel[NAMEDATALEN];
	char	   *signed_payload = SignPayload(events, len);

	if (signed_payload == NULL)
	{
		ereport(elevel,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("chat.token_secret is not set: notification to node \"%s\" not sent", node),
				 errhint("Gateways accept only signed notifications; set chat.token_secret in postgresql.conf and reload.")));
		return;
	}
	snprintf(channel, sizeof(channel), "chat_node_%s", node);
	Async_Notify(channel, signed_payload);
	pfree(signed_payload);
}

/* Monitoring (issue 11): a TimestampTz as Unix microseconds, the stamps' clock. */
static int64
UnixMicros(TimestampTz ts)
{
	return (int64) ts +
		(int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * USECS_PER_SEC;
}

/*
 * Monitoring (issue 11): appends a commit stamp, the pair "" (no
 * recipients) and {"type":"committed","at":<unix us>}, to a payload being
 * built; the gateway times the events after it from there.  A gateway that
 * does not know stamps routes the pair to nobody.
 */
static void
AppendStamp(StringInfo buf, int64 unix_us)
{
	if (buf->len > 0)
		appendStringInfoChar(buf, '\n');
	appendStringInfo(buf, "\n{\"type\":\"committed\",\"at\":" INT64_FORMAT "}", unix_us);
}

/*
 * NOTIFYs the batches from the current transaction (delivered at commit),
 * each behind a stamp of this moment: just before the commit, the nearest
 * a transaction that NOTIFYs itself can tell.
 */
static void
NotifyBatches(List *list)
{
	ListCell   *lc;
	int64		now_us = UnixMicros(GetCurrentTimestamp());
	StringInfoData buf;

	initStringInfo(&buf);
	foreach(lc, list)
	{
		PendingNotify *b = lfirst(lc);

		resetStringInfo(&buf);
		AppendStamp(&buf, now_us);
		appendStringInfoChar(&buf, '\n');
		appendBinaryStringInfo(&buf, b->payload, b->len);
		NotifySigned(b->node, buf.data, buf.len, WARNING);
	}
	pfree(buf.data);
}

/*
 * Warns, once per backend, that chat.fanout_mode = worker cannot work
 * here: the transaction NOTIFYs by itself instead (delivered all the same,
 * but senders then serialise on the NOTIFY lock).  A full ring is load,
 * not a fault, and is not reported.
 */
static void
WarnWorkerFallback(const char *why, const char *hint)
{
	if (worker_warned)
		return;
	worker_warned = true;
	ereport(WARNING,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("chat.fanout_mode = worker cannot work: %s", why),
			 errdetail("Notifications are sent directly by the sending transaction."),
			 errhint("%s", hint)));
}

/* Registers the worker of a slot; false when no worker could be started. */
static bool
LaunchWorker(int slotno, Oid dboid)
{
	return ChatLaunchWorker("ChatNotifierMain", "chat notifier", dboid, Int32GetDatum(slotno));
}

/*
 * Reserves ring space for the batches; returns false (nothing reserved)
 * when the transaction must NOTIFY by itself.
 */
static bool
ReserveRing(List *list)
{
	uint64		need = 0;
	int			slotno = -1;
	int			i;
	bool		launch = false;
	ListCell   *lc;
	NotifierSlot *slot;

	foreach(lc, list)
		need += EntrySize(lfirst(lc));

	LWLockAcquire(notifier->lock, LW_EXCLUSIVE);
	for (i = 0; i < NOTIFIER_SLOTS && slotno < 0; i++)
		if (notifier->slots[i].dboid == MyDatabaseId)
			slotno = i;
	for (i = 0; i < NOTIFIER_SLOTS && slotno < 0; i++)
	{
		NotifierSlot *s = &notifier->slots[i];

		if (s->state == SLOT_FREE && s->head == s->tail && s->reserved == 0)
		{
			s->dboid = MyDatabaseId;
			slotno = i;
		}
	}
	if (slotno < 0)
	{
		notifier->fallbacks_total++;
		LWLockRelease(notifier->lock);
		return false;
	}
	slot = &notifier->slots[slotno];
	if (notifier->ring_size - (slot->head - slot->tail) - slot->reserved < need)
	{
		slot->fallbacks++;
		notifier->fallbacks_total++;
		LWLockRelease(notifier->lock);
		return false;
	}
	slot->reserved += need;
	/* a worker that never came up (fork failed, say) is replaced */
	if (slot->state == SLOT_FREE ||
		(slot->state == SLOT_STARTING &&
		 TimestampDifferenceExceeds(slot->launched_at, GetCurrentTimestamp(), 10000)))
	{
		slot->state = SLOT_STARTING;
		slot->launched_at = GetCurrentTimestamp();
		launch = true;
	}
	LWLockRelease(notifier->lock);

	reserved_slot = slotno;
	reserved_bytes = need;
	if (launch && !LaunchWorker(slotno, MyDatabaseId))
	{
		LWLockAcquire(notifier->lock, LW_EXCLUSIVE);
		slot->state = SLOT_FREE;
		slot->reserved -= need;
		slot->fallbacks++;
		notifier->fallbacks_total++;
		LWLockRelease(notifier->lock);
		reserved_slot = -1;
		reserved_bytes = 0;
		WarnWorkerFallback("could not start the notifier worker",
						   "Raise max_worker_processes, or set chat.fanout_mode = direct.");
		return false;
	}
	return true;
}

/* At commit: writes the reserved batches into the ring and wakes the worker. */
static void
FillRing(List *list)
{
	NotifierSlot *slot = &notifier->slots[reserved_slot];
	Latch	   *latch;
	ListCell   *lc;
	/* the commit stamp: the transaction is durable and visible by now */
	int64		commit_us = UnixMicros(GetCurrentTimestamp());

	LWLockAcquire(notifier->lock, LW_EXCLUSIVE);
	foreach(lc, list)
	{
		PendingNotify *b = lfirst(lc);
		RingEntry	e;

		e.node_len = strlen(b->node);
		e.payload_len = b->len;
		e.nevents = b->nevents;
		e.unused = 0;
		e.commit_us = commit_us;
		RingWrite(slot, slot->head, (char *) &e, sizeof(e));
		RingWrite(slot, slot->head + sizeof(e), b->node, e.node_len);
		RingWrite(slot, slot->head + sizeof(e) + e.node_len, b->payload, b->len);
		slot->head += EntrySize(b);
	}
	slot->reserved -= reserved_bytes;
	latch = slot->latch;
	LWLockRelease(notifier->lock);
	if (latch)
		SetLatch(latch);
}

/* Gives back a reservation of an aborted transaction. */
static void
ReleaseReservation(void)
{
	LWLockAcquire(notifier->lock, LW_EXCLUSIVE);
	notifier->slots[reserved_slot].reserved -= reserved_bytes;
	LWLockRelease(notifier->lock);
}

/* Sends, hands over or forgets the transaction's events. */
static void
NotifierXactCallback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			if (pending == NIL || chat_fanout_mode == FANOUT_MODE_OFF)
				break;
			batches = BuildBatches();
			if (chat_fanout_mode == FANOUT_MODE_WORKER && notifier == NULL)
				WarnWorkerFallback("chat is not in shared_preload_libraries",
								   "Add chat to shared_preload_libraries and restart, "
								   "or set chat.fanout_mode = direct.");
			else if (chat_fanout_mode == FANOUT_MODE_WORKER && ReserveRing(batches))
				break;
			NotifyBatches(batches);
			batches = NIL;
			break;
		case XACT_EVENT_PRE_PREPARE:
			if (pending != NIL)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that has fanned out chat events")));
			break;
		case XACT_EVENT_COMMIT:
			/* must not fail: the transaction is already committed */
			if (reserved_slot >= 0)
				FillRing(batches);
			pending = NIL;
			batches = NIL;
			reserved_slot = -1;
			break;
		case XACT_EVENT_ABORT:
			if (reserved_slot >= 0)
				ReleaseReservation();
			pending = NIL;
			batches = NIL;
			reserved_slot = -1;
			break;
		default:
			break;
	}
}

/*
 * Queues one notification payload (header line + event line, at most
 * CHAT_NOTIFY_MAX bytes) for node, to be sent if the transaction commits.
 */
void
NotifierQueue(const char *node, const char *payload, int len)
{
	MemoryContext old;
	PendingNotify *p;

	Assert(len <= CHAT_NOTIFY_MAX);
	if (!callbacks_registered)
	{
		RegisterXactCallback(NotifierXactCallback, NULL);
		RegisterSubXactCallback(NotifierSubXactCallback, NULL);
		callbacks_registered = true;
	}
	old = MemoryContextSwitchTo(TopTransactionContext);
	p = palloc(sizeof(PendingNotify));
	p->node = pstrdup(node);
	p->payload = pnstrdup(payload, len);
	p->len = len;
	p->nestlevel = GetCurrentTransactionNestLevel();
	pending = lappend(pending, p);
	MemoryContextSwitchTo(old);
}

/* Worker exit: frees the slot (keeping undelivered entries for the next). */
static void
NotifierWorkerExit(int code, Datum arg)
{
	NotifierSlot *slot = &notifier->slots[DatumGetInt32(arg)];

	LWLockAcquire(notifier->lock, LW_EXCLUSIVE);
	if (slot->pid == MyProcPid)
	{
		/* a worker that never connected (database dropped) discards */
		if (slot->state != SLOT_RUNNING)
			slot->tail = slot->head;
		slot->latch = NULL;
		slot->pid = 0;
		slot->state = SLOT_FREE;
		if (slot->head == slot->tail && slot->reserved == 0)
			slot->dboid = InvalidOid;
	}
	LWLockRelease(notifier->lock);
}

/*
 * Takes up to NOTIFIER_MAX_DRAIN bytes of entries; returns their length
 * (0: empty).  With exit_if_empty, an empty ring with nothing reserved makes
 * the slot free under the same lock, so a committing sender either sees the
 * worker or starts a new one.
 */
static Size
DrainRing(NotifierSlot *slot, char *buf, bool exit_if_empty, bool *exiting)
{
	Size		len = 0;

	LWLockAcquire(notifier->lock, LW_EXCLUSIVE);
	while (slot->tail + len < slot->head)
	{
		RingEntry	e;
		Size		size;

		RingRead(slot, slot->tail + len, (char *) &e, sizeof(e));
		size = MAXALIGN(sizeof(RingEntry) + e.node_len + e.payload_len);
		if (len + size > NOTIFIER_MAX_DRAIN)
			break;
		RingRead(slot, slot->tail + len, buf + len, size);
		len += size;
	}
	slot->tail += len;
	if (len == 0 && exit_if_empty && slot->reserved == 0)
	{
		slot->latch = NULL;
		slot->pid = 0;
		slot->state = SLOT_FREE;
		slot->dboid = InvalidOid;
		*exiting = true;
	}
	LWLockRelease(notifier->lock);
	return len;
}

/* True when entries are in the ring or ring space is reserved by a
 * committing transaction: the mark of load after a pass. */
static bool
RingBusy(NotifierSlot *slot)
{
	bool		busy;

	LWLockAcquire(notifier->lock, LW_SHARED);
	busy = slot->head != slot->tail || slot->reserved > 0;
	LWLockRelease(notifier->lock);
	return busy;
}

/* Monitoring (issue 11): counts one observation v in a histogram. */
static void
HistObserve(NotifierHist *h, uint64 v)
{
	int			i = 0;

	while (i < NOTIFIER_HIST_BOUNDS && v > ((uint64) 1 << i))
		i++;
	pg_atomic_fetch_add_u64(&h->buckets[i], 1);
	pg_atomic_fetch_add_u64(&h->sum, v);
}

/*
 * A commit stamp goes before an entry that committed more than this many
 * microseconds after the payload's last stamp: under load many commits
 * share one, and an event is timed from at most this long before its
 * commit (its latency reads at most 0.1 ms long).
 */
#define STAMP_RESOLUTION_US 100

/*
 * NOTIFYs drained entries in one transaction, merging same-node neighbours;
 * each payload carries commit stamps for the gateways' delivery latency.
 */
static void
SendDrained(char *buf, Size len)
{
	StringInfoData payload;
	char		node[NAMEDATALEN];
	Size		off = 0;
	int64		stamp = 0;		/* the payload's last stamp (0: none yet) */
	uint64		batch = 0,		/* events in the payload */
				depth = 0;		/* events in the pass */

	initStringInfo(&payload);
	node[0] = '\0';
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	while (off < len)
	{
		RingEntry	e;
		char	   *n;
		bool		new_stamp;

		memcpy(&e, buf + off, sizeof(e));
		n = buf + off + sizeof(e);
		new_stamp = stamp == 0 || e.commit_us - stamp > STAMP_RESOLUTION_US;
		/* one entry and one stamp always fit (CHAT_NOTIFY_MAX keeps room) */
		if (payload.len > 0 &&
			(strncmp(node, n, e.node_len) != 0 || node[e.node_len] != '\0' ||
			 payload.len + 1 + (new_stamp ? CHAT_NOTIFY_STAMP_MAX : 0) + e.payload_len >
			 CHAT_NOTIFY_MAX + CHAT_NOTIFY_STAMP_MAX))
		{
			NotifySigned(node, payload.data, payload.len, LOG);
			HistObserve(&notifier->batch, batch);
			resetStringInfo(&payload);
			stamp = 0;
			batch = 0;
			new_stamp = true;
		}
		if (new_stamp)
		{
			AppendStamp(&payload, e.commit_us);
			stamp = e.commit_us;
		}
		if (payload.len > 0)
			appendStringInfoChar(&payload, '\n');
		memcpy(node, n, Min(e.node_len, NAMEDATALEN - 1));
		node[Min(e.node_len, NAMEDATALEN - 1)] = '\0';
		appendBinaryStringInfo(&payload, n + e.node_len, e.payload_len);
		batch += e.nevents;
		depth += e.nevents;
		off += MAXALIGN(sizeof(RingEntry) + e.node_len + e.payload_len);
	}
	if (payload.len > 0)
	{
		NotifySigned(node, payload.data, payload.len, LOG);
		HistObserve(&notifier->batch, batch);
	}
	HistObserve(&notifier->depth, depth);
	CommitTransactionCommand();
	pfree(payload.data);
}

/*
 * Worker start: claims the slot (exits when another worker serves it, or
 * its database is gone), connects to the slot's database and marks the
 * slot running.
 */
static void
WorkerAttach(int slotno)
{
	NotifierSlot *slot = &notifier->slots[slotno];
	Oid			dboid;

	LWLockAcquire(notifier->lock, LW_EXCLUSIVE);
	if (slot->pid != 0 || slot->state != SLOT_STARTING)
	{
		/* another worker serves the slot (a late start of a replaced one) */
		LWLockRelease(notifier->lock);
		proc_exit(0);
	}
	dboid = slot->dboid;
	slot->pid = MyProcPid;
	LWLockRelease(notifier->lock);
	before_shmem_exit(NotifierWorkerExit, Int32GetDatum(slotno));
	if (!OidIsValid(dboid))
		proc_exit(0);

	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	pgstat_report_appname("chat notifier");
	/*
	 * Nothing the worker commits needs to be durable (NOTIFY is delivered
	 * at commit either way); waiting for WAL flushes would only slow it.
	 */
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);

	LWLockAcquire(notifier->lock, LW_EXCLUSIVE);
	slot->latch = MyLatch;
	slot->state = SLOT_RUNNING;
	LWLockRelease(notifier->lock);
}

/* Background worker: NOTIFYs what committed senders of its database queued. */
void
ChatNotifierMain(Datum arg)
{
	int			slotno = DatumGetInt32(arg);
	NotifierSlot *slot = &notifier->slots[slotno];
	char	   *buf;
	MemoryContext pass;
	TimestampTz idle_since;

	pqsignal(SIGTERM, die);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();
	WorkerAttach(slotno);

	idle_since = GetCurrentTimestamp();
	buf = MemoryContextAlloc(TopMemoryContext, NOTIFIER_MAX_DRAIN);
	pass = AllocSetContextCreate(TopMemoryContext, "chat notifier pass",
								 ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		Size		len;
		bool		exiting = false;
		bool		idle = TimestampDifferenceExceeds(idle_since, GetCurrentTimestamp(),
													  NOTIFIER_IDLE_MS);

		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		len = DrainRing(slot, buf, idle, &exiting);
		if (exiting)
			proc_exit(0);
		if (len > 0)
		{
			MemoryContext old = MemoryContextSwitchTo(pass);

			pgstat_report_activity(STATE_RUNNING, "notify");
			SendDrained(buf, len);
			pgstat_report_activity(STATE_IDLE, NULL);
			MemoryContextSwitchTo(old);
			MemoryContextReset(pass);
			idle_since = GetCurrentTimestamp();

			/*
			 * Under load (events committed, or committing, while this pass
			 * ran), let more gather for chat.notifier_delay before the next
			 * pass: fewer, fuller notifications cost the listeners and the
			 * NOTIFY lock less.  Otherwise the ring is idle and the worker
			 * waits on its latch, so the next event goes out at once
			 * instead of waiting out the window.
			 */
			if (chat_notifier_delay > 0 && RingBusy(slot))
				(void) WaitLatch(MyLatch, WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
								 chat_notifier_delay, PG_WAIT_EXTENSION);
			continue;
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 NOTIFIER_IDLE_MS / 2, PG_WAIT_EXTENSION);
	}
}

PG_FUNCTION_INFO_V1(chat_notifier_stats);

/*
 * chat.notifier_stats(): whether the notifier's shared memory exists (the
 * library was preloaded), its ring size per database, the bytes queued and
 * the worker's pid for the current database, and how many transactions of
 * any database had to NOTIFY directly since the server started (ring full,
 * no ring free, or no worker: slower, never lost).  Monitoring reads it.
 */
Datum
chat_notifier_stats(PG_FUNCTION_ARGS)
{
	TupleDesc	desc;
	Datum		values[5] = {0};
	bool		nulls[5] = {false, true, true, true, true};

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "chat.notifier_stats: return type must be a row type");
	values[0] = BoolGetDatum(notifier != NULL);
	if (notifier != NULL)
	{
		uint64		queued = 0;
		int			pid = 0;
		int			i;

		LWLockAcquire(notifier->lock, LW_SHARED);
		for (i = 0; i < NOTIFIER_SLOTS; i++)
			if (notifier->slots[i].dboid == MyDatabaseId)
			{
				queued = notifier->slots[i].head - notifier->slots[i].tail;
				pid = notifier->slots[i].state == SLOT_RUNNING ? notifier->slots[i].pid : 0;
			}
		values[1] = Int64GetDatum((int64) notifier->ring_size);
		values[2] = Int64GetDatum((int64) queued);
		values[3] = Int32GetDatum(pid);
		values[4] = Int64GetDatum((int64) notifier->fallbacks_total);
		LWLockRelease(notifier->lock);
		nulls[1] = nulls[2] = nulls[4] = false;
		nulls[3] = pid == 0;
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}

PG_FUNCTION_INFO_V1(chat_notifier_histograms);

/*
 * chat.notifier_histograms() (monitoring, issue 11): the workers' server-
 * wide histograms since the server started, one row each: "queue_depth"
 * (events waiting in the ring when a worker pass begins) and "batch_events"
 * (events per NOTIFY a worker sends).  bounds are the upper bounds; the
 * counts are cumulative like Prometheus buckets (observations <= bound),
 * with one more element for +Inf (= the count); sum adds the observations.
 * No rows when the library was not preloaded (no shared memory).
 */
Datum
chat_notifier_histograms(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	static const char *const names[2] = {"queue_depth", "batch_events"};
	int			h;

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	if (notifier == NULL)
		PG_RETURN_VOID();
	for (h = 0; h < 2; h++)
	{
		NotifierHist *hist = h == 0 ? &notifier->depth : &notifier->batch;
		Datum		bounds[NOTIFIER_HIST_BOUNDS];
		Datum		counts[NOTIFIER_HIST_BOUNDS + 1];
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};
		uint64		cum = 0;
		int			i;

		for (i = 0; i <= NOTIFIER_HIST_BOUNDS; i++)
		{
			cum += pg_atomic_read_u64(&hist->buckets[i]);
			counts[i] = Int64GetDatum((int64) cum);
			if (i < NOTIFIER_HIST_BOUNDS)
				bounds[i] = Float8GetDatum((double) ((uint64) 1 << i));
		}
		values[0] = CStringGetTextDatum(names[h]);
		values[1] = PointerGetDatum(construct_array(bounds, NOTIFIER_HIST_BOUNDS, FLOAT8OID,
													8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		values[2] = PointerGetDatum(construct_array(counts, NOTIFIER_HIST_BOUNDS + 1, INT8OID,
													8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		values[3] = Int64GetDatum((int64) pg_atomic_read_u64(&hist->sum));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	PG_RETURN_VOID();
}
