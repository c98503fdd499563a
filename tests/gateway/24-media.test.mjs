// Media (issue 13) end to end: upload over the wire, PUT the bytes to
// chat-media, send them, receive the message with its attachment, download
// identical bytes (whole, a Range, If-None-Match), the thumbnail's
// dimensions; every bad input with its status or SQLSTATE and nothing left
// behind; and a 100 MiB upload that leaves another client's ping RTT p99
// under 50 ms while chat-media's RSS grows by under 32 MiB.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { TOP, LOG_DIR, SECRET_FILE, newDb, makeUser, group, startGateway, stopAll, connectAs,
  value, dsn, freePort, sleep, tail, secret, token } from './lib.mjs';

const DB = 'gw_24_media';
const MEDIA_BIN = path.resolve(TOP, process.env.MEDIA_BIN || 'gateway/chat-media');
let gw, media;

// Starts chat-media for db on a free port; resolves {origin, dir, proc, log}.
async function startMedia(db) {
  const port = await freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chat-media-test-'));
  fs.mkdirSync(LOG_DIR, { recursive: true });
  const log = path.join(LOG_DIR, '24media-chat-media.log');
  const fd = fs.openSync(log, 'a');
  const proc = spawn(MEDIA_BIN, ['--listen', `127.0.0.1:${port}`, '--dsn', dsn(db),
    '--token-secret-file', SECRET_FILE, '--media-dir', dir, '--sweep-interval', '1'],
  { stdio: ['ignore', fd, fd] });
  fs.closeSync(fd);
  const m = { origin: `http://127.0.0.1:${port}`, dir, proc, log };
  for (let i = 0; i < 100; i++) {
    if ((await httpReq(m, 'GET', '/healthz').catch(() => ({ status: 0 }))).status === 200) return m;
    await sleep(100);
  }
  throw new Error(`chat-media did not start; log:\n${tail(log)}`);
}

// One HTTP request to chat-media; body a Buffer or an async iterable of
// Buffers; resolves {status, headers, body (Buffer)}.
function httpReq(m, method, url, { body, headers = {} } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(m.origin + url, { method, headers, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (d) => chunks.push(d));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    if (body === undefined) req.end();
    else if (Buffer.isBuffer(body)) req.end(body);
    else (async () => {
      for await (const chunk of body) if (!req.write(chunk)) await new Promise((r) => req.once('drain', r));
      req.end();
    })().catch(reject);
  });
}

// A PNG of w x h pixels (RGB, a gradient).
function png(w, h) {
  const raw = Buffer.alloc((w * 3 + 1) * h);
  for (let y = 0; y < h; y++) for (let x = 0; x < w * 3; x++) raw[y * (w * 3 + 1) + 1 + x] = (x + y) & 255;
  const chunk = (type, data) => {
    const len = Buffer.alloc(4); len.writeUInt32BE(data.length);
    const crc = Buffer.alloc(4); crc.writeUInt32BE(zlib.crc32 ? zlib.crc32(Buffer.concat([Buffer.from(type), data])) : crc32(Buffer.concat([Buffer.from(type), data])));
    return Buffer.concat([len, Buffer.from(type), data, crc]);
  };
  const ihdr = Buffer.alloc(13); ihdr.writeUInt32BE(w, 0); ihdr.writeUInt32BE(h, 4); ihdr[8] = 8; ihdr[9] = 2;
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr),
    chunk('IDAT', zlib.deflateSync(raw)), chunk('IEND', Buffer.alloc(0))]);
}
// CRC-32 for PNG chunks (node < 22 has no zlib.crc32).
function crc32(buf) {
  let c = ~0;
  for (const b of buf) { c ^= b; for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1)); }
  return (~c) >>> 0;
}
// The dimensions of a baseline/progressive JPEG (its SOF marker).
function jpegSize(buf) {
  assert.equal(buf.readUInt16BE(0), 0xffd8, 'not a JPEG');
  let i = 2;
  while (i < buf.length) {
    const marker = buf.readUInt16BE(i);
    const len = buf.readUInt16BE(i + 2);
    if (marker >= 0xffc0 && marker <= 0xffc2) return { height: buf.readUInt16BE(i + 5), width: buf.readUInt16BE(i + 7) };
    i += 2 + len;
  }
  throw new Error('no SOF marker');
}
const sha = (b) => createHash('sha256').update(b).digest('hex');
// A media URL signed like the database signs it (for expired/forged ones).
function signUrl(op, id, user, expires) {
  const key = createHmac('sha256', secret()).update('chat-media').digest();
  const s = createHmac('sha256', key).update(`${op}\n${id}\n${user}\n${expires}`).digest('hex');
  return `/media/${id}${op === 'thumb' ? '/thumb' : ''}?u=${user}&e=${expires}&s=${s}`;
}
// The files chat-media stores (temporary ones included).
const stored = () => fs.readdirSync(media.dir).filter((f) => f !== 'tmp').length + fs.readdirSync(path.join(media.dir, 'tmp')).length;
// An upload request over the wire.
const upload = (c, conv, bytes, mime, name = 'f') =>
  c.request({ type: 'upload', conversation: conv, mime, size: bytes.length, sha256: sha(bytes), name });

