/*
 * event_json.c: the JSON of events: the one shape of a message (for
 * notifications and for the message objects of client_request results)
 * and the timestamp format of every event.
 */
#include "chat.h"

#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "catalog/pg_type.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"

PG_FUNCTION_INFO_V1(chat_message_json);
PG_FUNCTION_INFO_V1(chat_json_timestamp);

/* Appends ts as a JSON string "YYYY-MM-DDTHH:MM:SS.mmmZ" in UTC. */
void
AppendJsonTimestamp(StringInfo buf, TimestampTz ts)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (TIMESTAMP_NOT_FINITE(ts) || timestamp2tm(ts, NULL, &tm, &fsec, NULL, NULL) != 0)
	{
		appendStringInfoString(buf, "null");
		return;
	}
	appendStringInfo(buf, "\"%04d-%02d-%02dT%02d:%02d:%02d.%03dZ\"",
					 tm.tm_year, tm.tm_mon, tm.tm_mday,
					 tm.tm_hour, tm.tm_min, tm.tm_sec, (int) (fsec / 1000));
}

/* Appends a JSON string, or null; rejects invalid encoding first. */
static void
AppendJsonString(StringInfo buf, const char *s)
{
	if (s == NULL)
	{
		appendStringInfoString(buf, "null");
		return;
	}
	(void) pg_verifymbstr(s, strlen(s), false);
	escape_json(buf, s);
}

/*
 * Appends the message event of msg: the one shape of a message for
 * notifications and results.  With ref, the body is left out and
 * "ref":true says to fetch it.  edited_at/deleted_at are 0 when unset;
 * "target" appears on log entries (edit, delete) only.
 */
void
AppendMessageJson(StringInfo buf, const ChatMessage *msg, TimestampTz edited_at,
				  TimestampTz deleted_at, bool ref)
{
	appendStringInfo(buf, "{\"type\":\"message\",\"conversation\":" INT64_FORMAT
					 ",\"seq\":" INT64_FORMAT ",\"sender\":" INT64_FORMAT ",\"sender_device\":",
					 msg->conversation_id, msg->seq, msg->sender_id);
	if (msg->sender_device > 0)
		appendStringInfo(buf, "%d", msg->sender_device);
	else
		appendStringInfoString(buf, "null");
	appendStringInfoString(buf, ",\"kind\":");
	AppendJsonString(buf, msg->kind ? msg->kind : "text");
	if (ref)
		appendStringInfoString(buf, ",\"ref\":true");
	else
	{
		appendStringInfoString(buf, ",\"body\":");
		AppendJsonString(buf, msg->body);
	}
	appendStringInfoString(buf, ",\"client_msg_id\":");
	AppendJsonString(buf, msg->client_msg_id);
	appendStringInfoString(buf, ",\"reply_to\":");
	if (msg->reply_to > 0)
		appendStringInfo(buf, INT64_FORMAT, msg->reply_to);
	else
		appendStringInfoString(buf, "null");
	appendStringInfoString(buf, ",\"created_at\":");
	AppendJsonTimestamp(buf, msg->created_at);
	if (msg->target > 0)
		appendStringInfo(buf, ",\"target\":" INT64_FORMAT, msg->target);
	if (edited_at != 0)
	{
		appendStringInfoString(buf, ",\"edited_at\":");
		AppendJsonTimestamp(buf, edited_at);
	}
	if (deleted_at != 0)
	{
		appendStringInfoString(buf, ",\"deleted_at\":");
		AppendJsonTimestamp(buf, deleted_at);
	}
	/* already JSON (built by SendAttachments or read from the row) */
	if (msg->attachments != NULL && deleted_at == 0)
	{
		appendStringInfoString(buf, ",\"attachments\":");
		appendStringInfoString(buf, msg->attachments);
	}
	if (msg->extra != NULL)
	{
		appendStringInfoChar(buf, ',');
		appendStringInfoString(buf, msg->extra);
	}
	appendStringInfoChar(buf, '}');
}

/*
 * The members a stored message adds to its event (ChatMessage.extra), or
 * NULL: "mentions" when it mentions anyone, and its reactions column: the
 * aggregated map {"<emoji>":[user ids]} as "reactions" on a message, or,
 * on a reaction entry, the entry's own {"emoji","removed"} spliced in.
 * Jsonb prints on one line, so the event stays one line.
 */
