/*
 * fanout.c: routes events to the gateway nodes of online members.
 *
 * An event goes to the online sessions of its recipients, grouped by node:
 * one payload per node of the form "<user ids, comma separated>\n<json>",
 * split into several payloads when the id list would push it past
 * CHAT_NOTIFY_MAX bytes.  Sessions of nodes whose heartbeat is older than
 * chat.node_timeout are offline.  Payloads go through notifier.c, which
 * sends them only if the transaction commits.  A live session is one of
 * chat.live_sessions (the one definition, sql/20_realtime.sql): every query
 * here reads that view.  Offline members of a message's conversation are
 * handed to push.c from the same lookup.
 */
#include "chat.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

/* Largest event (bytes) a push_outbox row carries inline; beyond: ref. */
#define PUSH_PAYLOAD_MAX 4000

/* Longest header entry: a bigint and its comma. */
#define MAX_ID_TEXT 21

PG_FUNCTION_INFO_V1(chat_fanout_event);
PG_FUNCTION_INFO_V1(chat_fanout_receipt);
PG_FUNCTION_INFO_V1(chat_fanout_message);
PG_FUNCTION_INFO_V1(chat_fanout_revoked);

/* The online users of one node. */
typedef struct NodeRoute
{
	char	   *node;
	int64	   *users;
	int			nusers;
} NodeRoute;

static SPIPlanPtr members_route_plan = NULL;
static SPIPlanPtr users_route_plan = NULL;
static SPIPlanPtr member_routes_plan = NULL;
static SPIPlanPtr senders_plan = NULL;
static SPIPlanPtr typing_routes_plan = NULL;
static SPIPlanPtr message_plan = NULL;
static SPIPlanPtr entry_routes_plan = NULL;
static SPIPlanPtr receipt_times_plan = NULL;

/*
 * Adds user to the route of node in *routes (rows come ordered by node, then
 * user; *cur is the route of the previous row).  Allocates in cxt; room for
 * remaining users is reserved when a node's route starts.
 */
static void
RouteAdd(List **routes, NodeRoute **cur, const char *node, int64 user,
		 uint64 remaining, MemoryContext cxt)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);

	if (*cur == NULL || strcmp((*cur)->node, node) != 0)
	{
		*cur = palloc0(sizeof(NodeRoute));
		(*cur)->node = pstrdup(node);
		(*cur)->users = palloc(sizeof(int64) * remaining);
		*routes = lappend(*routes, *cur);
	}
	if ((*cur)->nusers == 0 || (*cur)->users[(*cur)->nusers - 1] != user)
		(*cur)->users[(*cur)->nusers++] = user;
	MemoryContextSwitchTo(old);
}

/*
 * Reads row i of the last SPI result of a routing query: the node (col 1,
 * NULL for an offline member), the user (col 2) and, when flag is given,
 * the bool of col 3 (false when NULL).
 */
static char *
RouteRow(uint64 i, int64 *user, bool *flag)
{
	HeapTuple	tup = SPI_tuptable->vals[i];
	TupleDesc	desc = SPI_tuptable->tupdesc;
	bool		isnull;

	*user = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
	if (flag != NULL)
	{
		Datum		d = SPI_getbinval(tup, desc, 3, &isnull);

		*flag = !isnull && DatumGetBool(d);
	}
	return SPI_getvalue(tup, desc, 1);
}

/*
 * Groups the (node, user_id) rows of the last SPI result, ordered by node
 * and user, into NodeRoutes allocated in cxt, leaving out exclude_user and
 * the repeats of a user with several sessions on a node.
 */
static List *
RoutesFromResult(int64 exclude_user, MemoryContext cxt)
{
	uint64		i;
	List	   *routes = NIL;
	NodeRoute  *cur = NULL;

	for (i = 0; i < SPI_processed; i++)
	{
		int64		user;
		char	   *node = RouteRow(i, &user, NULL);

		if (user != exclude_user)
			RouteAdd(&routes, &cur, node, user, SPI_processed - i, cxt);
	}
	return routes;
}

/*
 * Finds the online sessions of the recipients, grouped by node: the given
 * users, or (users == NULL) the current members of the conversation.
 * Caller is connected to SPI; the result lives in the caller's context.
 */
