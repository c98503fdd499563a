// The soak's load and sampler (bench/soak.sh starts it): the fault
// checker's load (tests/faults/checker.mjs) at SOAK_PERIOD ms per device,
// sampled every SOAK_SAMPLE s, judged at the end.
import fs from 'node:fs';
import { Load } from '../tests/faults/checker.mjs';
import { value, sleep } from '../tests/gateway/lib.mjs';

const env = (k, d) => Number(process.env[k] || d);
const seconds = env('SOAK_SECONDS', 1800), every = env('SOAK_SAMPLE', 10);
const out = process.env.SOAK_OUT;

// p-th percentile of sorted values (null when empty).
const pct = (v, p) => (v.length ? v[Math.min(v.length - 1, Math.floor(v.length * p))] : null);

// The four series as one SVG: RSS, fds, backends, latency (p50 and p99).
function plot(rows) {
  const W = 720, H = 150, pad = 40;
  const panels = [
    ['gateway RSS (MB)', [['rss_kb', (v) => v / 1024, '#1f77b4']]],
    ['gateway open fds', [['fds', (v) => v, '#2ca02c']]],
    ['PostgreSQL backends', [['pg_backends', (v) => v, '#9467bd']]],
    ['send latency (ms): p50, p99', [['p50_ms', (v) => v, '#ff7f0e'], ['p99_ms', (v) => v, '#d62728']]],
  ];
  const tmax = Math.max(1, ...rows.map((r) => r.t));
  let svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H * panels.length}" font-family="sans-serif" font-size="11">`;
  panels.forEach(([title, series], i) => {
    const y0 = i * H;
    const vals = series.flatMap(([k, f]) => rows.filter((r) => r[k] != null).map((r) => f(r[k])));
    const vmax = Math.max(1, ...vals) * 1.1;
    svg += `<text x="${pad}" y="${y0 + 14}">${title} (max ${Math.max(0, ...vals).toFixed(1)})</text>`;
    svg += `<rect x="${pad}" y="${y0 + 20}" width="${W - 2 * pad}" height="${H - 40}" fill="none" stroke="#ccc"/>`;
    svg += `<text x="${pad}" y="${y0 + H - 6}">0 s</text><text x="${W - pad - 40}" y="${y0 + H - 6}">${tmax} s</text>`;
    for (const [k, f, color] of series) {
      const pts = rows.filter((r) => r[k] != null).map((r) =>
        `${(pad + (r.t / tmax) * (W - 2 * pad)).toFixed(1)},${(y0 + H - 20 - (f(r[k]) / vmax) * (H - 40)).toFixed(1)}`);
      if (pts.length) svg += `<polyline fill="none" stroke="${color}" stroke-width="1.5" points="${pts.join(' ')}"/>`;
    }
  });
  return `${svg}</svg>\n`;
}

const load = new Load({ db: 'soak', users: env('SOAK_USERS', 20), devices: env('SOAK_DEVICES', 2), period: env('SOAK_PERIOD', 1000) });
let code = 1;
try {
  await load.setup();
  await load.start();
  load.startSending();
  const pid = load.gw.pid;
  const rows = [];
  const t0 = Date.now();
  fs.writeFileSync(`${out}.csv`, 't,rss_kb,fds,pg_backends,acks,errors,p50_ms,p99_ms\n');
  let last = t0;
  while (Date.now() - t0 < seconds * 1000) {
    await sleep(Math.min(every * 1000, seconds * 1000 - (Date.now() - t0)));
    const now = Date.now();
    const tries = load.attempts.filter((e) => e.t0 >= last && e.t0 < now && e.t1);
    const lat = tries.filter((e) => e.code === null).map((e) => e.t1 - e.t0).sort((a, b) => a - b);
    const r = {
      t: Math.round((now - t0) / 1000),
      rss_kb: Number(fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/)[1]),
      fds: fs.readdirSync(`/proc/${pid}/fd`).length,
      pg_backends: Number(await value('postgres', "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")),
      acks: lat.length, errors: tries.length - lat.length, p50_ms: pct(lat, 0.5), p99_ms: pct(lat, 0.99),
    };
    rows.push(r);
    last = now;
    fs.appendFileSync(`${out}.csv`, `${Object.values(r).join(',')}\n`);
    console.log(`soak: ${JSON.stringify(r)}`);
  }
  await load.stopSending();
  const verdict = await load.finish();
  fs.writeFileSync(`${out}.svg`, plot(rows));
  const first = rows[0], end = rows[rows.length - 1];
  console.log(`soak: ${seconds} s, ${verdict.acked} acked, lost ${verdict.lost}, duplicated ${verdict.dupView}/${verdict.dupTable}; ` +
    `RSS ${first.rss_kb} -> ${end.rss_kb} kB, fds ${first.fds} -> ${end.fds}, backends ${first.pg_backends} -> ${end.pg_backends}; ` +
    `wrote ${out}.csv and ${out}.svg`);
  code = verdict.pass && load.failed.length === 0 ? 0 : 1;
} catch (e) {
  console.error(`soak: ${e.stack || e}`);
} finally {
  await load.stop().catch(() => {});
}
process.exit(code);
