/*
 * request.c: chat.client_request, the one call behind every client frame
 * (docs/realtime.md), in C.
 *
 * The request is dispatched by its "type" through request_types, a table
 * of {type, handler}.  The hot types (send, ack, read, typing, sync,
 * history, after) have C handlers: their fields are read straight from the
 * jsonb, send and typing call the C implementations (SendMessage,
 * SendTyping) directly, ack and read are chat.ack and chat.mark_read
 * redone in C on saved plans (those SQL functions stay for SQL callers),
 * and so are sync, history and after (chat.sync, chat.history,
 * chat.messages_after), their messages turned into JSON here by
 * AppendMessageJson (the shape of chat.message_json): no hot type calls
 * PL/pgSQL (sql/35_hotpath.sql).  Every other
 * type falls through to chat.dispatch_request (plpgsql), so request types
 * added in SQL keep working; a new C handler is one row of the table.
 *
 * The field rules are those of chat.request_text/request_bigint/
 * request_bool (25_client_request.sql), message for message: a required
 * field missing or null is 22023, a field of the wrong JSON type (or a
 * non-integer where an id is due) is 22P02, fields are read in the order
 * the plpgsql dispatcher read them, so a request with two bad fields names
 * the same one.
 *
 * Errors.  Each request runs in a subtransaction, as the plpgsql version's
 * BEGIN/EXCEPTION block did, and an error inside it becomes an error frame
 * while the caller's transaction goes on.  It stays because
 * client_request is also an SQL API: an application calling it inside its
 * own transaction is promised a frame, not an aborted transaction, and
 * nothing in the call tells a gateway's one-call implicit transaction from
 * such a caller.  And it is cheap: bench/send-cpu.sh with the
 * subtransaction compiled out measured a send through client_request at
 * 1.01x send_message's CPU, with it 1.07x (docs/realtime.md); the rest of
 * a send costs an order of magnitude more.  Errors found before any work
 * (an envelope that is not an object or has no type) are answered
 * without one.  Dropping it would make the gateway's calls a little
 * cheaper and every SQL caller's transaction die on a refused request.  As with plpgsql's WHEN OTHERS, a query
 * cancel (57014) and an assertion failure (P0004) are not turned into
 * frames: they propagate.  An unknown device raises P0002 before the
 * subtransaction (the gateway closes such a connection with 4003).
 */
#include "chat.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/resowner.h"

PG_FUNCTION_INFO_V1(chat_client_request);

/* What a handler gets: the caller and the request (a jsonb object). */
typedef struct RequestCtx
{
	text	   *node;			/* NULL when the caller passed none */
	int64		user_id;
	int32		device_id;
	Jsonb	   *request;
} RequestCtx;

/* Appends the result object of one request to result; raises on error. */
typedef void (*RequestHandler) (const RequestCtx *ctx, StringInfo result);

/* Saved plans, prepared on first use in each backend. */
static SPIPlanPtr last_seq_plan;
static SPIPlanPtr cursor_plan;
static SPIPlanPtr delivered_plan;
static SPIPlanPtr read_plan;
static SPIPlanPtr sync_convs_plan;
static SPIPlanPtr joined_plan;
static SPIPlanPtr history_plan;
static SPIPlanPtr after_plan;
static SPIPlanPtr dispatch_plan;
static SPIPlanPtr to_device_plan;

/* A jsonb value as its text (what v::text prints in SQL). */
static char *
JsonbValueText(JsonbValue *v)
{
	Jsonb	   *j = JsonbValueToJsonb(v);

	return JsonbToCString(NULL, &j->root, VARSIZE(j));
}

/*
 * The field of the request; NULL when absent or JSON null and optional,
 * 22023 when so and required (chat.request_field).  *v is the storage.
 */
static JsonbValue *
RequestField(const RequestCtx *ctx, const char *field, bool required, JsonbValue *v)
{
	JsonbValue *f = getKeyJsonValueFromContainer(&ctx->request->root, field,
												 strlen(field), v);

	if (f == NULL || f->type == jbvNull)
	{
		if (required)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("request field \"%s\" is missing", field)));
		return NULL;
	}
	return f;
}

/*
 * The field as text: a string's contents or a number's digits; NULL when
 * absent and optional; 22P02 for another JSON type (chat.request_text).
 */
