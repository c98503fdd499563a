// Files in end-to-end encrypted conversations: encryptFile/decryptFile
// (client/e2e.js) and sendFile with kind 'e2e' (the upload carries only
// ciphertext, as application/octet-stream without a name; the send is of
// kind e2e with its attachments, and the own copy says so).
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { ChatClient } from '../../web/chat-client.js';
import { encryptFile, decryptFile, E2EVerifyError } from '../../web/client/e2e.js';
import { FakeSocket, connectClient } from './fake-socket.mjs';

const opts = (extra = {}) => ({ url: 'ws://gw.test/ws', token: 't', WebSocket: FakeSocket, requestTimeout: 60, ackDelay: 10, pingInterval: 0, watchNetwork: false, backoffBase: 1, backoffCap: 5, ...extra });
const plain = new TextEncoder().encode('the secret plan, in a file\n'.repeat(20));
const gateway = () => ({
  upload: (f) => ({ id: f.id, type: 'ok', result: { upload: 'up-1', url: '/media/up-1?u=17&e=1&s=x', expires_at: 1 } }),
  send: (f) => ({ id: f.id, type: 'ok', result: { conversation: f.conversation, seq: 9, created_at: '2026-11-30T10:00:00Z', duplicate: false } }),
});
const contains = (hay, needle) => Buffer.from(hay).includes(Buffer.from(needle));

beforeEach(() => { FakeSocket.reset(); });

test('encryptFile: ciphertext only, fresh key each time, decryptFile gives the file back', () => {
  const a = encryptFile(plain);
  const b = encryptFile(plain);
  assert.ok(!contains(a.bytes, 'secret plan'), 'no plaintext in the ciphertext');
  assert.notEqual(a.key.k, b.key.k);
  assert.ok(!Buffer.from(a.bytes).equals(Buffer.from(b.bytes)));
  assert.equal(a.key.alg, 'A256GCM');
  assert.deepEqual(decryptFile(a.bytes, a.key), plain);
});

test('decryptFile refuses tampered bytes, another file, a wrong or malformed key', () => {
  const a = encryptFile(plain);
  const b = encryptFile(plain);
  const tampered = Uint8Array.from(a.bytes);
  tampered[10] ^= 1;
  assert.throws(() => decryptFile(tampered, a.key), E2EVerifyError);
  assert.throws(() => decryptFile(tampered, { ...a.key, sha256: undefined }), E2EVerifyError);
  assert.throws(() => decryptFile(b.bytes, a.key), E2EVerifyError);
  assert.throws(() => decryptFile(a.bytes, { ...a.key, k: b.key.k }), E2EVerifyError);
  assert.throws(() => decryptFile(a.bytes, { ...a.key, alg: 'none' }), E2EVerifyError);
  assert.throws(() => decryptFile(a.bytes, null), E2EVerifyError);
});

test("sendFile kind 'e2e': ciphertext uploaded without name or type, a kind e2e send with the attachment", async () => {
  const client = new ChatClient(opts());
  const ws = await connectClient(client, { overrides: gateway() });
  const own = [];
  client.on('message', (m) => own.push(m));
  const { bytes, key } = encryptFile(plain);
  const puts = [];
  const put = async (url, body, mime) => {
    puts.push({ body, mime });
    return { status: 201, body: JSON.stringify({ upload: 'up-1', thumbnail: false }) };
  };
  const r = await client.sendFile(7, bytes, { mime: 'application/octet-stream', caption: 'CIPHERTEXT-BODY', kind: 'e2e', put });
  const [announce] = ws.of('upload');
  assert.equal(announce.mime, 'application/octet-stream');
  assert.equal(announce.name ?? null, null, 'no file name goes to the server');
  assert.equal(puts.length, 1);
  assert.equal(puts[0].mime, 'application/octet-stream');
  assert.ok(!contains(puts[0].body, 'secret plan'), 'no plaintext in the PUT');
  assert.deepEqual(decryptFile(puts[0].body, key), plain);
  const [send] = ws.of('send');
  assert.deepEqual([send.kind, send.body, send.attachments], ['e2e', 'CIPHERTEXT-BODY', ['up-1']]);
  assert.equal(r.seq, 9);
  const mine = own.find((m) => m.seq === 9);
  assert.equal(mine?.kind, 'e2e');
  assert.deepEqual(mine?.attachments?.map((a) => a.id), ['up-1']);
  client.close();
});
