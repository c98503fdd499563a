// Gateway shutdown vs. a heartbeat in flight: on SIGTERM the gateway
// drains and sends its final chat.node_stop (sessions forgotten, node row
// removed).  A chat.node_heartbeat already running on the maintenance
// connection (here: blocked on the node's row by a locker) used to finish
// after the final call and leave a live-looking node behind; and the final
// call itself (node_reset) kept the row with a fresh heartbeat_at.  After
// exit the node's row and sessions must be gone, also once the blocked
// heartbeat has finished, single and sharded (--listen-dsn: per-partition
// maintenance connections), and when the heartbeat outlives
// --request-timeout (its connection is closed, its backend still runs).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { twoUserDb, startGateway, stopAll, connectAs, value, psql, sleep, ms, dsn } from './lib.mjs';

const DB = 'gw_34_shutdown_heartbeat';
let alice, bob;

before(async () => {
  ({ alice, bob } = await twoUserDb(DB));
});
after(stopAll);

// Polls query (a single value) on DB until it is truthy; returns it (or the last value after timeout ms).
async function until(query, timeout = 5000) {
  let v;
  for (const end = Date.now() + ms(timeout); Date.now() < end;) {
    v = await value(DB, query);
    if (v) return v;
    await sleep(50);
  }
  return v;
}

// Runs one shutdown with the node's heartbeat blocked for holdSeconds and
// checks nothing of the node is left once the locker is done.
async function shutdownWhileHeartbeatBlocked(args, holdSeconds, tag) {
  const gw = await startGateway({ db: DB, args: ['--node-heartbeat', '1', ...args] });
  const a = await connectAs(gw, alice.id, 1, { label: `alice-${tag}` });
  await connectAs(gw, bob.id, 1, { label: `bob-${tag}` });
  assert.equal(await until(`SELECT count(*) FROM chat.sessions WHERE node = '${gw.node}'`), 2);
  const locker = psql(DB, `BEGIN; SELECT node FROM chat.nodes WHERE node = '${gw.node}' FOR UPDATE;
                           SELECT pg_sleep(${holdSeconds}) /* gw34-locker */; COMMIT`);
  const blocked = `SELECT count(*) FROM pg_stat_activity WHERE application_name = 'chat-gateway ${gw.node}'
    AND query LIKE '%node_heartbeat%' AND wait_event_type = 'Lock'`;
  assert.equal(await until(blocked), 1, 'no heartbeat of the gateway waited on the locked node row');
  const closed = new Promise((resolve) => a.ws.once('close', (code) => resolve(code)));
  const exit = await gw.stop('SIGTERM', 20000);
  assert.ok(!exit.forced, `did not exit within 20 s of SIGTERM; log: ${gw.log}`);
  assert.equal(exit.code, 0, `exit ${JSON.stringify(exit)}; log: ${gw.log}`);
  assert.equal(await closed, 1012);
  await locker;
  // whatever the blocked heartbeat did, it is done: no backend of the node is left
  assert.equal(await until(`SELECT count(*) = 0 FROM pg_stat_activity
    WHERE application_name = 'chat-gateway ${gw.node}'`, 10000), true, 'a backend of the stopped gateway is still running');
  assert.equal(await value(DB, `SELECT count(*) FROM chat.nodes WHERE node = '${gw.node}'`), 0,
    'the stopped gateway left its node row behind');
  assert.equal(await value(DB, `SELECT count(*) FROM chat.live_nodes WHERE node = '${gw.node}'`), 0);
  assert.equal(await value(DB, `SELECT count(*) FROM chat.sessions WHERE node = '${gw.node}'`), 0);
}

test('SIGTERM while a heartbeat is blocked: the node is gone after exit', async () => {
  await shutdownWhileHeartbeatBlocked([], 3, 'single');
});

test('SIGTERM while a heartbeat outlives --request-timeout: the node is gone after exit', async () => {
  // the gateway closes the stuck maintenance connection after 2 s; its
  // backend goes on waiting and runs the heartbeat after node_stop
  await shutdownWhileHeartbeatBlocked(['--request-timeout', '2'], 5, 'timeout');
});

test('sharded (--listen-dsn): SIGTERM while a partition heartbeat is blocked: the node is gone after exit', async () => {
  await shutdownWhileHeartbeatBlocked(['--listen-dsn', dsn(DB)], 3, 'sharded');
});

test('SIGTERM with no heartbeat in flight: the node is gone at once', async () => {
  const gw = await startGateway({ db: DB, args: ['--node-heartbeat', '1'] });
  await connectAs(gw, alice.id, 1, { label: 'alice-idle' });
  assert.equal(await value(DB, `SELECT count(*) FROM chat.live_nodes WHERE node = '${gw.node}'`), 1);
  const exit = await gw.stop('SIGTERM', 10000);
  assert.equal(exit.code, 0);
  assert.equal(await value(DB, `SELECT count(*) FROM chat.nodes WHERE node = '${gw.node}'`), 0);
  assert.equal(await value(DB, `SELECT count(*) FROM chat.sessions WHERE node = '${gw.node}'`), 0);
  // the user went offline with the node
  assert.equal(await value(DB, `SELECT last_seen IS NOT NULL FROM chat.users WHERE id = ${alice.id}`), true);
});
