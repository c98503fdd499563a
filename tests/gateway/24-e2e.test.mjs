// End-to-end encryption over the wire (30_e2e.sql): the key directory
// requests, keys_low and identity_changed events, to_device reaching
// exactly one device (live, then by sync until acked, once per txn), and
// an e2e conversation refusing plaintext while relaying ciphertext.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { newDb, makeUser, direct, startGateway, stopAll, connectAs, value, psql } from './lib.mjs';

const DB = 'gw_24_e2e';
let gw;

before(async () => {
  await newDb(DB);
  gw = await startGateway({ db: DB });
});
after(stopAll);

const spk = (id) => ({ id, key: `SPK${id}`, signature: `SIG${id}` });
const otks = (prefix, n) => Array.from({ length: n }, (_, i) => ({ id: `${prefix}${i}`, key: `K${prefix}${i}` }));

test('keys: upload, query, claim once only, fallback, keys_low to the owning device only', async () => {
  const alice = await makeUser(DB, { devices: 2 }), bob = await makeUser(DB), stranger = await makeUser(DB);
  await direct(DB, alice.id, bob.id);
  const a1 = await connectAs(gw, alice.id, 1), a2 = await connectAs(gw, alice.id, 2);
  const b = await connectAs(gw, bob.id, 1), s = await connectAs(gw, stranger.id, 1);

  assert.deepEqual(await a1.call({ type: 'keys_upload', identity_key: 'IKa1', signed_prekey: spk(1),
    one_time_keys: otks('a', 11), fallback_key: spk('fb') }), { one_time_keys: 11 });
  assert.deepEqual(await a2.call({ type: 'keys_upload', identity_key: 'IKa2', signed_prekey: spk(2) }), { one_time_keys: 0 });
  const bad = await a1.request({ type: 'keys_upload', identity_key: 'not base64!' });
  assert.deepEqual([bad.type, bad.code], ['error', '22023'], JSON.stringify(bad));

  const q = await b.call({ type: 'keys_query', users: [alice.id] });
  assert.deepEqual(q.devices.map((d) => [d.user, d.device, d.identity_key, d.signed_prekey.id]),
    [[alice.id, 1, 'IKa1', '1'], [alice.id, 2, 'IKa2', '2']]);

  const sinceA1 = a1.mark(), sinceA2 = a2.mark();
  const c1 = await b.call({ type: 'keys_claim', devices: [{ user: alice.id, device: 1 }, { user: alice.id, device: 2 }] });
  assert.deepEqual(c1.bundles.map((x) => [x.device, x.one_time_key?.id ?? null, x.fallback ?? false]),
    [[1, 'a0', false], [2, null, true]]);
  // 10 left: not low yet.  The next claim leaves 9: keys_low to device 1 only.
  await a1.expectNone((f) => f.type === 'keys_low', 300, sinceA1);
  const c2 = await b.call({ type: 'keys_claim', devices: [{ user: alice.id, device: 1 }] });
  assert.equal(c2.bundles[0].one_time_key.id, 'a1');
  const low = await a1.waitFor((f) => f.type === 'keys_low', 3000, sinceA1);
  assert.equal(low.count, 9);
  await a2.expectNone((f) => f.type === 'keys_low' && f.count === 9, 300, sinceA2);

  const unknown = await b.request({ type: 'keys_claim', devices: [{ user: bob.id, device: 1 }] });
  assert.equal(unknown.code, 'P0002', JSON.stringify(unknown));
  const malformed = await b.request({ type: 'keys_claim', devices: [{ user: 'x', device: 1 }] });
  assert.equal(malformed.code, '22P02', JSON.stringify(malformed));
  // A stranger (no conversation with alice) cannot drain her pool.
  const drained = await s.request({ type: 'keys_claim', devices: [{ user: alice.id, device: 1 }] });
  assert.equal(drained.code, '42501', JSON.stringify(drained));
  assert.equal(Number(await value(DB, `SELECT count(*) FROM chat.one_time_keys WHERE user_id = ${alice.id} AND device_id = 1`)), 9);
});

test('identity_changed reaches the peers when an identity key is replaced', async () => {
  const alice = await makeUser(DB), bob = await makeUser(DB), stranger = await makeUser(DB);
  await direct(DB, alice.id, bob.id);
  const a = await connectAs(gw, alice.id), b = await connectAs(gw, bob.id), s = await connectAs(gw, stranger.id);
  await a.call({ type: 'keys_upload', identity_key: 'IK1', signed_prekey: spk(1) });
  const sinceB = b.mark(), sinceS = s.mark();
  await a.call({ type: 'keys_upload', identity_key: 'IK1', signed_prekey: spk(2) });   // same identity
  await b.expectNone((f) => f.type === 'identity_changed', 300, sinceB);
  await a.call({ type: 'keys_upload', identity_key: 'IK2', signed_prekey: spk(3) });
  const ev = await b.waitFor((f) => f.type === 'identity_changed', 3000, sinceB);
  assert.deepEqual([ev.user, ev.device], [alice.id, 1]);
  await s.expectNone((f) => f.type === 'identity_changed', 300, sinceS);
});

