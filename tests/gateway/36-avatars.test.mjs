// Avatars (issue 15) end to end with chat-media: a user uploads a profile
// picture (upload with "purpose":"avatar", no conversation), PUTs it and
// sets it; another user who shares no conversation with it reads it in the
// profile, gets a URL with media_url and downloads the same bytes; a user
// it blocked gets 42501; once replaced the old picture's URL is refused
// (P0002) while the new one's is served; a refused set_profile changes
// nothing.  A group's picture goes to its members only.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { TOP, LOG_DIR, SECRET_FILE, newDb, makeUser, group, startGateway, stopAll, connectAs,
  value, lit, dsn, freePort, sleep, tail } from './lib.mjs';

const DB = 'gw_36_avatars';
const MEDIA_BIN = path.resolve(TOP, process.env.MEDIA_BIN || 'gateway/chat-media');
let gw, media;

// One HTTP request to chat-media; resolves {status, headers, body (Buffer)}.
function httpReq(m, method, url, { body, headers = {} } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(m.origin + url, { method, headers, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (d) => chunks.push(d));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

// Starts chat-media for db on a free port (as 24-media does).
async function startMedia(db) {
  const port = await freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chat-media-avatars-'));
  fs.mkdirSync(LOG_DIR, { recursive: true });
  const log = path.join(LOG_DIR, '36avatars-chat-media.log');
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

// CRC-32 for PNG chunks.
function crc32(buf) {
  let c = ~0;
  for (const b of buf) { c ^= b; for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1)); }
  return (~c) >>> 0;
}
// A PNG of w x h pixels whose colours depend on seed (so two differ).
function png(w, h, seed = 0) {
  const raw = Buffer.alloc((w * 3 + 1) * h);
  for (let y = 0; y < h; y++) for (let x = 0; x < w * 3; x++) raw[y * (w * 3 + 1) + 1 + x] = (x + y + seed) & 255;
  const chunk = (type, data) => {
    const len = Buffer.alloc(4); len.writeUInt32BE(data.length);
    const crc = Buffer.alloc(4); crc.writeUInt32BE(crc32(Buffer.concat([Buffer.from(type), data])));
    return Buffer.concat([len, Buffer.from(type), data, crc]);
  };
  const ihdr = Buffer.alloc(13); ihdr.writeUInt32BE(w, 0); ihdr.writeUInt32BE(h, 4); ihdr[8] = 8; ihdr[9] = 2;
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr),
    chunk('IDAT', zlib.deflateSync(raw)), chunk('IEND', Buffer.alloc(0))]);
}
const sha = (b) => createHash('sha256').update(b).digest('hex');

// Uploads pic as a picture (profile picture without conv) and PUTs it; resolves the id.
async function uploadPicture(c, pic, conv) {
  const r = await c.call({ type: 'upload', purpose: 'avatar', ...(conv ? { conversation: conv } : {}),
    mime: 'image/png', size: pic.length, sha256: sha(pic) });
  const put = await httpReq(media, 'PUT', r.url, { body: pic, headers: { 'Content-Type': 'image/png' } });
  assert.equal(put.status, 201, put.body.toString());
  assert.equal(JSON.parse(put.body).thumbnail, true);
  return r.upload;
}

before(async () => {
  await newDb(DB);
  media = await startMedia(DB);
  gw = await startGateway({ db: DB, args: ['--media-url', media.origin] });
});
after(async () => {
  if (media) { media.proc.kill('SIGTERM'); fs.rmSync(media.dir, { recursive: true, force: true }); }
  await stopAll();
});

