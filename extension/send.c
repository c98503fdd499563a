/*
 * send.c: chat.send_message, the hottest path of the system, the body rules
 * it shares with chat.edit_message, and chat.append_message, through which
 * system messages and change-log entries (edits, deletes) get their seq.
 *
 * One send is two statements on saved SPI plans:
 *
 *   1. lock the conversation row and the sender's member row (FOR NO KEY
 *      UPDATE) and read last_seq and the sender's watermarks.  Locking the
 *      member row too makes a removal that commits while we wait for the
 *      lock visible: the recheck of the locked rows drops the row, and the
 *      send fails as a non-member's instead of landing after the "removed"
 *      system message;
 *   2. insert the message at last_seq + 1 with ON CONFLICT DO NOTHING on
 *      (conversation, sender, client_msg_id), and, in the same statement and
 *      only when the insert happened, store the new last_seq (and
 *      last_activity, except for log entries) and advance the sender's
 *      watermarks.
 *
 * AppendMessage (statement 2, write_plan) is the only place a seq is
 * allocated and a row enters chat.messages: send_message (user messages)
 * and append_message (system messages and change-log entries) both call it
 * after taking the conversation row lock, so the seq is allocated exactly
 * when a row is written: seqs stay gapless and a retry that lost the race to its own
 * first attempt finds that row and returns it with duplicate = true,
 * burning nothing.  Under REPEATABLE READ a concurrent sender makes step 1
 * fail with a serialization error, never a gap or a second row.
 */
#include "chat.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/tuplestore.h"

PG_FUNCTION_INFO_V1(chat_send_message);
PG_FUNCTION_INFO_V1(chat_check_body);
PG_FUNCTION_INFO_V1(chat_append_message);
PG_FUNCTION_INFO_V1(chat_send_e2e);

/* Longest client_msg_id accepted, in bytes. */
#define CHAT_MAX_CLIENT_MSG_ID_BYTES 128

/* Saved plans, prepared on first use in each backend. */
static SPIPlanPtr lock_plan;
static SPIPlanPtr append_lock_plan;
static SPIPlanPtr write_plan;
static SPIPlanPtr duplicate_plan;
static SPIPlanPtr receipt_plan;
static SPIPlanPtr mentions_plan;

/* Most users one message mentions. */
#define CHAT_MAX_MENTIONS 50

