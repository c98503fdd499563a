// Exactly-once view: contiguous seq, gap repair, dedup, batched acks, send retry, typing.
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { ChatClient } from '../../web/chat-client.js';
import { FakeSocket, connectClient, idleGateway, until, sleep, msg } from './fake-socket.mjs';

const opts = (extra = {}) => ({ url: 'ws://gw.test/ws', token: 't', WebSocket: FakeSocket, requestTimeout: 60, ackDelay: 10, pingInterval: 0, watchNetwork: false, backoffBase: 5, ...extra });

async function connected(extra, overrides) {
  const client = new ChatClient(opts(extra));
  const got = [];
  client.on('message', (m) => got.push(m));
  const ws = await connectClient(client, { overrides, waitSync: true });
  return { client, ws, got };
}

beforeEach(() => FakeSocket.reset());

test('a seq that is not next is stored and the gap is fetched with after', async () => {
  const afters = [];
  const { client, ws, got } = await connected({}, {
    after: (f) => { afters.push(f); return { id: f.id, type: 'ok', result: { messages: [msg(7, 2), msg(7, 3)] } }; },
  });
  ws.push(msg(7, 1));
  ws.push(msg(7, 4));
  await until(() => got.length === 4, 500, 'repaired messages');
  assert.deepEqual(got.map((m) => m.seq), [1, 4, 2, 3]);
  assert.equal(afters.length, 1);
  assert.equal(afters[0].conversation, 7);
  assert.equal(afters[0].after_seq, 1);
  assert.deepEqual(client.conversationState(7), { top: 4, pending: [], acked: client.conversationState(7).acked });
  client.close();
});

test('gap repair keeps asking until the gap is closed, in pages', async () => {
  const { client, ws, got } = await connected({}, {
    after: (f) => ({ id: f.id, type: 'ok', result: { messages: [msg(1, f.after_seq + 1)] } }),  // one per page
  });
  ws.push(msg(1, 1));
  ws.push(msg(1, 5));
  await until(() => client.conversationState(1).top === 5, 1000, 'top 5');
  assert.deepEqual(ws.of('after').map((f) => f.after_seq), [1, 2, 3]);
  assert.deepEqual(got.map((m) => m.seq).sort(), [1, 2, 3, 4, 5]);
  client.close();
});

test('duplicates are dropped: repeated events, repaired seqs, sync replays', async () => {
  const { client, ws, got } = await connected({}, {
    after: (f) => ({ id: f.id, type: 'ok', result: { messages: [msg(2, 2), msg(2, 3), msg(2, 4)] } }),
  });
  ws.push(msg(2, 1));
  ws.push(msg(2, 1));
  ws.push(msg(2, 3));          // gap: 2 fetched with 3 and 4 again
  ws.push(msg(2, 3));
  await until(() => client.conversationState(2).top === 4);
  ws.push(msg(2, 4));
  ws.push(msg(2, 2));
  await sleep(20);
  assert.deepEqual(got.map((m) => m.seq), [1, 3, 2, 4]);
  client.close();
});

test('acks are batched: the highest contiguous seq per conversation, once', async () => {
  const { client, ws } = await connected({ ackDelay: 30 }, {
    after: () => undefined,      // leave the gap open
  });
  for (let s = 1; s <= 5; s++) ws.push(msg(1, s));
  ws.push(msg(2, 10));
  ws.push(msg(2, 12));            // gap at 11: ack stops at 10
  assert.equal(ws.of('ack').length, 0, 'acks wait for the batch delay');
  await until(() => ws.of('ack').length === 2, 500, 'two acks');
  await sleep(40);
  const acks = ws.of('ack').map((f) => `${f.conversation}/${f.seq}`).sort();
  assert.deepEqual(acks, ['1/5', '2/10']);
  ws.push(msg(1, 6));
  await until(() => ws.of('ack').length === 3);
  assert.equal(ws.of('ack').at(-1).seq, 6);
  client.close();
});

