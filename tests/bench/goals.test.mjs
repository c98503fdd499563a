// The goals table of issue 11 (bench/goals.cjs) on made-up runs: each goal
// is judged against its baseline from the same run, a missing run is
// NOT RUN (never MET), and a run smaller than the goal names is PARTIAL.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { issue11Goals, formatGoals } = require('../../bench/goals.cjs');

const check = { lost: 0, table_duplicates: 0, duplicate_deliveries: 0 };
const pgbench = (over = {}) => ({
  label: 'pgbench', run: 'send-cpu', scenario: 'send-cpu', clients: 8, secs: 10, rounds: 1, gaps: 0,
  scripts: {
    'c-request': { sends: 1000, tps: 5000, cpu_us: 150 },
    'base-1': { sends: 1000, tps: 15000, cpu_us: 100 },
  },
  latency: { rate: 1000, secs: 10, 'c-request': { n: 1, p50_ms: 0.6, p99_ms: 7 }, 'base-1': { n: 1, p50_ms: 0.4, p99_ms: 5 } },
  ...over,
});
const direct = (label, run, rate, clients, p50, p99, extra = {}) => ({
  label, run, scenario: 'direct', rate_target: rate, clients, workers: 0,
  latency_ms: { p50, p99 }, sends_per_s: 0, deliveries_per_s: 0, check, ...extra,
});
const full = () => [
  pgbench(),
  direct('gateway', 'direct-1k', 1000, 400, 1.0, 9),
  direct('peer', 'direct-1k', 1000, 400, 3, 60),
  direct('gateway', 'direct', 2000, 1000, 2, 10),
  direct('peer', 'direct', 2000, 1000, 40, 400),
  direct('gateway', 'direct-sat', 0, 400, 5, 50, { sends_per_s: 6000 }),
  { label: 'gateway', run: 'group', scenario: 'group', deliveries_per_s: 90000, check },
  { label: 'peer', run: 'group', scenario: 'group', deliveries_per_s: 20000, check },
  { label: 'gateway', run: 'idle-100k', scenario: 'idle', clients: 100000, gateway_rss: { per_conn_total_b: 2000 }, connect: { rate: 5000 } },
  { label: 'gateway', run: 'idle-18k', scenario: 'idle', clients: 18000, gateway_rss: { per_conn_total_b: 2000 }, connect: { rate: 2000 } },
  { label: 'peer', run: 'idle-18k', scenario: 'idle', clients: 18000, gateway_rss: { per_conn_total_b: 13000 }, connect: { rate: 900 } },
  { label: 'gateway', run: 'storm', scenario: 'storm', clients: 20000, connect: { rate: 2000 }, storm: { reconnected_s: 2.5, synced_s: 3 }, check },
  { label: 'peer', run: 'storm', scenario: 'storm', clients: 18000, connect: { rate: 900 }, storm: { reconnected_s: 16, synced_s: 30 }, check },
];
const byGoal = (rows, start) => rows.find((r) => r.goal.startsWith(start));

test('every goal of issue 11 is a row, in order, MET when each figure is within its ratio', () => {
  const rows = issue11Goals(full());
  assert.equal(rows.length, 9);
  for (const r of rows) assert.equal(r.status, 'MET', `${r.goal}: ${r.figure} | ${r.baseline}`);
  assert.equal(rows[0].ratio, 1.5);
  assert.equal(rows[1].ratio, 7 / 5);
});

