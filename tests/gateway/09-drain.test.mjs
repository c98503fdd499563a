// SIGTERM drain: clients closed with 1012, the process exits 0 and the
// node's sessions are gone from chat.sessions; a restarted node resets
// sessions left behind by a crash.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { twoUserDb, startGateway, stopAll, connectAs, rows, sleep, ms, Client } from './lib.mjs';

const DB = 'gw_09_drain';
let alice, bob;

before(async () => {
  ({ alice, bob } = await twoUserDb(DB, { alice: { devices: 2 } }));
});
after(stopAll);

const sessions = async (node) => (await rows(DB, `SELECT user_id::int, device_id FROM chat.sessions WHERE node = '${node}' ORDER BY 1, 2`));

test('SIGTERM closes clients with 1012, forgets the sessions and exits 0', async () => {
  const gw = await startGateway({ db: DB, label: 'drain' });
  const cs = [
    await connectAs(gw, alice.id, 1, { label: 'alice/1' }),
    await connectAs(gw, alice.id, 2, { label: 'alice/2' }),
    await connectAs(gw, bob.id, 1, { label: 'bob' }),
  ];
  const unauth = await Client.connect(gw, { hello: false, label: 'unauthenticated' });
  assert.deepEqual(await sessions(gw.node), [
    { user_id: alice.id, device_id: 1 }, { user_id: alice.id, device_id: 2 }, { user_id: bob.id, device_id: 1 },
  ].sort((x, y) => x.user_id - y.user_id || x.device_id - y.device_id));
  const t0 = Date.now();
  const exit = await gw.stop('SIGTERM', 15000);
  assert.ok(!exit.forced, `did not exit within 15 s of SIGTERM; log: ${gw.log}`);
  assert.deepEqual({ code: exit.code, signal: exit.signal }, { code: 0, signal: null }, `exit status; log: ${gw.log}`);
  for (const c of cs) assert.equal((await c.waitClose(3000)).code, 1012, `${c.label} close code`);
  const u = await unauth.waitClose(3000);
  assert.ok([1012, 1001, 1006].includes(u.code), `unauthenticated close code ${u.code}`);
  assert.deepEqual(await sessions(gw.node), [], 'the node\'s sessions are gone');
  console.log(`# drain took ${Date.now() - t0} ms`);
  // The port is free again: nothing accepts.
  assert.equal(await gw.healthz(), 0);
});

test('SIGTERM with no clients exits 0 promptly', async () => {
  const gw = await startGateway({ db: DB, label: 'drain-empty' });
  const t0 = Date.now();
  const exit = await gw.stop('SIGTERM', 10000);
  assert.deepEqual({ code: exit.code, signal: exit.signal }, { code: 0, signal: null });
  assert.ok(Date.now() - t0 < ms(5000), `took ${Date.now() - t0} ms`);
});

test('a node restarted after kill -9 starts with no stale sessions', async () => {
  const gw = await startGateway({ db: DB, label: 'stale' });
  const c = await connectAs(gw, bob.id, 1, { label: 'bob' });
  assert.equal((await sessions(gw.node)).length, 1);
  await gw.kill9();
  await c.waitClose(3000);
  assert.equal((await sessions(gw.node)).length, 1, 'a crashed node leaves its session row');
  gw.spawn();
  await gw.waitHealth(200, 15000);
  let left = -1;
  for (let i = 0; i < 20; i++) { left = (await sessions(gw.node)).length; if (left === 0) break; await sleep(100); }
  assert.equal(left, 0, 'chat.node_reset at start forgot the stale session');
  const exit = await gw.stop('SIGTERM');
  assert.equal(exit.code, 0);
});
