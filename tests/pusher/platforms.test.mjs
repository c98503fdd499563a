// chat-pusher to FCM HTTP v1 and APNs, against fake services written here.
// Fake FCM (HTTP/1.1 on loopback): POST /token checks the OAuth2 jwt-bearer
// grant (RS256 over the service account's key, iss, scope, aud = the token
// URL, iat/exp) and hands out access tokens; POST /v1/projects/<id>/
// messages:send checks the bearer token and the message JSON.  Fake APNs
// (HTTP/2 over TLS, a self-signed certificate given to the pusher with
// --ca-file): checks the ES256 provider token (kid, iss, iat), apns-topic,
// apns-push-type, apns-collapse-id and the aps JSON.  Both answer as a test
// tells them (410, 404 UNREGISTERED, 400 BadDeviceToken, 503 + Retry-After).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import http2 from 'node:http2';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn, execFileSync } from 'node:child_process';
import { psql, value, rows, newDb, makeUser, direct, freePort, dsn, lit, sleep, tail, TOP } from '../gateway/lib.mjs';

const DB = 'chat_pusher_platforms';
const PUSHER_BIN = path.resolve(TOP, process.env.PUSHER_BIN || 'pusher/chat-pusher');
const LOG_DIR = path.resolve(TOP, process.env.PUSHER_LOG_DIR || 'test-artifacts/pusher');
const PROJECT = 'proj-test-1';
const CLIENT_EMAIL = `pusher@${PROJECT}.iam.gserviceaccount.com`;
const KEY_ID = 'KEYID12345';
const TEAM_ID = 'TEAM123456';
const BUNDLE = 'com.example.chat';

let tmp, pusher, pusherLog, fcmServer, apnsServer, fcmOrigin, apnsOrigin;
let saPublic, apnsPublic;
const received = new Map();     // device token -> [{at, platform, body, headers}]
const answers = new Map();      // device token -> [{status, headers, body}] answered in turn (then 200)
const problems = [];            // requests the fakes found wrong
const grants = [];              // {at, claims} of every token grant
const issued = new Map();       // access token -> expiry (ms); revoked ones are deleted
const everIssued = new Set();
let tokenTtl = 3600;            // expires_in of the next grants
const apnsTokens = [];          // provider tokens seen, in order

const b64json = (s) => JSON.parse(Buffer.from(s, 'base64url').toString());

// Verifies a compact JWS with key (RS256 or ES256); returns {header, claims} or throws.
function verifyJwt(jwt, key, alg) {
  const parts = (jwt || '').split('.');
  if (parts.length !== 3) throw new Error(`not a JWT: ${jwt}`);
  const header = b64json(parts[0]);
  if (header.alg !== alg) throw new Error(`alg ${header.alg}, not ${alg}`);
  const ok = crypto.verify('sha256', Buffer.from(`${parts[0]}.${parts[1]}`),
    alg === 'ES256' ? { key, dsaEncoding: 'ieee-p1363' } : key, Buffer.from(parts[2], 'base64url'));
  if (!ok) throw new Error('JWT signature does not verify');
  return { header, claims: b64json(parts[1]) };
}

// Records a delivery for token and answers it (the queued answer, else ok).
function record(token, platform, body, headers) {
  if (!received.has(token)) received.set(token, []);
  received.get(token).push({ at: Date.now(), platform, body, headers });
  return (answers.get(token) || []).shift();
}