static List *
OnlineRoutes(int64 conversation_id, const int64 *users, int nusers, int64 exclude_user,
			 MemoryContext cxt)
{
	Datum		args[1];

	if (users == NULL)
	{
		Oid			types[1] = {INT8OID};

		ChatPrepare(&members_route_plan,
					"SELECT l.node, m.user_id FROM chat.members m"
					" JOIN chat.live_sessions l ON l.user_id = m.user_id"
					" WHERE m.conversation_id = $1 AND m.left_at IS NULL"
					" ORDER BY 1, 2", 1, types);
		args[0] = Int64GetDatum(conversation_id);
		ChatExecute(members_route_plan, args, NULL, false, 0, SPI_OK_SELECT,
					"fanout routing query");
	}
	else
	{
		Oid			types[1] = {INT8ARRAYOID};
		Datum	   *elems = palloc(sizeof(Datum) * Max(nusers, 1));
		int			j;

		for (j = 0; j < nusers; j++)
			elems[j] = Int64GetDatum(users[j]);
		ChatPrepare(&users_route_plan,
					"SELECT l.node, l.user_id FROM chat.live_sessions l"
					" WHERE l.user_id = ANY ($1)"
					" ORDER BY 1, 2", 1, types);
		args[0] = PointerGetDatum(construct_array(elems, nusers, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		ChatExecute(users_route_plan, args, NULL, false, 0, SPI_OK_SELECT,
					"fanout routing query");
	}
	return RoutesFromResult(exclude_user, cxt);
}

/*
 * Queues event for every route, as many payloads per node as the header
 * needs.  When event is too long to fit beside even one user id, ref_event
 * (the same event without its body, "ref":true) goes instead.
 */
static void
EmitRoutes(List *routes, const char *event, const char *ref_event)
{
	ListCell   *lc;
	int			elen = strlen(event);
	StringInfoData buf;

	if (routes == NIL)
		return;
	if (elen + 1 + MAX_ID_TEXT > CHAT_NOTIFY_MAX)
	{
		if (ref_event == NULL || strlen(ref_event) + 1 + MAX_ID_TEXT > CHAT_NOTIFY_MAX)
		{
			ereport(WARNING,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("chat event of %d bytes is too large to notify", elen),
					 errdetail("Recipients will find it by sync.")));
			return;
		}
		event = ref_event;
		elen = strlen(event);
	}
	initStringInfo(&buf);
	foreach(lc, routes)
	{
		NodeRoute  *r = lfirst(lc);
		int			i;

		resetStringInfo(&buf);
		for (i = 0; i < r->nusers; i++)
		{
			char		id[MAX_ID_TEXT + 1];
			int			idlen = snprintf(id, sizeof(id), INT64_FORMAT, r->users[i]);

			if (buf.len > 0 && buf.len + 1 + idlen + 1 + elen > CHAT_NOTIFY_MAX)
			{
				appendStringInfoChar(&buf, '\n');
				appendBinaryStringInfo(&buf, event, elen);
				NotifierQueue(r->node, buf.data, buf.len);
				resetStringInfo(&buf);
			}
			if (buf.len > 0)
				appendStringInfoChar(&buf, ',');
			appendBinaryStringInfo(&buf, id, idlen);
		}
		appendStringInfoChar(&buf, '\n');
		appendBinaryStringInfo(&buf, event, elen);
		NotifierQueue(r->node, buf.data, buf.len);
	}
	pfree(buf.data);
}

/*
 * Sends event (and ref_event, see EmitRoutes) to the online devices of
 * user_ids, or of the members of conversation_id when user_ids is NULL,
 * leaving out exclude_user (PG_INT64_MIN: nobody).
 */
void
FanoutToUsers(int64 conversation_id, const int64 *user_ids, int nusers,
			  int64 exclude_user, const char *event, const char *ref_event)
{
	MemoryContext cxt = CurrentMemoryContext;
	List	   *routes;

	if (chat_fanout_mode == FANOUT_MODE_OFF)
		return;
	if (user_ids != NULL && nusers == 0)
		return;
	ChatSpiConnect();
	routes = OnlineRoutes(conversation_id, user_ids, nusers, exclude_user, cxt);
	ChatSpiFinish();
	EmitRoutes(routes, event, ref_event);
}

/*
 * Every current member of conversation $1 with the node of each of its
 * live sessions (NULL: offline), ordered by node and user, and whether an
 * offline member is to be pushed message $2.  A user with several sessions
 * on a node appears once per session; the caller skips the repeats.
 */
#define MEMBER_ROUTES \
	"SELECT l.node, m.user_id, l.node IS NULL AND " PUSH_WANTED_SQL " AS push" \
	" FROM chat.members m" \
	" LEFT JOIN chat.live_sessions l ON l.user_id = m.user_id" \
	" WHERE m.conversation_id = $1 AND m.left_at IS NULL" \
	" ORDER BY l.node, m.user_id"

/*
 * The message's routes, and push rows for the members who are offline:
 * one lookup over the members finds both; the insert runs only when
 * someone is to be pushed.  With routes false (chat.fanout_mode off) the
 * routes are dropped and only the push rows written.  Caller is connected
 * to SPI.
 */
static List *
RouteAndPush(const ChatMessage *msg, const char *payload, bool routes, MemoryContext cxt)
{
	Oid			types[2] = {INT8OID, INT8OID};
	Datum		args[2];
	List	   *result = NIL;
	Datum	   *push_ids;
	int			npush = 0;
	uint64		i;
	NodeRoute  *cur = NULL;

	args[0] = Int64GetDatum(msg->conversation_id);
	args[1] = Int64GetDatum(msg->seq);
	ChatPrepare(&member_routes_plan, MEMBER_ROUTES, 2, types);
	ChatExecute(member_routes_plan, args, NULL, false, 0, SPI_OK_SELECT, "fanout routing query");
	push_ids = palloc(sizeof(Datum) * (SPI_processed + 1));
	for (i = 0; i < SPI_processed; i++)
	{
		int64		user;
		bool		push;
		char	   *node = RouteRow(i, &user, &push);

		if (node == NULL)
		{
			if (push && user != msg->sender_id)
				push_ids[npush++] = Int64GetDatum(user);
		}
		else if (routes)
			RouteAdd(&result, &cur, node, user, SPI_processed - i, cxt);
	}
	if (npush > 0)
		QueuePushes(msg, push_ids, npush, payload);
	return result;
}

/* True for the kinds of change-log entries (edit, delete, reaction). */
static bool
IsLogEntry(const ChatMessage *msg)
{
	return msg->target != 0;
}

/*
 * The routes of an edit or reaction entry, split by what each member may
 * see: members who joined after the target (joined_seq >= target) never
 * saw it, so they get the entry without its body and emoji (*redacted);
 * the others get it whole.
 * The seq still reaches everyone, so no member's log has a hole.  Caller
 * is connected to SPI.
 */
static List *
EditEntryRoutes(const ChatMessage *msg, List **redacted, MemoryContext cxt)
{
	Oid			types[2] = {INT8OID, INT8OID};
	Datum		args[2];
	List	   *full = NIL;
	NodeRoute  *cur_full = NULL;
	NodeRoute  *cur_red = NULL;
	uint64		i;

	ChatPrepare(&entry_routes_plan,
				"SELECT l.node, m.user_id, m.joined_seq >= $2 AS redact FROM chat.members m"
				" JOIN chat.live_sessions l ON l.user_id = m.user_id"
				" WHERE m.conversation_id = $1 AND m.left_at IS NULL"
				" ORDER BY 3, 1, 2", 2, types);
	args[0] = Int64GetDatum(msg->conversation_id);
	args[1] = Int64GetDatum(msg->target);
	ChatExecute(entry_routes_plan, args, NULL, false, 0, SPI_OK_SELECT, "fanout routing query");
	*redacted = NIL;
	for (i = 0; i < SPI_processed; i++)
	{
		int64		user;
		bool		redact;
		char	   *node = RouteRow(i, &user, &redact);

		if (redact)
			RouteAdd(redacted, &cur_red, node, user, SPI_processed - i, cxt);
		else
			RouteAdd(&full, &cur_full, node, user, SPI_processed - i, cxt);
	}
	return full;
}

/*
 * Fans out a stored message: a message event to the online members
 * (including the sender's other devices; the gateway skips the sending
 * device) and push rows for the offline ones (not for system messages nor
 * change-log entries: those are no news to be woken for).  Called by the
 * write path (send.c) in the writing transaction.
 */
void
FanoutMessage(const ChatMessage *msg)
{
	StringInfoData event;
	StringInfoData ref;
	MemoryContext cxt = CurrentMemoryContext;
	List	   *routes = NIL;
	List	   *redacted = NIL;
	bool		notify = chat_fanout_mode != FANOUT_MODE_OFF;

	initStringInfo(&event);
	AppendMessageJson(&event, msg, 0, 0, false);
	initStringInfo(&ref);
	AppendMessageJson(&ref, msg, 0, 0, true);

	ChatSpiConnect();
	if (IsLogEntry(msg) && msg->body != NULL)
	{
		if (notify)
			routes = EditEntryRoutes(msg, &redacted, cxt);
	}
	else if (!MessageWantsPush(msg))
	{
		if (notify)
			routes = OnlineRoutes(msg->conversation_id, NULL, 0, PG_INT64_MIN, cxt);
	}
	else
		/* an e2e body (ciphertext) never goes into a push row */
		routes = RouteAndPush(msg, event.len <= PUSH_PAYLOAD_MAX &&
							  !(msg->kind != NULL && strcmp(msg->kind, "e2e") == 0) ?
							  event.data : ref.data, notify, cxt);
	ChatSpiFinish();
	EmitRoutes(routes, event.data, ref.data);
	if (redacted != NIL)
	{
		ChatMessage bare = *msg;

		bare.body = NULL;
		bare.extra = NULL;		/* a reaction entry's emoji */
		resetStringInfo(&event);
		AppendMessageJson(&event, &bare, 0, 0, false);
		EmitRoutes(redacted, event.data, NULL);
	}
	pfree(event.data);
	pfree(ref.data);
}

/* Text of a jsonb value, on one line. */
static char *
JsonbText(Jsonb *jb)
{
	return JsonbToCString(NULL, &jb->root, VARSIZE(jb));
}

/*
 * chat.fanout_event(conversation_id, user_ids, event): event to user_ids,
 * or to all current members when user_ids is NULL.  An event with a body
 * too large to notify goes without it, with "ref":true.
 */
Datum
chat_fanout_event(PG_FUNCTION_ARGS)
{
	int64		conversation_id = PG_ARGISNULL(0) ? 0 : PG_GETARG_INT64(0);
	Jsonb	   *event;
	char	   *text;
	char	   *ref_text = NULL;
	int64	   *users = NULL;
	int			nusers = 0;

	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("fanout event must not be null")));
	if (PG_ARGISNULL(0) && PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("fanout needs a conversation or a list of users")));
	event = PG_GETARG_JSONB_P(2);
	if (!PG_ARGISNULL(1))
	{
		ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(1);
		Datum	   *elems;
		bool	   *nulls;
		int			i;

		deconstruct_array(arr, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
						  &elems, &nulls, &nusers);
		users = palloc(sizeof(int64) * Max(nusers, 1));
		for (i = 0; i < nusers; i++)
			users[i] = nulls[i] ? PG_INT64_MIN : DatumGetInt64(elems[i]);
		if (nusers == 0)
			PG_RETURN_VOID();
	}
	text = JsonbText(event);
	if (strlen(text) + 1 + MAX_ID_TEXT > CHAT_NOTIFY_MAX)
	{
		Jsonb	   *nobody = DatumGetJsonbP(DirectFunctionCall2(jsonb_delete,
																JsonbPGetDatum(event),
																CStringGetTextDatum("body")));
		char	   *t = JsonbText(nobody);
		int			len = strlen(t);

		if (len >= 2 && t[len - 1] == '}')
		{
			t[len - 1] = '\0';
			ref_text = psprintf("%s%s\"ref\": true}", t, len > 2 ? ", " : "");
		}
	}
	FanoutToUsers(conversation_id, users, nusers, PG_INT64_MIN, text, ref_text);
	PG_RETURN_VOID();
}

