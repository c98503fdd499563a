// Back-pressure and dead peers: a client that stops reading is closed with
// 4009 "lagging" once its bounded send ring overflows, and recovers every
// message by sync; a client that stops answering WebSocket pings is closed
// with 1001 after two missed pongs, while a live one stays.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { twoUserDb, startGateway, stopAll, connectAs, syncAll, parseMetrics, sleep, ms } from './lib.mjs';

const DB = 'gw_12_backpressure';
let alice, bob, conv;

before(async () => {
  ({ alice, bob, conv } = await twoUserDb(DB));
});
after(stopAll);

// Closes counted by the gateway for code (the closes-by-code metric).
async function closesWithCode(gw, code) {
  const r = await gw.get('/metrics');
  return parseMetrics(r.text).filter((s) => /close/.test(s.name) && Object.values(s.labels).includes(String(code)))
    .reduce((t, s) => t + s.value, 0);
}

test('a client that stops reading is closed with 4009 and recovers by sync', { timeout: ms(90000) }, async () => {
  const gw = await startGateway({ db: DB, args: ['--rate', '5000', '--max-queue', '32', '--max-queue-bytes', '262144'], label: 'lagging' });
  const a = await connectAs(gw, alice.id, 1, { label: 'alice' });
  const b = await connectAs(gw, bob.id, 1, { label: 'bob (stalled)' });
  await syncAll(b);
  b.ws._socket.pause();   // bob stops reading: the kernel buffers fill, then the gateway's ring

  // 60 KB messages until the gateway closes bob as lagging (bounded: 400 = 24 MB).
  const body = 'L'.repeat(60000);
  let sent = 0;
  const inflight = new Set();
  for (; sent < 400; sent++) {
    const p = a.call({ type: 'send', conversation: conv, body, client_msg_id: `lag-${sent}` }, 15000);
    inflight.add(p);
    p.finally(() => inflight.delete(p));
    if (inflight.size >= 16) await Promise.race(inflight);
    if (sent % 20 === 19 && (await closesWithCode(gw, 4009)) > 0) { sent++; break; }
  }
  await Promise.all(inflight);
  let lagged = 0;
  for (let i = 0; i < 50 && !(lagged = await closesWithCode(gw, 4009)); i++) await sleep(100);
  assert.ok(lagged >= 1, `no 4009 close after ${sent} messages of 60 KB to a stalled reader`);
  const drops = parseMetrics((await gw.get('/metrics')).text).filter((m) => /drop/.test(m.name)).reduce((t, m) => t + m.value, 0);
  assert.ok(drops >= 1, 'the events dropped for the lagging client are counted');

  // bob reads again: what was buffered, then the close 4009.
  b.ws._socket.resume();
  const info = await b.waitClose(10000);
  assert.equal(info.code, 4009, `close code of the lagging client (reason ${info.reason})`);
  assert.ok(a.open, 'the sender is unaffected');

  // The client duty after 4009: reconnect and sync; every message arrives.
  const b2 = await connectAs(gw, bob.id, 1, { label: 'bob again' });
  const got = await syncAll(b2);
  const seen = new Set([...b.frames.filter((f) => f.type === 'message').map((m) => m.seq), ...got.map((m) => m.seq)]);
  const missing = [];
  for (let s = 1; s <= sent; s++) if (!seen.has(s)) missing.push(s);
  assert.deepEqual(missing, [], `bob lacks ${missing.length} of ${sent} after the resync`);
  console.log(`# lagging: closed after ${sent} sends; ${b.frames.filter((f) => f.type === 'message').length} delivered live before the close, ${got.length} by sync`);
  a.close(); b2.close();
  await gw.stop();
});

test('a client that ignores pings is closed with 1001; one that answers stays', { timeout: ms(30000) }, async () => {
  const gw = await startGateway({ db: DB, args: ['--heartbeat', '1'], label: 'heartbeat' });
  const deaf = await connectAs(gw, alice.id, 1, { label: 'deaf', wsOptions: { autoPong: false } });
  const live = await connectAs(gw, bob.id, 1, { label: 'live' });
  let pings = 0;
  deaf.ws.on('ping', () => pings++);
  assert.equal(deaf.hello.heartbeat, 1);
  const t0 = Date.now();
  const info = await deaf.waitClose(8000);
  assert.equal(info.code, 1001, `close code after ${pings} unanswered pings`);
  assert.ok(pings >= 2, `closed after ${pings} pings`);
  assert.ok(Date.now() - t0 >= 1500, `closed after ${Date.now() - t0} ms`);
  assert.ok(live.open, `the client that answers pings was closed: ${JSON.stringify(live.closeInfo)}`);
  assert.equal((await live.request({ type: 'ping' })).type, 'pong');
  live.close();
  await gw.stop();
});
