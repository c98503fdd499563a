// goals.cjs: the goals table of issue 11 ("the hot path"), computed from the
// runs of one bench/run.sh invocation.  Every figure is judged against a
// baseline from the same run (the hand-written gapless send driven by
// pgbench, or the node-relay peer), because absolute times on a shared
// machine move from run to run.  Kept apart from report.cjs so that
// tests/bench can check the verdicts on made-up runs.
'use strict';

const num = (v) => (typeof v === 'number' && Number.isFinite(v) && v >= 0 ? v : null);
const fmt = (v, d = 0) => (num(v) === null ? '-' :
  Number(v).toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d }));
const ratioOf = (a, b) => (num(a) !== null && num(b) !== null && b > 0 ? a / b : null);
const fmtRatio = (r) => (r === null ? '-' : `${r.toFixed(2)}x`);

// One row: goal text, measured figure, baseline figure, ratio (figure /
// baseline, null when either is missing) and a status: 'MET', 'MISSED',
// 'NOT RUN' (a needed run is absent) or 'PARTIAL' (met at a smaller size
// than the goal names, so not met).
function row(goal, figure, baseline, ratio, status) {
  return { goal, figure, baseline, ratio, status };
}

// Status from a list of conditions: any null (figure missing) is NOT RUN,
// otherwise MET only when all hold.
function verdict(...conds) {
  if (conds.some((c) => c === null || c === undefined)) return 'NOT RUN';
  return conds.every(Boolean) ? 'MET' : 'MISSED';
}