before(async () => {
  await newDb(DB);
  media = await startMedia(DB);
  gw = await startGateway({ db: DB, args: ['--media-url', media.origin] });
});
after(async () => {
  if (media) { media.proc.kill('SIGTERM'); fs.rmSync(media.dir, { recursive: true, force: true }); }
  await stopAll();
});

test('a picture goes up, out in a message, and down again byte for byte, with a thumbnail', async () => {
  const alice = await makeUser(DB), bob = await makeUser(DB);
  const conv = await group(DB, alice.id, [bob.id]);
  const a = await connectAs(gw, alice.id), b = await connectAs(gw, bob.id);
  const pic = png(800, 600);
  // hello names chat-media's origin: the media URLs handed out are relative to it
  assert.equal(a.hello.media_url, media.origin);

  const up = await upload(a, conv, pic, 'image/png', 'cat.png');
  assert.equal(up.type, 'ok', JSON.stringify(up));
  assert.match(up.result.url, /^\/media\/[0-9a-f-]{36}\?u=\d+&e=\d+&s=[0-9a-f]{64}$/);
  assert.ok(up.result.expires_at > Date.now() / 1000 && up.result.expires_at <= Date.now() / 1000 + 301);
  const put = await httpReq(media, 'PUT', up.result.url, { body: pic, headers: { 'Content-Type': 'image/png' } });
  assert.equal(put.status, 201, put.body.toString());
  assert.deepEqual(JSON.parse(put.body), { upload: up.result.upload, size: pic.length, width: 800, height: 600, thumbnail: true });

  const since = b.mark();
  const sent = await a.call({ type: 'send', conversation: conv, body: 'look', client_msg_id: 'pic-1', attachments: [up.result.upload] });
  const ev = await b.waitFor((f) => f.type === 'message' && f.conversation === conv && f.seq === sent.seq, 3000, since);
  assert.deepEqual(ev.attachments, [{ id: up.result.upload, mime: 'image/png', size: pic.length, name: 'cat.png', width: 800, height: 600, thumbnail: true }]);
  // a retried send answers the first (idempotent), no second message
  const again = await a.call({ type: 'send', conversation: conv, body: 'look', client_msg_id: 'pic-1', attachments: [up.result.upload] });
  assert.deepEqual([again.seq, again.duplicate], [sent.seq, true]);

  const url = (await b.call({ type: 'media_url', attachment: up.result.upload })).url;
  const got = await httpReq(media, 'GET', url);
  assert.equal(got.status, 200);
  assert.equal(sha(got.body), sha(pic), 'downloaded bytes differ');
  assert.equal(got.headers['content-type'], 'image/png');
  assert.equal(got.headers['etag'], `"${sha(pic)}"`);
  assert.match(got.headers['cache-control'], /^private/);
  const part = await httpReq(media, 'GET', url, { headers: { Range: 'bytes=100-199' } });
  assert.equal(part.status, 206);
  assert.equal(part.headers['content-range'], `bytes 100-199/${pic.length}`);
  assert.deepEqual(part.body, pic.subarray(100, 200));
  const tailPart = await httpReq(media, 'GET', url, { headers: { Range: 'bytes=-10' } });
  assert.deepEqual([tailPart.status, tailPart.body], [206, pic.subarray(pic.length - 10)]);
  const bad = await httpReq(media, 'GET', url, { headers: { Range: `bytes=${pic.length}-` } });
  assert.equal(bad.status, 416);
  const cached = await httpReq(media, 'GET', url, { headers: { 'If-None-Match': `"${sha(pic)}"` } });
  assert.equal(cached.status, 304);

  const turl = (await b.call({ type: 'media_url', attachment: up.result.upload, thumbnail: true })).url;
  const thumb = await httpReq(media, 'GET', turl);
  assert.equal(thumb.status, 200);
  assert.equal(thumb.headers['content-type'], 'image/jpeg');
  assert.deepEqual(jpegSize(thumb.body), { width: 320, height: 240 });

  // the URL is bound to bob: alice's id in it breaks the signature
  assert.equal((await httpReq(media, 'GET', url.replace(`u=${bob.id}`, `u=${alice.id}`))).status, 403);

  // deleting the message deletes the bytes (the sweeper drains the queue)
  const files = stored();
  await a.call({ type: 'delete', conversation: conv, seq: sent.seq });
  for (let i = 0; i < 50 && stored() > files - 2; i++) await sleep(100);
  assert.equal(stored(), files - 2, 'file and thumbnail deleted');
  assert.equal((await httpReq(media, 'GET', url)).status, 404);
});

