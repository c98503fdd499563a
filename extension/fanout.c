/*
 * fanout.c: routes events to gateway nodes with NOTIFY; push outbox.
 * PLACEHOLDER until the realtime layer lands (issue 3): notifies no one.
 */
#include "chat.h"

#include "fmgr.h"

PG_FUNCTION_INFO_V1(chat_fanout_event);
PG_FUNCTION_INFO_V1(chat_fanout_receipt);
PG_FUNCTION_INFO_V1(chat_fanout_message);

void
FanoutMessage(const ChatMessage *msg)
{
}

Datum
chat_fanout_event(PG_FUNCTION_ARGS)
{
	PG_RETURN_VOID();
}

Datum
chat_fanout_receipt(PG_FUNCTION_ARGS)
{
	PG_RETURN_VOID();
}

Datum
chat_fanout_message(PG_FUNCTION_ARGS)
{
	PG_RETURN_VOID();
}