// The issue 11 goals from an array of runs (chat-load --json output with
// run/label added by bench/run.sh, and the send-cpu.sh JSON labelled
// "pgbench").  Returns an array of rows in the issue's order.
function issue11Goals(runs) {
  const rows = [];
  const pg = runs.find((r) => r.label === 'pgbench' && r.scenario === 'send-cpu') || null;
  const cpu = (s) => (pg && pg.scripts && pg.scripts[s] ? num(pg.scripts[s].cpu_us) : null);
  const lat = (s, k) => (pg && pg.latency && pg.latency[s] ? num(pg.latency[s][k]) : null);
  const of = (label, pred) => runs.find((r) => r.label === label && pred(r)) || null;
  const peerOf = (g) => (g ? of('peer', (r) => r.run === g.run) : null);
  const p = (r, k) => (r && r.latency_ms ? num(r.latency_ms[k]) : null);

  // 1. PostgreSQL CPU per send through client_request, fanout included.
  {
    const a = cpu('c-request'), b = cpu('base-1'), q = ratioOf(a, b);
    rows.push(row('PostgreSQL CPU per send through client_request (fanout included) <= 1.6x the hand-written send',
      `${fmt(a, 1)} us`, `${fmt(b, 1)} us`, q, verdict(q === null ? null : q <= 1.6)));
  }
  // 2. client_request send alone, rate-limited: p99 against the hand-written p99.
  {
    const rate = pg && pg.latency ? pg.latency.rate : null;
    const a = lat('c-request', 'p99_ms'), b = lat('base-1', 'p99_ms'), q = ratioOf(a, b);
    rows.push(row(`client_request send alone at ${fmt(rate)}/s (pgbench -R): p99 <= 1.5x the hand-written p99`,
      `p50 ${fmt(lat('c-request', 'p50_ms'), 2)}, p99 ${fmt(a, 2)} ms`,
      `p50 ${fmt(lat('base-1', 'p50_ms'), 2)}, p99 ${fmt(b, 2)} ms`, q, verdict(q === null ? null : q <= 1.5)));
  }
  // 3. 1:1 at 1,000 msg/s, one gateway process: against the hand-written
  // send at that rate and against the peer.
  {
    const g = of('gateway', (r) => r.scenario === 'direct' && r.rate_target === 1000 && (r.workers || 0) <= 1 && !r.hops);
    const pe = peerOf(g);
    const b99 = lat('base-1', 'p99_ms'), b50 = lat('base-1', 'p50_ms');
    const q99 = ratioOf(p(g, 'p99'), b99), q50 = ratioOf(p(g, 'p50'), b50), qp = ratioOf(p(g, 'p99'), p(pe, 'p99'));
    rows.push(row(`1:1 at 1,000 msg/s${g ? `, ${fmt(g.clients)} connections` : ''}, one process: p99 <= 2x hand-written p99 and <= 1/3 of the peer's; p50 <= 3x hand-written p50`,
      `p50 ${fmt(p(g, 'p50'), 2)}, p99 ${fmt(p(g, 'p99'), 2)} ms`,
      `hand-written p50 ${fmt(b50, 2)}, p99 ${fmt(b99, 2)}; peer p99 ${fmt(p(pe, 'p99'), 2)} ms (peer ratio ${fmtRatio(qp)}, p50 ratio ${fmtRatio(q50)})`,
      q99, verdict(q99 === null ? null : q99 <= 2, qp === null ? null : qp <= 1 / 3, q50 === null ? null : q50 <= 3)));
  }
  // 4. 1:1 at 2,000 msg/s: p99 against the peer's.
  {
    const g = of('gateway', (r) => r.scenario === 'direct' && r.rate_target === 2000 && !r.hops);
    const pe = peerOf(g), q = ratioOf(p(g, 'p99'), p(pe, 'p99'));
    rows.push(row(`1:1 at 2,000 msg/s${g ? `, ${fmt(g.clients)} clients` : ''}: p99 <= 1/10 of the peer's`,
      `p50 ${fmt(p(g, 'p50'), 2)}, p99 ${fmt(p(g, 'p99'), 2)} ms`, `peer p50 ${fmt(p(pe, 'p50'), 2)}, p99 ${fmt(p(pe, 'p99'), 2)} ms`,
      q, verdict(q === null ? null : q <= 0.1)));
  }
  // 5. 1:1 sends/s at saturation (closed loop) against the hand-written TPS.
  {
    const g = of('gateway', (r) => r.scenario === 'direct' && r.rate_target === 0 && !r.hops);
    const a = g ? num(g.sends_per_s) : null;
    const b = pg && pg.scripts && pg.scripts['base-1'] ? num(pg.scripts['base-1'].tps) : null;
    const q = ratioOf(a, b);
    rows.push(row(`1:1 sends/s at saturation >= 1/3 of the hand-written TPS (${pg ? pg.clients : '?'} pgbench clients)`,
      `${fmt(a)} sends/s`, `${fmt(b)} TPS`, q, verdict(q === null ? null : q >= 1 / 3)));
  }
  // 6. group fanout at saturation: the best run of each side.
  {
    const best = (label) => runs.filter((r) => r.label === label && r.scenario === 'group' && !String(r.run).startsWith('evlib'))
      .reduce((m, r) => (m === null || r.deliveries_per_s > m.deliveries_per_s ? r : m), null);
    const g = best('gateway'), pe = best('peer');
    const q = ratioOf(g && g.deliveries_per_s, pe && pe.deliveries_per_s);
    rows.push(row('group fanout deliveries/s at saturation >= 3x the peer\'s',
      `${fmt(g && g.deliveries_per_s)}/s`, `peer ${fmt(pe && pe.deliveries_per_s)}/s`, q, verdict(q === null ? null : q >= 3)));
  }
  // 7. idle: 100,000 at <= 2 KiB each; connect rate >= 2x the peer's at 18,000.
  {
    const idle = runs.filter((r) => r.label === 'gateway' && r.scenario === 'idle');
    const g = idle.reduce((m, r) => (m === null || r.clients > m.clients ? r : m), null);
    // PSS when chat-load could read it: summed RSS counts every page the
    // workers share (library code, the supervisor's heap before fork) once
    // per worker, PSS splits it among them, so its sum is what they cost.
    const rssSum = g && g.gateway_rss ? num(g.gateway_rss.per_conn_total_b) : null;
    const pss = g && g.gateway_rss && g.gateway_rss.pss_per_conn_total_b > 0 ? num(g.gateway_rss.pss_per_conn_total_b) : null;
    const rss = pss !== null ? pss : rssSum;
    const pe = runs.filter((r) => r.label === 'peer' && r.scenario === 'idle')
      .reduce((m, r) => (m === null || r.clients > m.clients ? r : m), null);
    const gs = pe ? of('gateway', (r) => r.scenario === 'idle' && r.clients === pe.clients) : null;
    const rate = gs && gs.connect ? num(gs.connect.rate) : null, prate = pe && pe.connect ? num(pe.connect.rate) : null;
    const q = ratioOf(rate, prate);
    let status = verdict(rss === null ? null : rss <= 2048, q === null ? null : q >= 2);
    if (status === 'MET' && (g.clients < 100000 || pe.clients < 18000)) status = 'PARTIAL';
    rows.push(row('idle: 100,000 connections at <= 2 KiB each (summed over workers); connect rate >= 2x the peer\'s at 18,000',
      `${pss !== null ? `${fmt(pss)} B/conn PSS (summed RSS ${fmt(rssSum)})` : `${fmt(rss)} B/conn RSS`} at ${fmt(g && g.clients)}; connect ${fmt(rate)}/s at ${fmt(gs && gs.clients)}`,
      `2,048 B; peer connect ${fmt(prate)}/s`, q, status));
  }
  // 8. storm: back within 3 s, synced <= 1/3 of the peer's, ramp >= 2x the peer's.
  {
    const g = of('gateway', (r) => r.scenario === 'storm');
    const pe = of('peer', (r) => r.scenario === 'storm');
    const st = (r, k) => (r && r.storm ? num(r.storm[k]) : null);
    const qs = ratioOf(st(g, 'synced_s'), st(pe, 'synced_s'));
    const qr = ratioOf(g && g.connect && g.connect.rate, pe && pe.connect && pe.connect.rate);
    const back = st(g, 'reconnected_s');
    const clean = g && g.check ? g.check.lost === 0 && g.check.table_duplicates === 0 : null;
    let status = verdict(back === null ? null : back <= 3, qs === null ? null : qs <= 1 / 3, qr === null ? null : qr >= 2, clean);
    if (status === 'MET' && g.clients < 20000) status = 'PARTIAL';
    rows.push(row(`storm${g ? ` ${fmt(g.clients)} clients` : ''}, gateway restarted: back <= 3 s, synced <= 1/3 of the peer's, ramp >= 2x the peer's, 0 lost/dup`,
      `back ${fmt(back, 2)} s, synced ${fmt(st(g, 'synced_s'), 2)} s, ramp ${fmt(g && g.connect && g.connect.rate)}/s`,
      `peer back ${fmt(st(pe, 'reconnected_s'), 2)} s, synced ${fmt(st(pe, 'synced_s'), 2)} s, ramp ${fmt(pe && pe.connect && pe.connect.rate)}/s (ramp ratio ${fmtRatio(qr)})`,
      qs, status));
  }
  // 9. nothing lost or duplicated in any run (either gateway).
  {
    const checked = runs.filter((r) => r.check && r.scenario !== 'idle');
    const lost = checked.reduce((s, r) => s + (r.check.lost || 0), 0);
    const dups = checked.reduce((s, r) => s + (r.check.table_duplicates || 0), 0);
    const gaps = pg && typeof pg.gaps === 'number' ? pg.gaps : 0;
    rows.push(row('0 lost / 0 duplicated in every run', `${fmt(lost)} lost, ${fmt(dups)} duplicated in ${checked.length} runs; ${fmt(gaps)} seq gaps (pgbench)`,
      '0', null, checked.length === 0 && !pg ? 'NOT RUN' : (lost === 0 && dups === 0 && gaps === 0 ? 'MET' : 'MISSED')));
  }
  return rows;
}

// The table as text lines: status, goal, then figure | baseline | ratio.
function formatGoals(rows) {
  const out = [];
  for (const r of rows) {
    out.push(`${r.status.padEnd(8)} ${r.goal}`);
    out.push(`${''.padEnd(8)}   measured ${r.figure} | baseline ${r.baseline} | ratio ${fmtRatio(r.ratio)}`);
  }
  return out;
}

module.exports = { issue11Goals, formatGoals };
