// Connection life cycle of ChatClient: auth, requests, timeouts, sync, reconnect.
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { ChatClient, ChatError, backoffDelay, RESTART_ATTEMPTS, PROTOCOL } from '../../web/chat-client.js';
import { FakeSocket, connectClient, idleGateway, until, sleep, msg } from './fake-socket.mjs';

const opts = (extra = {}) => ({ url: 'ws://gw.test/ws', token: 'tok.en', WebSocket: FakeSocket, requestTimeout: 60, ackDelay: 5, pingInterval: 0, watchNetwork: false, ...extra });

/** Starts a client against an idle fake gateway and waits for hello. */
async function connected(extra) {
  const client = new ChatClient(opts(extra));
  return { client, ws: await connectClient(client, { device: 2 }) };
}

beforeEach(() => FakeSocket.reset());

test('authenticates with a first frame (no token in the URL) and the chat.v1 subprotocol', async () => {
  const { client, ws } = await connected();
  assert.equal(ws.url, 'ws://gw.test/ws');
  assert.ok(!ws.url.includes('tok.en'), 'the token never appears in the URL');
  assert.deepEqual(ws.sent[0], { type: 'auth', token: 'tok.en' });
  assert.equal(ws.protocol, PROTOCOL);
  assert.equal(client.state, 'open');
  assert.equal(client.user, 17);
  assert.equal(client.device, 2);
  client.close();
});

test('responses are matched to requests by id, errors become ChatError', async () => {
  const { client, ws } = await connected();
  ws.responder = null;
  const a = client.request('conversations', {});
  const b = client.request('direct', { user: 5 });
  const [fa, fb] = [ws.sent.at(-2), ws.sent.at(-1)];
  assert.notEqual(fa.id, fb.id);
  ws.push({ id: fb.id, type: 'error', code: '42501', error: 'insufficient_privilege', message: 'user 17 is not a member' });
  ws.ok(fa, [{ conversation_id: 1 }]);
  assert.deepEqual(await a, [{ conversation_id: 1 }]);
  await assert.rejects(b, (e) => e instanceof ChatError && e.code === '42501' && /not a member/.test(e.message));
  client.close();
});

test('a request without an answer times out', async () => {
  const { client, ws } = await connected({ requestTimeout: 30 });
  ws.responder = null;
  const t0 = Date.now();
  await assert.rejects(client.request('history', { conversation: 1 }), (e) => e.code === 'timeout');
  assert.ok(Date.now() - t0 >= 25);
  // A late answer is ignored.
  ws.ok(ws.sent.at(-1), { messages: [] });
  client.close();
});

test('a request made while disconnected waits for the connection', async () => {
  const client = new ChatClient(opts({ requestTimeout: 500 }));
  client.connect();
  const p = client.conversations();
  await until(() => FakeSocket.instances.length > 0);
  const ws = FakeSocket.last();
  await sleep(5);
  assert.deepEqual(ws.sent, [{ type: 'auth', token: 'tok.en' }], 'only the auth frame goes out before hello');
  ws.responder = idleGateway({ conversations: (f) => ({ id: f.id, type: 'ok', result: { conversations: [{ conversation: 3 }] } }) });
  ws.hello();
  assert.deepEqual(await p, [{ conversation: 3 }]);
  client.close();
});