/*
 * The audience of a typing event of user_id in conversation_id, in one
 * query: the user's own membership row (none: RaiseNotMember, the errors
 * of chat.require_member), and the other current members with their live
 * sessions, leaving out anyone in a block with the typist, either way.
 * Whether the typist is in any block at all is an InitPlan evaluated once
 * (two index probes), so the per-member block check runs only then.
 * Returns the routes (allocated in cxt); *audience is false when no other
 * member may see the event, online or not.  Caller is connected to SPI.
 */
List *
TypingRoutes(int64 user_id, int64 conversation_id, MemoryContext cxt, bool *audience)
{
	Oid			types[2] = {INT8OID, INT8OID};
	Datum		args[2] = {Int64GetDatum(user_id), Int64GetDatum(conversation_id)};
	List	   *routes = NIL;
	NodeRoute  *cur = NULL;
	bool		member = false;
	uint64		i;

	ChatPrepare(&typing_routes_plan,
				"SELECT l.node, m.user_id FROM chat.members m"
				" LEFT JOIN chat.live_sessions l ON l.user_id = m.user_id"
				" WHERE m.conversation_id = $2 AND m.left_at IS NULL"
				"   AND (m.user_id = $1"
				"        OR NOT (SELECT EXISTS (SELECT FROM chat.blocks WHERE blocker = $1)"
				"                    OR EXISTS (SELECT FROM chat.blocks WHERE blocked = $1))"
				"        OR NOT EXISTS (SELECT FROM chat.blocks b"
				"                        WHERE (b.blocker = $1 AND b.blocked = m.user_id)"
				"                           OR (b.blocker = m.user_id AND b.blocked = $1)))"
				" ORDER BY 1, 2", 2, types);
	ChatExecute(typing_routes_plan, args, NULL, false, 0, SPI_OK_SELECT, "typing audience");
	*audience = false;
	for (i = 0; i < SPI_processed; i++)
	{
		int64		user;
		char	   *node = RouteRow(i, &user, NULL);

		if (user == user_id)
		{
			member = true;
			continue;
		}
		*audience = true;
		if (node != NULL)
			RouteAdd(&routes, &cur, node, user, SPI_processed - i, cxt);
	}
	if (!member)
		RaiseNotMember(user_id, conversation_id);
	return routes;
}

