#!/usr/bin/env node
// metrics-plot.cjs: joins the per-run CSVs of bench/scrape-metrics.cjs into
// <out>/<stamp>-metrics.csv and draws, with gnuplot, what the Grafana
// dashboard shows (monitoring/grafana-dashboard.json), over the whole
// benchmark with each run marked:
//   <stamp>-metrics-delivery.{png,svg}     delivery latency p50/p90/p99 (commit -> socket write)
//   <stamp>-metrics-notifier.{png,svg}     notifier queue depth and batch size
//   <stamp>-metrics-connections.{png,svg}  open connections, opened/closed per second
// With --docs DIR the PNGs are also copied to DIR/monitoring-*.png (make
// bench does this for docs/monitoring.md).
//
//   node bench/metrics-plot.cjs --stamp STAMP --out bench/results [--docs docs] run1.csv run2.csv ...
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

// ---- join the runs (in the order they ran) ----
let header = null;
const rows = [];
for (const f of opts.files) {
  if (!fs.existsSync(f)) continue;
  const lines = fs.readFileSync(f, 'utf8').split('\n').filter(Boolean);
  if (!lines.length) continue;
  header ??= lines[0];
  if (lines[0] !== header) { console.error(`metrics-plot: ${f} has other columns; skipped`); continue; }
  for (const l of lines.slice(1)) rows.push(l.split(','));
}
if (!header || !rows.length) {
  console.error('metrics-plot: no scraped rows (was the gateway scraped?)');
  process.exit(1);
}
const cols = header.split(',');
const col = (name) => cols.indexOf(name) + 1;	// gnuplot columns count from 1
rows.sort((a, b) => Number(a[0]) - Number(b[0]));
const t0 = Number(rows[0][0]);
fs.mkdirSync(outDir, { recursive: true });
const csvPath = path.join(outDir, `${stamp}-metrics.csv`);
fs.writeFileSync(csvPath, header + '\n' + rows.map((r) => r.join(',')).join('\n') + '\n');

// gnuplot reads a copy with time relative to the start (seconds) and
// "?" for the empty cells (missing data, not zero).
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-metrics-'));
const dat = path.join(tmp, 'm.dat');
// A blank line between runs: gnuplot does not draw a line across the gap.
fs.writeFileSync(dat, rows.map((r, k) => (k && rows[k - 1][1] !== r[1] ? '\n' : '') +
  [(Number(r[0]) - t0).toFixed(3), ...r.slice(1)]
    .map((v, i) => (i === 1 ? `"${v}"` : v === '' ? '?' : v)).join(' ')).join('\n') + '\n');

// Each run's first and last second: a shaded band and a label.
const runs = [];
for (const r of rows) {
  const t = Number(r[0]) - t0, last = runs[runs.length - 1];
  if (last && last.name === r[1]) last.end = t;
  else runs.push({ name: r[1], start: t, end: t });
}
const marks = runs.map((r, i) => [
  `set object ${i + 1} rect from ${r.start},graph 0 to ${Math.max(r.end, r.start + 0.5)},graph 1 fc rgb '${i % 2 ? '#f2f2f2' : '#e6eef7'}' fs solid 0.6 noborder behind`,
  `set label ${i + 1} '${r.name.replace(/'/g, '')}' at ${r.start},graph 0.98 right rotate by 90 front font ',8' offset 0.8,0`,
].join('\n')).join('\n');