test('a figure over its ratio is MISSED with the figure, baseline and ratio shown', () => {
  const runs = full();
  runs[0] = pgbench({ scripts: { 'c-request': { tps: 5000, cpu_us: 510 }, 'base-1': { tps: 15000, cpu_us: 85 } } });
  const rows = issue11Goals(runs);
  const cpu = byGoal(rows, 'PostgreSQL CPU');
  assert.equal(cpu.status, 'MISSED');
  assert.equal(cpu.ratio, 6);
  assert.match(cpu.figure, /510\.0 us/);
  assert.match(cpu.baseline, /85\.0 us/);
  const text = formatGoals(rows).join('\n');
  assert.match(text, /MISSED +PostgreSQL CPU per send/);
  assert.match(text, /measured 510\.0 us \| baseline 85\.0 us \| ratio 6\.00x/);
  // the 1,000/s row fails on any one of its three conditions
  const r2 = full();
  r2[2] = direct('peer', 'direct-1k', 1000, 400, 3, 20);   // gateway p99 9 > 20/3
  assert.equal(byGoal(issue11Goals(r2), '1:1 at 1,000').status, 'MISSED');
  const r3 = full();
  r3[1] = direct('gateway', 'direct-1k', 1000, 400, 1.3, 9); // p50 1.3 > 3 x 0.4
  assert.equal(byGoal(issue11Goals(r3), '1:1 at 1,000').status, 'MISSED');
  const r4 = full();
  r4[5] = direct('gateway', 'direct-sat', 0, 400, 5, 50, { sends_per_s: 4000 }); // < 15000/3
  assert.equal(byGoal(issue11Goals(r4), '1:1 sends/s').status, 'MISSED');
});

test('idle memory is judged on summed PSS when chat-load read it, with summed RSS shown beside it', () => {
  const withPss = (pss) => full().map((r) => (r.run === 'idle-100k'
    ? { ...r, gateway_rss: { per_conn_total_b: 2600, pss_per_conn_total_b: pss } } : r));
  const met = byGoal(issue11Goals(withPss(1900)), 'idle');
  assert.equal(met.status, 'MET');
  assert.match(met.figure, /1,900 B\/conn PSS \(summed RSS 2,600\)/);
  assert.equal(byGoal(issue11Goals(withPss(2100)), 'idle').status, 'MISSED');
  // without a PSS figure (older chat-load JSON) summed RSS decides
  const rssOnly = full().map((r) => (r.run === 'idle-100k' ? { ...r, gateway_rss: { per_conn_total_b: 2600 } } : r));
  const missed = byGoal(issue11Goals(rssOnly), 'idle');
  assert.equal(missed.status, 'MISSED');
  assert.match(missed.figure, /2,600 B\/conn RSS/);
});

test('a missing run is NOT RUN, never MET', () => {
  const rows = issue11Goals(full().filter((r) => r.label !== 'pgbench'));
  for (const start of ['PostgreSQL CPU', 'client_request send alone', '1:1 at 1,000', '1:1 sends/s']) {
    assert.equal(byGoal(rows, start).status, 'NOT RUN', start);
  }
  assert.equal(byGoal(rows, 'group fanout').status, 'MET');
  assert.equal(issue11Goals([]).every((r) => r.status === 'NOT RUN'), true);
});

test('the quick profile\'s smaller idle and storm runs are PARTIAL, not MET', () => {
  const runs = full().filter((r) => r.run !== 'idle-100k').map((r) =>
    (r.scenario === 'storm' && r.label === 'gateway' ? { ...r, clients: 2000 } : r));
  const rows = issue11Goals(runs);
  assert.equal(byGoal(rows, 'idle').status, 'PARTIAL');
  assert.equal(byGoal(rows, 'storm').status, 'PARTIAL');
});

test('loss, duplicates or a seq gap in any run is MISSED', () => {
  for (const bad of [{ lost: 1 }, { table_duplicates: 2 }]) {
    const runs = full();
    runs[4] = { ...runs[4], check: { ...check, ...bad } };
    assert.equal(byGoal(issue11Goals(runs), '0 lost').status, 'MISSED');
  }
  const runs = full();
  runs[0] = pgbench({ gaps: 3 });
  assert.equal(byGoal(issue11Goals(runs), '0 lost').status, 'MISSED');
  const slow = full();
  slow[11] = { ...slow[11], storm: { reconnected_s: 3.5, synced_s: 3 } };
  assert.equal(byGoal(issue11Goals(slow), 'storm').status, 'MISSED');
});

test('a traced (latency anatomy) run never stands in for the untraced runs of the goals', () => {
  const runs = full().filter((r) => !(r.label === 'gateway' && r.scenario === 'direct'));
  runs.push(direct('gateway', 'anatomy', 1000, 400, 1.0, 9, { hops: [] }));
  const rows = issue11Goals(runs);
  assert.equal(byGoal(rows, '1:1 at 1,000').status, 'NOT RUN');
});