// The fake FCM: the token endpoint and messages:send.
function fcmHandle(req, res) {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const text = Buffer.concat(chunks).toString();
    try {
      if (req.method === 'POST' && req.url === '/token') {
        if (req.headers['content-type'] !== 'application/x-www-form-urlencoded') throw new Error(`token content-type ${req.headers['content-type']}`);
        const form = new URLSearchParams(text);
        if (form.get('grant_type') !== 'urn:ietf:params:oauth:grant-type:jwt-bearer') throw new Error(`grant_type ${form.get('grant_type')}`);
        const { header, claims } = verifyJwt(form.get('assertion'), saPublic, 'RS256');
        if (header.typ !== 'JWT') throw new Error(`typ ${header.typ}`);
        const now = Date.now() / 1000;
        if (claims.iss !== CLIENT_EMAIL) throw new Error(`iss ${claims.iss}`);
        if (claims.scope !== 'https://www.googleapis.com/auth/firebase.messaging') throw new Error(`scope ${claims.scope}`);
        if (claims.aud !== `${fcmOrigin}/token`) throw new Error(`aud ${claims.aud}`);
        if (!(Math.abs(claims.iat - now) < 60 && claims.exp - claims.iat <= 3600 && claims.exp > now)) throw new Error(`iat/exp ${claims.iat}/${claims.exp}`);
        grants.push({ at: Date.now(), claims });
        const access = `ya29.test-${grants.length}-${crypto.randomBytes(6).toString('hex')}`;
        issued.set(access, Date.now() + tokenTtl * 1000);
        everIssued.add(access);
        res.writeHead(200, { 'content-type': 'application/json' })
          .end(JSON.stringify({ access_token: access, expires_in: tokenTtl, token_type: 'Bearer' }));
        return;
      }
      if (req.method !== 'POST' || req.url !== `/v1/projects/${PROJECT}/messages:send`) throw new Error(`unexpected ${req.method} ${req.url}`);
      const bearer = /^Bearer (\S+)$/.exec(req.headers.authorization || '')?.[1];
      if (!everIssued.has(bearer)) throw new Error(`unknown access token ${req.headers.authorization}`);
      if (!issued.has(bearer) || issued.get(bearer) < Date.now()) {   // revoked or expired
        res.writeHead(401, { 'content-type': 'application/json' }).end('{"error":{"code":401,"status":"UNAUTHENTICATED"}}');
        return;
      }
      const body = JSON.parse(text);
      const m = body.message;
      if (!m || typeof m.token !== 'string') throw new Error(`no message.token in ${text}`);
      for (const [k, v] of Object.entries(m.data || {})) if (typeof v !== 'string') throw new Error(`data.${k} is not a string`);
      const next = record(m.token, 'fcm', body, req.headers);
      res.writeHead(next?.status ?? 200, { 'content-type': 'application/json', ...(next?.headers ?? {}) })
        .end(next?.body ?? JSON.stringify({ name: `projects/${PROJECT}/messages/${Date.now()}` }));
    } catch (e) {
      problems.push(`fcm: ${e.message}`);
      res.writeHead(400).end();
    }
  });
}

// The fake APNs: one HTTP/2 stream per notification.
function apnsStream(stream, headers) {
  const chunks = [];
  stream.on('data', (c) => chunks.push(c));
  stream.on('end', () => {
    try {
      const m = /^\/3\/device\/([0-9a-f]+)$/.exec(headers[':path']);
      if (headers[':method'] !== 'POST' || !m) throw new Error(`unexpected ${headers[':method']} ${headers[':path']}`);
      const jwt = /^bearer (\S+)$/.exec(headers.authorization || '')?.[1];
      const { header, claims } = verifyJwt(jwt, apnsPublic, 'ES256');
      if (header.kid !== KEY_ID) throw new Error(`kid ${header.kid}`);
      if (claims.iss !== TEAM_ID) throw new Error(`iss ${claims.iss}`);
      if (!(Math.abs(claims.iat - Date.now() / 1000) < 3600)) throw new Error(`iat ${claims.iat} is over an hour old`);
      if (!apnsTokens.includes(jwt)) apnsTokens.push(jwt);
      if (headers['apns-topic'] !== BUNDLE) throw new Error(`apns-topic ${headers['apns-topic']}`);
      if (headers['apns-push-type'] !== 'alert') throw new Error(`apns-push-type ${headers['apns-push-type']}`);
      if (!/^c\d+$/.test(headers['apns-collapse-id'] || '')) throw new Error(`apns-collapse-id ${headers['apns-collapse-id']}`);
      if (!(Number(headers['apns-expiration']) > Date.now() / 1000)) throw new Error(`apns-expiration ${headers['apns-expiration']}`);
      const body = JSON.parse(Buffer.concat(chunks).toString());
      if (Buffer.concat(chunks).length > 4096) throw new Error('payload over 4 KB');
      const next = record(m[1], 'apns', body, headers);
      stream.respond({ ':status': next?.status ?? 200, ...(next?.headers ?? {}) });
      stream.end(next?.body ?? '');
    } catch (e) {
      problems.push(`apns: ${e.message}`);
      stream.respond({ ':status': 400 });
      stream.end(JSON.stringify({ reason: 'BadRequest' }));
    }
  });
}

