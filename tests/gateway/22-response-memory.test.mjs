// Responses count against the per-connection byte budget (issue 9, defect
// 4): a client that stops reading while asking for large history pages is
// closed 4009 and its answers dropped, the gateway's memory stays bounded,
// and another client sharing the same database connection keeps getting
// answers.  --max-inflight bounds the requests a connection has at the
// database (error 53400 beyond, without a database round trip).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { twoUserDb, psql, startGateway, stopAll, connectAs, parseMetrics, sleep, ms } from './lib.mjs';

const DB = 'gw_22_response_memory';
let alice, bob, conv;

before(async () => {
  ({ alice, bob, conv } = await twoUserDb(DB));
  // 50 messages of 60 KB: each history page of 50 is about 3 MB of JSON.
  await psql(DB, `SELECT count(*) FROM generate_series(1, 50) i,
    LATERAL chat.send_message(${alice.id}, ${conv}, repeat('H', 60000), 'big-' || i) s`);
});
after(stopAll);

// Resident set size of a process in MB.
function rssMb(pid) {
  const m = fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+) kB/);
  return Number(m[1]) / 1024;
}

test('a client that stops reading while flooding history requests is closed 4009; memory stays bounded; its pool neighbour is served', { timeout: ms(120000) }, async () => {
  // One pool connection: the stalled client and the polite one share it.
  const gw = await startGateway({ db: DB, args: ['--pool', '1', '--rate', '100000', '--max-queue-bytes', '1048576'], label: 'flood' });
  const slow = await connectAs(gw, alice.id, 1, { label: 'stalled reader' });
  const polite = await connectAs(gw, bob.id, 1, { label: 'polite' });
  assert.equal((await slow.call({ type: 'history', conversation: conv, limit: 50 }, 10000)).messages.length, 50);
  const rss0 = rssMb(gw.pid);
  slow.ws._socket.pause();

  // 150 pages of 3 MB asked for (450 MB if all were kept), in bursts,
  // while the polite client keeps asking for small pages.
  let peak = rss0;
  const latencies = [];
  for (let burst = 0; burst < 15 && slow.ws.readyState === 1; burst++) {
    for (let i = 0; i < 10; i++) slow.sendJson({ id: `h${burst}-${i}`, type: 'history', conversation: conv, limit: 50 });
    const t0 = Date.now();
    const r = await polite.call({ type: 'history', conversation: conv, limit: 1 }, 5000);
    latencies.push(Date.now() - t0);
    assert.equal(r.messages.length, 1);
    peak = Math.max(peak, rssMb(gw.pid));
    await sleep(100);
  }
  for (let i = 0; i < 10; i++) { peak = Math.max(peak, rssMb(gw.pid)); await sleep(100); }
  const metrics = parseMetrics((await gw.get('/metrics')).text);
  const lagged = metrics.filter((s) => s.name === 'chat_gateway_closes_total' && s.labels.code === '4009').reduce((t, s) => t + s.value, 0);
  console.log(`# rss ${rss0.toFixed(1)} MB -> peak ${peak.toFixed(1)} MB; polite latencies ${latencies.join(',')} ms; 4009 closes ${lagged}`);
  assert.ok(peak - rss0 < 120, `gateway RSS grew by ${(peak - rss0).toFixed(1)} MB (from ${rss0.toFixed(1)} MB)`);
  assert.ok(lagged >= 1, 'the stalled reader was not closed 4009');
  assert.ok(Math.max(...latencies) < ms(2000), `the polite client waited ${Math.max(...latencies)} ms`);

  // The stalled client reads again: what was already in the socket, then 4009.
  slow.ws._socket.resume();
  const info = await slow.waitClose(20000);
  assert.equal(info.code, 4009, `close of the stalled reader: ${JSON.stringify(info)}`);
  assert.ok(polite.open);
  assert.equal((await polite.request({ type: 'ping' })).type, 'pong');
  polite.close();
  await gw.stop();
});

test('--max-inflight: requests beyond it are answered 53400 at once, the rest served', async () => {
  const gw = await startGateway({ db: DB, args: ['--max-inflight', '2', '--rate', '1000'], label: 'inflight' });
  const c = await connectAs(gw, alice.id, 1, { label: 'pipeliner' });
  const since = c.mark();
  // One write: the gateway reads all ten before any answer can come back.
  const batch = [];
  for (let i = 0; i < 10; i++) batch.push(JSON.stringify({ id: `p${i}`, type: 'history', conversation: conv, limit: 2 }));
  for (const f of batch) c.ws.send(f);
  await c.waitFor(() => c.frames.slice(since).filter((f) => f.id?.startsWith?.('p')).length === 10, 10000, since);
  const answers = c.frames.slice(since).filter((f) => f.id?.startsWith?.('p'));
  const refused = answers.filter((f) => f.type === 'error' && f.code === '53400');
  const served = answers.filter((f) => f.type === 'ok');
  assert.ok(served.length >= 2, `served ${served.length}: ${c.recent()}`);
  assert.ok(refused.length >= 1, `nothing refused beyond --max-inflight 2: ${answers.map((f) => f.type).join(',')}`);
  assert.match(refused[0].message, /in flight/);
  // Once answered, the connection may send again.
  assert.equal((await c.request({ type: 'history', conversation: conv, limit: 1 })).type, 'ok');
  const m = parseMetrics((await gw.get('/metrics')).text);
  assert.ok(m.some((s) => s.name === 'chat_gateway_inflight_refused_total' && s.value >= 1));
  c.close();
  await gw.stop();
});