test('sync runs until more is false, acking each page before the next', async () => {
  const client = new ChatClient(opts());
  const got = [];
  client.on('message', (m) => got.push(`${m.conversation}/${m.seq}`));
  const synced = new Promise((r) => client.on('synced', r));
  client.connect();
  await until(() => FakeSocket.instances.length > 0);
  const ws = FakeSocket.last();
  const pages = [
    { messages: [msg(1, 1), msg(1, 2), msg(2, 5)], more: true },
    { messages: [msg(2, 6), msg(3, 1)], more: true },
    { messages: [], more: false },
  ];
  const log = [];
  ws.responder = idleGateway({
    sync: (f) => { log.push('sync'); return { id: f.id, type: 'ok', result: pages.shift() }; },
    ack: (f) => { log.push(`ack ${f.conversation}/${f.seq}`); return { id: f.id, type: 'ok', result: null }; },
  });
  ws.hello();
  const s = await synced;
  assert.deepEqual(got, ['1/1', '1/2', '2/5', '2/6', '3/1']);
  assert.deepEqual(log, ['sync', 'ack 1/2', 'ack 2/5', 'sync', 'ack 2/6', 'ack 3/1', 'sync']);
  assert.deepEqual(s.conversations.sort(), [1, 2, 3]);
  client.close();
});

test('a resync event runs sync again', async () => {
  const { client, ws } = await connected();
  await until(() => ws.of('sync').length === 1);
  ws.push({ type: 'resync' });
  await until(() => ws.of('sync').length === 2, 500, 'second sync');
  client.close();
});

test('live messages that arrive during sync are applied after it, without duplicates', async () => {
  const client = new ChatClient(opts());
  const got = [];
  client.on('message', (m) => got.push(m.seq));
  client.connect();
  await until(() => FakeSocket.instances.length > 0);
  const ws = FakeSocket.last();
  let syncFrame = null;
  ws.responder = idleGateway({ sync: (f) => { if (!syncFrame) { syncFrame = f; return undefined; } return { id: f.id, type: 'ok', result: { messages: [], more: false } }; } });
  ws.hello();
  await until(() => syncFrame);
  ws.push(msg(1, 3));           // live, while the sync page is outstanding
  ws.ok(syncFrame, { messages: [msg(1, 1), msg(1, 2), msg(1, 3)], more: false });
  await until(() => got.length === 3);
  await sleep(20);
  assert.deepEqual(got, [1, 2, 3]);
  assert.equal(ws.of('after').length, 0, 'no gap repair needed');
  client.close();
});

test('backoff: full jitter between 0 and min(cap, base * 2^attempt)', () => {
  for (let a = 0; a < 12; a++) {
    const ceiling = Math.min(30000, 500 * 2 ** a);
    assert.equal(backoffDelay(a, { random: () => 0 }), 0);
    const hi = backoffDelay(a, { random: () => 0.999999 });
    assert.ok(hi < ceiling && hi >= ceiling * 0.99, `attempt ${a}: ${hi} vs ${ceiling}`);
    for (let i = 0; i < 50; i++) {
      const d = backoffDelay(a);
      assert.ok(d >= 0 && d < ceiling);
    }
  }
  assert.equal(backoffDelay(100, { random: () => 0.5 }), 15000, 'capped at 30 s');
});

test('backoff after a restart (1012): half the base for the first attempts, then as usual', () => {
  const top = () => 0.999999;
  for (let a = 0; a < 8; a++) {
    const normal = Math.min(30000, 500 * 2 ** a);
    const ceiling = a < RESTART_ATTEMPTS ? normal / 2 : normal;
    const hi = backoffDelay(a, { random: top, restart: true });
    assert.ok(hi < ceiling && hi >= ceiling * 0.99, `attempt ${a}: ${hi} vs ${ceiling}`);
  }
  assert.equal(RESTART_ATTEMPTS, 4);
});

test('only a 1012 close shortens the backoff, and a hello ends it', async () => {
  const states = [];
  const { client, ws } = await connected({ backoffBase: 100, random: () => 0.999 });
  client.on('state', (s) => states.push(s));
  ws.serverClose(1006);
  assert.ok(states.at(-1).delay >= 99 && states.at(-1).delay < 100, `after 1006: ${states.at(-1).delay}`);
  client.close();
  const b = await connected({ backoffBase: 100, random: () => 0.999 });
  const st = [];
  b.client.on('state', (s) => st.push(s));
  b.ws.serverClose(1012);
  assert.ok(st.at(-1).delay >= 49 && st.at(-1).delay < 50, `after 1012: ${st.at(-1).delay}`);
  await until(() => FakeSocket.last() !== b.ws, 500, 'reconnect');
  const ws2 = FakeSocket.last();
  ws2.responder = idleGateway();
  ws2.hello();
  ws2.serverClose(1006);
  assert.ok(st.at(-1).delay >= 99 && st.at(-1).delay < 100, `after hello then 1006: ${st.at(-1).delay}`);
  b.client.close();
});

