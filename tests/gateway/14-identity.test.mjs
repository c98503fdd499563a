// Identity and trust: devices are confirmed by chat.connect (unknown or
// removed devices get 4003 and nothing else), chat.remove_device closes the
// device's open connections within 2 s, a token's exp closes the connection
// with 4001 unless the client re-authenticated, and only signed
// notifications are delivered, "ref":true ones resolved per recipient.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHmac } from 'node:crypto';
import {
  newDb, makeUser, direct, startGateway, stopAll, connectAs, Client, token, psql, value,
  secret, sleep, ms, parseMetrics, lit,
} from './lib.mjs';

const DB = 'gw_14_identity';
const INTRUDER = 'gw14_intruder';
let gw, alice, bob, carol;

before(async () => {
  await newDb(DB);
  alice = await makeUser(DB, { devices: 2 });
  bob = await makeUser(DB, { devices: 2 });
  carol = await makeUser(DB);
  await psql('postgres', `DROP ROLE IF EXISTS ${INTRUDER}`);
  // An ordinary login role: PUBLIC's default CONNECT is all it has.
  await psql('postgres', `CREATE ROLE ${INTRUDER} LOGIN`);
  gw = await startGateway({ db: DB });
});
after(async () => {
  await stopAll();
  await psql('postgres', `DROP ROLE IF EXISTS ${INTRUDER}`).catch(() => {});
});

// Opens a connection and resolves {client, closed} without waiting for hello.
async function open(user, dev, opts = {}) {
  return Client.connect(gw, { token: token(user, dev, opts.tokenOpts), hello: false, label: opts.label ?? `u${user}/${dev}` });
}

// Runs SQL as the intruder role (a NOTIFY any connecting role can send).
function asIntruder(sql) {
  return new Promise((resolve, reject) => {
    execFile(process.env.PSQL || 'psql', ['-qAtX', '-v', 'ON_ERROR_STOP=1', '-d', DB, '-c', sql],
      { env: { ...process.env, PGUSER: INTRUDER }, timeout: 10000 }, (err, stdout, stderr) => {
        if (err) reject(new Error(`psql as ${INTRUDER} failed: ${stderr || err.message}`));
        else resolve(stdout);
      });
  });
}

// The "v1 <hex>" line the extension puts in front of a payload, for key.
function sign(rest, key = createHmac('sha256', secret()).update('chat-notify').digest()) {
  return `v1 ${createHmac('sha256', key).update(rest).digest('hex')}\n${rest}`;
}

async function metric(name) {
  const m = parseMetrics((await gw.get('/metrics')).text).find((x) => x.name === name);
  assert.ok(m, `metric ${name} exists`);
  return m.value;
}

test('a token for a never-registered device or unknown user is refused with 4003 before any hello', async () => {
  for (const [user, dev, label] of [[alice.id, 99, 'unknown device'], [987654321, 1, 'unknown user']]) {
    const c = await open(user, dev, { label });
    const { code, reason } = await c.waitClose(3000);
    assert.equal(code, 4003, `${label}: close code`);
    assert.match(reason, /revoked/);
    assert.deepEqual(c.frames, [], `${label}: no hello, no frame at all`);
  }
  assert.equal(await value(DB, `SELECT count(*) FROM chat.sessions WHERE device_id = 99`), 0);
});

test('remove_device closes that device within 2 s with 4003; the user\'s other device stays', async () => {
  const conv = await direct(DB, alice.id, bob.id);
  const a1 = await connectAs(gw, alice.id, 1, { label: 'alice/1' });
  const a2 = await connectAs(gw, alice.id, 2, { label: 'alice/2' });
  const b1 = await connectAs(gw, bob.id, 1, { label: 'bob/1' });
  const t0 = Date.now();
  await psql(DB, `SELECT chat.remove_device(${alice.id}, 2)`);
  const { code } = await a2.waitClose(2000);
  assert.equal(code, 4003);
  assert.ok(Date.now() - t0 < 2000, `closed after ${Date.now() - t0} ms`);
  // The other device goes on: sends, and receives the peer's message.
  const since = a1.mark();
  const r = await b1.call({ type: 'send', conversation: conv, body: 'after the removal', client_msg_id: 'rm-1' });
  assert.equal((await a1.waitFor((f) => f.type === 'message' && f.seq === r.seq, 3000, since)).body, 'after the removal');
  assert.equal((await a1.call({ type: 'send', conversation: conv, body: 'still me', client_msg_id: 'rm-2' })).duplicate, false);
  assert.ok(a1.open && b1.open);
  // The revoked event is the gateway's, never forwarded to a client.
  for (const c of [a1, b1]) assert.equal(c.frames.filter((f) => f.type === 'revoked').length, 0, c.label);
  // And the removed device cannot come back with its old token.
  const again = await open(alice.id, 2, { label: 'alice/2 again' });
  assert.equal((await again.waitClose(3000)).code, 4003);
  assert.deepEqual(again.frames, []);
  a1.close(); b1.close();
});