char *
MessageExtraJson(const char *kind, ArrayType *mentions, Jsonb *reactions)
{
	StringInfoData buf;

	initStringInfo(&buf);
	if (mentions != NULL && ArrayGetNItems(ARR_NDIM(mentions), ARR_DIMS(mentions)) > 0)
	{
		Datum	   *elems;
		bool	   *nulls;
		int			n,
					i;

		deconstruct_array(mentions, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
						  &elems, &nulls, &n);
		appendStringInfoString(&buf, "\"mentions\":[");
		for (i = 0; i < n; i++)
			if (!nulls[i])
				appendStringInfo(&buf, "%s" INT64_FORMAT, i > 0 ? "," : "",
								 DatumGetInt64(elems[i]));
		appendStringInfoChar(&buf, ']');
	}
	if (reactions != NULL && JB_ROOT_IS_OBJECT(reactions) && JB_ROOT_COUNT(reactions) > 0)
	{
		char	   *text = JsonbToCString(NULL, &reactions->root, VARSIZE(reactions));
		size_t		len = strlen(text);

		if (buf.len > 0)
			appendStringInfoChar(&buf, ',');
		if (kind != NULL && strcmp(kind, "reaction") == 0 && len >= 2)
			appendBinaryStringInfo(&buf, text + 1, len - 2);	/* without { } */
		else
		{
			appendStringInfoString(&buf, "\"reactions\":");
			appendStringInfoString(&buf, text);
		}
	}
	if (buf.len == 0)
	{
		pfree(buf.data);
		return NULL;
	}
	return buf.data;
}

/* chat.message_json(chat.message_view): the message event of a row. */
Datum
chat_message_json(PG_FUNCTION_ARGS)
{
	HeapTupleHeader row = PG_GETARG_HEAPTUPLEHEADER(0);
	ChatMessage msg;
	bool		isnull;
	Datum		d;
	TimestampTz edited_at = 0,
				deleted_at = 0;
	StringInfoData buf;

	memset(&msg, 0, sizeof(msg));
	msg.conversation_id = DatumGetInt64(GetAttributeByName(row, "conversation_id", &isnull));
	msg.seq = DatumGetInt64(GetAttributeByName(row, "seq", &isnull));
	msg.sender_id = DatumGetInt64(GetAttributeByName(row, "sender_id", &isnull));
	d = GetAttributeByName(row, "sender_device", &isnull);
	msg.sender_device = isnull ? 0 : DatumGetInt32(d);
	d = GetAttributeByName(row, "kind", &isnull);
	msg.kind = isnull ? NULL : TextDatumGetCString(d);
	d = GetAttributeByName(row, "body", &isnull);
	msg.body = isnull ? NULL : TextDatumGetCString(d);
	d = GetAttributeByName(row, "client_msg_id", &isnull);
	msg.client_msg_id = isnull ? NULL : TextDatumGetCString(d);
	d = GetAttributeByName(row, "reply_to", &isnull);
	msg.reply_to = isnull ? 0 : DatumGetInt64(d);
	d = GetAttributeByName(row, "created_at", &isnull);
	msg.created_at = isnull ? DT_NOBEGIN : DatumGetTimestampTz(d);
	d = GetAttributeByName(row, "target", &isnull);
	msg.target = isnull ? 0 : DatumGetInt64(d);
	d = GetAttributeByName(row, "edited_at", &isnull);
	if (!isnull)
		edited_at = DatumGetTimestampTz(d);
	d = GetAttributeByName(row, "deleted_at", &isnull);
	if (!isnull)
		deleted_at = DatumGetTimestampTz(d);
	d = GetAttributeByName(row, "attachments", &isnull);
	if (!isnull)
	{
		Jsonb	   *j = DatumGetJsonbP(d);

		msg.attachments = JsonbToCString(NULL, &j->root, VARSIZE(j));
	}
	{
		bool		mnull,
					rnull;
		Datum		md = GetAttributeByName(row, "mentions", &mnull);
		Datum		rd = GetAttributeByName(row, "reactions", &rnull);

		msg.extra = MessageExtraJson(msg.kind, mnull ? NULL : DatumGetArrayTypeP(md),
									 rnull ? NULL : DatumGetJsonbP(rd));
	}

	initStringInfo(&buf);
	AppendMessageJson(&buf, &msg, edited_at, deleted_at, false);
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}

/* chat.json_timestamp(timestamptz): "YYYY-MM-DDTHH:MM:SS.mmmZ" (UTC). */
Datum
chat_json_timestamp(PG_FUNCTION_ARGS)
{
	StringInfoData buf;

	initStringInfo(&buf);
	AppendJsonTimestamp(&buf, PG_GETARG_TIMESTAMPTZ(0));
	/* strip the JSON quotes */
	if (buf.len >= 2 && buf.data[0] == '"')
		PG_RETURN_TEXT_P(cstring_to_text_with_len(buf.data + 1, buf.len - 2));
	PG_RETURN_NULL();
}
