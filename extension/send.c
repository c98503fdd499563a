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
 * Statement 2 (write_plan) is the only place a row enters chat.messages:
 * send_message and append_message both use it, each after taking the
 * conversation row lock, so the seq is allocated exactly when a row is
 * written: seqs stay gapless and a retry that lost the race to its own
 * first attempt finds that row and returns it with duplicate = true,
 * burning nothing.  Under REPEATABLE READ a concurrent sender makes step 1
 * fail with a serialization error, never a gap or a second row.
 */
#include "chat.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/tuplestore.h"

PG_FUNCTION_INFO_V1(chat_send_message);
PG_FUNCTION_INFO_V1(chat_check_body);
PG_FUNCTION_INFO_V1(chat_append_message);

/* Longest client_msg_id accepted, in bytes. */
#define CHAT_MAX_CLIENT_MSG_ID_BYTES 128

/* Saved plans, prepared on first use in each backend. */
static SPIPlanPtr lock_plan;
static SPIPlanPtr append_lock_plan;
static SPIPlanPtr write_plan;
static SPIPlanPtr duplicate_plan;
static SPIPlanPtr conversation_plan;
static SPIPlanPtr user_plan;
static SPIPlanPtr receipt_plan;

/*
 * Prepares sql with the given argument types and keeps it for the session.
 * Always the generic plan: every statement here is a key lookup whose plan
 * does not depend on the values, and a custom plan per call would cost more
 * in planning than the statement costs to run.
 */
static SPIPlanPtr
PrepareSaved(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare_cursor(sql, nargs, argtypes, CURSOR_OPT_GENERIC_PLAN);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql,
			 SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "SPI_keepplan failed");
	return plan;
}

/* Prepares the plans of the send path once per backend. */
static void
PrepareSendPlans(void)
{
	Oid			lock_types[3] = {INT8OID, INT8OID, INT4OID};
	Oid			append_lock_types[2] = {INT8OID, INT8OID};
	Oid			write_types[10] = {INT8OID, INT8OID, INT8OID, INT4OID, TEXTOID,
	TEXTOID, TEXTOID, INT8OID, INT8OID, TIMESTAMPTZOID};
	Oid			duplicate_types[3] = {INT8OID, INT8OID, TEXTOID};
	Oid			id_types[1] = {INT8OID};
	Oid			receipt_types[4] = {INT8OID, INT8OID, INT8OID, INT8OID};

	if (receipt_plan != NULL)
		return;
	lock_plan = PrepareSaved(
		"SELECT c.last_seq, m.read_seq,"
		"       $3 IS NULL OR EXISTS (SELECT FROM chat.devices d"
		"                             WHERE d.user_id = $2 AND d.device_id = $3)"
		"  FROM chat.conversations c"
		"  JOIN chat.members m ON m.conversation_id = c.id AND m.user_id = $2"
		" WHERE c.id = $1 AND m.left_at IS NULL"
		"   FOR NO KEY UPDATE OF c, m",
		3, lock_types);
	/* The author of a system message or log entry need not be a member. */
	append_lock_plan = PrepareSaved(
		"SELECT c.last_seq, m.read_seq"
		"  FROM chat.conversations c"
		"  LEFT JOIN chat.members m ON m.conversation_id = c.id AND m.user_id = $2"
		"                          AND m.left_at IS NULL"
		" WHERE c.id = $1"
		"   FOR NO KEY UPDATE OF c",
		2, append_lock_types);

	/*
	 * $1 conversation, $2 seq, $3 sender, $4 sender_device, $5 kind, $6
	 * body, $7 client_msg_id, $8 reply_to, $9 target, $10 created_at.  Log
	 * entries ($9 set) leave last_activity alone: a change is not news in
	 * the chat list.  last_sent_seq records text/e2e sends only (contacts).
	 */
	write_plan = PrepareSaved(
		"WITH msg AS ("
		"  INSERT INTO chat.messages (conversation_id, seq, sender_id, sender_device,"
		"                             kind, body, client_msg_id, reply_to, target, created_at)"
		"  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
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
		10, write_types);
	duplicate_plan = PrepareSaved(
		"SELECT seq, created_at FROM chat.messages"
		" WHERE conversation_id = $1 AND sender_id = $2 AND client_msg_id = $3",
		3, duplicate_types);
	conversation_plan = PrepareSaved(
		"SELECT FROM chat.conversations WHERE id = $1", 1, id_types);
	user_plan = PrepareSaved(
		"SELECT FROM chat.users WHERE id = $1", 1, id_types);
	receipt_plan = PrepareSaved(
		"SELECT chat.fanout_receipt($1, $2, $3, $4, 'read')", 4, receipt_types);
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

/* Reads an int8 column of the current SPI result row. */
static int64
SpiInt64(int row, int col, bool *isnull)
{
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[row],
									   SPI_tuptable->tupdesc, col, isnull));
}

/*
 * Raises the error for a send that found no (conversation, active member)
 * row: P0002 when the conversation or the user does not exist, 42501
 * otherwise.
 */
