// sendFile: announce, PUT with progress, retry of an interrupted PUT (same
// URL; a new upload when the URL expired; 409 after a lost answer counts as
// done), refusals surfaced, and the send carrying the upload idempotent.
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { ChatClient } from '../../web/chat-client.js';
import { FakeSocket, connectClient, sleep } from './fake-socket.mjs';

const opts = (extra = {}) => ({ url: 'ws://gw.test/ws', token: 't', WebSocket: FakeSocket, requestTimeout: 60, ackDelay: 10, pingInterval: 0, watchNetwork: false, backoffBase: 1, backoffCap: 5, ...extra });
const bytes = Buffer.from('a small file for the media tests\n'.repeat(10));
let uploads = 0;
// A gateway that announces uploads ok and answers sends.
const gateway = (extra = {}) => ({
  upload: (f) => ({ id: f.id, type: 'ok', result: { upload: `up-${++uploads}`, url: `/media/up-${uploads}?u=17&e=1&s=x`, expires_at: 1 } }),
  send: (f) => ({ id: f.id, type: 'ok', result: { conversation: f.conversation, seq: 5, created_at: '2026-11-30T10:00:00Z', duplicate: false } }),
  ...extra,
});

beforeEach(() => { FakeSocket.reset(); uploads = 0; });

test('sendFile announces the file, PUTs it with progress and sends a message carrying it', async () => {
  const client = new ChatClient(opts());
  const ws = await connectClient(client, { overrides: gateway() });
  const puts = [], progress = [], events = [];
  client.on('upload_progress', (e) => events.push(e));
  const put = async (url, body, mime, onProgress) => {
    puts.push({ url, mime, size: body.length });
    onProgress(body.length / 2);
    onProgress(body.length);
    return { status: 201, body: JSON.stringify({ upload: 'up-1', width: 0, height: 0, thumbnail: false }) };
  };
  const r = await client.sendFile(7, bytes, { mime: 'text/plain', name: 'notes.txt', caption: 'read this', put, onProgress: (l, t) => progress.push([l, t]) });
  const [announce] = ws.of('upload');
  assert.deepEqual({ ...announce, id: undefined }, { id: undefined, type: 'upload', conversation: 7, mime: 'text/plain', size: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex'), name: 'notes.txt' });
  assert.deepEqual(puts, [{ url: 'http://gw.test/media/up-1?u=17&e=1&s=x', mime: 'text/plain', size: bytes.length }]);
  assert.deepEqual(progress.at(-1), [bytes.length, bytes.length]);
  assert.ok(progress.some(([l]) => l === bytes.length / 2));
  assert.equal(events.at(-1).loaded, bytes.length);
  const [send] = ws.of('send');
  assert.deepEqual([send.body, send.attachments], ['read this', ['up-1']]);
  assert.equal(r.seq, 5);
  assert.deepEqual(r.attachment, { id: 'up-1', mime: 'text/plain', size: bytes.length, name: 'notes.txt', thumbnail: false });
  client.close();
});

test('a caption may mention members: the send carries attachments and mentions', async () => {
  const client = new ChatClient(opts());
  const ws = await connectClient(client, { overrides: gateway() });
  const own = [];
  client.on('message', (m) => own.push(m));
  const put = async () => ({ status: 201, body: '{}' });
  await client.sendFile(7, bytes, { mime: 'text/plain', caption: 'for @bob and @carol', mentions: [9, 4, 9], put });
  const [send] = ws.of('send');
  assert.deepEqual([send.body, send.attachments, send.mentions], ['for @bob and @carol', ['up-1'], [4, 9]]);
  assert.deepEqual([own.at(-1).attachments.map((a) => a.id), own.at(-1).mentions], [['up-1'], [4, 9]]);
  await client.sendFile(7, bytes, { mime: 'text/plain', put });
  assert.equal(ws.of('send')[1].mentions, undefined, 'no mentions: the field is left out');
  client.close();
});

test('media URLs resolve against the media_url of hello', async () => {
  const client = new ChatClient(opts());
  const ws = await connectClient(client, { overrides: gateway({ media_url: (f) => ({ id: f.id, type: 'ok', result: { url: '/media/abc?u=1&e=2&s=3', expires_at: 2 } }) }) });
  assert.equal(await client.mediaUrl('abc'), 'http://gw.test/media/abc?u=1&e=2&s=3');
  ws.push({ type: 'hello', user: 17, device: 1, node: 'n', heartbeat: 30, media_url: 'https://media.example' });
  await sleep(5);
  assert.equal(await client.mediaUrl('abc', { thumbnail: true }), 'https://media.example/media/abc?u=1&e=2&s=3');
  assert.equal(ws.of('media_url').at(-1).thumbnail, true);
  client.close();
});

test('an interrupted PUT is retried; an expired URL gets a new upload; 409 after a lost answer is done', async () => {
  const client = new ChatClient(opts());
  const ws = await connectClient(client, { overrides: gateway() });
  const answers = [{ status: 0 }, { status: 503 }, { status: 403 }, { status: 409 }];
  const urls = [];
  const put = async (url) => {
    urls.push(url);
    const a = answers.shift();
    if (a.status === 0) throw Object.assign(new Error('reset'), { code: 'network' });
    return { status: a.status, body: '' };
  };
  const r = await client.sendFile(7, bytes, { mime: 'text/plain', put });
  assert.deepEqual(urls.map((u) => new URL(u).pathname), ['/media/up-1', '/media/up-1', '/media/up-1', '/media/up-2']);
  assert.equal(ws.of('upload').length, 2, 'a new upload after the 403');
  assert.deepEqual(ws.of('send')[0].attachments, ['up-2']);
  assert.equal(r.attachment.id, 'up-2');
  client.close();
});

test('a refused PUT or announcement rejects sendFile and sends nothing', async () => {
  const client = new ChatClient(opts());
  const ws = await connectClient(client, { overrides: gateway() });
  await assert.rejects(client.sendFile(7, bytes, { mime: 'image/png', put: async () => ({ status: 415, body: '' }) }), { code: 'http_415' });
  await assert.rejects(client.sendFile(7, bytes, { mime: 'text/plain', maxAttempts: 2, put: async () => ({ status: 500, body: '' }) }), { code: 'http_500' });
  const big = new ChatClient(opts());
  const ws2 = await connectClient(big, { overrides: gateway({ upload: (f) => ({ id: f.id, type: 'error', code: '54000', error: 'program_limit_exceeded', message: 'too big' }) }) });
  await assert.rejects(big.sendFile(7, bytes, { put: async () => assert.fail('no PUT') }), { code: '54000' });
  assert.equal(ws.of('send').length + ws2.of('send').length, 0);
  client.close();
  big.close();
});

test('the send of a file is retried with the same client_msg_id', async () => {
  let sends = 0;
  const client = new ChatClient(opts());
  const ws = await connectClient(client, { overrides: gateway({
    send: (f) => (++sends === 1 ? undefined  // lost: times out
      : { id: f.id, type: 'ok', result: { conversation: 7, seq: 9, created_at: 'x', duplicate: true } }),
  }) });
  const r = await client.sendFile(7, bytes, { mime: 'text/plain', put: async () => ({ status: 201, body: '{}' }) });
  const ids = ws.of('send').map((f) => f.client_msg_id);
  assert.equal(ids.length, 2);
  assert.equal(ids[0], ids[1]);
  assert.deepEqual([r.seq, r.duplicate], [9, true]);
  client.close();
});