test('a request of a device removed behind the gateway\'s back fails and closes 4003', async () => {
  // The session row goes first, so remove_device has no node to tell: the
  // gateway misses the revocation, and client_request must refuse anyway.
  const conv = await direct(DB, bob.id, carol.id);
  const b2 = await connectAs(gw, bob.id, 2, { label: 'bob/2' });
  await psql(DB, `DELETE FROM chat.sessions WHERE user_id = ${bob.id} AND device_id = 2; SELECT chat.remove_device(${bob.id}, 2)`);
  await b2.expectNone(() => true, 300, b2.mark());
  const r = await b2.request({ type: 'send', conversation: conv, body: 'ghost', client_msg_id: 'ghost-1' });
  assert.equal(r.type, 'error');
  assert.equal(r.code, 'P0002');
  assert.equal((await b2.waitClose(2000)).code, 4003);
  assert.equal(await value(DB, `SELECT count(*) FROM chat.messages WHERE body = 'ghost'`), 0);
});

test('at the token\'s exp an open connection is closed with 4001', async () => {
  const exp = Math.floor(Date.now() / 1000) + 3;
  const c = await connectAs(gw, carol.id, 1, { label: 'short token', token: token(carol.id, 1, { exp }) });
  assert.equal((await c.call({ type: 'conversations' })).conversations.length >= 0, true);
  const { code, reason } = await c.waitClose(6000);
  assert.equal(code, 4001);
  assert.match(reason, /expired/);
  assert.ok(Date.now() >= exp * 1000 - 50, `closed ${exp * 1000 - Date.now()} ms before exp`);
  assert.ok(Date.now() <= exp * 1000 + ms(2500), `closed ${Date.now() - exp * 1000} ms after exp`);
});

test('re-authentication with a fresh token of the same device keeps the connection past the first exp', async () => {
  const exp = Math.floor(Date.now() / 1000) + 3;
  const c = await connectAs(gw, carol.id, 1, { label: 'renewed', token: token(carol.id, 1, { exp }) });
  const fresh = token(carol.id, 1, { ttl: 3600 });
  const freshExp = JSON.parse(Buffer.from(fresh.split('.')[1], 'base64url')).exp;
  // With an id: an ok response carrying the new exp.
  const r = await c.request({ id: 'reauth-1', type: 'auth', token: fresh });
  assert.deepEqual(r, { id: 'reauth-1', type: 'ok', result: { exp: freshExp } });
  // Without an id: an auth_ok event.
  const since = c.mark();
  c.sendJson({ type: 'auth', token: fresh });
  assert.deepEqual(await c.waitFor((f) => f.type === 'auth_ok', 2000, since), { type: 'auth_ok', exp: freshExp });
  await sleep(Math.max(0, exp * 1000 - Date.now()) + ms(2000));
  assert.ok(c.open, `closed: ${JSON.stringify(c.closeInfo)}`);
  assert.ok(Array.isArray((await c.call({ type: 'conversations' })).conversations));
  c.close();
});

