#!/usr/bin/env node
// scrape-metrics.cjs: scrapes a chat-gateway's /metrics every second during
// a benchmark run and appends one CSV row per scrape: the monitoring series
// of issue 11 as a user would read them on the Grafana dashboard (rates and
// quantiles over the last interval), for bench/metrics-plot.cjs.
//
//   node bench/scrape-metrics.cjs --url http://127.0.0.1:PORT/metrics --run NAME --out FILE.csv [--interval-ms 1000]
//
// Runs until SIGTERM/SIGINT.  A failed scrape (a gateway restarting in the
// storm run) writes no row; a counter that went back (the restarted
// gateway) starts the rates afresh.  Quantiles follow Prometheus'
// histogram_quantile (linear within a bucket; the highest finite bound
// when the rank falls in +Inf).  The notifier's histograms move only when
// the gateway reads them (every 2 s): their columns are filled when they
// moved, over the span since they last did, and empty otherwise.
'use strict';
const fs = require('fs');
const http = require('http');

const argv = process.argv.slice(2);
const opts = { 'interval-ms': '1000' };
for (let i = 0; i < argv.length; i += 2) opts[argv[i].replace(/^--/, '')] = argv[i + 1];
if (!opts.url || !opts.out || !opts.run) {
  console.error('usage: scrape-metrics.cjs --url URL --run NAME --out FILE.csv [--interval-ms N]');
  process.exit(2);
}

const COLUMNS = ['time_s', 'run', 'connections', 'opened_per_s', 'closed_per_s', 'closed_within_1s_per_s',
  'deliveries_per_s', 'delivery_p50_ms', 'delivery_p90_ms', 'delivery_p99_ms', 'delivery_mean_ms', 'skewed_per_s',
  'notifier_passes_per_s', 'queue_depth_mean', 'queue_depth_p99', 'notifies_per_s', 'batch_mean', 'batch_p99',
  'queued_bytes'];
const HEADER = COLUMNS.join(',') + '\n';
if (!fs.existsSync(opts.out) || fs.statSync(opts.out).size === 0) fs.writeFileSync(opts.out, HEADER);

