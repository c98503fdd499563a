#!/usr/bin/env node
// report.js: merges chat-load --json runs into bench/results/<stamp>.json,
// prints the side-by-side table with ratios and the goals, and draws the
// plots with gnuplot (latency CDF and deliveries/s per gateway, PNG + SVG).
//
//   node bench/report.cjs --profile quick --stamp STAMP --out bench/results run1.json ...
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { execFileSync } = require('child_process');
const { issue11Goals, formatGoals } = require('./goals.cjs');

const argv = process.argv.slice(2);
const opts = { files: [] };
for (let i = 0; i < argv.length; i++) {
  if (argv[i].startsWith('--')) opts[argv[i].slice(2)] = argv[++i];
  else opts.files.push(argv[i]);
}
const outDir = opts.out || 'bench/results';
const stamp = opts.stamp || new Date().toISOString().replace(/[:.]/g, '');
const allRuns = opts.files.map((f) => JSON.parse(fs.readFileSync(f, 'utf8')));
// chat-load runs (gateway/peer) and the pgbench runs of bench/send-cpu.sh
const runs = allRuns.filter((r) => r.label !== 'pgbench');
const pgRuns = allRuns.filter((r) => r.label === 'pgbench');

function sh(cmd, args) {
  try { return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim(); } catch { return ''; }
}
const cpu = (fs.readFileSync('/proc/cpuinfo', 'utf8').match(/model name\s*:\s*(.*)/) || [])[1] || '';
const machine = {
  cpu, cores: os.cpus().length, memory_gib: +(os.totalmem() / 2 ** 30).toFixed(1), kernel: os.release(),
  postgresql: sh('psql', ['--version']), node: process.version,
  libwebsockets: sh('pkg-config', ['--modversion', 'libwebsockets']),
};

// ---- grouping: one section per run name, gateway beside peer ----
const names = [...new Set(runs.map((r) => r.run))];
const label = { gateway: 'chat-gateway', peer: 'node-relay' };
const fmt = (v, d = 0) => (v === undefined || v === null || Number.isNaN(v) || v < 0 ? '-' :
  Number(v).toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d }));
const ratio = (a, b) => (a > 0 && b > 0 ? (a / b).toFixed(2) : '-');

function rowsFor(r) {
  const rows = [['clients', fmt(r.clients)], ['workers / load procs', `${r.workers} / ${r.procs}`],
    ['connect: ready in s', fmt(r.connect.ready_s, 2)], ['connect rate /s', fmt(r.connect.rate)]];
  if (r.scenario === 'idle') {
    rows.push(['RSS growth B/conn', fmt(r.gateway_rss.per_conn_growth_b)],
      ['RSS total B/conn', fmt(r.gateway_rss.per_conn_total_b)],
      ['PSS total B/conn', r.gateway_rss.pss_per_conn_total_b > 0 ? fmt(r.gateway_rss.pss_per_conn_total_b) : '-'],
      ['RSS after KiB (procs)', `${fmt(r.gateway_rss.after_kib)} (${r.gateway_rss.procs})`]);
  } else {
    rows.push(['sends ok /s', fmt(r.sends_per_s)], ['deliveries /s', fmt(r.deliveries_per_s)],
      ['latency p50 ms', fmt(r.latency_ms.p50, 3)], ['latency p90 ms', fmt(r.latency_ms.p90, 3)],
      ['latency p99 ms', fmt(r.latency_ms.p99, 3)], ['latency p99.9 ms', fmt(r.latency_ms.p99_9, 3)],
      ['latency max ms', fmt(r.latency_ms.max, 3)], ['send rtt p99 ms', fmt(r.send_rtt_ms.p99, 3)],
      ['send errors', fmt(r.send_errors)], ['lost', fmt(r.check.lost)],
      ['duplicate deliveries dropped', fmt(r.check.duplicate_deliveries)],
      ['duplicates in table', fmt(r.check.table_duplicates)]);
  }
  if (r.scenario === 'storm') {
    rows.push(['storm: back in s', fmt(r.storm.reconnected_s, 2)], ['storm: synced in s', fmt(r.storm.synced_s, 2)]);
  }
  if (r.cpu_pct && r.scenario !== 'idle' && r.cpu_pct.gateway > 0) {
    rows.push(['deliveries per gateway CPU-s', fmt(r.deliveries_per_s / (r.cpu_pct.gateway / 100))]);
  }
  if (r.cpu_pct) {
    rows.push(['cpu % gateway (of 200)', fmt(r.cpu_pct.gateway)], ['cpu % postgres', fmt(r.cpu_pct.postgres)],
      ['cpu % chat-load', fmt(r.cpu_pct.chat_load)], ['cpu % machine (all processes)', fmt(r.cpu_pct.machine)]);
  }
  rows.push(['closes', Object.entries(r.closes).map(([k, v]) => `${k}:${v}`).join(' ') || '-']);
  return rows;
}

