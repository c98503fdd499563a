// The latency-tail tooling on made-up runs: bench/tail-match.cjs names the
// logged work overlapping a stall second (and nothing for a calm run), and
// bench/report.cjs prints the per-second p99 line with the stall seconds.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tail-test-'));
const t0 = '2026-11-30T14:00:00.000Z';

// A chat-load --json run: 10 seconds at p99 5 ms, second `stall` at `p99` ms.
function run(file, label, stall, p99) {
  const seconds = [];
  for (let s = 0; s < 10; s++) {
    const v = s === stall ? p99 : 5;
    seconds.push({ s, sends_ok: 1000, deliveries: 1000, p50_ms: 1, p99_ms: v, max_ms: v + 1 });
  }
  const worstMs = stall >= 0 ? p99 + 10 : 6;
  const sent = new Date(Date.parse(t0) + Math.max(stall, 0) * 1000 + 100).toISOString();
  const j = {
    label, run: 'direct-1k', scenario: 'direct', args: '--scenario direct', workers: 0, clients: 400, procs: 1,
    duration_s: 10, sends_ok: 10000, sends_per_s: 1000, deliveries: 10000, deliveries_per_s: 1000,
    connect: { ready: 400, ready_s: 0.3, rate: 1300 }, latency_ms: { p50: 1, p90: 3, p99: 5, p99_9: p99, max: worstMs },
    send_rtt_ms: { p50: 1, p90: 2, p99: 4, p99_9: 5, max: 6 },
    check: { stored: 10000, expected: 10000, lost: 0, duplicate_deliveries: 0, table_duplicates: 0 },
    storm: {}, cpu_pct: { gateway: 30, postgres: 60, chat_load: 10, machine: 150, machine_max: 200 },
    gateway_rss: {}, closes: {}, latency_cdf: [[1, 0.5], [worstMs, 1]],
    timeline: { t0, by: 'send time', seconds },
    worst: [{ latency_ms: worstMs, sent, received: sent, conversation: 1, seq: 1 }],
  };
  fs.writeFileSync(path.join(dir, file), JSON.stringify(j));
  return path.join(dir, file);
}

// postgres.log: a 450 ms heartbeat ending in second 4, an autovacuum in second 8.
const log = path.join(dir, 'postgres.log');
fs.writeFileSync(log, [
  '2026-11-30 14:00:04.600 UTC [101] chat-gateway gw LOG:  duration: 450.000 ms  execute <unnamed>: SELECT chat.node_heartbeat($1)',
  '2026-11-30 14:00:04.600 UTC [101] chat-gateway gw DETAIL:  parameters: $1 = \'gw\'',
  '2026-11-30 14:00:08.500 UTC [102]  LOG:  automatic vacuum of table "bench.chat.messages": index scans: 0',
  '',
].join('\n'));

test('tail-match names the heartbeat that overlapped the stall second', () => {
  const f = run('stall.json', 'gateway', 4, 460);
  const out = execFileSync('node', ['bench/tail-match.cjs', log, f], { encoding: 'utf8' });
  assert.match(out, /stalls: s4 460ms \[chat\.node_heartbeat 450ms\]/, out);
  assert.match(out, /slowest 470ms during \[chat\.node_heartbeat 450ms\]/, out);
  assert.doesNotMatch(out, /autovacuum/, out);
});

test('tail-match reports no stall for a calm run, and refuses no arguments', () => {
  const f = run('calm.json', 'gateway', -1, 0);
  const out = execFileSync('node', ['bench/tail-match.cjs', log, f], { encoding: 'utf8' });
  assert.match(out, /stalls: none; slowest 6ms$/m, out);
  assert.throws(() => execFileSync('node', ['bench/tail-match.cjs'], { stdio: 'pipe' }), (e) => e.status === 2);
});

test('report.cjs prints the per-second p99 and the stall seconds with their UTC time', () => {
  const g = run('g.json', 'gateway', 4, 460);
  const p = run('p.json', 'peer', -1, 0);
  const out = execFileSync('node', ['bench/report.cjs', '--profile', 'quick', '--stamp', 'test', '--out', dir, g, p],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  assert.match(out, /direct-1k\/gw +5 5 5 5 460 5 5 5 5 5\n +median 5\.0; stalls: 4 \(14:00:04\) 460; slowest 470 ms sent 14:00:04\.100/, out);
  assert.match(out, /direct-1k\/peer +5 5 5 5 5 5 5 5 5 5\n +median 5\.0; stalls: none/, out);
});
