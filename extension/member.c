/*
 * member.c: the membership rule in C, mirroring chat.require_member (which
 * the plpgsql functions keep calling): P0002 for an unknown conversation or
 * user, 42501 for a user without an active membership.  send.c reaches
 * the error half through its locking query; typing.c calls RequireMember,
 * request.c (ack, read) LockMember.
 */
#include "chat.h"

#include "catalog/pg_type.h"

static SPIPlanPtr member_plan = NULL;
static SPIPlanPtr conversation_plan = NULL;
static SPIPlanPtr user_plan = NULL;
static SPIPlanPtr lock_member_plan = NULL;

/*
 * Raises the error of a user that has no active membership of the
 * conversation: P0002 when the conversation or the user does not exist,
 * 42501 otherwise.  Caller is connected to SPI.
 */
void
RaiseNotMember(int64 user_id, int64 conversation_id)
{
	Oid			types[1] = {INT8OID};
	Datum		args[1] = {Int64GetDatum(conversation_id)};

	ChatPrepare(&conversation_plan, "SELECT FROM chat.conversations WHERE id = $1", 1, types);
	ChatExecute(conversation_plan, args, NULL, false, 1, SPI_OK_SELECT, "conversation lookup");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("conversation " INT64_FORMAT " does not exist", conversation_id)));
	ChatPrepare(&user_plan, "SELECT FROM chat.users WHERE id = $1", 1, types);
	args[0] = Int64GetDatum(user_id);
	ChatExecute(user_plan, args, NULL, false, 1, SPI_OK_SELECT, "user lookup");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("user " INT64_FORMAT " does not exist", user_id),
				 errhint("Create it with chat.upsert_user.")));
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("user " INT64_FORMAT " is not a member of conversation " INT64_FORMAT,
					user_id, conversation_id)));
}

/* Returns when user_id is an active member of conversation_id; raises as
 * chat.require_member otherwise.  Caller is connected to SPI. */
void
RequireMember(int64 user_id, int64 conversation_id)
{
	Oid			types[2] = {INT8OID, INT8OID};
	Datum		args[2] = {Int64GetDatum(conversation_id), Int64GetDatum(user_id)};

	ChatPrepare(&member_plan,
				"SELECT FROM chat.members WHERE conversation_id = $1 AND user_id = $2"
				" AND left_at IS NULL", 2, types);
	ChatExecute(member_plan, args, NULL, false, 1, SPI_OK_SELECT, "membership lookup");
	if (SPI_processed == 0)
		RaiseNotMember(user_id, conversation_id);
}

/*
 * RequireMember with the member row locked FOR NO KEY UPDATE, as
 * chat.require_member(user, conversation, true): returns the row's
 * delivered_seq and read_seq.  Caller is connected to SPI.
 */
void
LockMember(int64 user_id, int64 conversation_id, int64 *delivered_seq, int64 *read_seq)
{
	Oid			types[2] = {INT8OID, INT8OID};
	Datum		args[2] = {Int64GetDatum(conversation_id), Int64GetDatum(user_id)};
	bool		isnull;

	ChatPrepare(&lock_member_plan,
				"SELECT delivered_seq, read_seq FROM chat.members"
				" WHERE conversation_id = $1 AND user_id = $2 AND left_at IS NULL"
				" FOR NO KEY UPDATE", 2, types);
	ChatExecute(lock_member_plan, args, NULL, false, 1, SPI_OK_SELECT, "membership lock");
	if (SPI_processed == 0)
		RaiseNotMember(user_id, conversation_id);
	*delivered_seq = ChatSpiInt64(0, 1, &isnull);
	*read_seq = ChatSpiInt64(0, 2, &isnull);
}