/* Sends event along routes made by TypingRoutes (nothing when fanout is off). */
void
FanoutRoutes(List *routes, const char *event)
{
	if (chat_fanout_mode != FANOUT_MODE_OFF)
		EmitRoutes(routes, event, NULL);
}

/*
 * Receipts of kind (delivered, read) to the senders (other than the
 * reader) of the messages in (from_seq, to_seq] of the conversation, for
 * chat.fanout_receipt and C callers alike; never to the whole group.  Only
 * senders who are still members get one (a removed member learns nothing
 * more of the conversation), and only for messages: system messages and
 * change-log entries have no receipts.  No receipt passes a block
 * (chat.blocks, either way).  A reader with read_receipts off sends a
 * delivered receipt instead of a read one (reading implies delivery).
 */
void
FanoutReceipt(int64 conversation_id, int64 reader, int64 from_seq, int64 to_seq,
			  const char *kind)
{
	Oid			types[4] = {INT8OID, INT8OID, INT8OID, INT8OID};
	Datum		args[4];
	int64	   *senders;
	int			nsenders = 0;
	uint64		i;
	StringInfoData event;

	if (to_seq <= from_seq)
		return;

	/*
	 * When the watermark moved, for chat.message_info: one row per move, in
	 * the kind of the move itself (a read with read receipts off is still
	 * a read here; message_info hides it).
	 */
	ChatSpiConnect();
	{
		Oid			ttypes[4] = {INT8OID, INT8OID, TEXTOID, INT8OID};
		Datum		targs[4] = {Int64GetDatum(conversation_id), Int64GetDatum(reader),
		CStringGetTextDatum(kind), Int64GetDatum(to_seq)};

		ChatPrepare(&receipt_times_plan,
					"INSERT INTO chat.receipt_times (conversation_id, user_id, kind, seq)"
					" VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING", 4, ttypes);
		ChatExecute(receipt_times_plan, targs, NULL, false, 0, SPI_OK_INSERT, "receipt time");
	}
	if (chat_fanout_mode == FANOUT_MODE_OFF)
	{
		ChatSpiFinish();
		return;
	}
	/*
	 * One query: the senders, and beside each the reader's read_receipts
	 * (an InitPlan, evaluated once).  With no sender there is no receipt,
	 * so the setting is not needed then.
	 */
	ChatPrepare(&senders_plan,
				"SELECT s.sender_id,"
				"       (SELECT u.read_receipts FROM chat.users u WHERE u.id = $4)"
				" FROM ("
				"  SELECT DISTINCT x.sender_id FROM chat.messages x"
				"   JOIN chat.members m ON m.conversation_id = x.conversation_id"
				"                      AND m.user_id = x.sender_id AND m.left_at IS NULL"
				"  WHERE x.conversation_id = $1 AND x.seq > $2 AND x.seq <= $3"
				"    AND x.sender_id <> $4 AND x.kind NOT IN ('system', 'edit', 'delete', 'reaction')) s"
				" WHERE NOT EXISTS (SELECT FROM chat.blocks b"
				"                    WHERE (b.blocker = $4 AND b.blocked = s.sender_id)"
				"                       OR (b.blocker = s.sender_id AND b.blocked = $4))",
				4, types);
	args[0] = Int64GetDatum(conversation_id);
	args[1] = Int64GetDatum(from_seq);
	args[2] = Int64GetDatum(to_seq);
	args[3] = Int64GetDatum(reader);
	ChatExecute(senders_plan, args, NULL, false, 0, SPI_OK_SELECT, "receipt query");
	senders = MemoryContextAlloc(TopTransactionContext, sizeof(int64) * (SPI_processed + 1));
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;

		senders[nsenders++] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
														  SPI_tuptable->tupdesc, 1, &isnull));
	}
	/* A reader with read_receipts off reports delivery, never the read. */
	if (SPI_processed > 0 && strcmp(kind, "read") == 0)
	{
		bool		isnull;
		Datum		rr = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);

		if (!isnull && !DatumGetBool(rr))
			kind = "delivered";
	}
	ChatSpiFinish();

	initStringInfo(&event);
	appendStringInfo(&event, "{\"type\":\"receipt\",\"conversation\":" INT64_FORMAT
					 ",\"user\":" INT64_FORMAT ",\"%s\":" INT64_FORMAT "}",
					 conversation_id, reader, kind, to_seq);
	if (nsenders > 0)
		FanoutToUsers(conversation_id, senders, nsenders, PG_INT64_MIN, event.data, NULL);
	pfree(senders);
}