const img = (name, ext) => path.join(outDir, `${stamp}-metrics-${name}.${ext}`);
// A plot command of the series whose column holds any number; a panel
// with none (no samples in these runs) says so instead of failing.
const hasData = (name) => rows.some((r) => r[col(name) - 1] !== '' && r[col(name) - 1] !== undefined);
function plotCmd(series, logscale) {
  const live = series.filter((x) => hasData(x.col));
  if (!live.length) {
    return ['unset logscale y', "set label 99 'no samples in these runs' at graph 0.5,0.5 center front",
      "plot [*:*] [0:1] 1/0 notitle", 'unset label 99'].join('\n');
  }
  return (logscale ? 'set logscale y\n' : 'unset logscale y\n') + 'plot ' + live.map((x, i) =>
    `${i ? "''" : `'${dat}'`} using 1:${col(x.col)}${x.axes ? ` axes ${x.axes}` : ''} with ${x.with || 'lines'} lw ${x.lw || 2}` +
    `${x.dt ? ` dt ${x.dt}` : ''} lc rgb '${x.color}' title '${x.title}'`).join(', \\\n     ');
}
const pts = 'linespoints pt 7 ps 0.4';
const script = (term, ext) => `
set terminal ${term} noenhanced
set datafile missing '?'
set grid
set key outside bottom center horizontal
set xlabel 'seconds since the benchmark started (bands: runs against chat-gateway)'
${marks}

set output '${img('delivery', ext)}'
set title 'Delivery latency, commit to socket write (chat_gateway_delivery_latency_seconds, per second)'
set ylabel 'ms (log scale)'
${plotCmd([{ col: 'delivery_p50_ms', color: '#1e88e5', title: 'p50' }, { col: 'delivery_p90_ms', color: '#fb8c00', title: 'p90' },
    { col: 'delivery_p99_ms', color: '#e53935', title: 'p99' }, { col: 'delivery_mean_ms', color: '#555555', title: 'mean', lw: 1, dt: 2 }], true)}

set output '${img('notifier', ext)}'
set multiplot layout 2,1 title 'Notifier (chat.notifier_histograms(), read by the gateway every 2 s)'
set title 'queue depth: events waiting when a worker pass began'
set ylabel 'events (log scale)'
${plotCmd([{ col: 'queue_depth_mean', with: pts, color: '#1e88e5', title: 'mean' },
    { col: 'queue_depth_p99', with: pts, color: '#e53935', title: 'p99 (bucket bound)' }], true)}
set title 'batch size: events per NOTIFY'
set y2label 'NOTIFYs/s'
set y2tics
set ytics nomirror
${plotCmd([{ col: 'batch_mean', with: pts, color: '#1e88e5', title: 'mean' },
    { col: 'batch_p99', with: pts, color: '#e53935', title: 'p99 (bucket bound)' },
    { col: 'notifies_per_s', axes: 'x1y2', color: '#555555', title: 'NOTIFYs/s (right)', lw: 1, dt: 2 }], true)}
unset multiplot
unset logscale y
unset y2label

set output '${img('connections', ext)}'
set title 'Connections and churn (chat_gateway_connections, _connections_total, _connection_duration_seconds)'
set ylabel 'open connections'
set y2label 'per second'
set y2tics
set ytics nomirror
${plotCmd([{ col: 'connections', color: '#1e88e5', title: 'open' },
    { col: 'opened_per_s', axes: 'x1y2', color: '#43a047', title: 'opened/s (right)', lw: 1 },
    { col: 'closed_per_s', axes: 'x1y2', color: '#e53935', title: 'closed/s (right)', lw: 1 },
    { col: 'closed_within_1s_per_s', axes: 'x1y2', color: '#8e24aa', title: 'closed within 1 s/s (right)', lw: 1, dt: 2 }], false)}
`;

const plotted = [];
for (const [term, ext] of [['pngcairo size 1100,650 font ",10"', 'png'], ['svg size 1100,650', 'svg']]) {
  try {
    execFileSync('gnuplot', [], { input: script(term, ext), stdio: ['pipe', 'ignore', 'pipe'] });
    plotted.push(ext);
  } catch (e) {
    if (ext === 'png') {
      try { execFileSync('gnuplot', [], { input: script('png size 1100,650', ext), stdio: ['pipe', 'ignore', 'pipe'] }); plotted.push(ext); } catch (e2) { console.error(`metrics-plot: gnuplot failed: ${String(e2.stderr || e2).slice(0, 300)}`); }
    } else console.error(`metrics-plot: gnuplot (${ext}) failed: ${String(e.stderr || e).slice(0, 300)}`);
  }
}
fs.rmSync(tmp, { recursive: true, force: true });
if (opts.docs && plotted.includes('png')) {
  for (const n of ['delivery', 'notifier', 'connections']) fs.copyFileSync(img(n, 'png'), path.join(opts.docs, `monitoring-${n}.png`));
}
console.log(`metrics: ${rows.length} scrapes over ${runs.length} runs: ${csvPath}; plots (${plotted.join(', ') || 'none'}): ${path.join(outDir, stamp)}-metrics-{delivery,notifier,connections}.*` +
  (opts.docs && plotted.includes('png') ? `; copied to ${opts.docs}/monitoring-*.png` : ''));
process.exit(plotted.length ? 0 : 1);
