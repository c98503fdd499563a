// The benchmark's monitoring plots (issue 11): bench/scrape-metrics.cjs
// against a made-up /metrics that moves in known steps (rates, quantiles
// as histogram_quantile computes them, notifier columns only when they
// moved, no rates across a gateway restart), and bench/metrics-plot.cjs
// drawing every plot from its CSV, also when a series has no samples.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import http from 'node:http';
import { spawn, execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const top = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

// One scrape of the gateway as it renders /metrics.
function metrics({ conns = 0, opened = 0, delivery = [0, 0, 0, 0, 0], dsum = 0, life = [0, 0, 0], lsum = 0, depth = [10, 20], batch = [10, 30] }) {
  const dle = ['0.0005', '0.001', '0.0025', '0.005', '+Inf'];
  const lle = ['0.1', '1', '+Inf'];
  const pow = ['1', '2', '+Inf'];
  const lines = [
    '# HELP chat_gateway_connections Open WebSocket connections.', '# TYPE chat_gateway_connections gauge',
    `chat_gateway_connections{node="n_0"} ${conns}`, `chat_gateway_connections{node="n_1"} 0`,
    '# TYPE chat_gateway_connections_total counter', `chat_gateway_connections_total{node="n_0"} ${opened}`,
    '# TYPE chat_gateway_delivery_latency_seconds histogram',
    ...dle.map((le, i) => `chat_gateway_delivery_latency_seconds_bucket{le="${le}"} ${delivery[i]}`),
    `chat_gateway_delivery_latency_seconds_sum ${dsum}`, `chat_gateway_delivery_latency_seconds_count ${delivery[4]}`,
    'chat_gateway_delivery_clock_skew_total 0',
    '# TYPE chat_gateway_connection_duration_seconds histogram',
    ...lle.map((le, i) => `chat_gateway_connection_duration_seconds_bucket{le="${le}"} ${life[i]}`),
    `chat_gateway_connection_duration_seconds_sum ${lsum}`, `chat_gateway_connection_duration_seconds_count ${life[2]}`,
    '# TYPE chat_notifier_queue_depth_events histogram',
    ...pow.map((le) => `chat_notifier_queue_depth_events_bucket{le="${le}"} ${depth[0]}`),
    `chat_notifier_queue_depth_events_sum ${depth[1]}`, `chat_notifier_queue_depth_events_count ${depth[0]}`,
    '# TYPE chat_notifier_batch_events histogram',
    ...pow.map((le) => `chat_notifier_batch_events_bucket{le="${le}"} ${le === '1' ? 0 : batch[0]}`),
    `chat_notifier_batch_events_sum ${batch[1]}`, `chat_notifier_batch_events_count ${batch[0]}`,
    'chat_notifier_queued_bytes{node="n_0"} 512', 'chat_notifier_queued_bytes{node="n_1"} 480',
  ];
  return lines.join('\n') + '\n';
}

const STEPS = [
  metrics({}),
  // 100 deliveries: 50 at (0.5, 1] ms, 50 at (2.5, 5] ms; 5 connections opened
  metrics({ conns: 5, opened: 5, delivery: [0, 50, 50, 100, 100], dsum: 0.3 }),
  // the notifier moved: 10 passes of 4 events, 5 NOTIFYs of 3; one close within 1 s
  metrics({ conns: 4, opened: 5, delivery: [0, 50, 50, 100, 100], dsum: 0.3, life: [0, 1, 1], lsum: 0.5, depth: [20, 60], batch: [15, 45] }),
  // a restarted gateway: counters from 0
  metrics({ conns: 1, opened: 1, depth: [20, 60], batch: [15, 45] }),
];

async function scrapeSteps(out) {
  let n = 0;
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(STEPS[Math.min(n++, STEPS.length - 1)]);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const child = spawn(process.execPath, [path.join(top, 'bench/scrape-metrics.cjs'), '--url', `http://127.0.0.1:${server.address().port}/metrics`,
    '--run', 'made-up', '--out', out, '--interval-ms', '100'], { stdio: ['ignore', 'ignore', 'pipe'] });
  for (let i = 0; i < 100 && n < STEPS.length + 1; i++) await new Promise((r) => setTimeout(r, 50));
  child.kill('SIGTERM');
  const code = await new Promise((r) => child.on('exit', r));
  server.close();
  return code;
}

test('scrape-metrics: rates, quantiles, notifier columns only when moved, no rates across a restart', { timeout: 20000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-metrics-test-'));
  const out = path.join(dir, 'made-up.csv');
  assert.equal(await scrapeSteps(out), 0, 'exits 0 on SIGTERM');
  const [header, ...lines] = fs.readFileSync(out, 'utf8').trim().split('\n');
  const cols = header.split(',');
  const rows = lines.map((l) => Object.fromEntries(l.split(',').map((v, i) => [cols[i], v])));
  assert.ok(rows.length >= 4, `${rows.length} rows`);
  const [r0, r1, r2, r3] = rows;
  assert.equal(r0.run, 'made-up');
  assert.equal(r0.deliveries_per_s, '', 'no rate on the first scrape');
  assert.equal(r0.connections, '0');
  assert.equal(r0.queued_bytes, '512', 'the notifier gauge: max over workers (the same database)');
  // step 1: histogram_quantile over the 100 new deliveries
  assert.equal(r1.connections, '5');
  assert.ok(Number(r1.deliveries_per_s) > 0 && Number(r1.opened_per_s) > 0);
  assert.equal(Number(r1.delivery_p50_ms), 1, 'p50: the top of (0.5, 1] ms');
  assert.equal(Number(r1.delivery_p99_ms), 4.95, 'p99: 49/50 into (2.5, 5] ms');
  assert.equal(Number(r1.delivery_mean_ms), 3, 'mean: 0.3 s over 100');
  assert.equal(r1.queue_depth_mean, '', 'the notifier had not moved');
  assert.equal(r1.batch_mean, '');
  // step 2: nothing delivered; the notifier moved; one close within a second
  assert.equal(Number(r2.deliveries_per_s), 0);
  assert.equal(r2.delivery_p50_ms, '', 'no quantile of nothing');
  assert.equal(Number(r2.queue_depth_mean), 4);
  assert.equal(Number(r2.batch_mean), 3);
  assert.equal(Number(r2.batch_p99), 2, 'every batch in (1, 2]');
  assert.ok(Number(r2.notifier_passes_per_s) > 0 && Number(r2.notifies_per_s) > 0);
  assert.ok(Number(r2.closed_per_s) > 0 && Number(r2.closed_within_1s_per_s) > 0);
  // step 3: the restart drops the rates
  assert.equal(r3.connections, '1');
  assert.equal(r3.opened_per_s, '', 'no rate across a restart');
  assert.equal(r3.deliveries_per_s, '');
  fs.rmSync(dir, { recursive: true, force: true });
});

test('metrics-plot: joins the runs, draws the three plots (PNG, SVG), copies the PNGs for docs', { timeout: 60000 }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-plot-test-'));
  const docs = path.join(dir, 'docs');
  fs.mkdirSync(docs);
  const header = 'time_s,run,connections,opened_per_s,closed_per_s,closed_within_1s_per_s,deliveries_per_s,delivery_p50_ms,delivery_p90_ms,delivery_p99_ms,delivery_mean_ms,skewed_per_s,notifier_passes_per_s,queue_depth_mean,queue_depth_p99,notifies_per_s,batch_mean,batch_p99,queued_bytes';
  // run a: every column; run b: no notifier samples at all (a short run)
  fs.writeFileSync(path.join(dir, 'a.csv'), [header,
    '1000.0,a,10,,,,,,,,,,,,,,,,0', '1001.0,a,10,10,0,0,100,1,2,3,1.5,0,,,,,,,0', '1002.0,a,10,0,0,0,100,1,2,4,1.5,0,5,3,8,5,2,4,0'].join('\n') + '\n');
  fs.writeFileSync(path.join(dir, 'b.csv'), [header, '1010.0,b,20,,,,,,,,,,,,,,,,', '1011.0,b,20,20,1,1,50,2,3,5,2.5,0,,,,,,,'].join('\n') + '\n');
  const out = execFileSync(process.execPath, [path.join(top, 'bench/metrics-plot.cjs'), '--stamp', 'T', '--out', dir, '--docs', docs,
    path.join(dir, 'a.csv'), path.join(dir, 'b.csv')], { encoding: 'utf8' });
  assert.match(out, /5 scrapes over 2 runs/);
  const csv = fs.readFileSync(path.join(dir, 'T-metrics.csv'), 'utf8').trim().split('\n');
  assert.equal(csv[0], header);
  assert.equal(csv.length, 6, 'header and five rows');
  for (const n of ['delivery', 'notifier', 'connections']) {
    for (const ext of ['png', 'svg']) assert.ok(fs.statSync(path.join(dir, `T-metrics-${n}.${ext}`)).size > 1000, `T-metrics-${n}.${ext}`);
    assert.ok(fs.statSync(path.join(docs, `monitoring-${n}.png`)).size > 1000, `docs/monitoring-${n}.png`);
  }
  assert.match(fs.readFileSync(path.join(dir, 'T-metrics-delivery.svg'), 'utf8'), /chat_gateway_delivery_latency_seconds/, 'titles are not mangled (noenhanced)');
  // nothing scraped: an error, not empty plots
  fs.writeFileSync(path.join(dir, 'empty.csv'), header + '\n');
  assert.throws(() => execFileSync(process.execPath, [path.join(top, 'bench/metrics-plot.cjs'), '--stamp', 'E', '--out', dir, path.join(dir, 'empty.csv')], { stdio: 'ignore' }));
  fs.rmSync(dir, { recursive: true, force: true });
});