// Waits until token has n deliveries (or fails after ms).
async function waitFor(token, n, ms) {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if ((received.get(token) || []).length >= n) return received.get(token);
    await sleep(20);
  }
  assert.fail(`${token}: ${(received.get(token) || []).length} of ${n} pushes after ${ms} ms; problems: ${problems.join('; ')}\n${tail(pusherLog)}`);
}

// Waits until the outbox of user is empty.
async function drained(user) {
  for (let i = 0; i < 100; i++) {
    if (Number(await value(DB, `SELECT count(*) FROM chat.push_outbox WHERE user_id = ${user}`)) === 0) return;
    await sleep(30);
  }
  assert.fail(`outbox of ${user} not empty: ${JSON.stringify(await rows(DB, `SELECT seq, attempts, last_error FROM chat.push_outbox WHERE user_id = ${user}`))}`);
}

// Registers device of user with platform and a new token; returns the token.
async function register(user, platform, device = 1) {
  const token = crypto.randomBytes(32).toString('hex');
  const reply = await value(DB, `SELECT chat.client_request('t', ${user}, ${device},
      ${lit(JSON.stringify({ id: 1, type: 'register_push', platform, token }))}::jsonb)`);
  assert.equal(reply.type, 'ok', JSON.stringify(reply));
  return token;
}

// Sends body from sender in conv; returns {seq, at}.
async function send(sender, conv, body) {
  const seq = Number(await value(DB, `SELECT seq FROM chat.send_message(${sender}, ${conv}, ${lit(body)})`));
  return { seq, at: Date.now() };
}

// Starts chat-pusher with FCM and APNs; resolves once it logs that it started.
function startPusher(args = []) {
  const out = fs.openSync(pusherLog, 'a');
  const p = spawn(PUSHER_BIN, ['--dsn', dsn(DB), '--concurrency', '8',
    '--fcm-credentials', path.join(tmp, 'service-account.json'), '--fcm-endpoint', fcmOrigin,
    '--apns-key', path.join(tmp, 'AuthKey.p8'), '--apns-key-id', KEY_ID, '--apns-team-id', TEAM_ID,
    '--apns-topic', BUNDLE, '--apns-endpoint', apnsOrigin, '--ca-file', path.join(tmp, 'cert.pem'), ...args],
  { stdio: ['ignore', out, out] });
  fs.closeSync(out);
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`pusher did not start\n${tail(pusherLog)}`)), 5000);
    const poll = setInterval(() => {
      if (fs.readFileSync(pusherLog, 'utf8').includes('chat-pusher started')) {
        clearTimeout(t); clearInterval(poll); resolve(p);
      }
    }, 20);
  });
}

let sender;

before(async () => {
  fs.mkdirSync(LOG_DIR, { recursive: true });
  pusherLog = path.join(LOG_DIR, 'pusher-platforms.log');
  fs.writeFileSync(pusherLog, '');
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'chat-pusher-platforms-'));
  // The service account, as the Firebase console hands it out.
  const sa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  saPublic = sa.publicKey;
  const fcmPort = await freePort();
  fcmOrigin = `http://127.0.0.1:${fcmPort}`;
  fs.writeFileSync(path.join(tmp, 'service-account.json'), JSON.stringify({
    type: 'service_account', project_id: PROJECT, private_key_id: 'abc',
    private_key: sa.privateKey.export({ type: 'pkcs8', format: 'pem' }), client_email: CLIENT_EMAIL,
    client_id: '1', token_uri: `${fcmOrigin}/token`,
  }));
  // The APNs auth key (.p8: a PKCS #8 P-256 key).
  const ak = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  apnsPublic = ak.publicKey;
  fs.writeFileSync(path.join(tmp, 'AuthKey.p8'), ak.privateKey.export({ type: 'pkcs8', format: 'pem' }));
  // A self-signed certificate for the fake APNs, trusted by the pusher through --ca-file.
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', path.join(tmp, 'key.pem'), '-out', path.join(tmp, 'cert.pem'), '-days', '1',
    '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
  fcmServer = http.createServer(fcmHandle);
  await new Promise((r) => fcmServer.listen(fcmPort, '127.0.0.1', r));
  const apnsPort = await freePort();
  apnsOrigin = `https://127.0.0.1:${apnsPort}`;
  apnsServer = http2.createSecureServer({ key: fs.readFileSync(path.join(tmp, 'key.pem')), cert: fs.readFileSync(path.join(tmp, 'cert.pem')) });
  apnsServer.on('stream', apnsStream);
  await new Promise((r) => apnsServer.listen(apnsPort, '127.0.0.1', r));
  await newDb(DB);
  sender = await makeUser(DB);
  pusher = await startPusher();
});