static void
RaiseNotMember(int64 sender, int64 conversation_id)
{
	Datum		args[1] = {Int64GetDatum(conversation_id)};

	if (SPI_execute_plan(conversation_plan, args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "chat: conversation lookup failed");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("conversation " INT64_FORMAT " does not exist",
						conversation_id)));
	args[0] = Int64GetDatum(sender);
	if (SPI_execute_plan(user_plan, args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "chat: user lookup failed");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("user " INT64_FORMAT " does not exist", sender),
				 errhint("Create it with chat.upsert_user.")));
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("user " INT64_FORMAT " is not a member of conversation " INT64_FORMAT,
					sender, conversation_id)));
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

	if (SPI_execute_plan(duplicate_plan, args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "chat: duplicate lookup failed");
	if (SPI_processed == 0)
		return false;
	*seq = SpiInt64(0, 1, &isnull);
	*created_at = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0],
													SPI_tuptable->tupdesc, 2, &isnull));
	return true;
}

/*
 * Writes msg at msg->seq (last_seq + 1 under the conversation row lock the
 * caller holds) with write_plan, moving last_seq and the sender's
 * watermarks; body and client_msg_id as text (NULL: none).  Returns false
 * when an earlier row of the same client_msg_id made it a duplicate.
 */
static bool
WriteMessage(const ChatMessage *msg, text *body, text *client_msg_id)
{
	Datum		args[10];
	char		argnulls[10] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};

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
	if (SPI_execute_plan(write_plan, args, argnulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "chat: message insert failed");
	return SPI_processed == 1;
}

/*
 * After a message is written: fans it out and, since writing reads
 * everything before it, sends read receipts to the senders of the messages
 * the author had not read (old_read; negative when the author is not a
 * member).  A read receipt implies delivery: no delivered receipt.
 */
static void
AfterWrite(const ChatMessage *msg, int64 old_read)
{
	FanoutMessage(msg);
	if (old_read >= 0 && old_read < msg->seq - 1)
	{
		Datum		rargs[4] = {Int64GetDatum(msg->conversation_id), Int64GetDatum(msg->sender_id),
		Int64GetDatum(old_read), Int64GetDatum(msg->seq)};

		if (SPI_execute_plan(receipt_plan, rargs, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "chat: read receipt failed");
	}
}

/*
 * chat.send_message(sender, conversation_id, body, client_msg_id, reply_to,
 * sender_device) RETURNS TABLE(conversation_id, seq, created_at, duplicate)
 */
Datum
chat_send_message(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int64		sender;
	int64		conversation_id;
	text	   *body;
	text	   *client_msg_id = NULL;
	int64		reply_to = 0;
	int32		sender_device = 0;
	int64		last_seq = 0;
	int64		seq = 0;
	int64		old_read = 0;
	TimestampTz created_at = 0;
	bool		duplicate = false;
	bool		isnull;
	Datum		values[4];
	bool		nulls[4] = {false, false, false, false};

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("sender must not be null")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("conversation_id must not be null")));
	sender = PG_GETARG_INT64(0);
	conversation_id = PG_GETARG_INT64(1);
	body = PG_ARGISNULL(2) ? NULL : PG_GETARG_TEXT_PP(2);
	CheckBody(body);
	if (!PG_ARGISNULL(3))
	{
		int			bytes;

		client_msg_id = PG_GETARG_TEXT_PP(3);
		bytes = VARSIZE_ANY_EXHDR(client_msg_id);
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
	if (!PG_ARGISNULL(4))
		reply_to = PG_GETARG_INT64(4);
	if (!PG_ARGISNULL(5))
		sender_device = PG_GETARG_INT32(5);

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "chat: SPI_connect failed");
	PrepareSendPlans();

	/* 1. The row locks serialise seq allocation and pin the membership. */
	{
		Datum		args[3] = {Int64GetDatum(conversation_id), Int64GetDatum(sender),
		Int32GetDatum(sender_device)};
		char		argnulls[3] = {' ', ' ', sender_device == 0 ? 'n' : ' '};

		if (SPI_execute_plan(lock_plan, args, argnulls, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "chat: conversation lock failed");
		if (SPI_processed == 0)
		{
			/* A retry of a send made before leaving still gets its answer. */
			if (client_msg_id == NULL ||
				!FindDuplicate(conversation_id, sender, client_msg_id, &seq, &created_at))
				RaiseNotMember(sender, conversation_id);
			duplicate = true;
		}
		else
		{
			last_seq = SpiInt64(0, 1, &isnull);
			old_read = SpiInt64(0, 2, &isnull);
			if (!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
											SPI_tuptable->tupdesc, 3, &isnull)))
				ereport(ERROR,
						(errcode(ERRCODE_NO_DATA_FOUND),
						 errmsg("device %d of user " INT64_FORMAT " does not exist",
								sender_device, sender),
						 errhint("Register it with chat.register_device.")));
		}
	}

	if (!duplicate && reply_to != 0 && (reply_to < 1 || reply_to > last_seq))
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("message " INT64_FORMAT " does not exist in conversation " INT64_FORMAT,
						reply_to, conversation_id),
				 errhint("reply_to is the seq of an earlier message of the conversation.")));

	/*
	 * 2. The row, and with it last_seq and the sender's watermarks; no row
	 * means a conflict: an earlier send of this client_msg_id.
	 */
	if (!duplicate)
	{
		ChatMessage msg;

		memset(&msg, 0, sizeof(msg));
		msg.conversation_id = conversation_id;
		msg.seq = last_seq + 1;
		msg.sender_id = sender;
		msg.sender_device = sender_device;
		msg.kind = "text";
		msg.reply_to = reply_to;
		msg.created_at = GetCurrentTimestamp();
		if (WriteMessage(&msg, body, client_msg_id))
		{
			seq = msg.seq;
			created_at = msg.created_at;
			msg.body = text_to_cstring(body);
			msg.client_msg_id = client_msg_id ? text_to_cstring(client_msg_id) : NULL;
			AfterWrite(&msg, old_read);
		}
		else
		{
			if (!FindDuplicate(conversation_id, sender, client_msg_id, &seq, &created_at))
				elog(ERROR, "chat: conflicting message of client_msg_id not found");
			duplicate = true;
		}
	}

	SPI_finish();

	values[0] = Int64GetDatum(conversation_id);
	values[1] = Int64GetDatum(seq);
	values[2] = TimestampTzGetDatum(created_at);
	values[3] = BoolGetDatum(duplicate);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	return (Datum) 0;
}

