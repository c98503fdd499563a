// The driver of bench/media.sh: alice uploads a SIZE_MB file through the
// gateway's upload request and chat-media's PUT, sends it, then it is
// downloaded ROUNDS times from chat-media and from nginx (the same file on
// disk); bob pings the gateway every 10 ms from a process of his own.
// Prints one row per phase: MiB/s and bob's ping p50/p99 during it.
import { spawn, execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import path from 'node:path';
import fs from 'node:fs';
import WebSocket from 'ws';
import { fileURLToPath } from 'node:url';

const top = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { GW_URL, MEDIA_ORIGIN, NGINX_ORIGIN, MEDIA_DIR } = process.env;
const SIZE = Number(process.env.SIZE_MB || 100) * 1048576;
const ROUNDS = Number(process.env.ROUNDS || 3);
const sql = (q) => execFileSync('psql', ['-qAtX', '-v', 'ON_ERROR_STOP=1', '-c', q], { encoding: 'utf8' }).trim();

sql("SELECT chat.upsert_user(1, 'alice'), chat.upsert_user(2, 'bob')");
sql('SELECT chat.register_device(1), chat.register_device(2)');
const conv = Number(sql("SELECT chat.create_group(1, 'bench', ARRAY[2]::bigint[])"));
const tok = (u) => sql(`SELECT chat.issue_token(${u}, 1, '1 hour')`);

// A chat.v1 client that answers request() by id.
async function client(user) {
  const ws = new WebSocket(`${GW_URL}?token=${tok(user)}`, ['chat.v1'], { perMessageDeflate: false });
  const waiting = new Map();
  let next = 1, hello;
  const ready = new Promise((r) => { hello = r; });
  ws.on('message', (d) => {
    const f = JSON.parse(d);
    if (f.type === 'hello') hello(f);
    else if (waiting.has(f.id)) { waiting.get(f.id)(f); waiting.delete(f.id); }
  });
  await ready;
  return {
    ws,
    async call(req) {
      const id = next++;
      const f = await new Promise((r) => { waiting.set(id, r); ws.send(JSON.stringify({ id, ...req })); });
      if (f.type !== 'ok') throw new Error(JSON.stringify(f));
      return f.result;
    },
  };
}

// Runs fn while bob pings; returns {secs, p50, p99, pings}.
async function phase(fn) {
  const pinger = spawn(process.execPath, [path.join(top, 'tests/gateway/media-pinger.mjs'), tok(2), GW_URL], { stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  pinger.stdout.on('data', (d) => { out += d; });
  while (!out.includes('ready')) await new Promise((r) => setTimeout(r, 20));
  const t0 = process.hrtime.bigint();
  await fn();
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const exited = new Promise((r) => pinger.on('exit', r));
  pinger.stdin.end();
  await exited;
  const rtts = JSON.parse(out.split('\n').filter(Boolean).at(-1)).sort((a, b) => a - b);
  const q = (p) => (rtts.length ? rtts[Math.min(rtts.length - 1, Math.floor(rtts.length * p))] : NaN);
  return { secs, p50: q(0.5), p99: q(0.99), pings: rtts.length };
}

// Streams a GET to nowhere; resolves the byte count.
const download = (url) => new Promise((resolve, reject) => {
  http.get(url, { agent: false }, (res) => {
    let n = 0;
    res.on('data', (d) => { n += d.length; });
    res.on('end', () => (res.statusCode === 200 ? resolve(n) : reject(new Error(`GET ${res.statusCode}`))));
  }).on('error', reject);
});

const alice = await client(1), bob = await client(2);
const block = randomBytes(Math.min(SIZE, 1048576));
const blocks = Math.ceil(SIZE / block.length);
const h = createHash('sha256');
for (let i = 0; i < blocks; i++) h.update(block);
const up = await alice.call({ type: 'upload', conversation: conv, mime: 'application/octet-stream', size: blocks * block.length, sha256: h.digest('hex'), name: 'bench.bin' });

const rows = [];
rows.push(['upload chat-media', await phase(() => new Promise((resolve, reject) => {
  const req = http.request(MEDIA_ORIGIN + up.url, { method: 'PUT', agent: false, headers: { 'Content-Type': 'application/octet-stream', 'Content-Length': blocks * block.length } }, (res) => {
    res.resume();
    res.on('end', () => (res.statusCode === 201 ? resolve() : reject(new Error(`PUT ${res.statusCode}`))));
  });
  req.on('error', reject);
  (async () => { for (let i = 0; i < blocks; i++) if (!req.write(block)) await new Promise((r) => req.once('drain', r)); req.end(); })();
})), 1]);
await alice.call({ type: 'send', conversation: conv, body: 'bench', attachments: [up.upload] });
const url = (await bob.call({ type: 'media_url', attachment: up.upload })).url;
rows.push(['download chat-media', await phase(async () => { for (let i = 0; i < ROUNDS; i++) await download(MEDIA_ORIGIN + url); }), ROUNDS]);
if (NGINX_ORIGIN) {
  const key = fs.readdirSync(MEDIA_DIR).find((f) => /^[0-9a-f]{64}$/.test(f));
  rows.push(['download nginx', await phase(async () => { for (let i = 0; i < ROUNDS; i++) await download(`${NGINX_ORIGIN}/${key}`); }), ROUNDS]);
}
rows.push(['idle (no transfer)', await phase(() => new Promise((r) => setTimeout(r, 1000))), 0]);

const mib = (blocks * block.length) / 1048576;
console.log(`file ${mib} MiB, ${ROUNDS} download(s) per server`);
console.log('phase                 MiB/s    ping p50 ms  ping p99 ms  pings');
for (const [name, r, n] of rows) {
  const rate = n ? ((mib * n) / r.secs).toFixed(1) : '-';
  console.log(`${name.padEnd(20)} ${rate.padStart(7)}  ${r.p50.toFixed(2).padStart(11)}  ${r.p99.toFixed(2).padStart(11)}  ${String(r.pings).padStart(5)}`);
}
if (!NGINX_ORIGIN) console.log('(nginx not installed: no nginx row; apt-get install nginx-light)');
alice.ws.close();
bob.ws.close();
process.exit(0);