test('reconnects with growing backoff after 1012 and resends nothing twice', async () => {
  const states = [];
  const { client, ws } = await connected({ backoffBase: 10, random: () => 0.999 });
  client.on('state', (s) => states.push(s));
  ws.serverClose(1012, 'service restart');
  assert.equal(states.at(-1).state, 'reconnecting');
  assert.ok(states.at(-1).delay < 5, 'first delay below half the base (restart)');
  await until(() => FakeSocket.instances.length === 2, 500, 'second socket');
  FakeSocket.last().serverClose(1006);
  assert.ok(states.at(-1).delay >= 5 && states.at(-1).delay < 10, `second delay ${states.at(-1).delay}`);
  await until(() => FakeSocket.instances.length === 3, 500, 'third socket');
  FakeSocket.last().serverClose(4009, 'lagging');
  assert.ok(states.at(-1).delay >= 10 && states.at(-1).delay < 20);
  await until(() => FakeSocket.instances.length === 4, 500, 'fourth socket');
  const ws4 = FakeSocket.last();
  ws4.responder = idleGateway();
  ws4.hello();
  assert.equal(client.state, 'open');
  await until(() => ws4.of('sync').length === 1, 500, 'sync after reconnect');
  ws4.serverClose(1012);
  assert.ok(states.at(-1).delay < 10, 'backoff resets after a successful hello');
  client.close();
});

test('a refused token (4001) stops reconnecting and rejects connect', async () => {
  const client = new ChatClient(opts({ backoffBase: 1 }));
  const errors = [];
  client.on('error', (e) => errors.push(e));
  const p = client.connect();
  await until(() => FakeSocket.instances.length > 0);
  FakeSocket.last().serverClose(4001, 'bad token');
  await assert.rejects(p, (e) => e.code === '4001');
  await sleep(20);
  assert.equal(FakeSocket.instances.length, 1);
  assert.equal(client.state, 'closed');
  assert.equal(errors.length, 1);
});

test('a token function is asked again on each connect', async () => {
  let n = 0;
  const client = new ChatClient(opts({ token: async () => `t${++n}`, backoffBase: 1 }));
  client.connect().catch(() => {});
  await until(() => FakeSocket.instances.length === 1);
  FakeSocket.last().serverClose(4001);
  await until(() => FakeSocket.instances.length === 2);
  assert.deepEqual(FakeSocket.instances[0].sent[0], { type: 'auth', token: 't1' });
  assert.deepEqual(FakeSocket.instances[1].sent[0], { type: 'auth', token: 't2' });
  client.close();
});

test('network offline closes the socket and waits; online reconnects at once', async () => {
  const { client, ws } = await connected({ backoffBase: 10000 });
  client.setNetwork(false);
  assert.equal(client.state, 'offline');
  assert.ok(ws.closed);
  await sleep(20);
  assert.equal(FakeSocket.instances.length, 1);
  client.setNetwork(true);
  await until(() => FakeSocket.instances.length === 2, 200, 'reconnect on online');
  client.close();
});

test('an unanswered liveness ping drops the socket and reconnects', async () => {
  const { client, ws } = await connected({ pingInterval: 20, requestTimeout: 20, backoffBase: 1 });
  ws.responder = idleGateway({ ping: () => undefined });
  await until(() => FakeSocket.instances.length === 2, 500, 'reconnect after ping timeout');
  assert.ok(ws.of('ping').length >= 1);
  client.close();
});

