// chat-pusher end to end: a fake Web Push endpoint written here verifies the
// VAPID JWT (ES256 over the key in k=, aud = the endpoint's origin, exp
// within 24 h, sub) and decrypts each body with the subscription's private
// key (RFC 8291), then answers as the test tells it (201, 410, 503 with
// Retry-After).  Messages are sent in SQL; the pusher is woken by NOTIFY.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { psql, value, rows, newDb, makeUser, direct, freePort, dsn, lit, sleep, tail, TOP } from '../gateway/lib.mjs';

const DB = 'chat_pusher_test';
const SUBJECT = 'mailto:ops@example.com';
const PUSHER_BIN = path.resolve(TOP, process.env.PUSHER_BIN || 'pusher/chat-pusher');
const LOG_DIR = path.resolve(TOP, process.env.PUSHER_LOG_DIR || 'test-artifacts/pusher');

let port, origin, server, pusher, pusherLog, vapidPublic, tmp, metricsPort;
const received = new Map();     // subscription name -> [{at, payload, headers}]
const answers = new Map();      // subscription name -> [{status, headers}] answered in turn (then 201)
const problems = [];            // requests the fake endpoint found wrong
const subs = new Map();         // name -> {ecdh, auth}
const holding = new Map();      // name -> [res]: requests left unanswered (a hung service)

const b64u = (b) => Buffer.from(b).toString('base64url');

// HMAC-SHA-256.
const hmac = (key, data) => crypto.createHmac('sha256', key).update(data).digest();

// Decrypts an aes128gcm body (RFC 8291 / RFC 8188, one record) for subscription sub.
function decrypt(body, sub) {
  const salt = body.subarray(0, 16);
  const rs = body.readUInt32BE(16);
  const idlen = body[20];
  const asPublic = body.subarray(21, 21 + idlen);
  const record = body.subarray(21 + idlen);
  if (idlen !== 65 || rs < 18 || record.length > rs) throw new Error(`bad header idlen ${idlen} rs ${rs}`);
  const secret = sub.ecdh.computeSecret(asPublic);
  const prkKey = hmac(sub.auth, secret);
  const keyInfo = Buffer.concat([Buffer.from('WebPush: info\0'), sub.ecdh.getPublicKey(), asPublic, Buffer.from([1])]);
  const ikm = hmac(prkKey, keyInfo);
  const prk = hmac(salt, ikm);
  const cek = hmac(prk, Buffer.from('Content-Encoding: aes128gcm\0\x01')).subarray(0, 16);
  const nonce = hmac(prk, Buffer.from('Content-Encoding: nonce\0\x01')).subarray(0, 12);
  const d = crypto.createDecipheriv('aes-128-gcm', cek, nonce);
  d.setAuthTag(record.subarray(record.length - 16));
  let plain = Buffer.concat([d.update(record.subarray(0, record.length - 16)), d.final()]);
  let end = plain.length;
  while (end > 0 && plain[end - 1] === 0) end--;
  if (end === 0 || plain[end - 1] !== 2) throw new Error('no last-record delimiter');
  return JSON.parse(plain.subarray(0, end - 1).toString());
}

