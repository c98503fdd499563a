// PostgreSQL stopped and started under a running gateway: clients stay
// connected, /healthz goes 503 then 200, every client gets {"type":"resync"},
// the live sessions are registered again and sends work again.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { twoUserDb, startGateway, stopAll, connectAs, clusterCtl, syncAll, rows, sleep, ms } from './lib.mjs';

const DB = 'gw_08_pg_restart';
let gw, alice, bob, conv, down = false;

before(async () => {
  ({ alice, bob, conv } = await twoUserDb(DB, { alice: { devices: 2 } }));
  gw = await startGateway({ db: DB });
});
after(async () => {
  if (down) await clusterCtl('start');
  await stopAll();
});

test('PostgreSQL restart: clients stay, get resync, and chat again', { timeout: ms(90000) }, async () => {
  const a = await connectAs(gw, alice.id, 1, { label: 'alice' });
  const b = await connectAs(gw, bob.id, 1, { label: 'bob' });
  const r1 = await a.call({ type: 'send', conversation: conv, body: 'before', client_msg_id: 'pr-1' });
  await b.waitFor((f) => f.type === 'message' && f.seq === r1.seq, 3000);
  await b.call({ type: 'ack', conversation: conv, seq: r1.seq });
  const [s0] = await rows(DB, `SELECT count(*)::int AS n FROM chat.sessions WHERE node = '${gw.node}'`);
  assert.equal(s0.n, 2, 'two sessions registered');

  const sinceA = a.mark(), sinceB = b.mark();
  down = true;
  await clusterCtl('stop');
  await gw.waitHealth(503, 10000);
  await sleep(ms(500));
  assert.ok(a.open && b.open, `clients dropped with the database: ${JSON.stringify([a.closeInfo, b.closeInfo])}`);
  assert.equal((await a.request({ type: 'ping' })).type, 'pong', 'the gateway answers pings while the database is down');
  await clusterCtl('start');
  down = false;
  // A message committed while the gateway is still reconnecting: its
  // notification may be lost; the resync duty (sync) must recover it.
  const [gap] = await rows(DB, `SELECT seq::int FROM chat.send_message(${alice.id}, ${conv}, 'during the gap', 'pr-gap', NULL, 2)`);
  await gw.waitHealth(200, 30000);

  await a.waitFor((f) => f.type === 'resync', 10000, sinceA);
  await b.waitFor((f) => f.type === 'resync', 10000, sinceB);
  assert.ok(a.open && b.open, 'clients still connected');
  assert.ok(!gw.exit, 'the gateway is still running');

  // Live sessions registered again.
  const deadline = Date.now() + ms(5000);
  let n = 0;
  while (Date.now() < deadline) {
    [{ n }] = await rows(DB, `SELECT count(*)::int AS n FROM chat.sessions WHERE node = '${gw.node}'`);
    if (n === 2) break;
    await sleep(100);
  }
  assert.equal(n, 2, 'sessions re-registered after the reconnect');

  // The resync duty: sync gives exactly what bob had not acked.
  const missed = await syncAll(b);
  assert.deepEqual(missed.map((m) => [m.seq, m.body]), [[gap.seq, 'during the gap']]);

  // Sends work again, both ways, with live delivery.
  const since2 = b.mark();
  const r2 = await a.call({ type: 'send', conversation: conv, body: 'after', client_msg_id: 'pr-2' }, 8000);
  assert.equal(r2.seq, gap.seq + 1);
  assert.equal((await b.waitFor((f) => f.type === 'message' && f.seq === r2.seq, 5000, since2)).body, 'after');
  const since3 = a.mark();
  const r3 = await b.call({ type: 'send', conversation: conv, body: 'and back', client_msg_id: 'pr-3' }, 8000);
  assert.equal((await a.waitFor((f) => f.type === 'message' && f.seq === r3.seq, 5000, since3)).body, 'and back');
  a.close(); b.close();
});

test('a client that connects after the restart is served', async () => {
  const c = await connectAs(gw, bob.id, 1, { label: 'bob late' });
  const r = await c.call({ type: 'history', conversation: conv, limit: 10 });
  assert.deepEqual(r.messages.map((m) => m.body), ['before', 'during the gap', 'after', 'and back']);
  c.close();
});