test('--media-url must be an http(s) origin (the gateway refuses to start otherwise)', async () => {
  for (const bad of ['ftp://x', 'http://a"b', `http://${'a'.repeat(200)}`]) {
    const g = await startGateway({ db: DB, args: ['--media-url', bad], wait: false });
    const exit = await g.exited;
    assert.equal(exit.code, 2, `${bad}: ${JSON.stringify(exit)}`);
  }
});

test('every bad upload is refused with its code and leaves nothing behind', async () => {
  const alice = await makeUser(DB), bob = await makeUser(DB), out = await makeUser(DB);
  const conv = await group(DB, alice.id, [bob.id]);
  const a = await connectAs(gw, alice.id), x = await connectAs(gw, out.id);
  const pic = png(40, 30);
  const count = async () => Number(await value(DB, `SELECT count(*) FROM chat.attachments WHERE conversation_id = ${conv}`));

  // announcements: over the limit, unknown type, non-member
  for (const [c, req, code] of [
    [a, { type: 'upload', conversation: conv, mime: 'image/png', size: 16 * 1048576 + 1, sha256: sha(pic) }, '54000'],
    [a, { type: 'upload', conversation: conv, mime: 'audio/ogg', size: 10 * 1048576 + 1, sha256: sha(pic) }, '54000'],
    [a, { type: 'upload', conversation: conv, mime: 'application/x-msdownload', size: 10, sha256: sha(pic) }, '22023'],
    [x, { type: 'upload', conversation: conv, mime: 'image/png', size: 10, sha256: sha(pic) }, '42501'],
    [x, { type: 'media_url', attachment: '00000000-0000-0000-0000-000000000000' }, 'P0002'],
  ]) {
    const r = await c.request(req);
    assert.deepEqual([r.type, r.code], ['error', code], JSON.stringify(r));
  }
  assert.equal(await count(), 0);

  // PUTs: each refused one leaves the upload pending and no file stored
  const before = stored();
  const up = await upload(a, conv, pic, 'image/png');
  const url = up.result.url;
  const cases = [
    ['shorter body', url, pic.subarray(0, pic.length - 1), 'image/png', 400],
    ['longer body', url, Buffer.concat([pic, Buffer.from('x')]), 'image/png', 413],
    ['other bytes, same size', url, Buffer.concat([pic.subarray(0, pic.length - 1), Buffer.from([pic[pic.length - 1] ^ 1])]), 'image/png', 400],
    ['tampered signature', url.replace(/s=(.)/, (m, c) => `s=${c === 'a' ? 'b' : 'a'}`), pic, 'image/png', 403],
    ['mangled query', `${url}0`, pic, 'image/png', 403],
    ['expired URL', signUrl('put', up.result.upload, alice.id, Math.floor(Date.now() / 1000) - 1), pic, 'image/png', 403],
    ['a GET URL used to PUT', signUrl('get', up.result.upload, alice.id, Math.floor(Date.now() / 1000) + 60), pic, 'image/png', 403],
    ['another user', signUrl('put', up.result.upload, bob.id, Math.floor(Date.now() / 1000) + 60), pic, 'image/png', 404],
    ['other Content-Type', url, pic, 'image/jpeg', 415],
  ];
  for (const [what, u, body, type, status] of cases) {
    const r = await httpReq(media, 'PUT', u, { body, headers: { 'Content-Type': type } });
    assert.equal(r.status, status, `${what}: ${r.body}`);
    assert.equal(stored(), before, `${what}: nothing stored`);
  }
  assert.equal(await value(DB, `SELECT state FROM chat.attachments WHERE id = '${up.result.upload}'`), 'pending');
  // sending it before the PUT: 55000
  const early = await a.request({ type: 'send', conversation: conv, body: 'x', attachments: [up.result.upload] });
  assert.equal(early.code, '55000', JSON.stringify(early));

  // content that is not what it says: text declared as a PNG
  const text = Buffer.from('just some words, not a picture at all\n'.repeat(20));
  const liar = await upload(a, conv, text, 'image/png');
  const r415 = await httpReq(media, 'PUT', liar.result.url, { body: text });
  assert.equal(r415.status, 415, r415.body.toString());
  assert.equal(stored(), before);

  // finished uploads take no second PUT
  assert.equal((await httpReq(media, 'PUT', url, { body: pic })).status, 201);
  assert.equal((await httpReq(media, 'PUT', url, { body: pic })).status, 409);
  assert.equal(stored(), before + 2, 'the file and its thumbnail');
  // someone else's ready upload cannot be sent
  const b = await connectAs(gw, bob.id);
  const theirs = await b.request({ type: 'send', conversation: conv, body: 'x', attachments: [up.result.upload] });
  assert.equal(theirs.code, 'P0002', JSON.stringify(theirs));

  // ciphertext (e2e): application/octet-stream, no thumbnail even of a PNG
  const blob = await upload(a, conv, pic, 'application/octet-stream');
  const put = await httpReq(media, 'PUT', blob.result.url, { body: pic, headers: { 'Content-Type': 'application/octet-stream' } });
  assert.equal(put.status, 201);
  assert.equal(JSON.parse(put.body).thumbnail, false);
  assert.equal(await value(DB, `SELECT thumbnail_key IS NULL FROM chat.attachments WHERE id = '${blob.result.upload}'`), true);
});

