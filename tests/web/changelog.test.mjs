// Change-log entries (kind edit/delete with a target): applied as edit and
// delete events, never shown as messages, counted in the contiguous seq and
// acked, deduplicated against the server's live edit/delete events.
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { ChatClient, isLogEntry } from '../../web/chat-client.js';
import { FakeSocket, connectClient, idleGateway, until, sleep, msg } from './fake-socket.mjs';

const opts = (extra = {}) => ({ url: 'ws://gw.test/ws', token: 't', WebSocket: FakeSocket, requestTimeout: 60, ackDelay: 10, pingInterval: 0, watchNetwork: false, backoffBase: 5, ...extra });

const edit = (c, seq, target, body, extra = {}) => msg(c, seq, { kind: 'edit', target, body, client_msg_id: null, sender_device: null, created_at: `2026-11-28T10:00:0${seq % 10}.000Z`, ...extra });
const del = (c, seq, target, extra = {}) => msg(c, seq, { kind: 'delete', target, body: null, client_msg_id: null, sender_device: null, created_at: `2026-11-28T10:00:0${seq % 10}.000Z`, ...extra });

async function connected(overrides) {
  const client = new ChatClient(opts());
  const got = { message: [], edit: [], delete: [] };
  for (const k of Object.keys(got)) client.on(k, (e) => got[k].push(e));
  const ws = await connectClient(client, { overrides, waitSync: true });
  return { client, ws, got };
}

beforeEach(() => FakeSocket.reset());

test('isLogEntry tells entries from messages', () => {
  assert.equal(isLogEntry(edit(1, 3, 1, 'x')), true);
  assert.equal(isLogEntry(del(1, 3, 1)), true);
  assert.equal(isLogEntry(msg(1, 3)), false);
  assert.equal(isLogEntry(msg(1, 3, { kind: 'system' })), false);
  assert.equal(isLogEntry(null), false);
});

test('live entries are applied as edit/delete, not shown as messages, and advance and ack the seq', async () => {
  const { client, ws, got } = await connected();
  ws.push(msg(7, 1));
  ws.push(msg(7, 2));
  ws.push(edit(7, 3, 1, 'm1 (edited)'));
  ws.push(del(7, 4, 2, { sender: 5 }));
  await until(() => got.delete.length === 1, 500, 'delete applied');
  assert.deepEqual(got.message.map((m) => m.seq), [1, 2]);
  assert.deepEqual(got.edit, [{ type: 'edit', conversation: 7, seq: 1, body: 'm1 (edited)', edited_at: '2026-11-28T10:00:03.000Z', entry: 3, sender: 2 }]);
  assert.deepEqual(got.delete, [{ type: 'delete', conversation: 7, seq: 2, deleted_at: '2026-11-28T10:00:04.000Z', entry: 4, sender: 5 }]);
  assert.equal(client.conversationState(7).top, 4);
  await until(() => ws.of('ack').some((a) => a.conversation === 7 && a.seq === 4), 500, 'ack of 4');
  client.close();
});

test('an offline device applies the entries that sync brings', async () => {
  let page = 0;
  const { client, ws, got } = await connected({
    sync: (f) => {
      page++;
      if (page === 1) return { id: f.id, type: 'ok', result: { messages: [], more: false } };
      return { id: f.id, type: 'ok', result: { messages: [edit(3, 5, 2, 'changed while away'), del(3, 6, 4), msg(3, 7)].map(({ type, ...m }) => m), more: false } };
    },
  });
  ws.push({ type: 'resync' });
  await until(() => got.message.length === 1 && got.delete.length === 1, 500, 'sync applied');
  assert.deepEqual(got.edit.map((e) => [e.seq, e.body, e.entry]), [[2, 'changed while away', 5]]);
  assert.deepEqual(got.delete.map((e) => [e.seq, e.entry]), [[4, 6]]);
  assert.deepEqual(got.message.map((m) => m.seq), [7]);
  await until(() => ws.of('ack').some((a) => a.conversation === 3 && a.seq === 7), 500, 'ack through the entries');
  client.close();
});

test('a gap of entries is repaired with after like any gap', async () => {
  const { client, ws, got } = await connected({
    after: (f) => ({ id: f.id, type: 'ok', result: { messages: [edit(2, 2, 1, 'big edit, fetched')] } }),
  });
  ws.push(msg(2, 1));
  ws.push(msg(2, 3));
  await until(() => client.conversationState(2).top === 3, 500, 'gap closed');
  assert.deepEqual(got.edit.map((e) => [e.seq, e.body]), [[1, 'big edit, fetched']]);
  assert.deepEqual(got.message.map((m) => m.seq), [1, 3]);
  client.close();
});