const lines = [];
const say = (s = '') => { lines.push(s); };
say(`pgchat benchmark, profile ${opts.profile || '?'}, ${stamp}`);
say(`machine: ${machine.cores} x ${machine.cpu}, ${machine.memory_gib} GiB, kernel ${machine.kernel}; ${machine.postgresql}; node ${machine.node}; lws ${machine.libwebsockets}`);
const summary = {};
for (const name of names) {
  const g = runs.find((r) => r.run === name && r.label === 'gateway');
  const p = runs.find((r) => r.run === name && r.label === 'peer');
  const any = g || p;
  say();
  say(`== ${name}: ${any.scenario}, chat-load ${any.args}`);
  const rg = g ? rowsFor(g) : null;
  const rp = p ? rowsFor(p) : null;
  const keys = (rg || rp).map((x) => x[0]);
  say(`${'metric'.padEnd(30)}${'chat-gateway'.padStart(16)}${'node-relay'.padStart(16)}${'gw/peer'.padStart(10)}`);
  for (const k of keys) {
    const a = rg ? (rg.find((x) => x[0] === k) || [])[1] : '';
    const b = rp ? (rp.find((x) => x[0] === k) || [])[1] : '';
    const na = Number(String(a).replace(/,/g, '')), nb = Number(String(b).replace(/,/g, ''));
    const showRatio = k !== 'clients' && !k.startsWith('workers') && k !== 'closes' && !k.startsWith('RSS after') && !k.startsWith('cpu %');
    if (k === 'closes') { say(`${k.padEnd(30)} gw: ${a || '-'} | peer: ${b || '-'}`); continue; }
    say(`${k.padEnd(30)}${String(a ?? '').padStart(16)}${String(b ?? '').padStart(16)}${(showRatio ? ratio(na, nb) : '').padStart(10)}`);
  }
  summary[name] = { gateway: g || null, peer: p || null };
}

// ---- latency anatomy: chat-load --trace against --trace-latency 1 ----
for (const r of runs.filter((x) => Array.isArray(x.hops))) {
  say();
  say(`== ${r.run}: latency anatomy (${label[r.label]} --trace-latency 1), chat-load ${r.args}`);
  say(`${'hop'.padEnd(42)}${'p50 ms'.padStart(10)}${'p99 ms'.padStart(10)}${'max ms'.padStart(10)}${'samples'.padStart(10)}`);
  for (const h of r.hops) {
    say(`${h.hop.padEnd(42)}${fmt(h.p50_ms, 3).padStart(10)}${fmt(h.p99_ms, 3).padStart(10)}${fmt(h.max_ms, 3).padStart(10)}${fmt(h.samples).padStart(10)}`);
  }
  say(`${'end to end (client send -> event received)'.padEnd(42)}${fmt(r.latency_ms.p50, 3).padStart(10)}${fmt(r.latency_ms.p99, 3).padStart(10)}${fmt(r.latency_ms.max, 3).padStart(10)}`);
}

