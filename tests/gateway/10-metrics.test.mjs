// /healthz and /metrics: Prometheus text with connections, frames in/out,
// notifications, deliveries, drops, closes by code and a request-latency
// histogram, whose counters move with the traffic.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { twoUserDb, startGateway, stopAll, connectAs, signToken, Client, parseMetrics, sleep } from './lib.mjs';

const DB = 'gw_10_metrics';
let gw, alice, bob, conv;

before(async () => {
  ({ alice, bob, conv } = await twoUserDb(DB));
  gw = await startGateway({ db: DB });
});
after(stopAll);

async function scrape() {
  const r = await gw.get('/metrics');
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type') || '', /^text\/plain/);
  return { text: r.text, samples: parseMetrics(r.text) };
}

// Sum of the samples whose name matches re (and labels filter).
const sum = (samples, re, filter = () => true) => samples.filter((s) => re.test(s.name) && filter(s.labels)).reduce((t, s) => t + s.value, 0);
const has = (samples, re) => samples.some((s) => re.test(s.name));

test('/healthz answers 200 with the database up; unknown paths 404', async () => {
  assert.equal(await gw.healthz(), 200);
  assert.equal((await gw.get('/no-such-thing')).status, 404);
});

test('/metrics exposes the counters and they move with traffic', async () => {
  const before = await scrape();
  for (const [what, re] of [
    ['connections', /connection/],
    ['frames in', /frames?_(in|received|rx)|_(in|received|rx)_frames/],
    ['frames out', /frames?_(out|sent|tx)|_(out|sent|tx)_frames/],
    ['notifications', /notif/],
    ['deliveries', /deliver/],
    ['drops', /drop/],
    ['closes', /close/],
  ]) assert.ok(has(before.samples, re), `no ${what} metric (${re}) in:\n${before.text}`);
  const buckets = before.samples.filter((s) => /_bucket$/.test(s.name) && /latency|duration|request/.test(s.name));
  assert.ok(buckets.some((s) => s.labels.le === '+Inf'), `no request-latency histogram with le="+Inf" in:\n${before.text}`);
  const hist = buckets[0].name.replace(/_bucket$/, '');
  assert.ok(has(before.samples, new RegExp(`^${hist}_count$`)) && has(before.samples, new RegExp(`^${hist}_sum$`)), `${hist}_sum/_count`);
  assert.match(before.text, /^# TYPE \S+ (counter|gauge|histogram)/m);

  // Traffic: two clients, 5 sends delivered, 5 pings, one auth failure.
  const a = await connectAs(gw, alice.id, 1, { label: 'alice' });
  const b = await connectAs(gw, bob.id, 1, { label: 'bob' });
  for (let i = 0; i < 5; i++) {
    const r = await a.call({ type: 'send', conversation: conv, body: `m${i}`, client_msg_id: `mt-${i}` });
    await b.waitFor((f) => f.type === 'message' && f.seq === r.seq, 3000);
    await a.request({ type: 'ping' });
  }
  const bad = await Client.connect(gw, { token: signToken({ sub: alice.id, dev: 1, key: 'wrong' }), hello: false, label: 'bad' });
  assert.equal((await bad.waitClose(3000)).code, 4001);

  // The open-connections gauge reads 2 (once the rejected one is gone).
  let mid, conns = [];
  for (let i = 0; i < 20; i++) {
    mid = await scrape();
    conns = mid.samples.filter((s) => /connections$/.test(s.name));
    if (conns.some((s) => s.value === 2)) break;
    await sleep(100);
  }
  assert.ok(conns.some((s) => s.value === 2), `a connections gauge reading 2 among ${JSON.stringify(conns)}`);
  const grew = (re, by) => {
    const d = sum(mid.samples, re) - sum(before.samples, re);
    assert.ok(d >= by, `${re} grew by ${d}, expected at least ${by}`);
  };
  grew(/frames?_(in|received|rx)|_(in|received|rx)_frames/, 10);
  grew(/frames?_(out|sent|tx)|_(out|sent|tx)_frames/, 10);
  grew(/notif/, 5);
  grew(/deliver/, 5);
  grew(new RegExp(`^${hist}_count$`), 5);
  const closes4001 = sum(mid.samples, /close/, (l) => Object.values(l).includes('4001'));
  assert.ok(closes4001 >= 1, `closes by code: no sample labelled 4001 in:\n${mid.text}`);
  a.close(); b.close();
});

// The dashboard and alert rules in monitoring/ name only series the gateway
// serves (and, for chat_pusher_*, series chat-pusher's source renders):
// renaming a metric without updating them fails here.
test('monitoring/ (Grafana dashboard, Prometheus alerts) names existing series', async () => {
  const root = new URL('../../', import.meta.url);
  const text = ['monitoring/grafana-dashboard.json', 'monitoring/alerts.yml']
    .map((f) => fs.readFileSync(new URL(f, root), 'utf8')).join('\n');
  const used = new Set([...text.matchAll(/\b(chat_(?:gateway|pusher)_[a-z_]+)/g)].map((m) => m[1]));
  assert.ok(used.size >= 10, `the dashboard uses ${used.size} series`);
  const { samples } = await scrape();
  const served = new Set(samples.map((s) => s.name));
  const pusher = fs.readFileSync(new URL('pusher/main.c', root), 'utf8');
  for (const name of used) {
    if (name.startsWith('chat_gateway_')) assert.ok(served.has(name), `${name} is not in the gateway's /metrics`);
    else assert.ok(pusher.includes(`"${name}`) || pusher.includes(` ${name} `) || pusher.includes(`${name}{`), `${name} is not rendered by chat-pusher`);
  }
});
