// Avatars (issue 15): setAvatar / setGroupAvatar (upload with purpose
// "avatar", then set_profile / update_group), avatarUrl (ids, profiles and
// conversation rows; cached until shortly before expiry; concurrent calls
// share one request; "no picture" answers resolve null; the thumbnail falls
// back to the file) and forgetAvatarUrl.
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { ChatClient } from '../../web/chat-client.js';
import { FakeSocket, connectClient } from './fake-socket.mjs';

let clock = 1_000_000_000_000;
const opts = (extra = {}) => ({ url: 'ws://gw.test/ws', token: 't', WebSocket: FakeSocket, requestTimeout: 60, ackDelay: 10, pingInterval: 0, watchNetwork: false, backoffBase: 1, backoffCap: 5, now: () => clock, ...extra });
const png = Buffer.from('\x89PNG\r\n\x1a\n not really a png, but the fake PUT does not look');
const err = (f, code) => ({ id: f.id, type: 'error', code, error: 'x', message: `attachment ${f.attachment} refused` });
let urls = 0;
const gateway = (extra = {}) => ({
  upload: (f) => ({ id: f.id, type: 'ok', result: { upload: 'av-1', url: '/media/av-1?u=1&e=1&s=x', expires_at: 1 } }),
  // each URL valid 300 s from the (fake) clock
  media_url: (f) => ({ id: f.id, type: 'ok', result: { url: `/media/${f.attachment}${f.thumbnail ? '/thumb' : ''}?n=${++urls}`, expires_at: Math.floor(clock / 1000) + 300 } }),
  ...extra,
});
const put = async () => ({ status: 201, body: '{"width":64,"height":64,"thumbnail":true}' });

beforeEach(() => { FakeSocket.reset(); urls = 0; });

test('setAvatar uploads with purpose avatar to no conversation, without a name, then sets the profile', async () => {
  const client = new ChatClient(opts());
  const ws = await connectClient(client, { overrides: gateway() });
  const file = new Blob([png], { type: 'image/png' });
  Object.defineProperty(file, 'name', { value: 'me.png' });
  assert.equal(await client.setAvatar(file, { put }), 'av-1');
  const [announce] = ws.of('upload');
  assert.deepEqual({ ...announce, id: undefined }, { id: undefined, type: 'upload', purpose: 'avatar', mime: 'image/png', size: png.length, sha256: createHash('sha256').update(png).digest('hex') });
  const [sp] = ws.of('set_profile');
  assert.deepEqual({ ...sp, id: undefined }, { id: undefined, type: 'set_profile', avatar: 'av-1' });
  client.close();
});

test('setGroupAvatar uploads to the group with purpose avatar, then update_group', async () => {
  const client = new ChatClient(opts());
  const ws = await connectClient(client, { overrides: gateway() });
  assert.equal(await client.setGroupAvatar(12, png, { mime: 'image/png', put }), 'av-1');
  const [announce] = ws.of('upload');
  assert.equal(announce.purpose, 'avatar');
  assert.equal(announce.conversation, 12);
  assert.equal('name' in announce, false);
  const [ug] = ws.of('update_group');
  assert.deepEqual([ug.conversation, ug.avatar], [12, 'av-1']);
  client.close();
});

test('a refused avatar upload rejects and sets nothing', async () => {
  const client = new ChatClient(opts());
  const ws = await connectClient(client, { overrides: gateway({
    upload: (f) => ({ id: f.id, type: 'error', code: '22023', error: 'invalid_parameter_value', message: 'an avatar of type "application/pdf" is refused: avatars are images' }),
  }) });
  await assert.rejects(client.setAvatar(png, { mime: 'application/pdf', put }), (e) => e.code === '22023');
  assert.equal(ws.of('set_profile').length, 0);
  client.close();
});