/*
 * Appends a system message or a change-log entry to the conversation's log
 * (see chat.append_message) and fans it out; returns its seq.  Takes the
 * conversation row lock (the caller may hold it already).  Caller is
 * connected to SPI.
 */
static int64
AppendMessage(int64 conversation_id, int64 author, const char *kind, text *body,
			  int64 target, TimestampTz created_at)
{
	Datum		args[2] = {Int64GetDatum(conversation_id), Int64GetDatum(author)};
	bool		isnull;
	int64		last_seq;
	int64		old_read;
	ChatMessage msg;

	PrepareSendPlans();
	if (SPI_execute_plan(append_lock_plan, args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "chat: conversation lock failed");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("conversation " INT64_FORMAT " does not exist", conversation_id)));
	last_seq = SpiInt64(0, 1, &isnull);
	old_read = SpiInt64(0, 2, &isnull);
	if (isnull)
		old_read = -1;
	if (target != 0 && (target < 1 || target > last_seq))
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("message " INT64_FORMAT " does not exist in conversation " INT64_FORMAT,
						target, conversation_id)));

	memset(&msg, 0, sizeof(msg));
	msg.conversation_id = conversation_id;
	msg.seq = last_seq + 1;
	msg.sender_id = author;
	msg.kind = kind;
	msg.target = target;
	msg.created_at = created_at;
	if (!WriteMessage(&msg, body, NULL))
		elog(ERROR, "chat: log entry of conversation " INT64_FORMAT " was not written",
			 conversation_id);
	msg.body = body ? text_to_cstring(body) : NULL;
	AfterWrite(&msg, old_read);
	return msg.seq;
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
	int64		conversation_id;
	int64		author;
	char	   *kind;
	text	   *body = PG_ARGISNULL(3) ? NULL : PG_GETARG_TEXT_PP(3);
	int64		target = PG_ARGISNULL(4) ? 0 : PG_GETARG_INT64(4);
	TimestampTz created_at = PG_ARGISNULL(5) ? GetCurrentTimestamp() : PG_GETARG_TIMESTAMPTZ(5);
	bool		entry;
	int64		seq;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("conversation_id, author and kind must not be null")));
	conversation_id = PG_GETARG_INT64(0);
	author = PG_GETARG_INT64(1);
	kind = text_to_cstring(PG_GETARG_TEXT_PP(2));
	entry = strcmp(kind, "edit") == 0 || strcmp(kind, "delete") == 0;
	if (!entry && strcmp(kind, "system") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid log entry kind \"%s\"", kind),
				 errhint("Use system, edit or delete; text goes through chat.send_message.")));
	if (entry && PG_ARGISNULL(4))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("log entry of kind \"%s\" needs a target", kind),
				 errhint("target is the seq of the message the entry changes.")));
	if (!entry && !PG_ARGISNULL(4))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("message of kind \"%s\" takes no target", kind)));
	if (strcmp(kind, "edit") == 0)
		CheckBody(body);
	else if (strcmp(kind, "delete") == 0 && body != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("log entry of kind \"delete\" carries no body")));
	else if (strcmp(kind, "system") == 0 && body == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("system message needs a body")));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "chat: SPI_connect failed");
	seq = AppendMessage(conversation_id, author, kind, body, target, created_at);
	SPI_finish();
	PG_RETURN_INT64(seq);
}