/*
 * chat.fanout_receipt(conversation_id, reader, from_seq, to_seq, kind):
 * receipts to the senders (other than the reader) of the messages in
 * (from_seq, to_seq], never to the whole group.  Only senders who are
 * still members get one (a removed member learns nothing more of the
 * conversation), and only for messages: system messages and change-log
 * entries have no receipts.
 */
Datum
chat_fanout_receipt(PG_FUNCTION_ARGS)
{
	int64		conversation_id,
				reader,
				from_seq,
				to_seq;
	char	   *kind;
	int			i;

	for (i = 0; i < 5; i++)
		if (PG_ARGISNULL(i))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("argument %d of chat.fanout_receipt must not be null", (int) i + 1)));
	conversation_id = PG_GETARG_INT64(0);
	reader = PG_GETARG_INT64(1);
	from_seq = PG_GETARG_INT64(2);
	to_seq = PG_GETARG_INT64(3);
	kind = text_to_cstring(PG_GETARG_TEXT_PP(4));
	if (strcmp(kind, "delivered") != 0 && strcmp(kind, "read") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid receipt kind \"%s\"", kind),
				 errhint("Use \"delivered\" or \"read\".")));
	FanoutReceipt(conversation_id, reader, from_seq, to_seq, kind);
	PG_RETURN_VOID();
}