test('a change comes once, whether the live event or the entry arrives first', async () => {
  const { client, ws, got } = await connected();
  ws.push(msg(4, 1));
  ws.push(edit(4, 2, 1, 'v2'));
  ws.push({ type: 'edit', conversation: 4, seq: 1, body: 'v2' });            // legacy event after its entry
  ws.push({ type: 'edit', conversation: 4, seq: 1, body: 'v3' });            // legacy event before its entry
  ws.push(edit(4, 3, 1, 'v3'));
  ws.push({ type: 'edit', conversation: 4, seq: 1, ref: true });             // a ref edit: the entry brings the body
  ws.push({ type: 'delete', conversation: 4, seq: 1 });
  ws.push(del(4, 4, 1));
  ws.push({ type: 'edit', conversation: 4, seq: 1, body: 'after the delete' });
  await until(() => client.conversationState(4).top === 4, 500, 'top 4');
  await sleep(5);
  assert.deepEqual(got.edit.map((e) => e.body), ['v2', 'v3']);
  assert.equal(got.delete.length, 1);
  assert.deepEqual(got.message.map((m) => m.seq), [1]);
  client.close();
});

test('an older entry arriving late never undoes a newer change', async () => {
  const { client, ws, got } = await connected({
    after: (f) => ({ id: f.id, type: 'ok', result: { messages: [edit(5, 2, 1, 'old')] } }),
  });
  ws.push(msg(5, 1));
  ws.push(edit(5, 3, 1, 'new'));    // 2 is missing: fetched after 3 was applied
  await until(() => client.conversationState(5).top === 3, 500, 'gap closed');
  assert.deepEqual(got.edit.map((e) => e.body), ['new']);
  client.close();
});

test('an edit entry without a body (message deleted since, or older than the membership) changes nothing', async () => {
  const { client, ws, got } = await connected();
  ws.push(msg(6, 1));
  ws.push(edit(6, 2, 1, null));
  ws.push(del(6, 3, 1));
  await until(() => client.conversationState(6).top === 3, 500, 'top 3');
  assert.equal(got.edit.length, 0);
  assert.equal(got.delete.length, 1);
  client.close();
});

test('history returns entries (for the caller to skip) and applies them', async () => {
  const { client, got } = await connected({
    history: (f) => ({ id: f.id, type: 'ok', result: { messages: [msg(8, 1), edit(8, 2, 1, 'h')].map(({ type, ...m }) => m) } }),
  });
  const page = await client.history(8);
  assert.deepEqual(page.map((m) => isLogEntry(m)), [false, true]);
  assert.equal(client.conversationState(8).top, 2);
  assert.equal(got.message.length, 0);
  assert.deepEqual(got.edit.map((e) => [e.seq, e.body]), [[1, 'h']]);
  client.close();
});

test('an expired event tombstones each of its seqs as a delete, once, without moving the seq', async () => {
  const { client, ws, got } = await connected();
  const expired = [];
  client.on('expired', (e) => expired.push(e));
  ws.push(msg(9, 1));
  ws.push(msg(9, 2));
  ws.push(msg(9, 3));
  await until(() => got.message.length === 3, 500, 'messages');
  ws.push({ type: 'expired', conversation: 9, seqs: [1, 2], deleted_at: '2026-11-28T10:01:00.000Z' });
  await until(() => got.delete.length === 2, 500, 'expired applied');
  assert.deepEqual(got.delete, [
    { type: 'delete', conversation: 9, seq: 1, deleted_at: '2026-11-28T10:01:00.000Z' },
    { type: 'delete', conversation: 9, seq: 2, deleted_at: '2026-11-28T10:01:00.000Z' }]);
  assert.equal(expired.length, 1);
  ws.push({ type: 'expired', conversation: 9, seqs: [2], deleted_at: '2026-11-28T10:01:01.000Z' });  // again: nothing new
  ws.push({ type: 'expired', conversation: 9 });                                                      // no seqs: ignored
  await until(() => expired.length === 3, 500, 'events seen');
  assert.equal(got.delete.length, 2);
  assert.equal(client.conversationState(9).top, 3);
  client.close();
});

test('a broadcast event makes the client sync, which brings the service conversation\'s message', async () => {
  let page = 0;
  const { client, ws, got } = await connected({
    sync: (f) => {
      page++;
      if (page === 1) return { id: f.id, type: 'ok', result: { messages: [], more: false } };
      return { id: f.id, type: 'ok', result: { messages: [msg(40, 1, { kind: 'system', sender: 0, body: '{"action":"broadcast","broadcast":1,"title":"T","body":"B"}' })].map(({ type, ...m }) => m), more: false } };
    },
  });
  const seen = [];
  client.on('broadcast', (e) => seen.push(e));
  ws.push({ type: 'broadcast', broadcast: 1, title: 'T', body: 'B' });
  await until(() => got.message.length === 1, 500, 'synced');
  assert.deepEqual(seen, [{ type: 'broadcast', broadcast: 1, title: 'T', body: 'B' }]);
  assert.deepEqual([got.message[0].conversation, got.message[0].kind], [40, 'system']);
  client.close();
});
