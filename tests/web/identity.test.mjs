// Token handling of ChatClient: first-frame auth, refresh before exp on the
// open connection (re-authentication), and the close codes that end it.
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { ChatClient, tokenClaims, tokenExp, refreshDelay } from '../../web/chat-client.js';
import { FakeSocket, connectClient, idleGateway, until, sleep } from './fake-socket.mjs';

const b64url = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
/** An unsigned JWT-shaped token with the given exp (the client never verifies). */
const jwt = (exp, extra = {}) => `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url({ sub: '17', dev: 2, exp, ...extra })}.c2ln`;
const nowS = () => Math.floor(Date.now() / 1000);
const opts = (extra = {}) => ({ url: 'ws://gw.test/ws', WebSocket: FakeSocket, requestTimeout: 200, ackDelay: 5, pingInterval: 0, watchNetwork: false, backoffBase: 1, ...extra });

/** Connects against an idle fake gateway and waits for hello. */
async function connected(extra) {
  const client = new ChatClient(opts(extra));
  return { client, ws: await connectClient(client, { device: 2 }) };
}

beforeEach(() => FakeSocket.reset());

test('tokenClaims decodes the payload of a JWT without verifying it; junk gives null', () => {
  assert.deepEqual(tokenClaims(jwt(1893456000)), { sub: '17', dev: 2, exp: 1893456000 });
  for (const junk of ['', 'abc', 'a.!!!.c', `x.${b64url(5)}.y`, `x.${b64url(null)}.y`, null, undefined]) assert.equal(tokenClaims(junk), null, String(junk));
});

test('tokenExp reads the exp claim of a base64url JWT; junk gives null', () => {
  assert.equal(tokenExp(jwt(1893456000)), 1893456000);
  // base64url characters (- and _) and missing padding are handled.
  assert.equal(tokenExp(jwt(1893456000, { name: '>>>???' })), 1893456000);
  assert.equal(tokenExp('not a token'), null);
  assert.equal(tokenExp(`${b64url({})}.${b64url({ sub: '1' })}.x`), null);
  assert.equal(tokenExp(undefined), null);
});

test('refreshDelay: margin before exp, halfway for short tokens, at once when expired', () => {
  const now = 1_000_000_000_000;
  assert.equal(refreshDelay(now / 1000 + 3600, now, 60000), 3540000);
  assert.equal(refreshDelay(now / 1000 + 120, now, 60000), 60000);
  assert.equal(refreshDelay(now / 1000 + 60, now, 60000), 30000);
  assert.equal(refreshDelay(now / 1000 - 5, now, 60000), 0);
});

test('the first frame is the auth frame; the URL carries no token', async () => {
  const tok = jwt(nowS() + 3600);
  const { client, ws } = await connected({ token: tok });
  assert.equal(ws.url, 'ws://gw.test/ws');
  assert.deepEqual(ws.sent[0], { type: 'auth', token: tok });
  assert.equal(ws.sent.filter((f) => f.type === 'auth').length, 1);
  client.close();
});

test('a token function is asked for a new token before exp and the open connection re-authenticates', async () => {
  const first = jwt(nowS() + 2);
  const second = jwt(nowS() + 3600);
  const issued = [first, second];
  let calls = 0;
  const renewed = [];
  const { client, ws } = await connected({ getToken: async () => issued[Math.min(calls++, 1)], refreshMargin: 1000 });
  client.on('token', (t) => renewed.push(t.exp));
  assert.equal(calls, 1, 'one token for the connect');
  const sentAt = Date.now();
  await until(() => ws.sent.some((f) => f.type === 'auth' && f.id !== undefined), 2500, 'refresh auth frame');
  const auth = ws.sent.find((f) => f.type === 'auth' && f.id !== undefined);
  assert.equal(auth.token, second);
  assert.ok(Date.now() < tokenExp(first) * 1000, 'refreshed before the first token expired');
  assert.ok(Date.now() - sentAt >= 100, 'not at once: scheduled from the token\'s exp');
  await until(() => renewed.length === 1, 500, 'token event');
  assert.equal(renewed[0], tokenExp(second));
  assert.equal(calls, 2);
  // The next refresh is an hour away: nothing more now, and the socket is the same.
  await sleep(300);
  assert.equal(calls, 2);
  assert.equal(FakeSocket.instances.length, 1);
  assert.equal(client.state, 'open');
  client.close();
});

test('a token function that returns no newer token is asked again, without sending it', async () => {
  const tok = jwt(nowS() + 2);
  let calls = 0;
  const { client, ws } = await connected({ getToken: () => { calls++; return tok; }, refreshMargin: 1000 });
  await until(() => calls >= 3, 2500, 'repeated asks');
  assert.equal(ws.sent.filter((f) => f.type === 'auth').length, 1, 'only the connect\'s auth frame');
  client.close();
});

test('a static token is never refreshed', async () => {
  const { client, ws } = await connected({ token: jwt(nowS() + 1), refreshMargin: 400 });
  await sleep(700);
  assert.equal(ws.sent.filter((f) => f.type === 'auth').length, 1);
  client.close();
});

test('close 4003 (device revoked) stops reconnecting even with a token function', async () => {
  let calls = 0;
  const client = new ChatClient(opts({ getToken: async () => { calls++; return jwt(nowS() + 3600); } }));
  const errors = [];
  client.on('error', (e) => errors.push(e));
  const p = client.connect();
  await until(() => FakeSocket.instances.length > 0);
  FakeSocket.last().serverClose(4003, 'device revoked');
  await assert.rejects(p, (e) => e.code === '4003' && /revoked/.test(e.message));
  await sleep(30);
  assert.equal(FakeSocket.instances.length, 1);
  assert.equal(calls, 1);
  assert.equal(client.state, 'closed');
});

test('close 4001 at exp with a token function reconnects with a fresh token', async () => {
  let calls = 0;
  const { client } = await connected({ getToken: async () => jwt(nowS() + 3600 + ++calls), refreshMargin: 1000 });
  FakeSocket.last().serverClose(4001, 'token expired');
  await until(() => FakeSocket.instances.length === 2, 500, 'reconnect');
  await until(() => FakeSocket.last().sent.length > 0, 500, 'auth frame');
  assert.equal(tokenExp(FakeSocket.last().sent[0].token), nowS() + 3600 + 2);
  client.close();
});