// ---- per second: where the tail comes from (chat-load's timeline) ----
// One line per run with messages: the per-second p99 (ms, by send time),
// the seconds whose p99 is over 3x the run's median per-second p99 (the
// stalls, with their wall-clock start, to match against postgres.log and
// the gateway log) and the slowest delivery.
{
  const timed = runs.filter((r) => r.timeline && Array.isArray(r.timeline.seconds) && r.timeline.seconds.length > 1);
  if (timed.length) {
    say();
    say('== per second: delivery p99 ms by send second (run start = second 0, UTC); stall = p99 over 3x the median second');
    for (const r of timed) {
      const secs = r.timeline.seconds.filter((x) => x.deliveries > 0);
      const p99s = secs.map((x) => x.p99_ms);
      const med = [...p99s].sort((x, y) => x - y)[Math.floor(p99s.length / 2)] || 0;
      const t0 = Date.parse(r.timeline.t0);
      const stalls = secs.filter((x) => x.p99_ms > 3 * med && x.p99_ms > 10)
        .map((x) => `${x.s} (${new Date(t0 + x.s * 1000).toISOString().slice(11, 19)}) ${fmt(x.p99_ms)}`);
      const w = (r.worst || [])[0];
      say(`${`${r.run}/${r.label === 'gateway' ? 'gw' : r.label}`.padEnd(16)} ${p99s.map((x) => fmt(x)).join(' ')}`);
      say(`${''.padEnd(16)} median ${fmt(med, 1)}; stalls: ${stalls.join(', ') || 'none'}` +
        (w ? `; slowest ${fmt(w.latency_ms)} ms sent ${w.sent.slice(11, 23)}` : ''));
    }
  }
}

// ---- event loops: the same broadcast on the poll loop and on libev,
// open loop (evlib-*) and closed loop (evlib-closed-*) ----
for (const pre of ['evlib', 'evlib-closed']) {
  const pl = runs.find((r) => r.run === `${pre}-poll` && r.label === 'gateway');
  const ev = runs.find((r) => r.run === `${pre}-ev` && r.label === 'gateway');
  if (pl && ev) {
    const eff = (r) => (r.cpu_pct && r.cpu_pct.gateway > 0 ? r.deliveries_per_s / (r.cpu_pct.gateway / 100) : -1);
    say();
    say(`== event loop (chat-gateway --event-lib), ${pl.clients} clients, chat-load ${pl.args}`);
    say(`${'metric'.padEnd(30)}${'poll'.padStart(16)}${'ev (epoll)'.padStart(16)}${'ev/poll'.padStart(10)}`);
    for (const [k, a, b] of [['sends /s', pl.sends_per_s, ev.sends_per_s],
      ['deliveries (frames) /s', pl.deliveries_per_s, ev.deliveries_per_s],
      ['deliveries per gateway CPU-s', eff(pl), eff(ev)],
      ['cpu % gateway (of 200)', pl.cpu_pct && pl.cpu_pct.gateway, ev.cpu_pct && ev.cpu_pct.gateway],
      ['latency p50 ms', pl.latency_ms.p50, ev.latency_ms.p50],
      ['latency p99 ms', pl.latency_ms.p99, ev.latency_ms.p99]]) {
      say(`${k.padEnd(30)}${fmt(a).padStart(16)}${fmt(b).padStart(16)}${ratio(b, a).padStart(10)}`);
    }
  }
}

// ---- the database alone: bench/send-cpu.sh (pgbench) ----
for (const r of pgRuns) {
  say();
  say(`== ${r.run}: PostgreSQL CPU per send (whole cluster), pgbench -c ${r.clients}, ${r.secs} s x ${r.rounds}; load average at the end ${r.load_avg}`);
  say(`${'script'.padEnd(30)}${'sends'.padStart(12)}${'TPS'.padStart(10)}${'CPU us/send'.padStart(14)}${'x base-1'.padStart(10)}`);
  const base = r.scripts['base-1'] ? r.scripts['base-1'].cpu_us : 0;
  for (const [name, v] of Object.entries(r.scripts)) {
    say(`${name.padEnd(30)}${fmt(v.sends).padStart(12)}${fmt(v.tps).padStart(10)}${fmt(v.cpu_us, 1).padStart(14)}${ratio(v.cpu_us, base).padStart(10)}`);
  }
  if (r.latency && r.latency['base-1']) {
    say(`latency at ${fmt(r.latency.rate)}/s (pgbench -R, ${r.latency.secs} s): ` +
      ['c-request', 'base-1'].map((k) => `${k} p50 ${fmt(r.latency[k].p50_ms, 3)} p99 ${fmt(r.latency[k].p99_ms, 3)} ms (${fmt(r.latency[k].n)} txns)`).join('; '));
  }
  say(`conversations with a seq gap after the load: ${r.gaps}`);
}