static char *
RequestText(const RequestCtx *ctx, const char *field, bool required)
{
	JsonbValue	v;
	JsonbValue *f = RequestField(ctx, field, required, &v);

	if (f == NULL)
		return NULL;
	if (f->type == jbvString)
		return pnstrdup(f->val.string.val, f->val.string.len);
	if (f->type == jbvNumeric)
		return DatumGetCString(DirectFunctionCall1(numeric_out,
												   NumericGetDatum(f->val.numeric)));
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
			 errmsg("request field \"%s\" must be a string, not %s", field, JsonbValueText(f))));
	return NULL;				/* not reached */
}

/* True when t matches ^-?[0-9]{1,19}$, the integer rule of request_bigint. */
static bool
IsRequestInteger(const char *t)
{
	int			digits = 0;

	if (*t == '-')
		t++;
	for (; *t; t++, digits++)
		if (*t < '0' || *t > '9')
			return false;
	return digits >= 1 && digits <= 19;
}

/*
 * The field as a bigint (a JSON integer or a string of digits) into *out;
 * false when absent and optional (chat.request_bigint: 22P02 otherwise,
 * and the bigint input's 22003 for 19 digits beyond its range).
 */
static bool
RequestInt64(const RequestCtx *ctx, const char *field, bool required, int64 *out)
{
	char	   *t = RequestText(ctx, field, required);

	if (t == NULL)
		return false;
	if (!IsRequestInteger(t))
	{
		JsonbValue	v;

		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("request field \"%s\" must be an integer, not %s", field,
						JsonbValueText(RequestField(ctx, field, true, &v)))));
	}
	*out = DatumGetInt64(DirectFunctionCall1(int8in, CStringGetDatum(t)));
	return true;
}

/* An optional page limit as an integer: dflt when absent, 22003 beyond
 * int4 (the plpgsql dispatcher's ::integer); the range is the SQL
 * function's rule (check_limit). */
static int32
RequestLimit(const RequestCtx *ctx, int32 dflt)
{
	int64		lim;

	if (!RequestInt64(ctx, "limit", false, &lim))
		return dflt;
	if (lim < PG_INT32_MIN || lim > PG_INT32_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("integer out of range")));
	return (int32) lim;
}

/* The field as a boolean; dflt when absent (chat.request_bool). */
static bool
RequestBool(const RequestCtx *ctx, const char *field, bool dflt)
{
	JsonbValue	v;
	JsonbValue *f = RequestField(ctx, field, false, &v);

	if (f == NULL)
		return dflt;
	if (f->type != jbvBool)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("request field \"%s\" must be true or false, not %s", field,
						JsonbValueText(f))));
	return f->val.boolean;
}

/*
 * The field as a bigint[] (a JSON array of integers or strings of digits,
 * chat.request_ids); NULL when absent, null or empty; 22P02 otherwise.
 */
static ArrayType *
RequestIds(const RequestCtx *ctx, const char *field)
{
	JsonbValue	v;
	JsonbValue *f = RequestField(ctx, field, false, &v);
	Datum	   *ids;
	int			n,
				i;

	if (f == NULL)
		return NULL;
	if (f->type != jbvBinary || !JsonContainerIsArray(f->val.binary.data))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("request field \"%s\" must be an array of integers, not %s", field,
						JsonbValueText(f))));
	n = JsonContainerSize(f->val.binary.data);
	if (n == 0)
		return NULL;
	ids = palloc(sizeof(Datum) * n);
	for (i = 0; i < n; i++)
	{
		JsonbValue *e = getIthJsonbValueFromContainer(f->val.binary.data, i);
		char	   *t = NULL;

		if (e->type == jbvString)
			t = pnstrdup(e->val.string.val, e->val.string.len);
		else if (e->type == jbvNumeric)
			t = DatumGetCString(DirectFunctionCall1(numeric_out,
													NumericGetDatum(e->val.numeric)));
		if (t == NULL || !IsRequestInteger(t))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
					 errmsg("request field \"%s\" must be an array of integers, not %s", field,
							JsonbValueText(f))));
		ids[i] = DirectFunctionCall1(int8in, CStringGetDatum(t));
	}
	return construct_array(ids, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE);
}

/* Appends the rows of the last SPI result (READER_COLUMNS) as message
 * objects (chat.message_json), comma separated, each preceded by a comma
 * when *first is false (then cleared); returns how many. */
