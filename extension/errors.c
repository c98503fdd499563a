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

/* chat.condition_name(sqlstate): PostgreSQL's condition name of an SQLSTATE
 * (insufficient_privilege for 42501), NULL when unknown. */
Datum
chat_condition_name(PG_FUNCTION_ARGS)
{
	char	   *state = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int			i;

	for (i = 0; i < lengthof(ChatErrorNames); i++)
		if (strcmp(ChatErrorNames[i].sqlstate, state) == 0)
			PG_RETURN_TEXT_P(cstring_to_text(ChatErrorNames[i].name));
	PG_RETURN_NULL();
}
