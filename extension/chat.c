/*
 * chat.c: module initialisation and the core GUCs of the chat extension.
 */
#include "chat.h"

#include <limits.h>

#include "fmgr.h"
#include "utils/guc.h"

PG_MODULE_MAGIC;

int			chat_max_body_bytes = 65536;
int			chat_max_group_members = 1024;
int			chat_edit_window = 900;

void		_PG_init(void);

/* Defines the GUCs; the realtime layer adds its own and its shared memory. */
void
_PG_init(void)
{
	DefineCustomIntVariable("chat.max_body_bytes",
							"Largest message body accepted, in bytes.",
							NULL, &chat_max_body_bytes, 65536, 1, 1024 * 1024 * 1024,
							PGC_SUSET, GUC_UNIT_BYTE, NULL, NULL, NULL);
	DefineCustomIntVariable("chat.max_group_members",
							"Largest number of members a group conversation may have.",
							NULL, &chat_max_group_members, 1024, 2, 1000000,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("chat.edit_window",
							"How long after sending a message its sender may edit it.",
							NULL, &chat_edit_window, 900, 0, INT_MAX,
							PGC_SUSET, GUC_UNIT_S, NULL, NULL, NULL);
	RealtimeInit();
	MarkGUCPrefixReserved("chat");
}