test('a 100 MiB upload and download: other clients ping fast, chat-media stays small', async (t) => {
  const alice = await makeUser(DB), bob = await makeUser(DB);
  const conv = await group(DB, alice.id, [bob.id]);
  const a = await connectAs(gw, alice.id), b = await connectAs(gw, bob.id);
  const SIZE = 100 * 1048576;
  const block = randomBytes(1048576);
  const hash = createHash('sha256');
  for (let i = 0; i < 100; i++) hash.update(block);
  const digest = hash.digest('hex');
  const up = await a.call({ type: 'upload', conversation: conv, mime: 'application/octet-stream', size: SIZE, sha256: digest, name: 'big.bin' });

  const rss = () => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${media.proc.pid}/status`, 'utf8'))[1]) * 1024;
  const rss0 = rss();
  let rssMax = rss0;
  const sampler = setInterval(() => { rssMax = Math.max(rssMax, rss()); }, 20);
  // bob pings the gateway every 10 ms throughout, from a process of his own
  const pinger = spawn(process.execPath, [path.join(TOP, 'tests/gateway/media-pinger.mjs'), token(bob.id), gw.wsUrl()],
    { stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  pinger.stdout.on('data', (d) => { out += d; });
  for (let i = 0; i < 100 && !out.includes('ready'); i++) await sleep(50);
  assert.ok(out.includes('ready'), 'the pinger connected');
  async function* body() { for (let i = 0; i < 100; i++) yield block; }
  let put, sent, got, rtts;
  try {
    put = await httpReq(media, 'PUT', up.url, { body: body(), headers: { 'Content-Type': 'application/octet-stream', 'Content-Length': SIZE } });
    assert.equal(put.status, 201, put.body.toString());
    sent = await a.call({ type: 'send', conversation: conv, body: 'big', attachments: [up.upload] });
    const url = (await b.call({ type: 'media_url', attachment: up.upload })).url;
    got = await new Promise((resolve, reject) => {
      http.get(media.origin + url, { agent: false }, (res) => {
        const h = createHash('sha256');
        let n = 0;
        res.on('data', (d) => { h.update(d); n += d.length; });
        res.on('end', () => resolve({ status: res.statusCode, n, digest: h.digest('hex') }));
      }).on('error', reject);
    });
  } finally {
    clearInterval(sampler);
    const exited = new Promise((r) => pinger.on('exit', r));
    pinger.stdin.end();
    await exited;
    rtts = JSON.parse(out.split('\n').filter(Boolean).at(-1));
  }
  assert.ok(sent.seq > 0);
  assert.deepEqual(got, { status: 200, n: SIZE, digest });
  rtts.sort((x, y) => x - y);
  const p99 = rtts[Math.min(rtts.length - 1, Math.floor(rtts.length * 0.99))];
  t.diagnostic(`${rtts.length} pings, p99 ${p99.toFixed(2)} ms; chat-media RSS +${((rssMax - rss0) / 1048576).toFixed(1)} MiB`);
  assert.ok(rtts.length >= 20, `only ${rtts.length} pings`);
  assert.ok(p99 < 50, `ping p99 ${p99.toFixed(1)} ms over ${rtts.length} pings`);
  assert.ok(rssMax - rss0 < 32 * 1048576, `chat-media RSS grew by ${((rssMax - rss0) / 1048576).toFixed(1)} MiB`);
});
