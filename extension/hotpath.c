/*
 * hotpath.c: lookups of the request path done straight on the index, where
 * the profile showed the executor costing more than the lookup itself
 * (docs/realtime.md, "What a send costs").
 *
 * DeviceExists is the device check every chat.client_request makes before
 * anything else: one primary-key probe of chat.devices.  Through SPI it
 * cost a plan revalidation, an executor start and end and a snapshot per
 * call (about 4% of a send's CPU); here it is an index scan on a
 * registered snapshot, the one SPI would have taken (a fresh one per
 * statement under READ COMMITTED, the transaction's under REPEATABLE READ
 * and SERIALIZABLE).  It reads no other table and has no other rule, so
 * nothing the executor would add (permissions are the extension owner's
 * under client_request's SECURITY DEFINER, no RLS on chat tables) is lost.
 */
#include "chat.h"

#include "access/genam.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "storage/lockdefs.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/snapmgr.h"

/* The OID of chat.<name>; raises when there is none (extension dropped). */
static Oid
ChatRelid(const char *name)
{
	Oid			relid = get_relname_relid(name, get_namespace_oid("chat", false));

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation \"chat.%s\" does not exist", name)));
	return relid;
}

/* True when chat.devices has the row (user_id, device_id). */
bool
DeviceExists(int64 user_id, int32 device_id)
{
	Relation	rel = table_open(ChatRelid("devices"), AccessShareLock);
	Oid			pkey = RelationGetPrimaryKeyIndex(rel);
	ScanKeyData keys[2];
	Snapshot	snapshot;
	SysScanDesc scan;
	bool		found;

	if (!OidIsValid(pkey))
		elog(ERROR, "chat: chat.devices has no primary key");
	/* heap attribute numbers: user_id and device_id are columns 1 and 2 */
	ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(user_id));
	ScanKeyInit(&keys[1], 2, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(device_id));
	snapshot = RegisterSnapshot(GetTransactionSnapshot());
	scan = systable_beginscan(rel, pkey, true, snapshot, 2, keys);
	found = HeapTupleIsValid(systable_getnext(scan));
	systable_endscan(scan);
	UnregisterSnapshot(snapshot);
	table_close(rel, AccessShareLock);
	return found;
}
