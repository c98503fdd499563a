// Authentication: token in the query or in a first auth frame, the hello
// frame, 4001 for bad/expired/missing tokens, 4008 for the auth timeout, and
// nothing accepted before authentication.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { newDb, makeUser, startGateway, stopAll, Client, token, signToken, issueToken, connectAs, ms } from './lib.mjs';

const DB = 'gw_01_auth';
let gw, alice;

before(async () => {
  await newDb(DB);
  alice = await makeUser(DB, { devices: 2 });
  gw = await startGateway({ db: DB, label: 'main' });
});
after(stopAll);

// The hello frame carries (at least) exactly these fields and values.
function assertHello(hello, want) {
  const got = {};
  for (const k of Object.keys(want)) got[k] = hello[k];
  assert.deepEqual(got, want, `hello was ${JSON.stringify(hello)}`);
}

// Connects with the given query token and expects the server to close with code.
async function expectRejected(tokenValue, code = 4001, { auth } = {}) {
  const c = await Client.connect(gw, { token: tokenValue, auth, hello: false, label: 'rejected' });
  const info = await c.waitClose(4000);
  assert.equal(info.code, code, `close code for ${tokenValue ?? 'auth frame'}; frames: ${c.recent()}`);
  assert.ok(!c.frames.some((f) => f.type === 'hello'), 'no hello before a rejection');
  return c;
}

test('hello frame after a valid query token', async () => {
  const c = await connectAs(gw, alice.id, 1);
  assertHello(c.hello, { type: 'hello', user: alice.id, device: 1, node: gw.node, heartbeat: 30 });
  const pong = await c.request({ id: 'p1', type: 'ping' });
  assert.deepEqual(pong, { id: 'p1', type: 'pong' });
  c.close();
});

test('hello reports the second device and the configured heartbeat', async () => {
  const gw2 = await startGateway({ db: DB, args: ['--heartbeat', '12'], label: 'heartbeat' });
  const c = await connectAs(gw2, alice.id, 2);
  assertHello(c.hello, { type: 'hello', user: alice.id, device: 2, node: gw2.node, heartbeat: 12 });
  c.close();
  await gw2.stop();
});

test('token from chat.issue_token is accepted', async () => {
  const tok = await issueToken(DB, alice.id, 1);
  const c = await Client.connect(gw, { token: tok, label: 'issued' });
  assert.equal(c.hello.user, alice.id);
  assert.equal(c.hello.device, 1);
  c.close();
});

test('token in a first auth frame', async () => {
  const c = await Client.connect(gw, { auth: token(alice.id, 2), label: 'auth-frame' });
  assert.equal(c.hello.type, 'hello');
  assert.equal(c.hello.user, alice.id);
  assert.equal(c.hello.device, 2);
  const r = await c.request({ id: 7, type: 'ping' });
  assert.equal(r.type, 'pong');
  c.close();
});

test('bad signature closes with 4001', async () => {
  const good = token(alice.id, 1);
  const [h, p, s] = good.split('.');
  const flipped = (s[0] === 'A' ? 'B' : 'A') + s.slice(1);
  await expectRejected(`${h}.${p}.${flipped}`);
  // Payload changed after signing (another user), signature kept.
  const other = token(alice.id + 1, 1).split('.')[1];
  await expectRejected(`${h}.${other}.${s}`);
});

test('token signed with the wrong secret closes with 4001', async () => {
  await expectRejected(signToken({ sub: alice.id, dev: 1, key: 'not-the-secret' }));
});

test('expired token closes with 4001', async () => {
  await expectRejected(token(alice.id, 1, { exp: Math.floor(Date.now() / 1000) - 60 }));
});

test('alg none and other algorithms close with 4001', async () => {
  await expectRejected(signToken({ sub: alice.id, dev: 1, alg: 'none' }));
  await expectRejected(signToken({ sub: alice.id, dev: 1, alg: 'HS384' }));
  await expectRejected(signToken({ sub: alice.id, dev: 1, alg: 'HS512' }));
});

test('garbage and claim-less tokens close with 4001', async () => {
  await expectRejected('not.a.jwt');
  await expectRejected('garbage');
  await expectRejected(signToken({ sub: undefined, dev: 1 }));
});

test('missing token closes with 4001', async () => {
  await expectRejected(undefined, 4001, { auth: null });
  const c = await Client.connect(gw, { hello: false, label: 'no-token-field' });
  c.sendJson({ type: 'auth' });
  assert.equal((await c.waitClose(4000)).code, 4001);
  const e = await Client.connect(gw, { hello: false, label: 'empty-query', url: `${gw.url}/ws?token=` });
  e.sendJson({ type: 'auth', token: '' });
  assert.equal((await e.waitClose(4000)).code, 4001);
});

test('bad token in the auth frame closes with 4001', async () => {
  await expectRejected(undefined, 4001, { auth: signToken({ sub: alice.id, dev: 1, key: 'wrong' }) });
});

test('nothing is accepted before authentication', async () => {
  const c = await Client.connect(gw, { hello: false, label: 'pre-auth' });
  c.sendJson({ id: 1, type: 'ping' });
  c.sendJson({ id: 2, type: 'send', conversation: 1, body: 'sneaky', client_msg_id: 'x1' });
  const info = await c.waitClose(4000);
  assert.equal(info.code, 4001, `frames: ${c.recent()}`);
  assert.ok(!c.frames.some((f) => f.type === 'pong' || f.type === 'ok' || f.type === 'hello'), `answered before auth: ${c.recent()}`);
});

test('auth timeout closes with 4008', async () => {
  const gw2 = await startGateway({ db: DB, args: ['--auth-timeout', '1'], label: 'auth-timeout' });
  const c = await Client.connect(gw2, { hello: false, label: 'silent' });
  const t0 = Date.now();
  const info = await c.waitClose(5000);
  assert.equal(info.code, 4008);
  assert.ok(Date.now() - t0 >= 700, `closed after ${Date.now() - t0} ms, before the 1 s auth timeout`);
  // An authenticated client on the same gateway is not timed out.
  const ok = await connectAs(gw2, alice.id, 1);
  await new Promise((r) => setTimeout(r, ms(1600)));
  assert.ok(ok.open, 'authenticated connection closed by the auth timeout');
  ok.close();
  await gw2.stop();
});