/* Prepares the plans of the send path once per backend. */
static void
PrepareSendPlans(void)
{
	Oid			lock_types[3] = {INT8OID, INT8OID, INT4OID};
	Oid			append_lock_types[2] = {INT8OID, INT8OID};
	Oid			write_types[14] = {INT8OID, INT8OID, INT8OID, INT4OID, TEXTOID,
	TEXTOID, TEXTOID, INT8OID, INT8OID, TIMESTAMPTZOID, JSONBOID, INT8ARRAYOID, JSONBOID, INT4OID};
	Oid			mentions_types[2] = {INT8OID, INT8ARRAYOID};
	Oid			duplicate_types[3] = {INT8OID, INT8OID, TEXTOID};
	Oid			receipt_types[4] = {INT8OID, INT8OID, INT8OID, INT8OID};

	/*
	 * Column 4: the peer of a direct conversation when it blocks the sender
	 * (one primary-key probe of chat.blocks; NULL otherwise).  Column 5:
	 * the sender is a plain member of a group whose settings say
	 * only_admins_send (read from the row locked anyway).  Column 6: the
	 * conversation's disappearing-messages ttl in seconds (NULL: none).
	 * Column 7: the conversation is end-to-end encrypted (settings 'e2e',
	 * 30_e2e.sql), read from the same locked row: the e2e rule costs no
	 * extra probe.
	 */
	ChatPrepare(&lock_plan,
		"SELECT c.last_seq, m.read_seq,"
		"       $3 IS NULL OR EXISTS (SELECT FROM chat.devices d"
		"                             WHERE d.user_id = $2 AND d.device_id = $3),"
		"       (SELECT b.blocker FROM chat.blocks b"
		"         WHERE c.kind = 'direct' AND b.blocked = $2"
		"           AND b.blocker = CASE WHEN c.direct_low = $2 THEN c.direct_high"
		"                                ELSE c.direct_low END),"
		"       m.role = 'member'"
		"         AND coalesce((c.settings ->> 'only_admins_send')::boolean, false),"
		"       (c.settings ->> 'ttl')::integer,"
		"       coalesce((c.settings ->> 'e2e')::boolean, false)"
		"  FROM chat.conversations c"
		"  JOIN chat.members m ON m.conversation_id = c.id AND m.user_id = $2"
		" WHERE c.id = $1 AND m.left_at IS NULL"
		"   FOR NO KEY UPDATE OF c, m",
		3, lock_types);
	/* The author of a system message or log entry need not be a member. */
	ChatPrepare(&append_lock_plan,
		"SELECT c.last_seq, m.read_seq"
		"  FROM chat.conversations c"
		"  LEFT JOIN chat.members m ON m.conversation_id = c.id AND m.user_id = $2"
		"                          AND m.left_at IS NULL"
		" WHERE c.id = $1"
		"   FOR NO KEY UPDATE OF c",
		2, append_lock_types);

	/*
	 * $1 conversation, $2 seq, $3 sender, $4 sender_device, $5 kind, $6
	 * body, $7 client_msg_id, $8 reply_to, $9 target, $10 created_at, $11
	 * attachments (JSON of the attachment objects, NULL: none), $12
	 * mentions, $13 reactions (a reaction entry's {emoji, removed}), $14
	 * ttl (seconds; 0: the message does not disappear).  Log entries ($9
	 * set) leave last_activity alone: a change is not news in the chat
	 * list.  last_sent_seq records text/e2e sends only (contacts).
	 */
	ChatPrepare(&write_plan,
		"WITH msg AS ("
		"  INSERT INTO chat.messages (conversation_id, seq, sender_id, sender_device,"
		"                             kind, body, client_msg_id, reply_to, target, created_at,"
		"                             attachments, mentions, reactions, expires_at)"
		"  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,"
		"          CASE WHEN $14 > 0 THEN $10 + make_interval(secs => $14) END)"
		"  ON CONFLICT (conversation_id, sender_id, client_msg_id)"
		"    WHERE client_msg_id IS NOT NULL DO NOTHING"
		"  RETURNING seq),"
		" conv AS ("
		"  UPDATE chat.conversations c SET last_seq = msg.seq,"
		"         last_activity = CASE WHEN $9 IS NULL THEN $10 ELSE c.last_activity END"
		"    FROM msg WHERE c.id = $1),"
		" mem AS ("
		"  UPDATE chat.members m"
		"     SET delivered_seq = GREATEST(m.delivered_seq, msg.seq),"
		"         read_seq = GREATEST(m.read_seq, msg.seq),"
		"         last_sent_seq = CASE WHEN $5 IN ('text', 'e2e') THEN msg.seq"
		"                              ELSE m.last_sent_seq END"
		"    FROM msg"
		"   WHERE m.conversation_id = $1 AND m.user_id = $3 AND m.left_at IS NULL)"
		" SELECT seq FROM msg",
		14, write_types);
	ChatPrepare(&duplicate_plan,
		"SELECT seq, created_at FROM chat.messages"
		" WHERE conversation_id = $1 AND sender_id = $2 AND client_msg_id = $3",
		3, duplicate_types);
	ChatPrepare(&receipt_plan,
		"SELECT chat.fanout_receipt($1, $2, $3, $4, 'read')", 4, receipt_types);
	/* Column 1: the first mentioned id that is no active member; column
	 * 2: the ids, each once, ascending. */
	ChatPrepare(&mentions_plan,
		"SELECT (SELECT t.u FROM unnest($2::bigint[]) WITH ORDINALITY AS t(u, i)"
		"         WHERE NOT EXISTS (SELECT FROM chat.members m"
		"                            WHERE m.conversation_id = $1 AND m.user_id = t.u"
		"                              AND m.left_at IS NULL)"
		"         ORDER BY t.i LIMIT 1),"
		"       ARRAY(SELECT DISTINCT u FROM unnest($2::bigint[]) u ORDER BY u)",
		2, mentions_types);
}

/* Raises 22023/22001 unless body is a non-empty text within chat.max_body_bytes. */
static void
CheckBody(text *body)
{
	int			bytes;

	if (body == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("message body must not be null")));
	bytes = VARSIZE_ANY_EXHDR(body);
	if (bytes == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("message body must not be empty")));
	if (bytes > chat_max_body_bytes)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("message body of %d bytes exceeds chat.max_body_bytes (%d)",
						bytes, chat_max_body_bytes),
				 errhint("Split the message or send a reference to an attachment.")));
}