test('re-authentication with another device\'s, another user\'s or a bad token closes 4001', async () => {
  const cases = [
    ['other device', token(alice.id, 2)],
    ['other user', token(bob.id, 1)],
    ['bad signature', token(alice.id, 1, { key: 'not the secret' })],
    ['expired', token(alice.id, 1, { exp: Math.floor(Date.now() / 1000) - 10 })],
  ];
  for (const [label, tok] of cases) {
    const c = await connectAs(gw, alice.id, 1, { label });
    c.sendJson({ id: 1, type: 'auth', token: tok });
    const { code } = await c.waitClose(3000);
    assert.equal(code, 4001, label);
    assert.equal(c.frames.filter((f) => f.type === 'ok' || f.type === 'auth_ok').length, 0, label);
  }
});

test('forged notifications (unsigned, wrong key, tampered) are dropped and counted; a signed one is delivered', async () => {
  const conv = await direct(DB, alice.id, carol.id);
  const c1 = await connectAs(gw, carol.id, 1, { label: 'carol' });
  const fake = (body) => `${carol.id}\n${JSON.stringify({ type: 'message', conversation: conv, seq: 999, sender: alice.id, sender_device: 1, kind: 'text', body, client_msg_id: null, reply_to: null, created_at: '2026-01-01T00:00:00.000Z' })}`;
  const channel = `chat_node_${gw.node}`;
  const metricsBefore = parseMetrics((await gw.get('/metrics')).text);
  const before = metricsBefore.find((x) => x.name === 'chat_gateway_notifications_rejected_total')?.value ?? 0;
  const forged = [
    fake('unsigned'),
    sign(fake('wrong key'), createHmac('sha256', 'guessed secret').update('chat-notify').digest()),
    sign(fake('signed')).replace('"body":"signed"', '"body":"tampered"'),
    `v1 nothex\n${fake('garbage line')}`,
  ];
  for (const p of forged) await asIntruder(`NOTIFY "${channel}", ${lit(p)}`);
  await c1.expectNone((f) => f.type === 'message', 500);
  assert.equal(await metric('chat_gateway_notifications_rejected_total') - before, forged.length);
  // Positive control: the same event correctly signed gets through, so the
  // drops above are the signature check and not a broken event.
  await asIntruder(`NOTIFY "${channel}", ${lit(sign(fake('signed')))}`);
  assert.equal((await c1.waitFor((f) => f.type === 'message', 3000)).body, 'signed');
  c1.close();
});

test('a "ref":true event listing a non-member is resolved per recipient: the member gets it, the other nothing', async () => {
  const conv = await direct(DB, alice.id, bob.id);
  const big = 'p'.repeat(9000);  // too large for a payload: the real event would be a ref too
  const b1 = await connectAs(gw, bob.id, 1, { label: 'bob (member)' });
  const c1 = await connectAs(gw, carol.id, 1, { label: 'carol (not a member)' });
  const a1 = await connectAs(gw, alice.id, 1, { label: 'alice' });
  const r = await a1.call({ type: 'send', conversation: conv, body: big, client_msg_id: 'ref-1' });
  await b1.waitFor((f) => f.type === 'message' && f.seq === r.seq && f.body === big, 3000);
  // A validly signed ref naming the member first and carol second: looked up
  // once as bob, the result must never reach carol.
  const ev = { type: 'message', conversation: conv, seq: r.seq, sender: alice.id, sender_device: 1, kind: 'text', ref: true, client_msg_id: 'ref-1', reply_to: null, created_at: '2026-01-01T00:00:00.000Z' };
  const sinceB = b1.mark(); const sinceC = c1.mark();
  await asIntruder(`NOTIFY "chat_node_${gw.node}", ${lit(sign(`${bob.id},${carol.id}\n${JSON.stringify(ev)}`))}`);
  const got = await b1.waitFor((f) => f.type === 'message' && f.seq === r.seq, 3000, sinceB);
  assert.equal(got.body, big);
  await c1.expectNone((f) => f.type === 'message' || (typeof f.body === 'string' && f.body.startsWith('ppp')), 800, sinceC);
  // At most a resync for carol, and she stays connected (presence events of
  // the users connecting above may still arrive: they are not the ref's).
  const sinceMark = c1.frames.slice(sinceC).filter((f) => f.type !== 'presence');
  assert.ok(sinceMark.every((f) => f.type === 'resync'), JSON.stringify(sinceMark).slice(0, 300));
  assert.ok(c1.open);
  for (const c of [a1, b1, c1]) c.close();
});
