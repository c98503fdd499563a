/*
 * push.c: the push rule and the push outbox.
 *
 * An offline member gets a push of a message when the message is news
 * (MessageWantsPush: not a system message nor a change-log entry) and the
 * member wants it (PUSH_WANTED_SQL in chat.h: not muted, or mentioned);
 * the sender never does.  fanout.c finds the offline members in the same
 * lookup as the online ones and hands them to QueuePushes.  The outbox is
 * drained by chat.claim_push, complete_push and fail_push (sql/22_push.sql).
 * Queuing a row notifies PUSH_CHANNEL at commit, so that pushers (which
 * LISTEN on it) wake at once instead of polling.
 */
#include "chat.h"

#include "catalog/pg_type.h"
#include "commands/async.h"
#include "utils/array.h"
#include "utils/builtins.h"

static SPIPlanPtr push_ids_plan = NULL;

/*
 * The push rule, message half: only messages are news to be woken for;
 * system messages and change-log entries are not.
 */
bool
MessageWantsPush(const ChatMessage *msg)
{
	return msg->target == 0 && !(msg->kind != NULL && strcmp(msg->kind, "system") == 0);
}

/* The channel pushers LISTEN on; NOTIFY folds repeats within a transaction. */
#define PUSH_CHANNEL "chat_push"

/*
 * Queues a push_outbox row per push device of the npush users in push_ids
 * and, when there was one, wakes the pushers at commit.
 */
void
QueuePushes(const ChatMessage *msg, Datum *push_ids, int npush, const char *payload)
{
	Oid			types[4] = {INT8ARRAYOID, INT8OID, INT8OID, TEXTOID};
	Datum		args[4];

	ChatPrepare(&push_ids_plan,
				"INSERT INTO chat.push_outbox"
				" (user_id, device_id, push_token, conversation_id, seq, payload)"
				" SELECT d.user_id, d.device_id, d.push_token, $2, $3, $4::jsonb"
				" FROM chat.devices d"
				" WHERE d.user_id = ANY ($1) AND d.push_token IS NOT NULL"
				" ORDER BY d.user_id, d.device_id",
				4, types);
	args[0] = PointerGetDatum(construct_array(push_ids, npush, INT8OID, 8,
											  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[1] = Int64GetDatum(msg->conversation_id);
	args[2] = Int64GetDatum(msg->seq);
	args[3] = CStringGetTextDatum(payload);
	ChatExecute(push_ids_plan, args, NULL, false, 0, SPI_OK_INSERT, "push outbox insert");
	if (SPI_processed > 0)
		Async_Notify(PUSH_CHANNEL, "");
}
