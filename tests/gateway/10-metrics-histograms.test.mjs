// /metrics histograms of issue 11: end-to-end delivery latency (the commit
// stamp in every notification -> the socket write), connection lifetimes
// (churn), and the notifier's queue depth and batch sizes (read from
// chat.notifier_histograms() with the node heartbeat).  Each is valid
// Prometheus text (HELP/TYPE, cumulative le buckets ending in +Inf equal to
// _count, _sum), moves with the traffic that feeds it, and with --workers 2
// is summed over the workers (one series, whichever worker answers).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { newDb, makeUser, direct, startGateway, stopAll, connectAs, signToken, Client, parseMetrics, rows, sleep, ms } from './lib.mjs';

const DB = 'gw_10_metrics_hist';
const HISTS = ['chat_gateway_delivery_latency_seconds', 'chat_gateway_connection_duration_seconds',
  'chat_notifier_queue_depth_events', 'chat_notifier_batch_events'];
let users;

before(async () => {
  await newDb(DB);
  users = [];
  for (let i = 0; i < 12; i++) users.push(await makeUser(DB));
});
after(stopAll);

async function scrape(gw) {
  const r = await gw.get('/metrics');
  assert.equal(r.status, 200);
  return { text: r.text, samples: parseMetrics(r.text) };
}

// A histogram's series, checked for the Prometheus rules; null when it has
// no samples (allowed for the notifier's before the first heartbeat read).
function histogram({ text, samples }, name) {
  assert.match(text, new RegExp(`^# HELP ${name} \\S`, 'm'), `HELP line of ${name}`);
  assert.match(text, new RegExp(`^# TYPE ${name} histogram$`, 'm'), `TYPE line of ${name}`);
  const buckets = samples.filter((s) => s.name === `${name}_bucket`);
  const sum = samples.filter((s) => s.name === `${name}_sum`);
  const count = samples.filter((s) => s.name === `${name}_count`);
  if (!buckets.length && !sum.length && !count.length) return null;
  assert.equal(sum.length, 1, `one ${name}_sum series (summed over workers, no node label)`);
  assert.equal(count.length, 1, `one ${name}_count series`);
  for (const s of [...buckets, ...sum, ...count]) {
    assert.deepEqual(Object.keys(s.labels).filter((k) => k !== 'le'), [], `${s.name} has no labels but le: ${JSON.stringify(s.labels)}`);
  }
  const les = buckets.map((b) => b.labels.le);
  assert.equal(les.at(-1), '+Inf', `${name}: the last bucket is le="+Inf"`);
  assert.equal(new Set(les).size, les.length, `${name}: each le once`);
  const bounds = les.slice(0, -1).map(Number);
  for (let i = 1; i < bounds.length; i++) assert.ok(bounds[i] > bounds[i - 1], `${name}: le ascending (${les})`);
  for (let i = 1; i < buckets.length; i++) {
    assert.ok(buckets[i].value >= buckets[i - 1].value, `${name}: buckets cumulative (${buckets.map((b) => b.value)})`);
  }
  assert.equal(buckets.at(-1).value, count[0].value, `${name}: +Inf bucket equals _count`);
  assert.ok(sum[0].value >= 0);
  return { count: count[0].value, sum: sum[0].value, buckets: Object.fromEntries(buckets.map((b) => [b.labels.le, b.value])) };
}

const counter = ({ samples }, name) => samples.filter((s) => s.name === name).reduce((t, s) => t + s.value, 0);

// Scrapes until pred(scrape) holds (or the time is up); the last scrape.
async function scrapeUntil(gw, pred, timeout = 5000) {
  let m;
  for (const end = Date.now() + ms(timeout); ;) {
    m = await scrape(gw);
    if (pred(m) || Date.now() > end) return m;
    await sleep(100);
  }
}

// The notifier's histograms move only forward, bucket by bucket.
function notDecreasing(a, b, name) {
  const ha = histogram(a, name), hb = histogram(b, name);
  assert.ok(ha && hb, `${name} present in both scrapes`);
  assert.ok(hb.count >= ha.count && hb.sum >= ha.sum, `${name}: count ${ha.count} -> ${hb.count}, sum ${ha.sum} -> ${hb.sum}`);
  for (const le of Object.keys(ha.buckets)) assert.ok(hb.buckets[le] >= ha.buckets[le], `${name} le=${le} decreased`);
}