// Checks the Authorization header as a push service does; returns an error text or null.
function checkVapid(header) {
  const m = /^vapid t=([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+), k=([A-Za-z0-9_-]+)$/.exec(header || '');
  if (!m) return `bad Authorization ${header}`;
  if (m[4] !== vapidPublic) return 'k is not the VAPID public key';
  const jwtHeader = JSON.parse(Buffer.from(m[1], 'base64url'));
  if (jwtHeader.alg !== 'ES256' || jwtHeader.typ !== 'JWT') return `bad JWT header ${JSON.stringify(jwtHeader)}`;
  const raw = Buffer.from(m[4], 'base64url');
  const key = crypto.createPublicKey({ key: { kty: 'EC', crv: 'P-256', x: b64u(raw.subarray(1, 33)), y: b64u(raw.subarray(33, 65)) }, format: 'jwk' });
  const ok = crypto.verify('sha256', Buffer.from(`${m[1]}.${m[2]}`), { key, dsaEncoding: 'ieee-p1363' }, Buffer.from(m[3], 'base64url'));
  if (!ok) return 'JWT signature does not verify';
  const claims = JSON.parse(Buffer.from(m[2], 'base64url'));
  const now = Date.now() / 1000;
  if (claims.aud !== origin) return `aud ${claims.aud} is not ${origin}`;
  if (!(claims.exp > now && claims.exp <= now + 24 * 3600)) return `exp ${claims.exp} not within 24 h`;
  if (claims.sub !== SUBJECT) return `sub ${claims.sub}`;
  return null;
}

// The fake push service: POST /sub/<name>.
function handle(req, res) {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const name = req.url.replace(/^\/sub\//, '');
    const sub = subs.get(name);
    const at = Date.now();
    try {
      if (req.method !== 'POST' || !sub) throw new Error(`unexpected ${req.method} ${req.url}`);
      const vapid = checkVapid(req.headers.authorization);
      if (vapid) throw new Error(vapid);
      if (req.headers['content-encoding'] !== 'aes128gcm') throw new Error(`content-encoding ${req.headers['content-encoding']}`);
      if (!(Number(req.headers.ttl) > 0)) throw new Error(`TTL ${req.headers.ttl}`);
      if (!['very-low', 'low', 'normal', 'high'].includes(req.headers.urgency)) throw new Error(`urgency ${req.headers.urgency}`);
      if (!/^[A-Za-z0-9_-]{1,32}$/.test(req.headers.topic || '')) throw new Error(`topic ${req.headers.topic}`);
      const payload = decrypt(Buffer.concat(chunks), sub);
      if (holding.has(name)) {
        holding.get(name).push(res);
        return;
      }
      if (!received.has(name)) received.set(name, []);
      received.get(name).push({ at, payload, headers: req.headers });
    } catch (e) {
      problems.push(`${name}: ${e.message}`);
      res.writeHead(400).end();
      return;
    }
    const next = (answers.get(name) || []).shift();
    res.writeHead(next?.status ?? 201, next?.headers ?? {}).end();
  });
}

// A new Web Push subscription on the fake service for (user, device).
async function subscribe(user, device, name, db = DB) {
  const ecdh = crypto.createECDH('prime256v1');
  ecdh.generateKeys();
  const auth = crypto.randomBytes(16);
  subs.set(name, { ecdh, auth });
  const subscription = { endpoint: `${origin}/sub/${name}`, keys: { p256dh: b64u(ecdh.getPublicKey()), auth: b64u(auth) } };
  const reply = await value(db, `SELECT chat.client_request('t', ${user}, ${device},
      ${lit(JSON.stringify({ id: 1, type: 'register_push', platform: 'webpush', subscription }))}::jsonb)`);
  assert.equal(reply.type, 'ok', JSON.stringify(reply));
}

// Waits until name has n requests (or fails after ms).
async function waitFor(name, n, ms) {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if ((received.get(name) || []).length >= n) return received.get(name);
    await sleep(20);
  }
  assert.fail(`${name}: ${(received.get(name) || []).length} of ${n} pushes after ${ms} ms; problems: ${problems.join('; ')}\n${tail(pusherLog)}`);
}

// Sends body from sender in conv; returns {seq, at}.
async function send(sender, conv, body) {
  const seq = Number(await value(DB, `SELECT seq FROM chat.send_message(${sender}, ${conv}, ${lit(body)})`));
  return { seq, at: Date.now() };
}