test('an unanswered send is retried with the same client_msg_id, also after reconnect', async () => {
  const { client, ws, got } = await connected({ requestTimeout: 40 }, { send: () => undefined });
  const p = client.send(9, 'hello');
  await until(() => ws.of('send').length === 2, 1000, 'retry after timeout');
  const [a, b] = ws.of('send');
  assert.equal(a.client_msg_id, b.client_msg_id);
  assert.notEqual(a.id, b.id);
  assert.equal(a.body, 'hello');
  ws.serverClose(1006);
  await until(() => FakeSocket.instances.length === 2, 500, 'reconnect');
  const ws2 = FakeSocket.last();
  ws2.responder = idleGateway({
    send: (f) => ({ id: f.id, type: 'ok', result: { conversation: 9, seq: 4, created_at: 'now', duplicate: true } }),
  });
  ws2.hello(17, 1);
  const result = await p;
  assert.equal(result.seq, 4);
  assert.equal(ws2.of('send')[0].client_msg_id, a.client_msg_id);
  assert.equal(client.outbox.length, 0);
  await until(() => got.some((m) => m.own), 500, 'own message (after the sync)');
  const own = got.find((m) => m.own);
  assert.equal(own.seq, 4);
  assert.equal(own.sender, 17);
  assert.equal(client.conversationState(9).top, 4);
  client.close();
});

test('sends keep their order across a reconnect', async () => {
  const { client, ws } = await connected({ requestTimeout: 1000 }, { send: () => undefined });
  const ps = [client.send(1, 'a'), client.send(1, 'b'), client.send(1, 'c')];
  ws.serverClose(1012);
  await until(() => FakeSocket.instances.length === 2, 500);
  const ws2 = FakeSocket.last();
  let seq = 0;
  ws2.responder = idleGateway({ send: (f) => ({ id: f.id, type: 'ok', result: { conversation: 1, seq: ++seq, created_at: 'now', duplicate: false } }) });
  ws2.hello(17, 1);
  const rs = await Promise.all(ps);
  assert.deepEqual(ws2.of('send').map((f) => f.body), ['a', 'b', 'c']);
  assert.deepEqual(rs.map((r) => r.seq), [1, 2, 3]);
  client.close();
});

test('a send answered 08006 (gateway lost its database) is retried with the same client_msg_id, not rejected', async () => {
  let calls = 0;
  const { client, ws } = await connected({}, {
    send: (f) => (++calls === 1
      ? { id: f.id, type: 'error', code: '08006', error: 'connection_failure', message: 'database connection lost; the request may or may not have been applied' }
      : { id: f.id, type: 'ok', result: { conversation: 3, seq: 7, created_at: 'now', duplicate: true } }),
  });
  const r = await client.send(3, 'x');
  assert.equal(r.seq, 7);
  const [a, b] = ws.of('send');
  assert.equal(a.client_msg_id, b.client_msg_id);
  assert.equal(client.outbox.length, 0);
  client.close();
});

test('a send refused by the server rejects and is not retried', async () => {
  const { client, ws } = await connected({}, {
    send: (f) => ({ id: f.id, type: 'error', code: '42501', error: 'insufficient_privilege', message: 'user 17 is not a member of conversation 3' }),
  });
  await assert.rejects(client.send(3, 'x'), (e) => e.code === '42501');
  await sleep(30);
  assert.equal(ws.of('send').length, 1);
  assert.equal(client.outbox.length, 0);
  client.close();
});

test('own message seq counts as stored: no gap repair for it', async () => {
  const { client, ws } = await connected({}, {
    send: (f) => ({ id: f.id, type: 'ok', result: { conversation: 5, seq: 2, created_at: 'now', duplicate: false } }),
  });
  ws.push(msg(5, 1));
  await client.send(5, 'mine');
  ws.push(msg(5, 3));
  await sleep(20);
  assert.equal(ws.of('after').length, 0);
  assert.equal(client.conversationState(5).top, 3);
  client.close();
});