static uint64
AppendMessageItems(StringInfo buf, bool *first)
{
	TupleDesc	desc = SPI_tuptable->tupdesc;
	uint64		i;

	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		ChatMessage msg;
		bool		isnull;
		Datum		d;
		TimestampTz edited_at = 0,
					deleted_at = 0;

		memset(&msg, 0, sizeof(msg));
		msg.conversation_id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		msg.seq = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
		msg.sender_id = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
		d = SPI_getbinval(tup, desc, 4, &isnull);
		msg.sender_device = isnull ? 0 : DatumGetInt32(d);
		d = SPI_getbinval(tup, desc, 5, &isnull);
		msg.kind = isnull ? NULL : TextDatumGetCString(d);
		d = SPI_getbinval(tup, desc, 6, &isnull);
		msg.body = isnull ? NULL : TextDatumGetCString(d);
		d = SPI_getbinval(tup, desc, 7, &isnull);
		msg.client_msg_id = isnull ? NULL : TextDatumGetCString(d);
		d = SPI_getbinval(tup, desc, 8, &isnull);
		msg.reply_to = isnull ? 0 : DatumGetInt64(d);
		d = SPI_getbinval(tup, desc, 9, &isnull);
		msg.created_at = isnull ? DT_NOBEGIN : DatumGetTimestampTz(d);
		d = SPI_getbinval(tup, desc, 10, &isnull);
		if (!isnull)
			edited_at = DatumGetTimestampTz(d);
		d = SPI_getbinval(tup, desc, 11, &isnull);
		if (!isnull)
			deleted_at = DatumGetTimestampTz(d);
		d = SPI_getbinval(tup, desc, 12, &isnull);
		msg.target = isnull ? 0 : DatumGetInt64(d);
		d = SPI_getbinval(tup, desc, 13, &isnull);
		msg.attachments = isnull ? NULL : TextDatumGetCString(d);
		{
			bool		mnull,
						rnull;
			Datum		md = SPI_getbinval(tup, desc, 14, &mnull);
			Datum		rd = SPI_getbinval(tup, desc, 15, &rnull);

			msg.extra = MessageExtraJson(msg.kind, mnull ? NULL : DatumGetArrayTypeP(md),
										 rnull ? NULL : DatumGetJsonbP(rd));
		}
		if (!*first)
			appendStringInfoChar(buf, ',');
		*first = false;
		AppendMessageJson(buf, &msg, edited_at, deleted_at, false);
	}
	return SPI_processed;
}

/* Appends the rows of the last SPI result (READER_COLUMNS) as a JSON array
 * of message objects (chat.messages_json); returns how many. */
static uint64
AppendMessageRows(StringInfo buf)
{
	bool		first = true;
	uint64		n;

	appendStringInfoChar(buf, '[');
	n = AppendMessageItems(buf, &first);
	appendStringInfoChar(buf, ']');
	return n;
}

/* "send": chat.send_message in C; result {conversation, seq, created_at,
 * duplicate}.  A body that is there but not a string is 22P02 before the
 * other fields (as in the plpgsql dispatcher). */
static void
HandleSend(const RequestCtx *ctx, StringInfo result)
{
	JsonbValue	v;
	JsonbValue *body = RequestField(ctx, "body", false, &v);
	SendArgs	a;
	SendResult	r;
	char	   *t;

	if (body != NULL && body->type != jbvString)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("request field \"body\" must be a string")));
	memset(&a, 0, sizeof(a));
	a.sender = ctx->user_id;
	a.sender_device = ctx->device_id;
	a.device_checked = true;	/* RequireRequestDevice, this call */
	RequestInt64(ctx, "conversation", true, &a.conversation_id);
	/* media (issue 13): a message with attachments may have no caption */
	{
		JsonbValue	av;
		JsonbValue *att = RequestField(ctx, "attachments", false, &av);

		if (att != NULL)
		{
			if (att->type != jbvBinary || !JsonContainerIsArray(att->val.binary.data))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
						 errmsg("request field \"attachments\" must be an array of upload ids")));
			a.attachments = JsonbValueToJsonb(att);
		}
	}
	t = RequestText(ctx, "body", a.attachments == NULL);
	a.body = cstring_to_text(t ? t : "");
	t = RequestText(ctx, "client_msg_id", false);
	a.client_msg_id = t ? cstring_to_text(t) : NULL;
	/* absent: 0, "none"; an explicit 0 is none in send_message too */
	RequestInt64(ctx, "reply_to", false, &a.reply_to);
	a.mentions = RequestIds(ctx, "mentions");
	/* absent: text; "e2e" in an end-to-end encrypted conversation */
	a.kind = RequestText(ctx, "kind", false);

	SendMessage(&a, &r);
	appendStringInfo(result, "{\"conversation\":" INT64_FORMAT ",\"seq\":" INT64_FORMAT
					 ",\"created_at\":", a.conversation_id, r.seq);
	AppendJsonTimestamp(result, r.created_at);
	appendStringInfo(result, ",\"duplicate\":%s}", r.duplicate ? "true" : "false");
}