// Starts chat-pusher; resolves once it logs that it started.
function startPusher(args = [], log = pusherLog) {
  const out = fs.openSync(log, 'a');
  const p = spawn(PUSHER_BIN, ['--dsn', dsn(DB), '--vapid-private-key', path.join(tmp, 'vapid.pem'),
    '--vapid-subject', SUBJECT, '--concurrency', '8', ...args], { stdio: ['ignore', out, out] });
  fs.closeSync(out);
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`pusher did not start\n${tail(pusherLog)}`)), 5000);
    const poll = setInterval(() => {
      if (fs.readFileSync(log, 'utf8').includes('chat-pusher started')) {
        clearTimeout(t); clearInterval(poll); resolve(p);
      }
    }, 20);
  });
}

let sender, conv1;

before(async () => {
  fs.mkdirSync(LOG_DIR, { recursive: true });
  pusherLog = path.join(LOG_DIR, 'pusher.log');
  fs.writeFileSync(pusherLog, '');
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'chat-pusher-test-'));
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  fs.writeFileSync(path.join(tmp, 'vapid.pem'), privateKey.export({ type: 'pkcs8', format: 'pem' }));
  const jwk = publicKey.export({ format: 'jwk' });
  vapidPublic = b64u(Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x, 'base64url'), Buffer.from(jwk.y, 'base64url')]));
  port = await freePort();
  origin = `http://127.0.0.1:${port}`;
  server = http.createServer(handle);
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  await newDb(DB);
  sender = await makeUser(DB);
  metricsPort = await freePort();
  pusher = await startPusher(['--metrics-listen', `127.0.0.1:${metricsPort}`]);
});