test('typing is debounced: one start, refreshes, stop after idle or on send', async () => {
  const { client, ws } = await connected({ typingIdle: 60, typingRefresh: 25 });
  for (let i = 0; i < 5; i++) { client.typing(4); await sleep(10); }   // keystrokes for 50 ms or more
  const starts = ws.of('typing').filter((f) => f.typing === true);
  assert.ok(starts.length >= 2, `a start and at least one refresh: ${starts.length}`);
  assert.ok(starts.length <= 5, 'not one per keystroke unless the machine is very slow');
  assert.equal(ws.of('typing').filter((f) => f.typing === false).length, 0, 'no stop while typing');
  await until(() => ws.of('typing').some((f) => f.typing === false), 500, 'stop after idle');
  assert.equal(ws.of('typing').filter((f) => f.typing === false).length, 1);
  client.typing(4);
  await client.send(4, 'done');
  const t = ws.sent.filter((f) => f.type === 'typing' || f.type === 'send').map((f) => f.type === 'send' ? 'send' : String(f.typing));
  assert.deepEqual(t.slice(-3), ['true', 'false', 'send']);
  client.close();
});

test('someone else typing expires after the TTL; a message from them clears it', async () => {
  const { client, ws } = await connected({ typingTtl: 40 });
  const ev = [];
  client.on('typing', (t) => ev.push(t));
  ws.push({ type: 'typing', conversation: 3, user: 8, typing: true });
  assert.deepEqual(client.typingUsers(3), [8]);
  await until(() => ev.length === 2, 500, 'expiry');
  assert.equal(ev[1].typing, false);
  assert.equal(ev[1].expired, true);
  assert.deepEqual(client.typingUsers(3), []);
  ws.push({ type: 'typing', conversation: 3, user: 8, typing: true });
  ws.push(msg(3, 1, { sender: 8 }));
  assert.equal(ev.at(-1).typing, false);
  assert.deepEqual(client.typingUsers(3), []);
  await sleep(60);
  assert.equal(ev.filter((e) => e.expired).length, 1, 'no second expiry');
  ws.push({ type: 'typing', conversation: 3, user: 17, typing: true });
  assert.deepEqual(client.typingUsers(3), [], 'own typing ignored');
  client.close();
});

test('receipts, presence, edits and member events are passed through', async () => {
  const { client, ws } = await connected();
  const seen = [];
  for (const t of ['receipt', 'presence', 'edit', 'delete', 'member', 'read_state']) client.on(t, (e) => seen.push(e.type));
  ws.push({ type: 'receipt', conversation: 1, user: 2, read: 5 });
  ws.push({ type: 'presence', user: 2, online: false, last_seen: '2026-11-28T10:00:00Z' });
  ws.push({ type: 'edit', conversation: 1, seq: 2, body: 'x' });
  ws.push({ type: 'delete', conversation: 1, seq: 2 });
  ws.push({ type: 'member', conversation: 1, user: 3, action: 'added' });
  ws.push({ type: 'read_state', conversation: 1, read: 4 });
  assert.deepEqual(seen, ['receipt', 'presence', 'edit', 'delete', 'member', 'read_state']);
  client.close();
});

test('history pages count as stored, so live duplicates are dropped', async () => {
  const { client, ws, got } = await connected({}, {
    history: (f) => ({ id: f.id, type: 'ok', result: { messages: [msg(6, 8), msg(6, 9), msg(6, 10)] } }),
  });
  const h = await client.history(6, { limit: 3 });
  assert.deepEqual(h.map((m) => m.seq), [8, 9, 10]);
  ws.push(msg(6, 10));
  ws.push(msg(6, 11));
  await sleep(10);
  assert.deepEqual(got.map((m) => m.seq), [11]);
  assert.equal(ws.of('after').length, 0);
  client.close();
});

test('a start soon after the previous typing event is repeated once the server interval passed', async () => {
  const { client, ws } = await connected({ typingIdle: 1000, typingRefresh: 5000, typingInterval: 60 });
  client.typing(2);
  client.typing(2, false);            // e.g. the message was sent
  client.typing(2);                   // typing the next one at once: the server would drop this start
  assert.deepEqual(ws.of('typing').map((f) => f.typing), [true, false, true]);
  await until(() => ws.of('typing').length === 4, 500, 'repeated start');
  assert.equal(ws.of('typing')[3].typing, true);
  await sleep(80);
  assert.equal(ws.of('typing').length, 4, 'repeated once');
  client.close();
});