/* Reads a stored message as a ChatMessage (strings in the caller's context);
 * false when it does not exist.  Caller is connected to SPI. */
static bool
LoadMessage(int64 conversation_id, int64 seq, ChatMessage *msg, MemoryContext cxt)
{
	Oid			types[2] = {INT8OID, INT8OID};
	Datum		args[2];
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;
	MemoryContext old;

	ChatPrepare(&message_plan,
				"SELECT sender_id, sender_device, kind, body, client_msg_id, reply_to, created_at,"
				" target FROM chat.messages WHERE conversation_id = $1 AND seq = $2", 2, types);
	args[0] = Int64GetDatum(conversation_id);
	args[1] = Int64GetDatum(seq);
	ChatExecute(message_plan, args, NULL, false, 1, SPI_OK_SELECT, "message query");
	if (SPI_processed == 0)
		return false;
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	old = MemoryContextSwitchTo(cxt);
	memset(msg, 0, sizeof(*msg));
	msg->conversation_id = conversation_id;
	msg->seq = seq;
	msg->sender_id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
	d = SPI_getbinval(tup, desc, 2, &isnull);
	msg->sender_device = isnull ? 0 : DatumGetInt32(d);
	msg->kind = SPI_getvalue(tup, desc, 3);
	msg->body = SPI_getvalue(tup, desc, 4);
	msg->client_msg_id = SPI_getvalue(tup, desc, 5);
	d = SPI_getbinval(tup, desc, 6, &isnull);
	msg->reply_to = isnull ? 0 : DatumGetInt64(d);
	msg->created_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 7, &isnull));
	d = SPI_getbinval(tup, desc, 8, &isnull);
	msg->target = isnull ? 0 : DatumGetInt64(d);
	MemoryContextSwitchTo(old);
	return true;
}