after(async () => {
  if (pusher && pusher.exitCode === null) pusher.kill('SIGKILL');
  server?.close();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

test('an offline device with a registration gets the push within 2 s, decrypted and signed', async () => {
  const bob = await makeUser(DB);
  conv1 = await direct(DB, sender.id, bob.id);
  await subscribe(bob.id, 1, 'bob');
  await sleep(300);               // the pusher is idle, asleep until a NOTIFY
  const { seq, at } = await send(sender.id, conv1, 'hello push');
  const [got] = await waitFor('bob', 1, 2000);
  assert.ok(got.at - at < 2000, `delivered after ${got.at - at} ms`);
  assert.deepEqual(got.payload, { type: 'message', conversation: conv1, seq, sender: sender.id, unread: 1, body: 'hello push' });
  assert.equal(got.headers.topic, `c${conv1}`);
  assert.equal(got.headers.urgency, 'high');
  await sleep(200);
  assert.equal(Number(await value(DB, 'SELECT count(*) FROM chat.push_outbox')), 0, 'delivered rows are completed');
  assert.deepEqual(problems, []);
});

test('a long body is truncated to 200 characters; unread counts every unread message', async () => {
  const { seq } = await send(sender.id, conv1, 'x'.repeat(1000));
  const list = await waitFor('bob', 2, 2000);
  const got = list[1].payload;
  assert.equal(got.seq, seq);
  assert.equal(got.body, 'x'.repeat(200));
  assert.equal(got.unread, 2);
});

test('an online device gets no push', async () => {
  const carol = await makeUser(DB);
  const conv = await direct(DB, sender.id, carol.id);
  await subscribe(carol.id, 1, 'carol');
  await psql(DB, `SELECT chat.node_reset('gwtest'); SELECT chat.connect('gwtest', ${carol.id}, 1)`);
  await send(sender.id, conv, 'you are online');
  await sleep(1500);
  assert.equal((received.get('carol') || []).length, 0, 'no push for an online device');
  assert.equal(Number(await value(DB, `SELECT count(*) FROM chat.push_outbox WHERE user_id = ${carol.id}`)), 0);
});

test('410 Gone forgets the registration', async () => {
  const dave = await makeUser(DB);
  const conv = await direct(DB, sender.id, dave.id);
  await subscribe(dave.id, 1, 'dave');
  answers.set('dave', [{ status: 410 }]);
  await send(sender.id, conv, 'are you there');
  await waitFor('dave', 1, 2000);
  let reg;
  for (let i = 0; i < 50; i++) {
    reg = (await rows(DB, `SELECT push_token, push_platform, push_subscription FROM chat.devices WHERE user_id = ${dave.id}`))[0];
    if (reg.push_token === null) break;
    await sleep(20);
  }
  assert.deepEqual(reg, { push_token: null, push_platform: null, push_subscription: null });
  assert.equal(Number(await value(DB, `SELECT count(*) FROM chat.push_outbox WHERE user_id = ${dave.id}`)), 0);
  // Later messages queue nothing for the forgotten registration.
  await send(sender.id, conv, 'still there?');
  await sleep(500);
  assert.equal(received.get('dave').length, 1);
});

test('503 with Retry-After is retried exactly once more, after Retry-After, then delivered', async () => {
  const erin = await makeUser(DB);
  const conv = await direct(DB, sender.id, erin.id);
  await subscribe(erin.id, 1, 'erin');
  answers.set('erin', [{ status: 503, headers: { 'Retry-After': '1' } }]);
  const { seq } = await send(sender.id, conv, 'busy service');
  const list = await waitFor('erin', 2, 4000);
  assert.ok(list[1].at - list[0].at >= 900, `retried after ${list[1].at - list[0].at} ms, before Retry-After`);
  assert.equal(list[1].payload.seq, seq);
  await sleep(1500);
  assert.equal(received.get('erin').length, 2, 'no third attempt');
  assert.equal(Number(await value(DB, `SELECT count(*) FROM chat.push_outbox WHERE user_id = ${erin.id}`)), 0);
});

// GET path on the pusher's --metrics-listen: {status, text}.
async function scrape(pathname) {
  const r = await fetch(`http://127.0.0.1:${metricsPort}${pathname}`);
  return { status: r.status, text: await r.text() };
}

test('/metrics counts sent, gone, retries and failures by reason, and shows the queue', async () => {
  await psql(DB, `INSERT INTO chat.push_outbox (user_id, device_id, push_token, conversation_id, seq, payload, next_attempt_at, created_at)
                  VALUES (${sender.id}, 1, 'x', ${conv1}, 1, '{}', 'infinity', now())`);
  const { status, text } = await scrape('/metrics');
  assert.equal(status, 200);
  const metric = (name) => Number(new RegExp(`^${name.replace(/[{}"]/g, '\\$&')} (\\S+)$`, 'm').exec(text)?.[1]);
  assert.equal(metric('chat_pusher_sent_total'), 3, text);      // bob twice, erin after the retry
  assert.equal(metric('chat_pusher_gone_total'), 1, text);
  assert.equal(metric('chat_pusher_retries_total'), 1, text);
  assert.equal(metric('chat_pusher_failed_total{reason="http_5xx"}'), 1, text);
  assert.equal(metric('chat_pusher_failed_total{reason="transport"}'), 0, text);
  assert.equal(metric('chat_pusher_inflight'), 0, text);
  assert.equal(metric('chat_push_queue_due'), 0, text);
  assert.equal(metric('chat_push_queue_given_up'), 1, text);
  await psql(DB, `DELETE FROM chat.push_outbox WHERE push_token = 'x'`);
  assert.deepEqual(await scrape('/healthz'), { status: 200, text: 'ok\n' });
  assert.equal((await scrape('/nothing')).status, 404);
});

const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

// Registers a fake subscription for each of devices of user, named `${prefix}-${device}`, in one call.
async function subscribeAll(user, devices, prefix) {
  const calls = devices.map((device) => {
    const ecdh = crypto.createECDH('prime256v1');
    ecdh.generateKeys();
    const auth = crypto.randomBytes(16);
    subs.set(`${prefix}-${device}`, { ecdh, auth });
    const sub = { endpoint: `${origin}/sub/${prefix}-${device}`, keys: { p256dh: b64u(ecdh.getPublicKey()), auth: b64u(auth) } };
    return `SELECT chat.register_push(${user}, ${device}, 'webpush', NULL, ${lit(JSON.stringify(sub))}::jsonb);`;
  });
  await psql(DB, calls.join('\n'));
}

// The seqs the notifications to name stand for ([first_seq or seq, seq] each), sorted, with repeats.
const coveredBy = (name) => (received.get(name) || [])
  .flatMap((r) => range(r.payload.first_seq ?? r.payload.seq, r.payload.seq)).sort((a, b) => a - b);

test('several messages queued together coalesce into one notification with first_seq; all rows completed', async () => {
  const hank = await makeUser(DB);
  const conv = await direct(DB, sender.id, hank.id);
  await subscribe(hank.id, 1, 'hank');
  await psql(DB, `SELECT chat.send_message(${sender.id}, ${conv}, 'c' || i) FROM generate_series(1, 5) i`);
  const [got] = await waitFor('hank', 1, 2000);
  await sleep(300);
  assert.equal(received.get('hank').length, 1, 'one notification');
  assert.deepEqual(got.payload, { type: 'message', conversation: conv, seq: 5, first_seq: 1, sender: sender.id, unread: 5, body: 'c5' });
  assert.equal(Number(await value(DB, `SELECT count(*) FROM chat.push_outbox WHERE user_id = ${hank.id}`)), 0);
  // Previews off: the same without body.
  await psql(DB, `SELECT chat.set_push_previews(${hank.id}, false)`);
  await send(sender.id, conv, 'hidden');
  const list = await waitFor('hank', 2, 2000);
  assert.deepEqual(list[1].payload, { type: 'message', conversation: conv, seq: 6, sender: sender.id, unread: 6 });
});

test('two pushers in parallel deliver each row once', async () => {
  const frank = await makeUser(DB);
  await psql(DB, `SELECT chat.register_device(${frank.id}) FROM generate_series(2, 100)`);
  const conv = await direct(DB, sender.id, frank.id);
  const devices = range(1, 100);
  await subscribeAll(frank.id, devices, 'frank');
  const log2 = path.join(LOG_DIR, 'pusher-2.log');
  fs.writeFileSync(log2, '');
  const second = await startPusher([], log2);
  try {
    // One message to 100 devices: 100 rows, none coalescible, raced for by two pushers.
    const { seq } = await send(sender.id, conv, 'to every device');
    const until = Date.now() + 10000;
    while (devices.some((d) => !received.has(`frank-${d}`)) && Date.now() < until) await sleep(50);
    await sleep(500);
    for (const d of devices) {
      assert.deepEqual((received.get(`frank-${d}`) || []).map((r) => r.payload.seq), [seq], `device ${d}: delivered exactly once`);
    }
    assert.equal(Number(await value(DB, `SELECT count(*) FROM chat.push_outbox WHERE user_id = ${frank.id}`)), 0);
    const logs = fs.readFileSync(pusherLog, 'utf8') + fs.readFileSync(log2, 'utf8');
    assert.equal(problems.length, 0, problems.join('; '));
    assert.ok(logs.length > 0);
  } finally {
    second.kill('SIGTERM');
  }
});

test('kill -9 of the pusher with 200 rows pending loses none: a new pusher delivers all within 60 s', async () => {
  // 200 messages to each of 8 devices: 1600 rows, coalesced into one notification per device.
  const gina = await makeUser(DB);
  await psql(DB, `SELECT chat.register_device(${gina.id}) FROM generate_series(2, 8)`);
  const conv = await direct(DB, sender.id, gina.id);
  const devices = range(1, 8);
  await subscribeAll(gina.id, devices, 'gina');
  const names = devices.map((d) => `gina-${d}`);
  for (const n of names) holding.set(n, []);
  const held = () => names.reduce((k, n) => k + holding.get(n).length, 0);
  await psql(DB, `SELECT chat.send_message(${sender.id}, ${conv}, 'm' || i) FROM generate_series(1, 200) i`);
  const until = Date.now() + 5000;
  while (held() < 8 && Date.now() < until) await sleep(20);
  assert.equal(held(), 8, 'the pusher has --concurrency 8 requests in flight');
  const killedAt = Date.now();
  pusher.kill('SIGKILL');
  await new Promise((r) => (pusher.exitCode !== null || pusher.signalCode !== null ? r() : pusher.on('exit', r)));
  for (const n of names) {
    for (const res of holding.get(n)) res.destroy();
    holding.delete(n);
  }
  pusher = await startPusher();
  const all = range(1, 200);
  const covered = (n) => all.every((s) => coveredBy(n).includes(s));
  while (!names.every(covered) && Date.now() < killedAt + 60000) await sleep(100);
  for (const n of names) assert.ok(covered(n), `${n}: seqs ${JSON.stringify(received.get(n)?.map((r) => [r.payload.first_seq, r.payload.seq]))} within 60 s`);
  for (let i = 0; i < 50 && Number(await value(DB, `SELECT count(*) FROM chat.push_outbox WHERE user_id = ${gina.id}`)) > 0; i++) await sleep(50);
  assert.equal(Number(await value(DB, `SELECT count(*) FROM chat.push_outbox WHERE user_id = ${gina.id}`)), 0);
});

test('SIGTERM stops the pusher cleanly', async () => {
  assert.deepEqual(problems, []);
  const exited = new Promise((r) => pusher.on('exit', (code, sig) => r({ code, sig })));
  pusher.kill('SIGTERM');
  const { code } = await exited;
  assert.equal(code, 0, tail(pusherLog));
  assert.match(fs.readFileSync(pusherLog, 'utf8'), /"stopped: sent \d+/);
});

// Sharded deployments (docs/scaling.md): --dsn once per partition runs one
// claiming process per partition; each partition's outbox is delivered and
// SIGTERM stops them all.
test('--dsn per partition: every partition\'s outbox is delivered, SIGTERM stops every process', async () => {
  const DB2 = 'chat_pusher_test_p1';
  await newDb(DB2);
  const users = [];
  for (const db of [DB, DB2]) {
    const a = await makeUser(db), b = await makeUser(db);
    const conv = await direct(db, a.id, b.id);
    users.push({ db, a, b, conv });
  }
  await subscribe(users[0].b.id, 1, 'part-a', DB);
  await subscribe(users[1].b.id, 1, 'part-b', DB2);
  const log = path.join(LOG_DIR, 'pusher-partitions.log');
  fs.writeFileSync(log, '');
  const p = await startPusher(['--dsn', dsn(DB2)], log);
  const exited = new Promise((r) => p.on('exit', (code, sig) => r({ code, sig })));
  for (const u of users) await psql(u.db, `SELECT chat.send_message(${u.a.id}, ${u.conv}, 'n' || i) FROM generate_series(1, 5) i`);
  // Notifications may coalesce: every seq 1..5 must be covered on each partition.
  const all = range(1, 5);
  const covered = (n) => all.every((q) => coveredBy(n).includes(q));
  for (const until = Date.now() + 10000; !(covered('part-a') && covered('part-b')) && Date.now() < until;) await sleep(20);
  for (const n of ['part-a', 'part-b']) assert.ok(covered(n), `${n}: seqs ${JSON.stringify(received.get(n)?.map((r) => [r.payload.first_seq, r.payload.seq]))} within 10 s; problems: ${problems.join('; ')}`);
  assert.match(fs.readFileSync(log, 'utf8'), /2 partitions, one process each/);
  const listeners = async (db) => Number(await value(db, `SELECT count(*) FROM pg_stat_activity
      WHERE datname = current_database() AND query ILIKE '%push%' AND pid <> pg_backend_pid()`));
  assert.ok(await listeners(DB2) >= 1, 'a process on the second partition');
  p.kill('SIGTERM');
  const { code } = await exited;
  assert.equal(code, 0, tail(log));
  assert.equal((fs.readFileSync(log, 'utf8').match(/"stopped: sent \d+/g) || []).length, 2, 'both processes stopped cleanly');
  for (let i = 0; i < 50 && await listeners(DB2) > 0; i++) await sleep(50);
  assert.equal(await listeners(DB2), 0, 'no process left on the second partition');
});