after(async () => {
  if (pusher && pusher.exitCode === null) pusher.kill('SIGKILL');
  fcmServer?.close();
  apnsServer?.close();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

test('FCM: delivered within 2 s after an RS256 grant; message with collapse_key, badge and string data', async () => {
  const bob = await makeUser(DB);
  const conv = await direct(DB, sender.id, bob.id);
  const token = await register(bob.id, 'fcm');
  await sleep(300);
  const { seq, at } = await send(sender.id, conv, 'hello fcm');
  const [got] = await waitFor(token, 1, 2000);
  assert.ok(got.at - at < 2000, `delivered after ${got.at - at} ms`);
  assert.deepEqual(got.body, { message: {
    token,
    data: { type: 'message', conversation: String(conv), seq: String(seq), sender: String(sender.id), unread: '1', body: 'hello fcm' },
    android: { collapse_key: `c${conv}`, priority: 'high', ttl: '86400s',
      notification: { title: 'New message', body: 'hello fcm', tag: `c${conv}`, notification_count: 1 } },
    apns: { headers: { 'apns-collapse-id': `c${conv}` }, payload: { aps: { badge: 1 } } },
  } });
  assert.equal(grants.length, 1, 'one access token grant');
  await drained(bob.id);
  // The cached token serves the next message: no second grant.
  await send(sender.id, conv, 'again');
  const list = await waitFor(token, 2, 2000);
  assert.equal(list[1].body.message.android.notification.notification_count, 2);
  assert.equal(grants.length, 1, 'the access token is cached');
  assert.deepEqual(problems, []);
});

test('FCM: an access token is fetched again when it is about to expire', async () => {
  const carol = await makeUser(DB);
  const conv = await direct(DB, sender.id, carol.id);
  const token = await register(carol.id, 'fcm');
  const before = grants.length;
  tokenTtl = 62;                  // used for 1 s (renewed 60 s early)
  issued.clear();                 // the old token is revoked: only a new grant works
  await send(sender.id, conv, 'one');
  await waitFor(token, 1, 3000);
  assert.equal(grants.length, before + 1, 'a revoked token (401) is replaced by a new grant');
  await sleep(2500);
  tokenTtl = 3600;
  await send(sender.id, conv, 'two');
  await waitFor(token, 2, 3000);
  assert.equal(grants.length, before + 2, 'an expired token is not used');
  await drained(carol.id);
  assert.deepEqual(problems, []);
});

test('APNs: delivered within 2 s over HTTP/2 with an ES256 provider token, collapse id, push type and badge', async () => {
  const dave = await makeUser(DB);
  const conv = await direct(DB, sender.id, dave.id);
  const token = await register(dave.id, 'apns');
  await sleep(300);
  const { seq, at } = await send(sender.id, conv, 'hello apns');
  const [got] = await waitFor(token, 1, 2000);
  assert.ok(got.at - at < 2000, `delivered after ${got.at - at} ms`);
  assert.equal(got.headers['apns-collapse-id'], `c${conv}`);
  assert.equal(got.headers['apns-priority'], '10');
  assert.deepEqual(got.body, {
    aps: { alert: { title: 'New message', body: 'hello apns' }, badge: 1, 'thread-id': `c${conv}`, 'mutable-content': 1, sound: 'default' },
    type: 'message', conversation: conv, seq, sender: sender.id, unread: 1, body: 'hello apns',
  });
  await drained(dave.id);
  await send(sender.id, conv, 'again');
  await waitFor(token, 2, 2000);
  assert.equal(apnsTokens.length, 1, 'the provider token is reused within its hour');
  assert.deepEqual(problems, []);
});

test('APNs 403 ExpiredProviderToken: a new provider token, the notification sent again at once', async () => {
  const u = await makeUser(DB);
  const conv = await direct(DB, sender.id, u.id);
  const token = await register(u.id, 'apns');
  answers.set(token, [{ status: 403, body: JSON.stringify({ reason: 'ExpiredProviderToken' }) }]);
  const { at } = await send(sender.id, conv, 'expired');
  const list = await waitFor(token, 2, 2000);
  assert.ok(list[1].at - at < 2000, 'sent again at once');
  assert.notEqual(list[0].headers.authorization, list[1].headers.authorization, 'with a new provider token');
  await drained(u.id);
  assert.deepEqual(problems, []);
});

test('FCM UNREGISTERED, APNs 410 and APNs 400 BadDeviceToken forget the registration', async () => {
  const cases = [
    ['fcm', { status: 404, body: JSON.stringify({ error: { code: 404, status: 'NOT_FOUND', details: [{ '@type': 'type.googleapis.com/google.firebase.fcm.v1.FcmError', errorCode: 'UNREGISTERED' }] } }) }],
    ['fcm', { status: 400, body: JSON.stringify({ error: { code: 400, status: 'INVALID_ARGUMENT', details: [{ '@type': 'type.googleapis.com/google.firebase.fcm.v1.FcmError', errorCode: 'UNREGISTERED' }] } }) }],
    ['apns', { status: 410, body: JSON.stringify({ reason: 'Unregistered', timestamp: Date.now() }) }],
    ['apns', { status: 400, body: JSON.stringify({ reason: 'BadDeviceToken' }) }],
  ];
  for (const [platform, answer] of cases) {
    const u = await makeUser(DB);
    const conv = await direct(DB, sender.id, u.id);
    const token = await register(u.id, platform);
    answers.set(token, [answer]);
    await send(sender.id, conv, 'are you there');
    await waitFor(token, 1, 2000);
    let reg;
    for (let i = 0; i < 50; i++) {
      reg = (await rows(DB, `SELECT push_token, push_platform FROM chat.devices WHERE user_id = ${u.id}`))[0];
      if (reg.push_token === null) break;
      await sleep(20);
    }
    assert.deepEqual(reg, { push_token: null, push_platform: null }, `${platform} ${answer.status} forgets`);
    await drained(u.id);
  }
  // Another 400 (a bad message, not a bad token) keeps the registration and retries later.
  const u = await makeUser(DB);
  const conv = await direct(DB, sender.id, u.id);
  const token = await register(u.id, 'apns');
  answers.set(token, [{ status: 400, body: JSON.stringify({ reason: 'PayloadTooLarge' }) }]);
  await send(sender.id, conv, 'x');
  await waitFor(token, 1, 2000);
  await sleep(300);
  assert.equal(await value(DB, `SELECT push_token FROM chat.devices WHERE user_id = ${u.id}`), token);
  assert.match(await value(DB, `SELECT last_error FROM chat.push_outbox WHERE user_id = ${u.id}`), /http 400.*PayloadTooLarge/);
  await psql(DB, `DELETE FROM chat.push_outbox WHERE user_id = ${u.id}`);
  assert.deepEqual(problems, []);
});

test('503 with Retry-After is retried exactly once more, after Retry-After (FCM and APNs)', async () => {
  for (const platform of ['fcm', 'apns']) {
    const u = await makeUser(DB);
    const conv = await direct(DB, sender.id, u.id);
    const token = await register(u.id, platform);
    answers.set(token, [{ status: 503, headers: { 'retry-after': '1' }, body: '{}' }]);
    const { seq } = await send(sender.id, conv, 'busy');
    const list = await waitFor(token, 2, 4000);
    assert.ok(list[1].at - list[0].at >= 900, `${platform}: retried after ${list[1].at - list[0].at} ms, before Retry-After`);
    const seqOf = (r) => Number(platform === 'fcm' ? r.body.message.data.seq : r.body.seq);
    assert.equal(seqOf(list[1]), seq);
    await sleep(1500);
    assert.equal(received.get(token).length, 2, `${platform}: no third attempt`);
    await drained(u.id);
  }
  assert.deepEqual(problems, []);
});

test('coalescing: messages queued together reach a device as one notification with first_seq; every row completed', async () => {
  for (const platform of ['fcm', 'apns']) {
    const u = await makeUser(DB);
    const conv = await direct(DB, sender.id, u.id);
    const token = await register(u.id, platform);
    await psql(DB, `SELECT chat.send_message(${sender.id}, ${conv}, 'm' || i) FROM generate_series(1, 5) i`);
    const [got] = await waitFor(token, 1, 2000);
    await sleep(300);
    assert.equal(received.get(token).length, 1, `${platform}: one notification`);
    const p = platform === 'fcm' ? got.body.message.data : got.body;
    assert.equal(String(p.seq), '5');
    assert.equal(String(p.first_seq), '1');
    assert.equal(p.body, 'm5');
    await drained(u.id);
  }
  assert.deepEqual(problems, []);
});

test('previews off: no body in FCM or APNs notifications', async () => {
  const u = await makeUser(DB);
  const conv = await direct(DB, sender.id, u.id);
  const fcmToken = await register(u.id, 'fcm');
  await psql(DB, `SELECT chat.register_device(${u.id})`);
  const apnsToken = await register(u.id, 'apns', 2);
  const reply = await value(DB, `SELECT chat.client_request('t', ${u.id}, 1, '{"id":1,"type":"set_push_previews","previews":false}')`);
  assert.equal(reply.type, 'ok');
  await send(sender.id, conv, 'secret text');
  const [f] = await waitFor(fcmToken, 1, 2000);
  const [a] = await waitFor(apnsToken, 1, 2000);
  assert.equal(f.body.message.data.body, undefined);
  assert.equal(f.body.message.android.notification.body, undefined);
  assert.deepEqual(a.body.aps.alert, { title: 'New message' });
  assert.equal(a.body.body, undefined);
  assert.doesNotMatch(JSON.stringify([f.body, a.body]), /secret text/);
});

test('bad FCM or APNs flags, or no platform at all, stop the pusher with status 2 naming the flag', async () => {
  const bad = (args) => {
    try {
      execFileSync(PUSHER_BIN, ['--dsn', dsn(DB), ...args], { stdio: 'pipe' });
      return { status: 0, err: '' };
    } catch (e) { return { status: e.status, err: e.stderr.toString() }; }
  };
  const notJson = path.join(tmp, 'not.json');
  fs.writeFileSync(notJson, '{"type":"authorized_user"}');
  let r = bad(['--fcm-credentials', notJson]);
  assert.equal(r.status, 2);
  assert.match(r.err, /--fcm-credentials: "type" is not "service_account"/);
  r = bad(['--apns-key', path.join(tmp, 'AuthKey.p8')]);
  assert.equal(r.status, 2);
  assert.match(r.err, /--apns-key-id: is required/);
  r = bad(['--apns-key', path.join(tmp, 'service-account.json'), '--apns-key-id', 'K', '--apns-team-id', 'T', '--apns-topic', 'b']);
  assert.equal(r.status, 2);
  assert.match(r.err, /--apns-key: is not a PEM P-256 private key/);
  r = bad([]);
  assert.equal(r.status, 2);
  assert.match(r.err, /no platform configured/);
});

test('chat.push_coalesce_ms: messages sent one by one within the window reach the device as one notification', async () => {
  const stopped = new Promise((r) => pusher.on('exit', r));
  pusher.kill('SIGTERM');
  await stopped;
  await psql(DB, `ALTER DATABASE ${DB} SET chat.push_coalesce_ms = 1000`);
  try {
    pusher = await startPusher();
    const u = await makeUser(DB);
    const conv = await direct(DB, sender.id, u.id);
    const token = await register(u.id, 'fcm');
    const first = await send(sender.id, conv, 'a');
    await sleep(200);
    await send(sender.id, conv, 'b');
    await sleep(200);
    const last = await send(sender.id, conv, 'c');
    const [got] = await waitFor(token, 1, 3000);
    assert.ok(got.at - first.at >= 900, `held ${got.at - first.at} ms, not the 1000 ms window`);
    assert.ok(got.at - first.at < 2500, `delivered ${got.at - first.at} ms after the first send`);
    await sleep(1200);
    assert.equal(received.get(token).length, 1, 'one notification for the burst');
    assert.equal(got.body.message.data.seq, String(last.seq));
    assert.equal(got.body.message.data.first_seq, String(first.seq));
    assert.equal(got.body.message.data.body, 'c');
    await drained(u.id);
  } finally {
    await psql(DB, `ALTER DATABASE ${DB} RESET chat.push_coalesce_ms`);
  }
  assert.deepEqual(problems, []);
});

test('SIGTERM stops the pusher cleanly', async () => {
  assert.deepEqual(problems, []);
  const exited = new Promise((r) => pusher.on('exit', (code, sig) => r({ code, sig })));
  pusher.kill('SIGTERM');
  const { code } = await exited;
  assert.equal(code, 0, tail(pusherLog));
});