test('avatarUrl takes an id, a profile or a conversation row; none resolves null without asking', async () => {
  const client = new ChatClient(opts());
  const ws = await connectClient(client, { overrides: gateway() });
  assert.equal(await client.avatarUrl('a1'), 'http://gw.test/media/a1/thumb?n=1');
  assert.equal(await client.avatarUrl({ user: 3, avatar: 'a2' }, { thumbnail: false }), 'http://gw.test/media/a2?n=2');
  assert.equal(await client.avatarUrl({ conversation: 5, kind: 'direct', peer: { user: 3, avatar: 'a3' } }), 'http://gw.test/media/a3/thumb?n=3');
  assert.equal(await client.avatarUrl({ conversation: 6, kind: 'group', avatar: 'a4' }), 'http://gw.test/media/a4/thumb?n=4');
  for (const none of [null, undefined, '', { avatar: null }, { peer: { avatar: null } }, 7]) assert.equal(await client.avatarUrl(none), null);
  assert.equal(ws.of('media_url').length, 4);
  assert.deepEqual(ws.of('media_url').map((f) => [f.attachment, f.thumbnail]), [['a1', true], ['a2', false], ['a3', true], ['a4', true]]);
  client.close();
});

test('avatarUrl caches a URL until 30 s before it expires; concurrent calls share one request', async () => {
  const client = new ChatClient(opts());
  const ws = await connectClient(client, { overrides: gateway() });
  const [a, b] = await Promise.all([client.avatarUrl('a1'), client.avatarUrl({ avatar: 'a1' })]);
  assert.equal(a, b);
  assert.equal(ws.of('media_url').length, 1);
  clock += 269_000;   // 31 s left: still cached
  assert.equal(await client.avatarUrl('a1'), a);
  assert.equal(ws.of('media_url').length, 1);
  clock += 2_000;     // 29 s left: refetched
  const c = await client.avatarUrl('a1');
  assert.notEqual(c, a);
  assert.equal(ws.of('media_url').length, 2);
  // forgetAvatarUrl (an <img> that failed to load) asks again at once
  client.forgetAvatarUrl('a1');
  assert.notEqual(await client.avatarUrl('a1'), c);
  assert.equal(ws.of('media_url').length, 3);
  client.close();
});

test('a picture one may not see (42501 blocked, P0002 replaced) resolves null, remembered a minute', async () => {
  let refuse = true;
  const client = new ChatClient(opts());
  const ws = await connectClient(client, { overrides: gateway({
    media_url: (f) => (refuse ? err(f, f.attachment === 'blk' ? '42501' : 'P0002')
      : { id: f.id, type: 'ok', result: { url: `/media/${f.attachment}`, expires_at: Math.floor(clock / 1000) + 300 } }),
  }) });
  assert.equal(await client.avatarUrl('blk', { thumbnail: false }), null);
  assert.equal(await client.avatarUrl('old', { thumbnail: false }), null);
  assert.equal(await client.avatarUrl('blk', { thumbnail: false }), null);
  assert.equal(ws.of('media_url').length, 2, 'the refusal is cached');
  refuse = false;
  clock += 61_000;
  assert.equal(await client.avatarUrl('blk', { thumbnail: false }), 'http://gw.test/media/blk');
  client.close();
});

test('a thumbnail that does not exist falls back to the file; other errors reject and are not cached', async () => {
  let fail = true;
  const client = new ChatClient(opts());
  const ws = await connectClient(client, { overrides: gateway({
    media_url: (f) => (f.attachment === 'busy' && fail ? err(f, '57014')
      : f.thumbnail ? err(f, 'P0002')
      : { id: f.id, type: 'ok', result: { url: `/media/${f.attachment}`, expires_at: Math.floor(clock / 1000) + 300 } }),
  }) });
  assert.equal(await client.avatarUrl('nothumb'), 'http://gw.test/media/nothumb');
  assert.deepEqual(ws.of('media_url').map((f) => f.thumbnail), [true, false]);
  await assert.rejects(client.avatarUrl('busy', { thumbnail: false }), (e) => e.code === '57014');
  fail = false;
  assert.equal(await client.avatarUrl('busy', { thumbnail: false }), 'http://gw.test/media/busy');
  client.close();
});