/* chat.check_body(body text): the body rules, for edit_message. */
Datum
chat_check_body(PG_FUNCTION_ARGS)
{
	CheckBody(PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0));
	PG_RETURN_VOID();
}

/*
 * Looks up an earlier send of (conversation, sender, client_msg_id); returns
 * true and its seq and created_at when there is one.
 */
static bool
FindDuplicate(int64 conversation_id, int64 sender, text *client_msg_id,
			  int64 *seq, TimestampTz *created_at)
{
	Datum		args[3] = {Int64GetDatum(conversation_id), Int64GetDatum(sender),
	PointerGetDatum(client_msg_id)};
	bool		isnull;

	ChatExecute(duplicate_plan, args, NULL, false, 1, SPI_OK_SELECT, "duplicate lookup");
	if (SPI_processed == 0)
		return false;
	*seq = ChatSpiInt64(0, 1, &isnull);
	*created_at = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0],
													SPI_tuptable->tupdesc, 2, &isnull));
	return true;
}

/*
 * Writes msg at msg->seq with write_plan, moving last_seq and the sender's
 * watermarks; body and client_msg_id as text (NULL: none).  Returns false
 * when an earlier row of the same client_msg_id made it a duplicate.
 */
static bool
WriteMessage(const ChatMessage *msg, text *body, text *client_msg_id, ArrayType *mentions,
			 Jsonb *reactions, int32 ttl)
{
	Datum		args[14];
	char		argnulls[14] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};

	args[0] = Int64GetDatum(msg->conversation_id);
	args[1] = Int64GetDatum(msg->seq);
	args[2] = Int64GetDatum(msg->sender_id);
	args[3] = Int32GetDatum(msg->sender_device);
	argnulls[3] = msg->sender_device == 0 ? 'n' : ' ';
	args[4] = CStringGetTextDatum(msg->kind);
	args[5] = PointerGetDatum(body);
	argnulls[5] = body == NULL ? 'n' : ' ';
	args[6] = PointerGetDatum(client_msg_id);
	argnulls[6] = client_msg_id == NULL ? 'n' : ' ';
	args[7] = Int64GetDatum(msg->reply_to);
	argnulls[7] = msg->reply_to == 0 ? 'n' : ' ';
	args[8] = Int64GetDatum(msg->target);
	argnulls[8] = msg->target == 0 ? 'n' : ' ';
	args[9] = TimestampTzGetDatum(msg->created_at);
	args[10] = msg->attachments ? DirectFunctionCall1(jsonb_in, CStringGetDatum(msg->attachments)) : (Datum) 0;
	argnulls[10] = msg->attachments == NULL ? 'n' : ' ';
	args[11] = PointerGetDatum(mentions);
	argnulls[11] = mentions == NULL ? 'n' : ' ';
	args[12] = PointerGetDatum(reactions);
	argnulls[12] = reactions == NULL ? 'n' : ' ';
	args[13] = Int32GetDatum(ttl);
	ChatExecute(write_plan, args, argnulls, false, 0, SPI_OK_SELECT, "message insert");
	return SPI_processed == 1;
}

/*
 * The one append, for user messages, system messages and change-log
 * entries: allocates seq last_seq + 1 (the caller holds the conversation
 * row lock it read last_seq under) and writes msg there.  Then fans it out
 * and, since writing reads everything before it, sends read receipts to
 * the senders of the messages the author had not read (old_read; negative
 * when the author is not a member).  A read receipt implies delivery: no
 * delivered receipt.  Returns false, with nothing written or sent, when
 * the client_msg_id made it a duplicate.  mentions and reactions (either
 * may be NULL) are stored and carried in the event; ttl > 0: the message
 * expires ttl seconds after it was sent.  Caller is connected to SPI.
 */
static bool
AppendMessage(ChatMessage *msg, int64 last_seq, int64 old_read, text *body,
			  text *client_msg_id, ArrayType *mentions, Jsonb *reactions, int32 ttl)
{
	msg->seq = last_seq + 1;
	if (!WriteMessage(msg, body, client_msg_id, mentions, reactions, ttl))
		return false;
	msg->extra = MessageExtraJson(msg->kind, mentions, reactions);
	msg->body = body ? text_to_cstring(body) : NULL;
	msg->client_msg_id = client_msg_id ? text_to_cstring(client_msg_id) : NULL;
	FanoutMessage(msg);
	if (old_read >= 0 && old_read < msg->seq - 1)
	{
		Datum		rargs[4] = {Int64GetDatum(msg->conversation_id), Int64GetDatum(msg->sender_id),
		Int64GetDatum(old_read), Int64GetDatum(msg->seq)};

		ChatExecute(receipt_plan, rargs, NULL, false, 0, SPI_OK_SELECT, "read receipt");
	}
	return true;
}