/* The last_seq of a conversation (it exists: the caller holds a member
 * row of it).  Caller is connected to SPI. */
static int64
LastSeq(int64 conversation_id)
{
	Oid			types[1] = {INT8OID};
	Datum		args[1] = {Int64GetDatum(conversation_id)};
	bool		isnull;

	ChatPrepare(&last_seq_plan, "SELECT last_seq FROM chat.conversations WHERE id = $1",
				1, types);
	ChatExecute(last_seq_plan, args, NULL, false, 1, SPI_OK_SELECT, "last_seq lookup");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("conversation " INT64_FORMAT " does not exist", conversation_id)));
	return ChatSpiInt64(0, 1, &isnull);
}

/*
 * "ack": chat.ack in C, step for step: the device has stored everything up
 * to seq; moves its cursor and the member's delivered_seq forward (never
 * back) and sends delivery receipts; result {}.  chat.ack's device check
 * is client_request's, made at the start of this call.
 */
static void
HandleAck(const RequestCtx *ctx, StringInfo result)
{
	Oid			cursor_types[4] = {INT8OID, INT4OID, INT8OID, INT8OID};
	Oid			delivered_types[3] = {INT8OID, INT8OID, INT8OID};
	int64		conv,
				upto,
				delivered,
				read_seq,
				last;
	Datum		args[4];

	RequestInt64(ctx, "conversation", true, &conv);
	RequestInt64(ctx, "seq", true, &upto);
	if (upto < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("seq " INT64_FORMAT " is not a valid ack", upto)));
	ChatSpiConnect();
	LockMember(ctx->user_id, conv, &delivered, &read_seq);
	last = LastSeq(conv);
	if (upto > last)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("seq " INT64_FORMAT " is beyond the last seq " INT64_FORMAT
						" of conversation " INT64_FORMAT, upto, last, conv),
				 errhint("Ack only messages the device has received.")));
	ChatPrepare(&cursor_plan,
				"INSERT INTO chat.device_cursors AS dc (user_id, device_id, conversation_id, acked_seq)"
				" VALUES ($1, $2, $3, $4)"
				" ON CONFLICT (user_id, device_id, conversation_id) DO UPDATE"
				"    SET acked_seq = EXCLUDED.acked_seq"
				"  WHERE dc.acked_seq < EXCLUDED.acked_seq", 4, cursor_types);
	args[0] = Int64GetDatum(ctx->user_id);
	args[1] = Int32GetDatum(ctx->device_id);
	args[2] = Int64GetDatum(conv);
	args[3] = Int64GetDatum(upto);
	ChatExecute(cursor_plan, args, NULL, false, 0, SPI_OK_INSERT, "cursor upsert");
	if (upto > delivered)
	{
		ChatPrepare(&delivered_plan,
					"UPDATE chat.members SET delivered_seq = $3"
					" WHERE conversation_id = $1 AND user_id = $2", 3, delivered_types);
		args[0] = Int64GetDatum(conv);
		args[1] = Int64GetDatum(ctx->user_id);
		args[2] = Int64GetDatum(upto);
		ChatExecute(delivered_plan, args, NULL, false, 0, SPI_OK_UPDATE, "delivered_seq update");
		FanoutReceipt(conv, ctx->user_id, delivered, upto, "delivered");
	}
	ChatSpiFinish();
	appendStringInfoString(result, "{}");
}

/*
 * "read": chat.mark_read in C, step for step: the user has read everything
 * up to seq (capped at last_seq); moves read_seq (and delivered_seq with
 * it) forward, sends read receipts and a read_state event to the user's
 * devices; result {}.
 */