test('to_device: one device only, live and by sync until acked, once per txn; inbox full is 54000', async () => {
  const alice = await makeUser(DB), bob = await makeUser(DB, { devices: 2 }), stranger = await makeUser(DB);
  await direct(DB, alice.id, bob.id);
  const a = await connectAs(gw, alice.id), b1 = await connectAs(gw, bob.id, 1), b2 = await connectAs(gw, bob.id, 2);
  const s = await connectAs(gw, stranger.id);
  const spam = await s.request({ type: 'to_device', txn: 's1', messages: [{ user: bob.id, device: 2, type: 'olm', ciphertext: 'SPAM' }] });
  assert.equal(spam.code, '42501', JSON.stringify(spam));
  const since1 = b1.mark(), since2 = b2.mark();
  const msg = { type: 'to_device', txn: 't1', messages: [{ user: bob.id, device: 2, type: 'olm', ciphertext: 'ENVELOPE' }] };
  assert.deepEqual(await a.call(msg), {});
  assert.deepEqual(await a.call(msg), {});   // repeated txn: nothing new
  const ev = await b2.waitFor((f) => f.type === 'to_device', 3000, since2);
  assert.deepEqual([ev.from_user, ev.from_device, ev.message_type, ev.ciphertext, ev.device],
    [alice.id, 1, 'olm', 'ENVELOPE', 2]);
  await b1.expectNone((f) => f.type === 'to_device', 300, since1);
  await b2.expectNone((f) => f.type === 'to_device' && f.id !== ev.id, 300, since2);

  // Sync returns it until acked; the other device's sync has none.
  const s1 = await b2.call({ type: 'sync' });
  assert.deepEqual(s1.to_device.map((t) => [t.id, t.ciphertext]), [[ev.id, 'ENVELOPE']]);
  assert.equal((await b1.call({ type: 'sync' })).to_device, undefined);
  assert.deepEqual(await b2.call({ type: 'to_device_ack', up_to: ev.id }), {});
  assert.equal((await b2.call({ type: 'sync' })).to_device, undefined);
  assert.equal(Number(await value(DB, `SELECT count(*) FROM chat.to_device WHERE user_id = ${bob.id}`)), 0);

  // An offline device finds its envelopes by sync on connect.
  b1.close();
  await a.call({ type: 'to_device', txn: 't2', messages: [{ user: bob.id, device: 1, type: 'olm', ciphertext: 'LATER' }] });
  const b1again = await connectAs(gw, bob.id, 1);
  const s2 = await b1again.call({ type: 'sync' });
  assert.deepEqual(s2.to_device.map((t) => t.ciphertext), ['LATER']);

  const bad = await a.request({ type: 'to_device', txn: 't3', messages: [{ user: bob.id, device: 9, type: 'olm', ciphertext: 'x' }] });
  assert.equal(bad.code, 'P0002', JSON.stringify(bad));
  await value(DB, `SELECT chat.to_device(${alice.id}, 1, (SELECT jsonb_agg(jsonb_build_object('user', ${bob.id}, 'device', 2, 'type', 'olm', 'ciphertext', 'f' || i)) FROM generate_series(1, 1000) i), 'fill')`);
  const full = await a.request({ type: 'to_device', txn: 't4', messages: [{ user: bob.id, device: 2, type: 'olm', ciphertext: 'x' }] });
  assert.deepEqual([full.code, full.error], ['54000', 'program_limit_exceeded'], JSON.stringify(full));
});

test('enable_e2e: plaintext refused, ciphertext relayed, no body in push rows', async () => {
  const alice = await makeUser(DB), bob = await makeUser(DB), carol = await makeUser(DB);
  const conv = await direct(DB, alice.id, bob.id);
  await psql(DB, `UPDATE chat.devices SET push_token = 'tok' WHERE user_id = ${carol.id}`);
  const a = await connectAs(gw, alice.id), b = await connectAs(gw, bob.id);
  const sinceB = b.mark();
  assert.deepEqual(await a.call({ type: 'enable_e2e', conversation: conv }), {});
  const sys = await b.waitFor((f) => f.type === 'message' && f.kind === 'system', 3000, sinceB);
  assert.deepEqual(JSON.parse(sys.body), { action: 'e2e', by: alice.id });
  const conversations = await b.call({ type: 'conversations' });
  assert.equal(conversations.conversations.find((c) => c.conversation === conv).e2e, true);

  const plain = await a.request({ type: 'send', conversation: conv, body: 'hello', client_msg_id: 'p1' });
  assert.deepEqual([plain.type, plain.code], ['error', '22023'], JSON.stringify(plain));
  const sent = await a.call({ type: 'send', conversation: conv, body: 'Q0lQSEVS', kind: 'e2e', client_msg_id: 'e1' });
  const ev = await b.waitFor((f) => f.type === 'message' && f.seq === sent.seq, 3000, sinceB);
  assert.deepEqual([ev.kind, ev.body], ['e2e', 'Q0lQSEVS']);

  // A group with an offline member who has a push token: its row has no body.
  const g = Number(await value(DB, `SELECT chat.create_group(${alice.id}, 'g', ARRAY[${bob.id}, ${carol.id}]::bigint[])`));
  await a.call({ type: 'enable_e2e', conversation: g });
  const gs = await a.call({ type: 'send', conversation: g, body: 'R1JPVVA=', kind: 'e2e' });
  assert.equal(await value(DB, `SELECT (payload ? 'body')::text FROM chat.push_outbox WHERE user_id = ${carol.id} AND conversation_id = ${g} AND seq = ${gs.seq}`), 'false');
});