/* Reads the arguments of chat.send_message and checks them (SendChecks). */
static void
GetSendArgs(FunctionCallInfo fcinfo, SendArgs *a)
{
	memset(a, 0, sizeof(*a));
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("sender must not be null")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("conversation_id must not be null")));
	a->sender = PG_GETARG_INT64(0);
	a->conversation_id = PG_GETARG_INT64(1);
	a->body = PG_ARGISNULL(2) ? NULL : PG_GETARG_TEXT_PP(2);
	a->client_msg_id = PG_ARGISNULL(3) ? NULL : PG_GETARG_TEXT_PP(3);
	if (!PG_ARGISNULL(4))
		a->reply_to = PG_GETARG_INT64(4);
	if (!PG_ARGISNULL(5))
		a->sender_device = PG_GETARG_INT32(5);
	if (PG_NARGS() > 6 && !PG_ARGISNULL(6))
	{
		a->mentions = PG_GETARG_ARRAYTYPE_P(6);
		if (ArrayGetNItems(ARR_NDIM(a->mentions), ARR_DIMS(a->mentions)) == 0)
			a->mentions = NULL;
	}
	/* attachments (0.5.0): upload ids as in the send request; a file may
	 * go without a caption, so a NULL body is then an empty one */
	if (PG_NARGS() > 7 && !PG_ARGISNULL(7))
	{
		a->attachments = PG_GETARG_JSONB_P(7);
		if (a->body == NULL)
			a->body = cstring_to_text("");
	}
}

/*
 * The mentions of a send, checked under the conversation lock: each an
 * active member (22023 names the first that is not), at most
 * CHAT_MAX_MENTIONS (54000); *out gets them each once, ascending (NULL
 * for none).  False when a mentioned user is no member but the send is a
 * retry of one made before (its answer in *seq and *created_at, as in
 * RetryOrRefuse).  Caller is connected to SPI.
 */
static bool
CheckMentions(const SendArgs *a, ArrayType **out, int64 *seq, TimestampTz *created_at)
{
	Datum		args[2];
	bool		isnull;
	Datum		d;
	int			n;

	*out = NULL;
	if (a->mentions == NULL)
		return true;
	if (array_contains_nulls(a->mentions))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("mentions must not contain null")));
	n = ArrayGetNItems(ARR_NDIM(a->mentions), ARR_DIMS(a->mentions));
	if (n > CHAT_MAX_MENTIONS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%d mentions exceed the limit of %d", n, CHAT_MAX_MENTIONS)));
	args[0] = Int64GetDatum(a->conversation_id);
	args[1] = PointerGetDatum(a->mentions);
	ChatExecute(mentions_plan, args, NULL, false, 1, SPI_OK_SELECT, "mentions check");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
	{
		int64		bad = DatumGetInt64(d);

		if (a->client_msg_id != NULL &&
			FindDuplicate(a->conversation_id, a->sender, a->client_msg_id, seq, created_at))
			return false;
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("mentioned user " INT64_FORMAT " is not a member of conversation " INT64_FORMAT,
						bad, a->conversation_id),
				 errhint("Only members of the conversation can be mentioned.")));
	}
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	*out = DatumGetArrayTypePCopy(d);
	return true;
}

/* The body, kind and client_msg_id rules of a send (22023, 22001). */
static void
SendChecks(const SendArgs *a)
{
	/* a file may go without a caption: an empty body then */
	if (a->attachments == NULL || a->body == NULL || VARSIZE_ANY_EXHDR(a->body) > 0)
		CheckBody(a->body);
	if (a->kind != NULL && strcmp(a->kind, "text") != 0 && strcmp(a->kind, "e2e") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid message kind \"%s\"", a->kind),
				 errhint("A send is of kind text or, in an end-to-end encrypted conversation, e2e.")));
	if (a->client_msg_id != NULL)
	{
		int			bytes = VARSIZE_ANY_EXHDR(a->client_msg_id);

		if (bytes == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("client_msg_id must not be empty"),
					 errhint("Pass NULL to send without idempotency.")));
		if (bytes > CHAT_MAX_CLIENT_MSG_ID_BYTES)
			ereport(ERROR,
					(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
					 errmsg("client_msg_id of %d bytes exceeds %d bytes",
							bytes, CHAT_MAX_CLIENT_MSG_ID_BYTES)));
	}
}