static void
HandleRead(const RequestCtx *ctx, StringInfo result)
{
	Oid			types[3] = {INT8OID, INT8OID, INT8OID};
	int64		conv,
				seq,
				upto,
				delivered,
				read_seq;
	Datum		args[3];
	int64		reader = ctx->user_id;

	RequestInt64(ctx, "conversation", true, &conv);
	RequestInt64(ctx, "seq", true, &seq);
	if (seq < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("seq " INT64_FORMAT " is not a valid read mark", seq)));
	ChatSpiConnect();
	LockMember(reader, conv, &delivered, &read_seq);
	upto = Min(seq, LastSeq(conv));
	if (upto > read_seq)
	{
		ChatPrepare(&read_plan,
					"UPDATE chat.members SET read_seq = $3,"
					"       delivered_seq = GREATEST(delivered_seq, $3)"
					" WHERE conversation_id = $1 AND user_id = $2", 3, types);
		args[0] = Int64GetDatum(conv);
		args[1] = Int64GetDatum(reader);
		args[2] = Int64GetDatum(upto);
		ChatExecute(read_plan, args, NULL, false, 0, SPI_OK_UPDATE, "read_seq update");
		FanoutReceipt(conv, reader, read_seq, upto, "read");
		/* the text chat.fanout_event makes of the jsonb of mark_read */
		FanoutToUsers(conv, &reader, 1, PG_INT64_MIN,
					  psprintf("{\"read\": " INT64_FORMAT ", \"type\": \"read_state\","
							   " \"conversation\": " INT64_FORMAT "}", upto, conv),
					  NULL);
	}
	ChatSpiFinish();
	appendStringInfoString(result, "{}");
}

/* "typing": the C typing event; result {}. */
static void
HandleTyping(const RequestCtx *ctx, StringInfo result)
{
	int64		conv;

	RequestInt64(ctx, "conversation", true, &conv);
	SendTyping(ctx->user_id, conv, RequestBool(ctx, "typing", true));
	appendStringInfoString(result, "{}");
}

/*
 * The readers of sync, history and after: chat.sync, chat.history and
 * chat.messages_after (12_messages.sql, plpgsql, kept for SQL callers)
 * redone in C on saved plans, step for step and with their errors, so the
 * hot request types run no plpgsql.  Like those STABLE functions, every
 * query of one request reads the snapshot of the calling statement
 * (read_only SPI).  The message columns are those of chat.message_view in
 * its order, an entry's body and reactions hidden from a member who joined
 * after its target (x.target <= joined_seq), and a message past its
 * expires_at shown as a tombstone (chat.message_expired), as in the SQL
 * functions.
 */
#define READER_COLUMNS \
	"x.conversation_id, x.seq, x.sender_id, x.sender_device, x.kind," \
	" CASE WHEN x.target <= $3 OR chat.message_expired(x) THEN NULL ELSE x.body END," \
	" x.client_msg_id, x.reply_to, x.created_at, x.edited_at," \
	" CASE WHEN x.expires_at <= now() THEN x.expires_at ELSE x.deleted_at END, x.target," \
	" (CASE WHEN chat.message_expired(x) THEN NULL ELSE x.attachments END)::text," \
	" CASE WHEN chat.message_expired(x) THEN NULL ELSE x.mentions END," \
	" CASE WHEN x.target <= $3 OR chat.message_expired(x) THEN NULL ELSE x.reactions END"

/* chat.check_limit: 22023 unless lim is between 1 and 1000. */
static void
CheckLimit(int32 lim)
{
	if (lim < 1 || lim > 1000)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("limit %d is out of range", lim),
				 errhint("Pass a limit between 1 and 1000 and page.")));
}

/* chat.require_member(user, conversation) for the readers: the member's
 * joined_seq, or the errors of require_member (RaiseNotMember).  Caller
 * is connected to SPI. */
static int64
JoinedSeq(int64 user_id, int64 conversation_id)
{
	Oid			types[2] = {INT8OID, INT8OID};
	Datum		args[2] = {Int64GetDatum(conversation_id), Int64GetDatum(user_id)};
	bool		isnull;

	ChatPrepare(&joined_plan,
				"SELECT joined_seq FROM chat.members"
				" WHERE conversation_id = $1 AND user_id = $2 AND left_at IS NULL", 2, types);
	ChatExecute(joined_plan, args, NULL, true, 1, SPI_OK_SELECT, "membership lookup");
	if (SPI_processed == 0)
		RaiseNotMember(user_id, conversation_id);
	return ChatSpiInt64(0, 1, &isnull);
}

