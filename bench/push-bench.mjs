// Push delivery benchmark (bench/push-throughput.sh runs it on a throwaway
// cluster): chat-pusher delivering the outbox to a local Web Push endpoint
// beside the `web-push` npm library's sender, in the same run, against the
// same endpoint (HTTP/2 and HTTP/1.1 over TLS, answering 201 at once, not
// decrypting) and the same subscriptions and payload size.
//
//   throughput  N messages, each to its own offline device (nothing to
//               coalesce), queued in one transaction; pushes/s = N / (last
//               arrival - commit).  Concurrency 1, 16, 64 (--concurrency of
//               the pusher; requests in flight for web-push).
//   latency     M messages sent one by one, 50 ms apart: send -> endpoint
//               arrival, p50 and p99.  For chat-pusher "send" is the
//               send_message statement (so NOTIFY, claim, encryption, HTTP
//               and completion are all in); for web-push it is the call of
//               sendNotification (encryption and HTTP only, no database).
//
// Env: N (default 2000), M (default 200), CONCURRENCY ("1 16 64"),
// PUSHER_BIN (pusher/chat-pusher), WEB_PUSH_DIR (where node_modules/web-push
// is, when not in the repository's node_modules).  Prints a table and writes
// JSON to $OUT when set.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http2 from 'node:http2';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { spawn, execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { psql, newDb, dsn, freePort, sleep, lit, TOP } from '../tests/gateway/lib.mjs';

const N = Number(process.env.N || 2000);
const M = Number(process.env.M || 200);
const LEVELS = (process.env.CONCURRENCY || '1 16 64').split(/\s+/).filter(Boolean).map(Number);
const PUSHER_BIN = path.resolve(TOP, process.env.PUSHER_BIN || 'pusher/chat-pusher');
const DB = 'chat_push_bench';
const SUBJECT = 'mailto:bench@example.com';
const SENDER = 1;

// The web-push library: from the repository's node_modules, else WEB_PUSH_DIR.
async function loadWebPush() {
  try { return (await import('web-push')).default; } catch { /* not installed there */ }
  const dir = process.env.WEB_PUSH_DIR;
  if (!dir) throw new Error('web-push is not installed: npm install (package.json pins it), or set WEB_PUSH_DIR');
  return createRequire(path.join(path.resolve(dir), 'x.js'))('web-push');
}

const pct = (xs, p) => {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'chat-push-bench-'));
execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
  '-keyout', path.join(tmp, 'key.pem'), '-out', path.join(tmp, 'cert.pem'), '-days', '1',
  '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
const cert = fs.readFileSync(path.join(tmp, 'cert.pem'));
const vapid = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
fs.writeFileSync(path.join(tmp, 'vapid.pem'), vapid.privateKey.export({ type: 'pkcs8', format: 'pem' }));
const vjwk = vapid.privateKey.export({ format: 'jwk' });
const vapidPublic = Buffer.concat([Buffer.from([4]), Buffer.from(vjwk.x, 'base64url'), Buffer.from(vjwk.y, 'base64url')]).toString('base64url');

// The endpoint: POST /sub/<i> -> 201; arrival times by i.
let arrivals = new Map();
const port = await freePort();
const origin = `https://127.0.0.1:${port}`;
const server = http2.createSecureServer({ key: fs.readFileSync(path.join(tmp, 'key.pem')), cert, allowHTTP1: true });
server.on('request', (req, res) => {
  req.on('data', () => {});
  req.on('end', () => {
    const i = Number(req.url.slice(5));
    if (!arrivals.has(i)) arrivals.set(i, performance.timeOrigin + performance.now());
    res.writeHead(201).end();
  });
});
await new Promise((r) => server.listen(port, '127.0.0.1', r));

// N + M recipients, each with one device, a subscription and a direct conversation with SENDER.
const total = N + M;
const subs = [];
for (let i = 0; i < total; i++) {
  const ecdh = crypto.createECDH('prime256v1');
  ecdh.generateKeys();
  subs.push({ endpoint: `${origin}/sub/${i}`, keys: { p256dh: ecdh.getPublicKey().toString('base64url'), auth: crypto.randomBytes(16).toString('base64url') } });
}
await newDb(DB);
await psql(DB, `SELECT chat.upsert_user(1, 'sender');
  SELECT chat.upsert_user(100 + i, 'r' || i), chat.register_device(100 + i) FROM generate_series(0, ${total - 1}) i;
  SELECT chat.register_device(1);
  CREATE TABLE bench_conv AS SELECT i, chat.direct_conversation(1, 100 + i) AS conv FROM generate_series(0, ${total - 1}) i;`);
// In chunks: one psql -c of every subscription would exceed the argument limit (E2BIG).
for (let at = 0; at < subs.length; at += 200) {
  const regs = subs.slice(at, at + 200).map((s, i) => `(${100 + at + i}, ${lit(JSON.stringify(s))})`);
  await psql(DB, `SELECT chat.register_push(u, 1, 'webpush', NULL, s::jsonb) FROM (VALUES ${regs.join(',')}) v(u, s)`);
}
const BODY = 'x'.repeat(60);                     // a short chat message
const payloadOf = (i) => JSON.stringify({ type: 'message', conversation: i, seq: 1, sender: SENDER, unread: 1, body: BODY });