/*
 * A send the sender may not make (why: "blocked by user 7", ...): true
 * when it is a retry of a send made before the refusal began (its original
 * answer in *seq and *created_at), else raises 42501; never false.
 */
static bool
RetryOrRefuse(const SendArgs *a, int64 *seq, TimestampTz *created_at,
			  const char *why, const char *hint)
{
	if (a->client_msg_id != NULL &&
		FindDuplicate(a->conversation_id, a->sender, a->client_msg_id, seq, created_at))
		return true;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("user " INT64_FORMAT " cannot send to conversation " INT64_FORMAT ": %s",
					a->sender, a->conversation_id, why),
			 hint ? errhint("%s", hint) : 0));
	return false;				/* not reached */
}

/*
 * The e2e rule (30_e2e.sql): an end-to-end encrypted conversation takes
 * kind e2e sends only, and only such a conversation takes them (22023
 * either way).  A retry of a send made before the switch still gets its
 * answer (false, *seq and *created_at); true when the send may go on.
 */
static bool
CheckE2eKind(const SendArgs *a, bool e2e, int64 *seq, TimestampTz *created_at)
{
	bool		is_e2e = a->kind != NULL && strcmp(a->kind, "e2e") == 0;

	if (is_e2e == e2e)
		return true;
	if (a->client_msg_id != NULL &&
		FindDuplicate(a->conversation_id, a->sender, a->client_msg_id, seq, created_at))
		return false;
	if (e2e)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("conversation " INT64_FORMAT " is end-to-end encrypted: a message of kind \"%s\" is refused",
						a->conversation_id, a->kind ? a->kind : "text"),
				 errhint("Encrypt the message and send it with kind \"e2e\".")));
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("conversation " INT64_FORMAT " is not end-to-end encrypted: a message of kind \"e2e\" is refused",
					a->conversation_id),
			 errhint("Switch it on with chat.enable_e2e first.")));
	return false;				/* not reached */
}

/*
 * Step 1 of a send: locks the conversation and member rows and returns
 * true with last_seq, the sender's read_seq and the conversation's ttl
 * (0: none).  False when the sender has no active membership, or is
 * blocked by the peer of a direct conversation,
 * but an earlier send of the client_msg_id exists (a retry of a send made
 * before leaving or being blocked still gets its answer: *seq and
 * *created_at); raises for a non-member (42501 for a blocked sender)
 * otherwise, and for an unknown device.  Caller is connected to SPI.
 */
static bool
LockForSend(const SendArgs *a, int64 *last_seq, int64 *old_read, int32 *ttl, int64 *seq,
			TimestampTz *created_at)
{
	Datum		args[3] = {Int64GetDatum(a->conversation_id), Int64GetDatum(a->sender),
	Int32GetDatum(a->sender_device)};
	/* a NULL $3 skips the device probe (column 3 is then true) */
	char		argnulls[3] = {' ', ' ', a->sender_device == 0 || a->device_checked ? 'n' : ' '};
	bool		isnull;
	int64		blocker;

	ChatExecute(lock_plan, args, argnulls, false, 1, SPI_OK_SELECT, "conversation lock");
	if (SPI_processed == 0)
	{
		if (a->client_msg_id == NULL ||
			!FindDuplicate(a->conversation_id, a->sender, a->client_msg_id, seq, created_at))
			RaiseNotMember(a->sender, a->conversation_id);
		return false;
	}
	*last_seq = ChatSpiInt64(0, 1, &isnull);
	*old_read = ChatSpiInt64(0, 2, &isnull);
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 6, &isnull);

		*ttl = isnull ? 0 : DatumGetInt32(d);
	}
	if (!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull)))
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("device %d of user " INT64_FORMAT " does not exist",
						a->sender_device, a->sender),
				 errhint("Register it with chat.register_device.")));
	blocker = ChatSpiInt64(0, 4, &isnull);
	if (!isnull &&
		RetryOrRefuse(a, seq, created_at, psprintf("blocked by user " INT64_FORMAT, blocker), NULL))
		return false;
	if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5, &isnull)) &&
		RetryOrRefuse(a, seq, created_at, "only admins send there",
					  "An owner or admin can turn this off with chat.update_group."))
		return false;
	if (!CheckE2eKind(a, DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
													SPI_tuptable->tupdesc, 7, &isnull)),
					  seq, created_at))
		return false;
	if (a->reply_to != 0 && (a->reply_to < 1 || a->reply_to > *last_seq))
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("message " INT64_FORMAT " does not exist in conversation " INT64_FORMAT,
						a->reply_to, a->conversation_id),
				 errhint("reply_to is the seq of an earlier message of the conversation.")));
	return true;
}