/* Up to lim messages of conversation_id after from_seq, ascending, for a
 * member who joined at joined_seq (the query of chat.messages_after, and
 * of each conversation of chat.sync).  Caller is connected to SPI. */
static void
MessagesAfter(int64 conversation_id, int64 from_seq, int64 joined_seq, int32 lim)
{
	Oid			types[4] = {INT8OID, INT8OID, INT8OID, INT4OID};
	Datum		args[4] = {Int64GetDatum(conversation_id), Int64GetDatum(from_seq),
	Int64GetDatum(joined_seq), Int32GetDatum(lim)};

	ChatPrepare(&after_plan, "SELECT " READER_COLUMNS " FROM chat.messages x"
				" WHERE x.conversation_id = $1 AND x.seq > $2 ORDER BY x.seq LIMIT $4",
				4, types);
	ChatExecute(after_plan, args, NULL, true, 0, SPI_OK_SELECT, "messages_after");
}

/*
 * "sync": a page of chat.sync; result {messages, more}, plus "to_device"
 * (the oldest 100 envelopes of the device's e2e inbox, 30_e2e.sql) when
 * the inbox is not empty; a full page of those makes more true as well.
 * chat.sync walks the conversations with news in id order, each from the
 * device's cursor (or the member's joined_seq), and stops once lim
 * messages are taken.  Its require_device is client_request's, made at
 * the start of this call.
 */
static void
HandleSync(const RequestCtx *ctx, StringInfo result)
{
	Oid			types[3] = {INT8OID, INT4OID, INT4OID};
	int32		lim = RequestLimit(ctx, 500);
	Datum		args[3] = {Int64GetDatum(ctx->user_id), Int32GetDatum(ctx->device_id),
	Int32GetDatum(lim)};
	int64	   *convs;
	uint64		nconvs,
				i;
	int64		room = lim;
	bool		first = true;
	bool		more;

	CheckLimit(lim);
	ChatSpiConnect();
	ChatPrepare(&sync_convs_plan,
				"SELECT m.conversation_id, GREATEST(coalesce(dc.acked_seq, 0), m.joined_seq),"
				"       m.joined_seq"
				"  FROM chat.members m"
				"  JOIN chat.conversations c ON c.id = m.conversation_id"
				"  LEFT JOIN chat.device_cursors dc"
				"         ON dc.user_id = m.user_id AND dc.device_id = $2"
				"        AND dc.conversation_id = m.conversation_id"
				" WHERE m.user_id = $1 AND m.left_at IS NULL"
				"   AND c.last_seq > GREATEST(coalesce(dc.acked_seq, 0), m.joined_seq)"
				" ORDER BY m.conversation_id", 2, types);
	ChatExecute(sync_convs_plan, args, NULL, true, 0, SPI_OK_SELECT, "sync conversations");
	nconvs = SPI_processed;
	convs = palloc(sizeof(int64) * 3 * (nconvs + 1));
	for (i = 0; i < nconvs; i++)
	{
		bool		isnull;

		convs[3 * i] = ChatSpiInt64(i, 1, &isnull);
		convs[3 * i + 1] = ChatSpiInt64(i, 2, &isnull);
		convs[3 * i + 2] = ChatSpiInt64(i, 3, &isnull);
	}
	appendStringInfoString(result, "{\"messages\":[");
	for (i = 0; i < nconvs && room > 0; i++)
	{
		MessagesAfter(convs[3 * i], convs[3 * i + 1], convs[3 * i + 2], (int32) room);
		room -= AppendMessageItems(result, &first);
	}
	appendStringInfoChar(result, ']');
	more = room <= 0;
	/* E2E to-device inbox (30_e2e.sql): one index probe when empty. */
	{
		bool		isnull;
		Datum		d;

		ChatPrepare(&to_device_plan,
					"SELECT chat.to_device_pending($1, $2, 100), count(*)"
					"  FROM (SELECT FROM chat.to_device t WHERE t.user_id = $1 AND t.device_id = $2"
					"         LIMIT 100) x", 2, types);
		ChatExecute(to_device_plan, args, NULL, false, 0, SPI_OK_SELECT, "to_device inbox");
		if (ChatSpiInt64(0, 2, &isnull) > 0)
		{
			Jsonb	   *j;

			d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
			j = DatumGetJsonbP(d);
			appendStringInfoString(result, ",\"to_device\":");
			JsonbToCString(result, &j->root, VARSIZE(j));
			more = more || ChatSpiInt64(0, 2, &isnull) >= 100;
		}
	}
	appendStringInfo(result, ",\"more\":%s}", more ? "true" : "false");
	ChatSpiFinish();
}

