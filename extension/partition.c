/*
 * partition.c: the two GUCs of a partitioned (PL/Proxy) deployment.
 *
 * chat.partitions is the number of partitions (a power of two, PL/Proxy's
 * rule; 1, the default, means not partitioned) and chat.partition this
 * database's number.  chat.new_conversation_id() (00_schema.sql) puts the
 * partition number into the low bits of every conversation id it allocates,
 * so that the id alone routes a call (docs/scaling.md).  They are set per
 * database: ALTER DATABASE part2 SET chat.partition = 2.
 */
#include "chat.h"

#include "utils/guc.h"

int			chat_partitions = 1;
int			chat_partition = 0;

/* chat.partitions must be a power of two: PL/Proxy maps hash & (n - 1). */
static bool
CheckPartitions(int *newval, void **extra, GucSource source)
{
	if (*newval < 1 || (*newval & (*newval - 1)) != 0)
	{
		GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
		GUC_check_errmsg("chat.partitions %d is not a power of two", *newval);
		GUC_check_errhint("PL/Proxy maps a hash to a partition with hash & (partitions - 1): use 1, 2, 4, 8, ...");
		return false;
	}
	return true;
}

/* Defines chat.partitions and chat.partition (called from _PG_init). */
void
DefinePartitionGucs(void)
{
	DefineCustomIntVariable("chat.partitions",
							"Number of partitions of a PL/Proxy deployment (a power of two).",
							"1 means one database, not partitioned; conversation ids are then plain sequence values.",
							&chat_partitions, 1, 1, 1024,
							PGC_SUSET, 0, CheckPartitions, NULL, NULL);
	DefineCustomIntVariable("chat.partition",
							"This database's partition number, 0 .. chat.partitions - 1.",
							"It becomes the low bits of every conversation id allocated here.",
							&chat_partition, 0, 0, 1023,
							PGC_SUSET, 0, NULL, NULL, NULL);
}