/*
 * The send of chat.send_message and of client_request's "send": checks a,
 * then locks, appends and fans out; *r gets the answer.  Connects to SPI
 * itself (nested in the caller's connection, if any).
 */
void
SendMessage(const SendArgs *a, SendResult *r)
{
	int64		last_seq = 0;
	int64		old_read = 0;
	int32		ttl = 0;
	ArrayType  *mentions = NULL;

	SendChecks(a);
	r->seq = 0;
	r->created_at = 0;
	r->duplicate = true;
	ChatSpiConnect();
	PrepareSendPlans();

	/*
	 * 1. The row locks serialise seq allocation and pin the membership.  A
	 * retry of a send with attachments finds its first answer under the
	 * lock, before the attachments (bound to that message by then) would
	 * refuse it, also when the first attempt committed while we waited.
	 */
	if (LockForSend(a, &last_seq, &old_read, &ttl, &r->seq, &r->created_at) &&
		!(a->attachments != NULL && a->client_msg_id != NULL &&
		  FindDuplicate(a->conversation_id, a->sender, a->client_msg_id, &r->seq, &r->created_at)) &&
		CheckMentions(a, &mentions, &r->seq, &r->created_at))
	{
		/* 2. The row; not written: an earlier send of this client_msg_id. */
		ChatMessage msg;

		memset(&msg, 0, sizeof(msg));
		msg.conversation_id = a->conversation_id;
		msg.sender_id = a->sender;
		msg.sender_device = a->sender_device;
		msg.kind = a->kind ? a->kind : "text";
		msg.reply_to = a->reply_to;
		msg.created_at = GetCurrentTimestamp();
		/* only sends with attachments pay for them: one lookup, one update */
		if (a->attachments != NULL)
			msg.attachments = SendAttachments(a);
		r->duplicate = !AppendMessage(&msg, last_seq, old_read, a->body, a->client_msg_id,
									  mentions, NULL, ttl);
		if (!r->duplicate)
		{
			if (a->attachments != NULL)
				AttachToMessage(a, msg.seq);
			r->seq = msg.seq;
			r->created_at = msg.created_at;
		}
		else if (!FindDuplicate(a->conversation_id, a->sender, a->client_msg_id,
								&r->seq, &r->created_at))
			elog(ERROR, "chat: conflicting message of client_msg_id not found");
	}
	ChatSpiFinish();
}

static Datum SendFromSql(FunctionCallInfo fcinfo, const char *kind);

/*
 * chat.send_message(sender, conversation_id, body, client_msg_id, reply_to,
 * sender_device) RETURNS TABLE(conversation_id, seq, created_at, duplicate)
 */
Datum
chat_send_message(PG_FUNCTION_ARGS)
{
	return SendFromSql(fcinfo, "text");
}

/*
 * chat.send_e2e(sender, conversation_id, body, client_msg_id, reply_to,
 * sender_device): the same send of a ciphertext, kind e2e (30_e2e.sql).
 */
Datum
chat_send_e2e(PG_FUNCTION_ARGS)
{
	return SendFromSql(fcinfo, "e2e");
}

/* The SQL send functions: a send of kind, one result row. */
static Datum
SendFromSql(FunctionCallInfo fcinfo, const char *kind)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	SendArgs	a;
	SendResult	r;
	Datum		values[4];
	bool		nulls[4] = {false, false, false, false};

	GetSendArgs(fcinfo, &a);
	a.kind = kind;
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	SendMessage(&a, &r);

	values[0] = Int64GetDatum(a.conversation_id);
	values[1] = Int64GetDatum(r.seq);
	values[2] = TimestampTzGetDatum(r.created_at);
	values[3] = BoolGetDatum(r.duplicate);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	return (Datum) 0;
}