/* "history": chat.history(user, conversation, before_seq, limit), the lim
 * messages just below before_seq (or the newest) after the member's
 * joined_seq, ascending; result {messages}. */
static void
HandleHistory(const RequestCtx *ctx, StringInfo result)
{
	Oid			types[4] = {INT8OID, INT8OID, INT8OID, INT4OID};
	int64		conv,
				before = PG_INT64_MAX;
	int32		lim;
	Datum		args[4];

	RequestInt64(ctx, "conversation", true, &conv);
	RequestInt64(ctx, "before_seq", false, &before);
	lim = RequestLimit(ctx, 50);
	CheckLimit(lim);
	ChatSpiConnect();
	args[0] = Int64GetDatum(conv);
	args[1] = Int64GetDatum(before);
	args[2] = Int64GetDatum(JoinedSeq(ctx->user_id, conv));
	args[3] = Int32GetDatum(lim);
	ChatPrepare(&history_plan, "SELECT * FROM ("
				"SELECT " READER_COLUMNS " FROM chat.messages x"
				" WHERE x.conversation_id = $1 AND x.seq > $3 AND x.seq < $2"
				" ORDER BY x.seq DESC LIMIT $4) page ORDER BY page.seq", 4, types);
	ChatExecute(history_plan, args, NULL, true, 0, SPI_OK_SELECT, "history");
	appendStringInfoString(result, "{\"messages\":");
	AppendMessageRows(result);
	appendStringInfoChar(result, '}');
	ChatSpiFinish();
}

/* "after": chat.messages_after(user, conversation, after_seq, limit), up
 * to lim messages after after_seq and the member's joined_seq, ascending;
 * result {messages}. */
static void
HandleAfter(const RequestCtx *ctx, StringInfo result)
{
	int64		conv,
				after,
				joined;
	int32		lim;

	RequestInt64(ctx, "conversation", true, &conv);
	RequestInt64(ctx, "after_seq", true, &after);
	lim = RequestLimit(ctx, 500);
	CheckLimit(lim);
	ChatSpiConnect();
	joined = JoinedSeq(ctx->user_id, conv);
	MessagesAfter(conv, Max(after, joined), joined, lim);
	appendStringInfoString(result, "{\"messages\":");
	AppendMessageRows(result);
	appendStringInfoChar(result, '}');
	ChatSpiFinish();
}

/* Every other type: chat.dispatch_request (plpgsql), which also raises
 * 22023 for a type nobody knows. */
static void
HandleInSql(const RequestCtx *ctx, StringInfo result)
{
	Oid			types[4] = {TEXTOID, INT8OID, INT4OID, JSONBOID};
	Datum		args[4] = {PointerGetDatum(ctx->node), Int64GetDatum(ctx->user_id),
	Int32GetDatum(ctx->device_id), JsonbPGetDatum(ctx->request)};
	char		nulls[4] = {ctx->node ? ' ' : 'n', ' ', ' ', ' '};
	bool		isnull;
	Datum		d;

	ChatSpiConnect();
	ChatPrepare(&dispatch_plan, "SELECT chat.dispatch_request($1, $2, $3, $4)", 4, types);
	ChatExecute(dispatch_plan, args, nulls, false, 0, SPI_OK_SELECT, "dispatch_request");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		appendStringInfoString(result, "null");
	else
	{
		Jsonb	   *j = DatumGetJsonbP(d);

		JsonbToCString(result, &j->root, VARSIZE(j));
	}
	ChatSpiFinish();
}

/* The request types with a handler of their own; the rest go to SQL. */
static const struct
{
	const char *type;
	RequestHandler handler;
}			request_types[] =
{
	{"send", HandleSend},
	{"ack", HandleAck},
	{"read", HandleRead},
	{"typing", HandleTyping},
	{"sync", HandleSync},
	{"history", HandleHistory},
	{"after", HandleAfter},
};