test('one process: delivery latency, connection lifetimes and notifier histograms move with traffic', { timeout: ms(60000) }, async () => {
  const gw = await startGateway({ db: DB, args: ['--node-heartbeat', '1'], label: 'hist-single' });
  const [u1, u2] = users;
  const conv = await direct(DB, u1.id, u2.id);

  // Notifier series appear after the first heartbeat (1 s).
  const m0 = await scrapeUntil(gw, (m) => histogram(m, 'chat_notifier_batch_events') && histogram(m, 'chat_notifier_queue_depth_events'));
  for (const h of HISTS) assert.ok(histogram(m0, h), `${h} has samples:\n${m0.text}`);
  const skew0 = counter(m0, 'chat_gateway_delivery_clock_skew_total');

  // 5 messages, each delivered to the other user's one socket.
  const a = await connectAs(gw, u1.id, 1, { label: 'a' });
  const b = await connectAs(gw, u2.id, 1, { label: 'b' });
  const sendStart = Date.now();
  for (let i = 0; i < 5; i++) {
    const r = await a.call({ type: 'send', conversation: conv, body: `h${i}`, client_msg_id: `h-${i}` });
    await b.waitFor((f) => f.type === 'message' && f.seq === r.seq, 3000);
  }
  const elapsed = (Date.now() - sendStart) / 1000;
  const m1 = await scrape(gw);
  const d0 = histogram(m0, 'chat_gateway_delivery_latency_seconds'), d1 = histogram(m1, 'chat_gateway_delivery_latency_seconds');
  assert.ok(d1.count - d0.count >= 5, `delivery count grew by ${d1.count - d0.count}, expected >= 5`);
  // Each delivery took less than the whole exchange, and more than nothing.
  assert.ok(d1.sum > d0.sum, 'delivery sum grew');
  assert.ok(d1.sum - d0.sum <= (d1.count - d0.count) * elapsed + 0.5, `delivery sum grew by ${d1.sum - d0.sum} s over ${elapsed} s of traffic`);
  assert.equal(d1.buckets['10'] - d0.buckets['10'], d1.count - d0.count, 'every delivery under 10 s');
  assert.equal(counter(m1, 'chat_gateway_delivery_clock_skew_total'), skew0, 'same host, same clock: nothing skewed');

  // No churn yet (only the two open sockets); a close and a refused
  // token each add one lifetime.
  const l0 = histogram(m0, 'chat_gateway_connection_duration_seconds');
  assert.equal(histogram(m1, 'chat_gateway_connection_duration_seconds').count, l0.count, 'no connection closed yet');
  const opened = Date.now();
  b.close();
  await b.closed;
  const m2 = await scrapeUntil(gw, (m) => histogram(m, 'chat_gateway_connection_duration_seconds').count > l0.count);
  const l2 = histogram(m2, 'chat_gateway_connection_duration_seconds');
  assert.equal(l2.count - l0.count, 1, 'one close, one lifetime');
  assert.ok(l2.sum - l0.sum > 0 && l2.sum - l0.sum < (Date.now() - opened) / 1000 + elapsed + 60, `lifetime ${l2.sum - l0.sum} s`);
  const bad = await Client.connect(gw, { token: signToken({ sub: u1.id, dev: 1, key: 'wrong' }), hello: false, label: 'bad' });
  assert.equal((await bad.waitClose(3000)).code, 4001);
  const m3 = await scrapeUntil(gw, (m) => histogram(m, 'chat_gateway_connection_duration_seconds').count > l2.count);
  const l3 = histogram(m3, 'chat_gateway_connection_duration_seconds');
  assert.equal(l3.count - l2.count, 1, 'a refused token is churn too');
  assert.equal(l3.buckets['10'] - l2.buckets['10'], 1, 'and short-lived (under 10 s)');

  // The notifier saw the sends (server-wide, so at least) and never goes back.
  const m4 = await scrapeUntil(gw, (m) => histogram(m, 'chat_notifier_batch_events').count > histogram(m0, 'chat_notifier_batch_events').count, 5000);
  for (const h of ['chat_notifier_batch_events', 'chat_notifier_queue_depth_events']) {
    notDecreasing(m0, m4, h);
    notDecreasing(m1, m4, h);
    assert.ok(histogram(m4, h).count > histogram(m0, h).count, `${h} moved with 5 sends`);
  }
  // ... and equals what the database says, between two reads.
  const lo = await rows(DB, 'SELECT histogram, cumulative[15]::bigint AS n FROM chat.notifier_histograms()');
  const m5 = await scrapeUntil(gw, (m) => histogram(m, 'chat_notifier_batch_events').count >= Number(lo.find((r) => r.histogram === 'batch_events').n), 4000);
  const hi = await rows(DB, 'SELECT histogram, cumulative[15]::bigint AS n FROM chat.notifier_histograms()');
  for (const [h, row] of [['chat_notifier_batch_events', 'batch_events'], ['chat_notifier_queue_depth_events', 'queue_depth']]) {
    const v = histogram(m5, h).count;
    const l = Number(lo.find((r) => r.histogram === row).n), u = Number(hi.find((r) => r.histogram === row).n);
    assert.ok(v >= l && v <= u, `${h}_count ${v}, the database said ${l} then ${u}`);
  }
  a.close();
  await gw.stop();
});