// Starts chat-pusher at concurrency c; resolves when it has started.
function startPusher(c) {
  const log = path.join(tmp, `pusher-${c}.log`);
  const out = fs.openSync(log, 'w');
  const p = spawn(PUSHER_BIN, ['--dsn', dsn(DB), '--vapid-private-key', path.join(tmp, 'vapid.pem'),
    '--vapid-subject', SUBJECT, '--concurrency', String(c), '--ca-file', path.join(tmp, 'cert.pem')], { stdio: ['ignore', out, out] });
  fs.closeSync(out);
  return new Promise((resolve, reject) => {
    const until = Date.now() + 10000;
    const poll = setInterval(() => {
      if (fs.readFileSync(log, 'utf8').includes('chat-pusher started')) { clearInterval(poll); resolve(p); }
      else if (Date.now() > until) { clearInterval(poll); reject(new Error(`pusher did not start: ${fs.readFileSync(log, 'utf8')}`)); }
    }, 20);
  });
}

// Waits until the endpoint saw every i in ids (or 120 s); the latest arrival.
async function arrived(ids) {
  const until = Date.now() + 120000;
  while (ids.some((i) => !arrivals.has(i))) {
    if (Date.now() > until) throw new Error(`${ids.filter((i) => !arrivals.has(i)).length} of ${ids.length} pushes missing`);
    await sleep(5);
  }
  return Math.max(...ids.map((i) => arrivals.get(i)));
}

const results = [];

// chat-pusher at concurrency c.
async function benchPusher(c) {
  arrivals = new Map();
  const p = await startPusher(c);
  try {
    const ids = Array.from({ length: N }, (_, i) => i);
    const t0 = Number(await psql(DB, `SELECT count(*) FROM bench_conv b, LATERAL chat.send_message(1, b.conv, '${BODY}') s WHERE b.i < ${N};
      SELECT extract(epoch FROM clock_timestamp()) * 1000`).then((o) => o.split('\n').pop()));
    const last = await arrived(ids);
    const lat = [];
    for (let k = 0; k < M; k++) {
      const i = N + k;
      const ts = Number(await psql(DB, `SELECT count(*) FROM bench_conv b, LATERAL chat.send_message(1, b.conv, '${BODY}') s WHERE b.i = ${i};
        SELECT extract(epoch FROM clock_timestamp()) * 1000`).then((o) => o.split('\n').pop()));
      await arrived([i]);
      lat.push(arrivals.get(i) - ts);
      await sleep(50);
    }
    results.push({ sender: 'chat-pusher', concurrency: c, pushes_per_s: N / ((last - t0) / 1000), p50_ms: pct(lat, 50), p99_ms: pct(lat, 99) });
  } finally {
    p.kill('SIGTERM');
    await new Promise((r) => p.on('exit', r));
    await psql(DB, 'DELETE FROM chat.push_outbox; UPDATE chat.members SET read_seq = 0');
  }
}

// The web-push library at c requests in flight.
async function benchWebPush(webpush, c) {
  arrivals = new Map();
  const agent = new https.Agent({ ca: cert, keepAlive: true, maxSockets: c });
  const opts = { vapidDetails: { subject: SUBJECT, publicKey: vapidPublic, privateKey: Buffer.from(vjwk.d, 'base64url').toString('base64url') }, TTL: 86400, urgency: 'high', agent };
  const ids = Array.from({ length: N }, (_, i) => i);
  const t0 = performance.timeOrigin + performance.now();
  let next = 0;
  await Promise.all(Array.from({ length: c }, async () => {
    while (next < N) {
      const i = next++;
      await webpush.sendNotification(subs[i], payloadOf(i), { ...opts, topic: `c${i}` });
    }
  }));
  const last = await arrived(ids);
  const lat = [];
  for (let k = 0; k < M; k++) {
    const i = N + k;
    const ts = performance.timeOrigin + performance.now();
    await webpush.sendNotification(subs[i], payloadOf(i), { ...opts, topic: `c${i}` });
    await arrived([i]);
    lat.push(arrivals.get(i) - ts);
    await sleep(50);
  }
  agent.destroy();
  results.push({ sender: 'web-push', concurrency: c, pushes_per_s: N / ((last - t0) / 1000), p50_ms: pct(lat, 50), p99_ms: pct(lat, 99) });
}

try {
  const webpush = await loadWebPush();
  for (const c of LEVELS) {
    await benchPusher(c);
    await benchWebPush(webpush, c);
  }
  console.log(`push delivery: N=${N} throughput messages, M=${M} latency samples, ${os.cpus().length} CPUs`);
  console.log('sender        conc  pushes/s   p50 ms   p99 ms');
  for (const r of results) {
    console.log(`${r.sender.padEnd(12)} ${String(r.concurrency).padStart(5)} ${r.pushes_per_s.toFixed(0).padStart(9)} ${r.p50_ms.toFixed(1).padStart(8)} ${r.p99_ms.toFixed(1).padStart(8)}`);
  }
  console.log('chat-pusher latency: send_message -> endpoint (NOTIFY, claim, encryption, HTTP/2);');
  console.log('web-push latency: sendNotification call -> endpoint (encryption, HTTPS; no database).');
  if (process.env.OUT) fs.writeFileSync(process.env.OUT, JSON.stringify({ n: N, m: M, results }, null, 2));
} finally {
  server.close();
  fs.rmSync(tmp, { recursive: true, force: true });
}
process.exit(0);
