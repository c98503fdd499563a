/*
 * errors.c: chat.condition_name, the condition names of SQLSTATEs that
 * error frames carry ("error": "insufficient_privilege"), from the table
 * in errnames.h.
 */
#include "chat.h"

#include "fmgr.h"
#include "utils/builtins.h"

#include "errnames.h"

PG_FUNCTION_INFO_V1(chat_condition_name);

/* PostgreSQL's condition name of an SQLSTATE (insufficient_privilege for
 * 42501), NULL when unknown. */
const char *
ConditionName(const char *sqlstate)
{
	int			i;

	for (i = 0; i < lengthof(ChatErrorNames); i++)
		if (strcmp(ChatErrorNames[i].sqlstate, sqlstate) == 0)
			return ChatErrorNames[i].name;
	return NULL;
}

/* chat.condition_name(sqlstate): ConditionName as SQL. */
Datum
chat_condition_name(PG_FUNCTION_ARGS)
{
	const char *name = ConditionName(text_to_cstring(PG_GETARG_TEXT_PP(0)));

	if (name == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(name));
}