/*
 * Appends a system message or a change-log entry (see chat.append_message)
 * through AppendMessage; returns its seq.  Takes the conversation row lock
 * (the caller may hold it already).  Caller is connected to SPI.
 */
static int64
AppendLogEntry(int64 conversation_id, int64 author, const char *kind, text *body,
			   int64 target, TimestampTz created_at, Jsonb *reactions)
{
	Datum		args[2] = {Int64GetDatum(conversation_id), Int64GetDatum(author)};
	bool		isnull;
	int64		last_seq;
	int64		old_read;
	ChatMessage msg;

	PrepareSendPlans();
	ChatExecute(append_lock_plan, args, NULL, false, 1, SPI_OK_SELECT, "conversation lock");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("conversation " INT64_FORMAT " does not exist", conversation_id)));
	last_seq = ChatSpiInt64(0, 1, &isnull);
	old_read = ChatSpiInt64(0, 2, &isnull);
	if (isnull)
		old_read = -1;
	if (target != 0 && (target < 1 || target > last_seq))
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("message " INT64_FORMAT " does not exist in conversation " INT64_FORMAT,
						target, conversation_id)));

	memset(&msg, 0, sizeof(msg));
	msg.conversation_id = conversation_id;
	msg.sender_id = author;
	msg.kind = kind;
	msg.target = target;
	msg.created_at = created_at;
	/* system messages and log entries never disappear (ttl 0) */
	if (!AppendMessage(&msg, last_seq, old_read, body, NULL, NULL, reactions, 0))
		elog(ERROR, "chat: log entry of conversation " INT64_FORMAT " was not written",
			 conversation_id);
	return msg.seq;
}

/* Raises 22023 unless (kind, body, target) make a valid append_message. */
static void
CheckLogEntry(const char *kind, text *body, bool has_target)
{
	bool		entry = strcmp(kind, "edit") == 0 || strcmp(kind, "delete") == 0 ||
		strcmp(kind, "reaction") == 0;

	if (!entry && strcmp(kind, "system") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid log entry kind \"%s\"", kind),
				 errhint("Use system, edit, delete or reaction; text goes through chat.send_message.")));
	if (entry && !has_target)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("log entry of kind \"%s\" needs a target", kind),
				 errhint("target is the seq of the message the entry changes.")));
	if (!entry && has_target)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("message of kind \"%s\" takes no target", kind)));
	if (strcmp(kind, "edit") == 0 || strcmp(kind, "reaction") == 0)
		CheckBody(body);
	else if (strcmp(kind, "delete") == 0 && body != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("log entry of kind \"delete\" carries no body")));
	else if (strcmp(kind, "system") == 0 && body == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("system message needs a body")));
}

/*
 * chat.append_message(conversation_id, author, kind, body, target,
 * created_at) RETURNS bigint: appends a system message (kind 'system', no
 * target) or a change-log entry (kind 'edit' with the new body, or
 * 'delete' without one; target the seq changed) at the next seq, moves the
 * author's watermarks when a member, and fans it out.  Internal: the
 * callers (post_system_message, edit_message, delete_message) check the
 * rights.  created_at NULL: now (the clock).
 */
Datum
chat_append_message(PG_FUNCTION_ARGS)
{
	char	   *kind;
	text	   *body = PG_ARGISNULL(3) ? NULL : PG_GETARG_TEXT_PP(3);
	int64		target = PG_ARGISNULL(4) ? 0 : PG_GETARG_INT64(4);
	TimestampTz created_at = PG_ARGISNULL(5) ? GetCurrentTimestamp() : PG_GETARG_TIMESTAMPTZ(5);
	Jsonb	   *reactions = PG_NARGS() > 6 && !PG_ARGISNULL(6) ? PG_GETARG_JSONB_P(6) : NULL;
	int64		seq;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("conversation_id, author and kind must not be null")));
	kind = text_to_cstring(PG_GETARG_TEXT_PP(2));
	CheckLogEntry(kind, body, !PG_ARGISNULL(4));
	ChatSpiConnect();
	seq = AppendLogEntry(PG_GETARG_INT64(0), PG_GETARG_INT64(1), kind, body, target, created_at,
						 reactions);
	ChatSpiFinish();
	PG_RETURN_INT64(seq);
}
