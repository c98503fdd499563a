#!/usr/bin/env node
// Matches chat-load's stall seconds against what the database logged
// (bench/RESULTS.md, "Where the tail comes from").
//
//   node bench/tail-match.cjs postgres.log run1.json [run2.json ...]
//
// A stall second: its delivery p99 is over 3x the run's median second and
// over 10 ms.  For each stall second and for the slowest delivery it names
// the logged work that overlapped it: statements over
// log_min_duration_statement (grouped by function), autovacuum and
// checkpoints (their elapsed time), lock waits.  One line per run.
'use strict';
const fs = require('fs');
const path = require('path');

const [logFile, ...files] = process.argv.slice(2);
if (!logFile || !files.length) {
  console.error('usage: node bench/tail-match.cjs postgres.log run.json ...');
  process.exit(2);
}

// Logged work as [start ms, end ms, label].
const work = [];
const stamp = (s) => Date.parse(s.replace(' ', 'T') + 'Z');
for (const line of fs.readFileSync(logFile, 'utf8').split('\n')) {
  const m = line.match(/^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) UTC \[\d+\] (.*)$/);
  if (!m) continue;
  const end = stamp(m[1]);
  let d;
  if ((d = m[2].match(/duration: ([\d.]+) ms +(.*)$/))) {
    // the chat function called, else the statement's first words
    const fn = d[2].match(/chat\.\w+/) || d[2].match(/^\S+( \S+)?/);
    work.push([end - Number(d[1]), end, fn[0]]);
  } else if ((d = m[2].match(/automatic (vacuum|analyze) of table "([^"]+)"/))) {
    work.push([end, end, `auto${d[1]} ${d[2].split('.').pop()}`]);
  } else if (/checkpoint (starting|complete)/.test(m[2])) {
    work.push([end, end, m[2].includes('starting') ? 'checkpoint start' : 'checkpoint end']);
  } else if (/still waiting for/.test(m[2])) {
    work.push([end - 20, end, 'lock wait']);
  }
}

// What overlapped [a, b]: labels with their count and longest duration.
function overlapping(a, b) {
  const by = new Map();
  for (const [s, e, label] of work) {
    if (e < a || s > b) continue;
    const x = by.get(label) || { n: 0, ms: 0 };
    x.n++;
    x.ms = Math.max(x.ms, e - s);
    by.set(label, x);
  }
  return [...by].sort((x, y) => y[1].ms - x[1].ms).slice(0, 3)
    .map(([label, x]) => `${label}${x.n > 1 ? ` x${x.n}` : ''}${x.ms ? ` ${x.ms.toFixed(0)}ms` : ''}`).join(', ');
}

for (const f of files) {
  const j = JSON.parse(fs.readFileSync(f, 'utf8'));
  if (!j.timeline || !j.timeline.seconds) continue;
  const secs = j.timeline.seconds.filter((x) => x.deliveries > 0);
  const sorted = secs.map((x) => x.p99_ms).sort((a, b) => a - b);
  const med = sorted[Math.floor(sorted.length / 2)] || 0;
  const t0 = Date.parse(j.timeline.t0);
  const stalls = secs.filter((x) => x.p99_ms > 3 * med && x.p99_ms > 10).map((x) => {
    const o = overlapping(t0 + x.s * 1000, t0 + x.s * 1000 + 1000 + x.p99_ms);
    return `s${x.s} ${x.p99_ms.toFixed(0)}ms${o ? ` [${o}]` : ''}`;
  });
  const w = (j.worst || [])[0];
  let worst = '';
  if (w) {
    const sent = Date.parse(w.sent);
    const o = overlapping(sent, sent + w.latency_ms);
    worst = `; slowest ${w.latency_ms.toFixed(0)}ms${o ? ` during [${o}]` : ''}`;
  }
  console.log(`${path.basename(f, '.json').padEnd(18)} p99 ${j.latency_ms.p99.toFixed(1).padStart(7)} median second ${med.toFixed(0).padStart(4)}; stalls: ${stalls.join('; ') || 'none'}${worst}`);
}