test('close() rejects waiting requests and stops everything', async () => {
  const { client, ws } = await connected();
  ws.responder = null;
  const p = client.history(1);
  client.close();
  await assert.rejects(p, (e) => e.code === 'disconnected' || e.code === 'closed');
  assert.equal(client.state, 'closed');
  await assert.rejects(client.request('ping'), (e) => e.code === 'closed');
});

test('a sync loop cut by a disconnect does not end the next one early', async () => {
  const client = new ChatClient(opts({ backoffBase: 1 }));
  const got = [];
  client.on('message', (m) => got.push(m.seq));
  client.connect();
  await until(() => FakeSocket.instances.length === 1);
  const ws1 = FakeSocket.last();
  ws1.responder = idleGateway({ sync: () => undefined });   // never answers
  ws1.hello();
  await until(() => ws1.of('sync').length === 1);
  ws1.serverClose(1006);
  await until(() => FakeSocket.instances.length === 2, 500);
  const ws2 = FakeSocket.last();
  let syncFrame = null;
  ws2.responder = idleGateway({ sync: (f) => { syncFrame = f; return undefined; } });
  ws2.hello();
  await until(() => syncFrame);
  await sleep(5);
  ws2.push(msg(1, 2));               // must be held: the new loop is still running
  assert.deepEqual(got, []);
  ws2.ok(syncFrame, { messages: [msg(1, 1), msg(1, 2)], more: false });
  await until(() => got.length === 2);
  assert.deepEqual(got, [1, 2]);
  client.close();
});

test('own sends answered during a sync are applied after it', async () => {
  const client = new ChatClient(opts());
  const got = [];
  client.on('message', (m) => got.push(`${m.seq}${m.own ? ' own' : ''}`));
  client.connect();
  await until(() => FakeSocket.instances.length === 1);
  const ws = FakeSocket.last();
  let syncFrame = null;
  ws.responder = idleGateway({
    sync: (f) => { syncFrame = f; return undefined; },
    send: (f) => ({ id: f.id, type: 'ok', result: { conversation: 4, seq: 3, created_at: 'now', duplicate: false } }),
  });
  const sent = client.send(4, 'queued while connecting');
  ws.hello(17, 1);
  await sent;
  ws.ok(syncFrame, { messages: [msg(4, 1), msg(4, 2)], more: false });
  await until(() => got.length === 3);
  assert.deepEqual(got, ['1', '2', '3 own']);
  assert.equal(client.conversationState(4).top, 3);
  client.close();
});

test('results are read by their documented keys (docs/protocol.md), nothing else', async () => {
  const { client, ws } = await connected();
  const ok = (result) => (f) => ({ id: f.id, type: 'ok', result });
  ws.responder = idleGateway({
    direct: ok({ conversation: 5 }),
    create_group: ok({ conversation: 6 }),
    presence: ok({ users: [{ user: 2, online: true, last_seen: null }] }),
    conversations: ok({ conversations: [{ conversation: 5, kind: 'direct' }] }),
    after: ok({ messages: [msg(5, 1)] }),
  });
  assert.equal(await client.direct(2), 5);
  assert.equal(await client.createGroup('g', [2]), 6);
  assert.deepEqual(await client.presence([2]), [{ user: 2, online: true, last_seen: null }]);
  assert.deepEqual(await client.conversations(), [{ conversation: 5, kind: 'direct' }]);
  assert.equal((await client.after(5, 0))[0].seq, 1);
  // Other shapes are not guessed at.
  ws.responder = idleGateway({
    direct: ok({ conversation_id: 5 }),
    presence: ok([{ user: 2 }]),
    conversations: ok({ rows: [{ conversation: 5 }] }),
    after: ok([msg(5, 1)]),
  });
  assert.ok(Number.isNaN(await client.direct(2)));
  assert.deepEqual(await client.presence([2]), []);
  assert.deepEqual(await client.conversations(), []);
  assert.deepEqual(await client.after(5, 0), []);
  client.close();
});