/* The handler of a request type (HandleInSql when it has none here). */
static RequestHandler
FindHandler(const char *type, int len)
{
	int			i;

	for (i = 0; i < lengthof(request_types); i++)
		if (strlen(request_types[i].type) == len &&
			memcmp(request_types[i].type, type, len) == 0)
			return request_types[i].handler;
	return HandleInSql;
}

/* Raises P0002 unless the device exists: raised, never a frame.  One
 * index probe (hotpath.c), no SPI. */
static void
RequireRequestDevice(bool user_null, int64 user_id, bool device_null, int32 device_id)
{
	if (!user_null && !device_null && DeviceExists(user_id, device_id))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_NO_DATA_FOUND),
			 errmsg("device %s of user %s does not exist",
					device_null ? "<NULL>" : psprintf("%d", device_id),
					user_null ? "<NULL>" : psprintf(INT64_FORMAT, user_id)),
			 errhint("The device was removed or never registered; register it with "
					 "chat.register_device and issue a new token.")));
}

/* Appends an error frame (id as JSON text). */
static void
AppendErrorFrame(StringInfo frame, const char *id, const char *state, const char *message)
{
	const char *name = ConditionName(state);

	appendStringInfo(frame, "{\"id\":%s,\"type\":\"error\",\"code\":", id);
	escape_json(frame, state);
	appendStringInfoString(frame, ",\"error\":");
	escape_json(frame, name ? name : "error");
	appendStringInfoString(frame, ",\"message\":");
	escape_json(frame, message ? message : "");
	appendStringInfoChar(frame, '}');
}

/*
 * Runs handler in a subtransaction (see the head comment): appends the ok
 * frame, or, when it raised, rolls its work back and appends the error
 * frame.  Query cancels and assertion failures propagate.
 */
static void
RunRequest(RequestHandler handler, const RequestCtx *ctx, const char *id, StringInfo frame)
{
	MemoryContext oldcontext = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	int			start = frame->len;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcontext);
	PG_TRY();
	{
		appendStringInfo(frame, "{\"id\":%s,\"type\":\"ok\",\"result\":", id);
		handler(ctx, frame);
		appendStringInfoChar(frame, '}');
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcontext);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcontext);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcontext);
		CurrentResourceOwner = oldowner;
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
			edata->sqlerrcode == ERRCODE_ASSERT_FAILURE)
			ReThrowError(edata);
		frame->len = start;
		frame->data[start] = '\0';
		AppendErrorFrame(frame, id, unpack_sql_state(edata->sqlerrcode), edata->message);
		FreeErrorData(edata);
	}
	PG_END_TRY();
}

/*
 * chat.client_request(node, user_id, device_id, request) RETURNS jsonb: the
 * response frame of one client frame, with the request's id: {"id", "type":
 * "ok", "result"} or {"id", "type": "error", "code", "error", "message"}.
 */
Datum
chat_client_request(PG_FUNCTION_ARGS)
{
	RequestCtx	ctx;
	JsonbValue	v;
	JsonbValue *f;
	StringInfoData frame;
	const char *id;

	RequireRequestDevice(PG_ARGISNULL(1), PG_ARGISNULL(1) ? 0 : PG_GETARG_INT64(1),
						 PG_ARGISNULL(2), PG_ARGISNULL(2) ? 0 : PG_GETARG_INT32(2));
	memset(&ctx, 0, sizeof(ctx));
	ctx.node = PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0);
	ctx.user_id = PG_GETARG_INT64(1);
	ctx.device_id = PG_GETARG_INT32(2);
	ctx.request = PG_ARGISNULL(3) ? NULL : PG_GETARG_JSONB_P(3);
	initStringInfo(&frame);
	if (ctx.request == NULL || !JB_ROOT_IS_OBJECT(ctx.request))
	{
		AppendErrorFrame(&frame, "null", "22P02", "request is not a JSON object");
		PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(frame.data)));
	}
	f = getKeyJsonValueFromContainer(&ctx.request->root, "id", 2, &v);
	id = f ? JsonbValueText(f) : "null";
	f = getKeyJsonValueFromContainer(&ctx.request->root, "type", 4, &v);
	if (f == NULL || f->type != jbvString)
		AppendErrorFrame(&frame, id, "22P02", "request has no type");
	else
		RunRequest(FindHandler(f->val.string.val, f->val.string.len), &ctx, id, &frame);
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(frame.data)));
}