// Parses Prometheus text: {name: [{labels, value}]}.
function parse(text) {
  const out = {};
  for (const line of text.split('\n')) {
    if (!line || line[0] === '#') continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    if (m[2]) for (const kv of m[2].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[kv[1]] = kv[2];
    (out[m[1]] ??= []).push({ labels, value: Number(m[3]) });
  }
  return out;
}

const total = (s, name) => (s[name] || []).reduce((t, x) => t + x.value, 0);

// A histogram as {bounds: [le...] (numbers, +Inf last), counts: [...], sum, count}, or null.
function histogram(s, name) {
  const b = s[`${name}_bucket`];
  if (!b || !b.length) return null;
  const byLe = new Map();
  for (const x of b) byLe.set(x.labels.le, (byLe.get(x.labels.le) || 0) + x.value);
  const les = [...byLe.keys()].sort((a, c) => Number(a) - Number(c));
  return { bounds: les.map(Number), counts: les.map((le) => byLe.get(le)), sum: total(s, `${name}_sum`), count: total(s, `${name}_count`) };
}

// histogram_quantile over the difference of two cumulative snapshots.
function quantile(q, now, then) {
  if (!now || !then || now.bounds.length !== then.bounds.length) return '';
  const d = now.counts.map((c, i) => c - then.counts[i]);
  const n = d[d.length - 1];
  if (!(n > 0) || d.some((x) => x < 0)) return '';
  const rank = q * n;
  for (let i = 0; i < d.length; i++) {
    if (d[i] >= rank) {
      if (!Number.isFinite(now.bounds[i])) return now.bounds[i - 1] ?? '';
      const lo = i === 0 ? 0 : now.bounds[i - 1], below = i === 0 ? 0 : d[i - 1];
      const inBucket = d[i] - below;
      return inBucket > 0 ? lo + (now.bounds[i] - lo) * ((rank - below) / inBucket) : now.bounds[i];
    }
  }
  return '';
}

const num = (v, digits = 3) => (v === '' || v === undefined || v === null || !Number.isFinite(v) ? '' : Number(v.toFixed(digits)));

let prev = null;		// {t, s}
let prevNotifier = null;	// {t, depth, batch}: the last snapshot in which they moved

function row(t, s) {
  const r = { time_s: t.toFixed(3), run: opts.run, connections: total(s, 'chat_gateway_connections') };
  r.queued_bytes = s.chat_notifier_queued_bytes ? Math.max(...s.chat_notifier_queued_bytes.map((x) => x.value)) : '';
  const dh = histogram(s, 'chat_gateway_delivery_latency_seconds');
  const lh = histogram(s, 'chat_gateway_connection_duration_seconds');
  const depth = histogram(s, 'chat_notifier_queue_depth_events');
  const batch = histogram(s, 'chat_notifier_batch_events');
  if (prev) {
    const dt = t - prev.t;
    const rate = (a, b) => (a >= b && dt > 0 ? (a - b) / dt : '');
    r.opened_per_s = num(rate(total(s, 'chat_gateway_connections_total'), total(prev.s, 'chat_gateway_connections_total')), 1);
    const pdh = histogram(prev.s, 'chat_gateway_delivery_latency_seconds');
    const plh = histogram(prev.s, 'chat_gateway_connection_duration_seconds');
    if (lh && plh) {
      r.closed_per_s = num(rate(lh.count, plh.count), 1);
      const i1 = lh.bounds.indexOf(1);
      if (i1 >= 0) r.closed_within_1s_per_s = num(rate(lh.counts[i1], plh.counts[i1]), 1);
    }
    if (dh && pdh) {
      r.deliveries_per_s = num(rate(dh.count, pdh.count), 1);
      for (const [k, q] of [['delivery_p50_ms', 0.5], ['delivery_p90_ms', 0.9], ['delivery_p99_ms', 0.99]]) {
        const v = quantile(q, dh, pdh);
        r[k] = v === '' ? '' : num(v * 1000);
      }
      if (dh.count > pdh.count) r.delivery_mean_ms = num(((dh.sum - pdh.sum) / (dh.count - pdh.count)) * 1000);
    }
    r.skewed_per_s = num(rate(total(s, 'chat_gateway_delivery_clock_skew_total'), total(prev.s, 'chat_gateway_delivery_clock_skew_total')), 1);
  }
  if (depth && batch) {
    const p = prevNotifier;
    if (p && (depth.count !== p.depth.count || batch.count !== p.batch.count)) {
      const dt = t - p.t;
      if (depth.count >= p.depth.count && batch.count >= p.batch.count && dt > 0) {
        r.notifier_passes_per_s = num((depth.count - p.depth.count) / dt, 1);
        r.notifies_per_s = num((batch.count - p.batch.count) / dt, 1);
        if (depth.count > p.depth.count) r.queue_depth_mean = num((depth.sum - p.depth.sum) / (depth.count - p.depth.count), 2);
        if (batch.count > p.batch.count) r.batch_mean = num((batch.sum - p.batch.sum) / (batch.count - p.batch.count), 2);
        r.queue_depth_p99 = num(quantile(0.99, depth, p.depth), 1);
        r.batch_p99 = num(quantile(0.99, batch, p.batch), 1);
      }
      prevNotifier = { t, depth, batch };
    } else if (!p) {
      prevNotifier = { t, depth, batch };
    }
  }
  return COLUMNS.map((c) => (r[c] === undefined ? '' : r[c])).join(',') + '\n';
}

function scrape() {
  return new Promise((resolve) => {
    const req = http.get(opts.url, { timeout: 900, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { body += c; });
      res.on('end', () => resolve(res.statusCode === 200 ? body : null));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(null));
  });
}

let stop = false, wake = null;
const halt = () => { stop = true; if (wake) wake(); };
process.on('SIGTERM', halt);
process.on('SIGINT', halt);

(async () => {
  const every = Number(opts['interval-ms']);
  let next = Date.now();
  while (!stop) {
    const text = await scrape();
    const t = Date.now() / 1000;
    if (text !== null) {
      const s = parse(text);
      // a restarted gateway starts its counters at 0: no rates across it
      if (prev && total(s, 'chat_gateway_connections_total') < total(prev.s, 'chat_gateway_connections_total')) prev = null;
      fs.appendFileSync(opts.out, row(t, s));
      prev = { t, s };
    }
    next += every;
    const wait = next - Date.now();
    if (wait > 0 && !stop) {
      await new Promise((r) => { const h = setTimeout(r, wait); wake = () => { clearTimeout(h); r(); }; });
      wake = null;
    } else next = Date.now();
  }
})();
