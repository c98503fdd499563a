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

const argv = process.argv.slice(2);
const opts = { files: [] };
for (let i = 0; i < argv.length; i++) {
  if (argv[i].startsWith('--')) opts[argv[i].slice(2)] = argv[++i];
  else opts.files.push(argv[i]);
}
const outDir = opts.out || 'bench/results';
const stamp = opts.stamp || new Date().toISOString().replace(/[:.]/g, '');
const runs = opts.files.map((f) => JSON.parse(fs.readFileSync(f, 'utf8')));

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

// ---- goals ----
say();
say('== goals');
const pick = (pred, label) => runs.filter((r) => pred(r) && r.label === label);
const best = (arr, f) => arr.reduce((m, r) => (m === null || f(r) > f(m) ? r : m), null);
const goals = [];
{
  const gIdle = best(pick((r) => r.scenario === 'idle', 'gateway'), (r) => r.gateway_rss.conns || r.clients);
  const pIdle = best(pick((r) => r.scenario === 'idle', 'peer'), (r) => r.clients);
  const gSame = pIdle ? runs.find((r) => r.scenario === 'idle' && r.label === 'gateway' && r.clients === pIdle.clients) : null;
  if (gIdle) {
    const v = gIdle.gateway_rss.per_conn_total_b;
    const open = gIdle.gateway_rss.conns || gIdle.clients;
    goals.push([`idle: 100,000 connections at <= 4 KiB RSS/conn summed over workers (run of ${fmt(gIdle.clients)}: ${fmt(open)} open)`,
      `${fmt(v)} B/conn total (${fmt(gIdle.gateway_rss.per_conn_growth_b)} growth) at ${fmt(open)} connections`,
      open >= 100000 ? v <= 4096 : (v <= 4096 ? 'memory ok, count not reached' : 'over at this size')]);
  }
  if (gSame && pIdle) {
    const a = gSame.gateway_rss.per_conn_growth_b, b = pIdle.gateway_rss.per_conn_growth_b;
    goals.push([`idle at ${fmt(pIdle.clients)} (peer's count): <= 1/4 of the peer's growth/conn`, `${fmt(a)} vs ${fmt(b)} B = ${ratio(a, b)}`, a > 0 && b > 0 && a / b <= 0.25]);
  }
  const gd = runs.find((r) => r.scenario === 'direct' && r.label === 'gateway' && r.rate_target === 2000);
  const pd = gd ? runs.find((r) => r.run === gd.run && r.label === 'peer') : null;
  if (gd) {
    goals.push([`direct ${gd.clients} clients @ 2,000/s: p50 <= 1 ms, p99 <= 5 ms`, `p50 ${fmt(gd.latency_ms.p50, 3)}, p99 ${fmt(gd.latency_ms.p99, 3)} ms`, gd.latency_ms.p50 <= 1 && gd.latency_ms.p99 <= 5]);
    if (pd) goals.push(['direct: p99 <= 1/3 of the peer\'s', `${fmt(gd.latency_ms.p99, 3)} vs ${fmt(pd.latency_ms.p99, 3)} ms = ${ratio(gd.latency_ms.p99, pd.latency_ms.p99)}`, gd.latency_ms.p99 * 3 <= pd.latency_ms.p99]);
  }
  const gg = best(pick((r) => r.scenario === 'group', 'gateway'), (r) => r.deliveries_per_s);
  const pg = best(pick((r) => r.scenario === 'group', 'peer'), (r) => r.deliveries_per_s);
  if (gg && pg && gg.cpu_pct && pg.cpu_pct && gg.cpu_pct.gateway > 0 && pg.cpu_pct.gateway > 0) {
    const eg = gg.deliveries_per_s / gg.cpu_pct.gateway, ep = pg.deliveries_per_s / pg.cpu_pct.gateway;
    goals.push(['group fanout: deliveries per gateway CPU-second (efficiency, same runs)', `${fmt(eg * 100)} vs ${fmt(ep * 100)} = ${ratio(eg, ep)}x`, 'info']);
  }
  if (gg && pg) goals.push(['group fanout: deliveries/s >= 3x the peer\'s at saturation (best of each)', `${fmt(gg.deliveries_per_s)} (${gg.run}) vs ${fmt(pg.deliveries_per_s)} (${pg.run}) = ${ratio(gg.deliveries_per_s, pg.deliveries_per_s)}x`, gg.deliveries_per_s >= 3 * pg.deliveries_per_s]);
  for (const s of pick((r) => r.scenario === 'storm', 'gateway').concat(pick((r) => r.scenario === 'storm', 'peer'))) {
    const ok = s.storm.synced_s >= 0 && s.storm.synced_s <= 10 && s.check.lost === 0 && s.check.table_duplicates === 0;
    goals.push([`storm ${label[s.label]} ${fmt(s.clients)} clients: back and synced <= 10 s, no loss, no dup`, `synced ${fmt(s.storm.synced_s, 2)} s, lost ${s.check.lost}, table dups ${s.check.table_duplicates}`, s.label === 'gateway' ? (s.clients >= 20000 ? ok : (ok ? 'ok at this size' : false)) : 'peer']);
  }
}
for (const [what, got, ok] of goals) {
  const mark = ok === true ? 'MET' : ok === false ? 'MISSED' : String(ok);
  say(`${mark.padEnd(30)}${what}: ${got}`);
}

// ---- results file ----
fs.mkdirSync(outDir, { recursive: true });
const result = { stamp, profile: opts.profile, machine, runs, goals: goals.map(([what, got, ok]) => ({ what, got, ok })) };
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
