// Sharded (--listen-dsn): a partition whose server goes silent (network
// partition, hung host) is noticed within --request-timeout on its LISTEN
// connection too, not only on its maintenance connection: the partition is
// reported down (chat_gateway_partitions_up), its connections are made
// again once it answers, and its events flow again.  Before, the LISTEN
// connection was outside the liveness watch: a silent partition looked up
// while none of its events arrived, until TCP keepalive gave up minutes
// later.  The partition is the test database behind pg-proxy.mjs (the pool
// goes straight to it), as in 33-shard-heartbeat.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { twoUserDb, startGateway, stopAll, connectAs, metricSum, sleep, ms, dsn } from './lib.mjs';
import { PgProxy } from './pg-proxy.mjs';

const DB = 'gw_37_shard_silent';
let alice, bob, conv, proxy;

before(async () => {
  ({ alice, bob, conv } = await twoUserDb(DB));
  proxy = await PgProxy.start({ port: process.env.PGPORT });
});
after(async () => { await stopAll(); await proxy?.stop(); });

// Polls metric name until it equals want; resolves the ms it took (or null).
async function metricWithin(gw, name, want, timeout) {
  const t0 = Date.now();
  while (Date.now() - t0 < timeout) {
    if ((await metricSum(gw, name)) === want) return Date.now() - t0;
    await sleep(100);
  }
  return null;
}

test('a silent partition is down within --request-timeout, and its events flow again after', { timeout: ms(60000) }, async () => {
  const gw = await startGateway({
    db: DB,
    args: ['--dsn', dsn(DB), '--listen-dsn', proxy.dsn(DB), '--request-timeout', '2', '--node-heartbeat', '1'],
  });
  assert.equal(await metricWithin(gw, 'chat_gateway_partitions_up', 1, ms(10000)) !== null, true, 'the partition is up');
  const a = await connectAs(gw, alice.id, 1, { label: 'alice' });
  const b = await connectAs(gw, bob.id, 1, { label: 'bob' });
  const r0 = await a.call({ type: 'send', conversation: conv, body: 'before', client_msg_id: 'gw37-0' });
  await b.waitFor((f) => f.type === 'message' && f.seq === r0.seq, ms(5000));

  proxy.blackhole();
  let down;
  try {
    // the probe of an idle connection (after 1 s) plus the deadline (2 s)
    down = await metricWithin(gw, 'chat_gateway_partitions_up', 0, ms(8000));
  } finally {
    proxy.resume();
  }
  assert.notEqual(down, null, 'the silent partition is reported down');
  assert.ok(down <= ms(5000), `reported down after ${down} ms (probe after 1 s idle, deadline 2 s)`);
  assert.notEqual(await metricWithin(gw, 'chat_gateway_partitions_up', 1, ms(20000)), null, 'up again once it answers');
  // Events of the partition flow again: a message sent now is delivered live.
  const since = b.mark();
  const r1 = await a.call({ type: 'send', conversation: conv, body: 'after', client_msg_id: 'gw37-1' });
  const ev = await b.waitFor((f) => f.type === 'message' && f.seq === r1.seq, ms(5000), since);
  assert.equal(ev.body, 'after');
  a.close();
  b.close();
  await gw.stop();
});
