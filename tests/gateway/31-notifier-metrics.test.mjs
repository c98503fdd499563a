// The database notifier's fallbacks (transactions that found its ring full
// and NOTIFYed themselves) and its queued bytes are exported in the
// gateway's /metrics, read from chat.notifier_stats() every 2 s.
// (tests/faults scenario 6 overflows the ring and checks the counter moves;
// here: present, and equal to what the database says.)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { twoUserDb, startGateway, stopAll, parseMetrics, value, sleep, ms, dsn } from './lib.mjs';

const DB = 'gw_31_notifier_metrics';
before(async () => { await twoUserDb(DB); });
after(stopAll);

test('chat_notifier_fallbacks_total and chat_notifier_queued_bytes follow chat.notifier_stats()', { timeout: ms(30000) }, async () => {
  const gw = await startGateway({ db: DB, args: ['--node-heartbeat', '1'], label: 'notifier-metrics' });
  const lo = Number(await value(DB, 'SELECT fallbacks FROM chat.notifier_stats()'));
  let m = [];
  for (let i = 0; i < 40 && !m.some((x) => x.name === 'chat_notifier_fallbacks_total'); i++) {
    await sleep(100);
    m = parseMetrics((await gw.get('/metrics')).text);
  }
  const hi = Number(await value(DB, 'SELECT fallbacks FROM chat.notifier_stats()'));
  const fb = m.find((x) => x.name === 'chat_notifier_fallbacks_total');
  const q = m.find((x) => x.name === 'chat_notifier_queued_bytes');
  assert.ok(fb, 'chat_notifier_fallbacks_total is exported within 4 s (node heartbeat 1 s)');
  assert.ok(q, 'chat_notifier_queued_bytes is exported');
  // The server-wide counter may move meanwhile (other tests): between the two reads.
  assert.ok(fb.value >= lo && fb.value <= hi, `exported ${fb.value}, the database said ${lo} then ${hi}`);
  assert.ok(q.value >= 0);
  const text = (await gw.get('/metrics')).text;
  assert.match(text, /# TYPE chat_notifier_fallbacks_total counter/);
  assert.match(text, /# TYPE chat_notifier_queued_bytes gauge/);
  await gw.stop();
});

// Sharded (--listen-dsn), every partition has a notifier of its own: each
// is read on its partition's maintenance connection and /metrics shows the
// sums (fallbacks, queued bytes, histogram buckets).  The one partition
// here is the test database, so the sums are its numbers.  (Before, a
// sharded gateway exported no chat_notifier_* series at all.)
test('sharded: the partitions\' notifier numbers and histograms are exported, summed', { timeout: ms(30000) }, async () => {
  const gw = await startGateway({ db: DB, args: ['--node-heartbeat', '1', '--listen-dsn', dsn(DB)], label: 'notifier-metrics-sharded' });
  const lo = Number(await value(DB, 'SELECT fallbacks FROM chat.notifier_stats()'));
  let m = [];
  const ready = () => ['chat_notifier_fallbacks_total', 'chat_notifier_queued_bytes', 'chat_notifier_batch_events_count']
    .every((n) => m.some((x) => x.name === n));
  for (let i = 0; i < 60 && !ready(); i++) {
    await sleep(100);
    m = parseMetrics((await gw.get('/metrics')).text);
  }
  const hi = Number(await value(DB, 'SELECT fallbacks FROM chat.notifier_stats()'));
  assert.ok(ready(), `the notifier series are exported in sharded mode:\n${m.map((x) => x.name).join(' ')}`);
  const fb = m.find((x) => x.name === 'chat_notifier_fallbacks_total');
  assert.ok(fb.value >= lo && fb.value <= hi, `exported ${fb.value}, the database said ${lo} then ${hi}`);
  // the batch histogram: its +Inf bucket is its count, as the database has it
  const db = await value(DB, `SELECT cumulative[array_upper(cumulative, 1)] FROM chat.notifier_histograms() WHERE histogram = 'batch_events'`);
  const inf = m.find((x) => x.name === 'chat_notifier_batch_events_bucket' && x.labels.le === '+Inf');
  const count = m.find((x) => x.name === 'chat_notifier_batch_events_count');
  assert.ok(inf && count && inf.value === count.value, 'the +Inf bucket equals the count');
  assert.ok(count.value <= Number(db), `exported count ${count.value}, the database has ${db} now`);
  await gw.stop();
});