/* chat.fanout_message(conversation_id, seq): fans out a stored message. */
Datum
chat_fanout_message(PG_FUNCTION_ARGS)
{
	int64		conversation_id = PG_GETARG_INT64(0);
	int64		seq = PG_GETARG_INT64(1);
	ChatMessage msg;
	bool		found;
	MemoryContext cxt = CurrentMemoryContext;

	ChatSpiConnect();
	found = LoadMessage(conversation_id, seq, &msg, cxt);
	ChatSpiFinish();
	if (!found)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("message " INT64_FORMAT " of conversation " INT64_FORMAT " does not exist",
						seq, conversation_id)));
	FanoutMessage(&msg);
	PG_RETURN_VOID();
}

/*
 * chat.fanout_revoked(user_id, device_id): {"type":"revoked","user","device"}
 * to every node holding a session of that device (live or not: a node that
 * is only slow still closes it), so that the gateway closes the device's
 * connections with 4003.  remove_device calls it before deleting the
 * sessions; the event is sent at commit like any other.
 */
Datum
chat_fanout_revoked(PG_FUNCTION_ARGS)
{
	int64		user_id = PG_GETARG_INT64(0);
	int32		device_id = PG_GETARG_INT32(1);
	static SPIPlanPtr nodes_plan = NULL;
	Oid			types[2] = {INT8OID, INT4OID};
	Datum		args[2];
	MemoryContext cxt = CurrentMemoryContext;
	List	   *routes = NIL;
	NodeRoute  *cur = NULL;
	char	   *event;
	uint64		i;

	if (chat_fanout_mode == FANOUT_MODE_OFF)
		PG_RETURN_VOID();
	ChatSpiConnect();
	ChatPrepare(&nodes_plan,
				"SELECT DISTINCT node FROM chat.sessions"
				" WHERE user_id = $1 AND device_id = $2 ORDER BY 1", 2, types);
	args[0] = Int64GetDatum(user_id);
	args[1] = Int32GetDatum(device_id);
	ChatExecute(nodes_plan, args, NULL, true, 0, SPI_OK_SELECT, "revoked routing query");
	for (i = 0; i < SPI_processed; i++)
		RouteAdd(&routes, &cur, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1),
				 user_id, 1, cxt);
	ChatSpiFinish();
	event = psprintf("{\"type\":\"revoked\",\"user\":" INT64_FORMAT ",\"device\":%d}",
					 user_id, device_id);
	EmitRoutes(routes, event, NULL);
	PG_RETURN_VOID();
}