test('a profile picture is fetched byte for byte by a stranger, refused to a blocked user and, once replaced, to everyone', async () => {
  const alice = await makeUser(DB), bob = await makeUser(DB), mallory = await makeUser(DB);
  const a = await connectAs(gw, alice.id), b = await connectAs(gw, bob.id), m = await connectAs(gw, mallory.id);
  assert.equal(Number(await value(DB, `SELECT count(*) FROM chat.members x JOIN chat.members y USING (conversation_id)
                                        WHERE x.user_id = ${alice.id} AND y.user_id = ${bob.id}`)), 0, 'no shared conversation');
  const pic1 = png(200, 150, 1), pic2 = png(120, 120, 2);
  const av1 = await uploadPicture(a, pic1);
  assert.equal(await value(DB, `SELECT coalesce(conversation_id::text, 'none') FROM chat.attachments WHERE id = ${lit(av1)}`), 'none');
  // before it is the avatar, bob cannot fetch it
  assert.equal((await b.request({ type: 'media_url', attachment: av1 })).code, 'P0002');
  assert.deepEqual(await a.call({ type: 'set_profile', avatar: av1 }), {});
  assert.deepEqual(await a.call({ type: 'block', user: mallory.id }), {});

  const prof = (await b.call({ type: 'profile', users: [alice.id] })).users[0];
  assert.equal(prof.avatar, av1);
  const url = (await b.call({ type: 'media_url', attachment: prof.avatar })).url;
  const got = await httpReq(media, 'GET', url);
  assert.equal(got.status, 200);
  assert.equal(got.headers['content-type'], 'image/png');
  assert.equal(sha(got.body), sha(pic1), 'downloaded bytes differ');
  const thumb = await httpReq(media, 'GET', (await b.call({ type: 'media_url', attachment: av1, thumbnail: true })).url);
  assert.equal(thumb.status, 200);
  assert.equal(thumb.headers['content-type'], 'image/jpeg');
  // a URL is bound to its user: mallory cannot use bob's (403), nor get one (42501)
  assert.equal((await httpReq(media, 'GET', url.replace(`u=${bob.id}&`, `u=${mallory.id}&`))).status, 403);
  const refused = await m.request({ type: 'media_url', attachment: av1 });
  assert.deepEqual([refused.type, refused.code], ['error', '42501'], JSON.stringify(refused));

  // replaced: the old one is refused, the new one served
  const av2 = await uploadPicture(a, pic2);
  assert.deepEqual(await a.call({ type: 'set_profile', avatar: av2 }), {});
  const old = await b.request({ type: 'media_url', attachment: av1 });
  assert.deepEqual([old.type, old.code], ['error', 'P0002'], JSON.stringify(old));
  const got2 = await httpReq(media, 'GET', (await b.call({ type: 'media_url', attachment: av2 })).url);
  assert.equal(sha(got2.body), sha(pic2));
  // the owner still fetches its old picture (until the cleanup removes it)
  assert.equal((await httpReq(media, 'GET', (await a.call({ type: 'media_url', attachment: av1 })).url)).status, 200);
});

test('bad avatars are refused with their SQLSTATE and change nothing', async () => {
  const alice = await makeUser(DB), bob = await makeUser(DB);
  const a = await connectAs(gw, alice.id), b = await connectAs(gw, bob.id);
  const mine = await uploadPicture(a, png(32, 32, 3));
  assert.deepEqual(await a.call({ type: 'set_profile', avatar: mine }), {});
  const conv = await group(DB, bob.id, [alice.id]);
  const bobs = await uploadPicture(b, png(32, 32, 4));
  const inConv = await uploadPicture(b, png(32, 32, 5), conv);
  const pending = (await b.call({ type: 'upload', purpose: 'avatar', mime: 'image/png', size: 10, sha256: 'a'.repeat(64) })).upload;
  const cases = [
    [{ type: 'set_profile', avatar: bobs }, '42501'],                    // someone else's
    [{ type: 'set_profile', avatar: '00000000-0000-4000-8000-000000000000' }, '42501'],   // unknown
    [{ type: 'set_profile', avatar: 'nope' }, '22023'],                  // not an id
    [{ type: 'upload', purpose: 'avatar', mime: 'text/plain', size: 5, sha256: 'a'.repeat(64) }, '22023'],
    [{ type: 'upload', purpose: 'selfie', mime: 'image/png', size: 5, sha256: 'a'.repeat(64) }, '22023'],
  ];
  for (const [frame, code] of cases) {
    const r = await a.request(frame);
    assert.deepEqual([r.type, r.code], ['error', code], `${JSON.stringify(frame)}: ${JSON.stringify(r)}`);
  }
  const r1 = await b.request({ type: 'set_profile', avatar: inConv });
  assert.deepEqual([r1.type, r1.code], ['error', '22023'], JSON.stringify(r1));   // a conversation upload
  const r2 = await b.request({ type: 'set_profile', avatar: pending });
  assert.deepEqual([r2.type, r2.code], ['error', '55000'], JSON.stringify(r2));   // not uploaded yet
  const profs = (await b.call({ type: 'profile', users: [alice.id, bob.id] })).users;
  assert.deepEqual(profs.map((p) => p.avatar), [mine, null]);
});

test('a group picture reaches its members (and the conversation list), nobody else', async () => {
  const alice = await makeUser(DB), bob = await makeUser(DB), carol = await makeUser(DB);
  const conv = await group(DB, alice.id, [bob.id]);
  const a = await connectAs(gw, alice.id), b = await connectAs(gw, bob.id), c = await connectAs(gw, carol.id);
  const pic = png(64, 64, 6);
  const gav = await uploadPicture(a, pic, conv);
  assert.equal((await b.request({ type: 'media_url', attachment: gav })).code, 'P0002', 'not the avatar yet');
  assert.deepEqual(await a.call({ type: 'update_group', conversation: conv, avatar: gav }), {});
  const row = (await b.call({ type: 'conversations' })).conversations.find((x) => x.conversation === conv);
  assert.equal(row.avatar, gav);
  const got = await httpReq(media, 'GET', (await b.call({ type: 'media_url', attachment: gav })).url);
  assert.equal(sha(got.body), sha(pic));
  const r = await c.request({ type: 'media_url', attachment: gav });
  assert.deepEqual([r.type, r.code], ['error', 'P0002']);
});
