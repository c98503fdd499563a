/*
 * realtime.c: nodes, sessions, typing and presence.
 * PLACEHOLDER until the realtime layer lands (issue 3).
 */
#include "chat.h"

void
RealtimeInit(void)
{
}
