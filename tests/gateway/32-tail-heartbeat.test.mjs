// Latency tail (issue 11): the periodic node_heartbeat must not hold up
// live events.  PostgreSQL hands a backend's notifications to its client
// only between transactions, so a heartbeat running on the LISTEN
// connection delayed every event of the node for as long as it ran (a
// presence sweep after a mass disconnect: 460 ms).  The gateway runs it on
// a maintenance connection of its own; here a heartbeat blocked
// on the node's row (6 s) must not delay a message.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { twoUserDb, startGateway, stopAll, connectAs, value, psql, sleep, ms } from './lib.mjs';

const DB = 'gw_32_tail_heartbeat';
let gw, alice, bob, conv, a, b;

before(async () => {
  ({ alice, bob, conv } = await twoUserDb(DB));
  gw = await startGateway({ db: DB, args: ['--node-heartbeat', '1'] });
  a = await connectAs(gw, alice.id, 1, { label: 'alice' });
  b = await connectAs(gw, bob.id, 1, { label: 'bob' });
});
after(stopAll);

// Waits until a node_heartbeat of this gateway waits on a lock; false after 5 s.
async function heartbeatBlocked() {
  for (let i = 0; i < 100; i++) {
    const n = Number(await value(DB, `SELECT count(*) FROM pg_stat_activity
      WHERE query LIKE '%node_heartbeat%' AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()`));
    if (n > 0) return true;
    await sleep(50);
  }
  return false;
}

test('a message is delivered while the node heartbeat is blocked in the database', async () => {
  const locker = psql(DB, `BEGIN; SELECT node FROM chat.nodes WHERE node = '${gw.node}' FOR UPDATE;
                           SELECT pg_sleep(6) /* gw32-locker */; COMMIT`);
  assert.ok(await heartbeatBlocked(), 'no heartbeat waited on the locked node row');
  const since = b.mark();
  const t0 = Date.now();
  const r = await a.call({ type: 'send', conversation: conv, body: 'during a slow heartbeat', client_msg_id: 'gw32-1' });
  const ev = await b.waitFor((f) => f.type === 'message' && f.seq === r.seq, ms(5000), since);
  const took = Date.now() - t0;
  assert.equal(ev.body, 'during a slow heartbeat');
  // Behind the heartbeat the event would wait for the rest of the 6 s lock.
  assert.ok(took < ms(2500), `send + delivery took ${took} ms while the heartbeat was blocked`);
  // Still blocked afterwards: the delivery did not just follow the lock's end.
  assert.ok(await heartbeatBlocked(), 'the heartbeat was no longer blocked when the event came');
  await locker;
  assert.equal(await gw.healthz(), 200);
});

test('heartbeats go on after their connection is killed (it reconnects; the pool covers meanwhile)', async () => {
  // The maintenance connection: its last query is node_heartbeat or
  // notifier_stats.  Waited for: the first test's 6 s heartbeat outlived
  // --request-timeout (5 s), so that connection was closed and reconnects.
  let pid = 0;
  for (let i = 0; i < 100 && !pid; i++) {
    pid = Number(await value(DB, `SELECT coalesce(max(pid), 0) FROM pg_stat_activity
      WHERE application_name = 'chat-gateway ${gw.node}' AND state = 'idle'
        AND (query LIKE '%node_heartbeat%' OR query LIKE '%notifier_stats%')`));
    if (!pid) await sleep(100);
  }
  assert.ok(pid > 0, 'no backend of the gateway ran node_heartbeat or notifier_stats within 10 s');
  await value(DB, `SELECT pg_terminate_backend(${pid})`);
  const before = await value(DB, `SELECT heartbeat_at FROM chat.nodes WHERE node = '${gw.node}'`);
  let after = before;
  for (let i = 0; i < 60 && after === before; i++) {
    await sleep(100);
    after = await value(DB, `SELECT heartbeat_at FROM chat.nodes WHERE node = '${gw.node}'`);
  }
  assert.notEqual(after, before, 'heartbeat_at did not move within 6 s of the kill');
  // live events still flow
  const since = b.mark();
  const r = await a.call({ type: 'send', conversation: conv, body: 'after the kill', client_msg_id: 'gw32-2' });
  await b.waitFor((f) => f.type === 'message' && f.seq === r.seq, ms(3000), since);
});