// ---- goals (issue 11) ----
say();
say('== goals (issue 11): status, goal; measured | baseline from this run | ratio measured/baseline');
const goals = issue11Goals(allRuns);
for (const l of formatGoals(goals)) say(l);

// ---- results file ----
fs.mkdirSync(outDir, { recursive: true });
const result = { stamp, profile: opts.profile, machine, runs, pgbench: pgRuns, goals };
const jsonPath = path.join(outDir, `${stamp}.json`);
fs.writeFileSync(jsonPath, JSON.stringify(result, null, 1) + '\n');
fs.writeFileSync(path.join(outDir, `${stamp}.txt`), lines.join('\n') + '\n');

// ---- plots ----
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-plot-'));
const cdfRuns = runs.filter((r) => r.scenario === 'direct' || r.scenario === 'group').filter((r) => r.latency_cdf && r.latency_cdf.length);
const plots = [];
cdfRuns.forEach((r, i) => {
  const f = path.join(tmp, `cdf${i}.dat`);
  fs.writeFileSync(f, r.latency_cdf.map(([ms, p]) => `${Math.max(ms, 0.001)} ${p}`).join('\n') + '\n');
  const runIdx = [...new Set(cdfRuns.map((x) => x.run))].indexOf(r.run);
  const color = r.label === 'gateway' ? '#8e24aa' : '#2e8b57';
  plots.push(`'${f}' using 1:2 with steps lw 2 lc rgb '${color}' dt ${(runIdx % 5) + 1} title '${label[r.label]} ${r.run} (${r.clients} clients)'`);
});
const bars = runs.filter((r) => r.scenario === 'direct' || r.scenario === 'group');
const barNames = [...new Set(bars.map((r) => r.run))];
const barFile = path.join(tmp, 'bars.dat');
fs.writeFileSync(barFile, barNames.map((n) => {
  const g = bars.find((r) => r.run === n && r.label === 'gateway');
  const p = bars.find((r) => r.run === n && r.label === 'peer');
  return `"${n}" ${g ? g.deliveries_per_s : 0} ${p ? p.deliveries_per_s : 0}`;
}).join('\n') + '\n');
const script = (term, ext) => `
set terminal ${term}
set output '${path.join(outDir, `${stamp}-latency.${ext}`)}'
set title 'End-to-end delivery latency CDF (same host, same database)'
set logscale x
set xlabel 'latency (ms, log scale)'
set ylabel 'fraction of deliveries'
set key bottom right
set grid
set yrange [0:1]
plot ${plots.join(', ') || '0 notitle'}
set output '${path.join(outDir, `${stamp}-deliveries.${ext}`)}'
unset logscale x
set title 'Deliveries per second'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set xlabel ''
set ylabel 'deliveries/s (log scale)'
set logscale y
set yrange [10:*]
set key top left
plot '${barFile}' using 2:xtic(1) title 'chat-gateway', '' using 3 title 'node-relay'
`;
let plotted = [];
for (const [term, ext] of [['pngcairo size 1000,600', 'png'], ['svg size 1000,600', 'svg']]) {
  try {
    execFileSync('gnuplot', [], { input: script(term, ext), stdio: ['pipe', 'ignore', 'pipe'] });
    plotted.push(ext);
  } catch (e) {
    if (ext === 'png') {
      try { execFileSync('gnuplot', [], { input: script('png size 1000,600', ext), stdio: ['pipe', 'ignore', 'pipe'] }); plotted.push(ext); } catch { /* no gnuplot */ }
    }
  }
}
fs.rmSync(tmp, { recursive: true, force: true });
say();
say(`results: ${jsonPath}; plots (${plotted.join(', ') || 'gnuplot failed'}): ${path.join(outDir, stamp)}-{latency,deliveries}.*`);
console.log(lines.join('\n'));