// Connects users until both workers hold one; [client on _0, client on _1, all clients].
async function onBothWorkers(gw) {
  const byNode = {}, all = [];
  for (const [i, u] of users.slice(2).entries()) {
    const c = await connectAs(gw, u.id, 1, { label: `w${i}` });
    all.push(c);
    (byNode[c.hello.node] ??= []).push(c);
    if (Object.keys(byNode).length === 2) break;
  }
  assert.equal(Object.keys(byNode).length, 2, 'clients landed on both workers');
  return [byNode[`${gw.node}_0`][0], byNode[`${gw.node}_1`][0], all];
}

test('--workers 2: the histograms are summed over both workers, whichever answers', { timeout: ms(60000) }, async () => {
  const gw = await startGateway({ db: DB, node: `hw${process.pid % 100000}`, args: ['--workers', '2', '--node-heartbeat', '1'], label: 'hist-workers' });
  const m0 = await scrapeUntil(gw, (m) => histogram(m, 'chat_notifier_batch_events'));
  const [x, y, all] = await onBothWorkers(gw);
  for (const c of all) if (c !== x && c !== y) { c.close(); await c.closed; }
  const base = await scrapeUntil(gw, (m) => histogram(m, 'chat_gateway_connection_duration_seconds').count >= histogram(m0, 'chat_gateway_connection_duration_seconds').count + all.length - 2);
  const conv = await direct(DB, x.hello.user, y.hello.user);
  // One delivery written by each worker.
  const r1 = await x.call({ type: 'send', conversation: conv, body: 'to worker 1', client_msg_id: 'hw-1' });
  await y.waitFor((f) => f.type === 'message' && f.seq === r1.seq, 3000);
  const r2 = await y.call({ type: 'send', conversation: conv, body: 'to worker 0', client_msg_id: 'hw-2' });
  await x.waitFor((f) => f.type === 'message' && f.seq === r2.seq, 3000);
  const d0 = histogram(base, 'chat_gateway_delivery_latency_seconds');
  // Several scrapes (the port is shared: either worker may answer): every
  // one shows both deliveries.
  for (let i = 0; i < 6; i++) {
    const d = histogram(await scrape(gw), 'chat_gateway_delivery_latency_seconds');
    assert.ok(d.count - d0.count >= 2, `scrape ${i}: delivery count grew by ${d.count - d0.count}, expected both workers' (>= 2)`);
  }
  // One close on each worker: two lifetimes in every scrape.
  const l0 = histogram(base, 'chat_gateway_connection_duration_seconds');
  x.close(); y.close();
  await x.closed; await y.closed;
  await scrapeUntil(gw, (m) => histogram(m, 'chat_gateway_connection_duration_seconds').count >= l0.count + 2);
  for (let i = 0; i < 6; i++) {
    const l = histogram(await scrape(gw), 'chat_gateway_connection_duration_seconds');
    assert.equal(l.count - l0.count, 2, `scrape ${i}: lifetimes of both workers' closes`);
  }
  // The notifier's are server-wide: shown once, not once per worker, and
  // never summed (both workers read the same database values).
  const m1 = await scrapeUntil(gw, (m) => histogram(m, 'chat_notifier_batch_events').count > histogram(m0, 'chat_notifier_batch_events').count);
  notDecreasing(m0, m1, 'chat_notifier_batch_events');
  notDecreasing(m0, m1, 'chat_notifier_queue_depth_events');
  const [db] = await rows(DB, "SELECT cumulative[15]::bigint AS n FROM chat.notifier_histograms() WHERE histogram = 'batch_events'");
  assert.ok(histogram(m1, 'chat_notifier_batch_events').count <= Number(db.n), 'not summed over the two workers');
  await gw.stop();
});

// The dashboard and alerts name only chat_notifier_* series the gateway
// serves (10-metrics checks chat_gateway_* and chat_pusher_*).
test('monitoring/ names only chat_notifier_* series that exist', { timeout: ms(30000) }, async () => {
  const gw = await startGateway({ db: DB, args: ['--node-heartbeat', '1'], label: 'hist-names' });
  const m = await scrapeUntil(gw, (x) => histogram(x, 'chat_notifier_batch_events') && x.samples.some((s) => s.name === 'chat_notifier_fallbacks_total'));
  const root = new URL('../../', import.meta.url);
  const text = ['monitoring/grafana-dashboard.json', 'monitoring/alerts.yml']
    .map((f) => fs.readFileSync(new URL(f, root), 'utf8')).join('\n');
  const used = new Set([...text.matchAll(/\b(chat_notifier_[a-z_]+)/g)].map((x) => x[1]));
  const served = new Set(m.samples.map((s) => s.name));
  for (const h of HISTS) assert.ok(text.includes(h), `the dashboard or alerts use ${h}`);
  for (const name of used) assert.ok(served.has(name), `${name} is not in the gateway's /metrics`);
  await gw.stop();
});
