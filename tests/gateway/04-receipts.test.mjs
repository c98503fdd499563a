// Typing, delivery and read receipts, read_state to the reader's other
// devices, presence events and the presence request.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { twoUsers, newDb, makeUser, direct, startGateway, stopAll, connectAs, rows, psql } from './lib.mjs';

const DB = 'gw_04_receipts';
let gw;

before(async () => {
  await newDb(DB);
  // Offline comes after chat.presence_grace, swept by the next node
  // heartbeat: a short grace and a 1 s heartbeat keep it within the waits
  // below (the grace itself: 25-presence-debounce.test.mjs).
  await psql(DB, `ALTER DATABASE ${DB} SET chat.presence_grace = '200ms'`);
  gw = await startGateway({ db: DB, args: ['--node-heartbeat', '1'] });
});
after(stopAll);

test('typing reaches the peer', async () => {
  const { alice, bob, conv } = await twoUsers(DB);
  const a = await connectAs(gw, alice.id, 1, { label: 'alice' });
  const b = await connectAs(gw, bob.id, 1, { label: 'bob' });
  const r = await a.request({ id: 't1', type: 'typing', conversation: conv, typing: true });
  assert.equal(r.type, 'ok', JSON.stringify(r));
  const ev = await b.waitFor((f) => f.type === 'typing', 3000);
  assert.equal(ev.conversation, conv);
  assert.equal(ev.user, alice.id);
  assert.equal(ev.typing, true);
  const since = b.mark();
  await a.call({ type: 'typing', conversation: conv, typing: false });
  const off = await b.waitFor((f) => f.type === 'typing', 3000, since);
  assert.deepEqual([off.conversation, off.user, off.typing], [conv, alice.id, false]);
  // Typing is never stored.
  const [n] = await rows(DB, `SELECT count(*)::int AS n FROM chat.messages WHERE conversation_id = ${conv}`);
  assert.equal(n.n, 0);
  a.close(); b.close();
});

test('ack sends a delivered receipt to the sender; read sends a read receipt and read_state to the reader\'s other device', async () => {
  const { alice, bob, conv } = await twoUsers(DB, { bob: { devices: 2 } });
  const a = await connectAs(gw, alice.id, 1, { label: 'alice' });
  const b1 = await connectAs(gw, bob.id, 1, { label: 'bob/1' });
  const b2 = await connectAs(gw, bob.id, 2, { label: 'bob/2' });
  const sends = [];
  for (let i = 1; i <= 3; i++) sends.push(await a.call({ type: 'send', conversation: conv, body: `m${i}`, client_msg_id: `rc-${i}` }));
  await b1.waitFor((f) => f.type === 'message' && f.seq === 3, 3000);

  // Delivery: bob/1 acks up to 2, then 3.
  let since = a.mark();
  await b1.call({ type: 'ack', conversation: conv, seq: 2 });
  const d = await a.waitFor((f) => f.type === 'receipt' && f.delivered !== undefined, 3000, since);
  assert.equal(d.conversation, conv);
  assert.equal(d.user, bob.id);
  assert.equal(d.delivered, 2);
  since = a.mark();
  await b1.call({ type: 'ack', conversation: conv, seq: 3 });
  assert.equal((await a.waitFor((f) => f.type === 'receipt' && f.delivered !== undefined, 3000, since)).delivered, 3);
  // An ack that moves nothing sends nothing.
  since = a.mark();
  await b2.call({ type: 'ack', conversation: conv, seq: 2 });
  await a.expectNone((f) => f.type === 'receipt' && f.delivered !== undefined, 300, since);

  // Read: bob/1 reads up to 3.
  since = a.mark();
  const since2 = b2.mark();
  await b1.call({ type: 'read', conversation: conv, seq: 3 });
  const rd = await a.waitFor((f) => f.type === 'receipt' && f.read !== undefined, 3000, since);
  assert.deepEqual([rd.conversation, rd.user, rd.read], [conv, bob.id, 3], JSON.stringify(rd));
  const rs = await b2.waitFor((f) => f.type === 'read_state', 3000, since2);
  assert.deepEqual([rs.conversation, rs.read], [conv, 3], JSON.stringify(rs));

  const [m] = await rows(DB, `SELECT delivered_seq::int, read_seq::int FROM chat.members WHERE conversation_id = ${conv} AND user_id = ${bob.id}`);
  assert.deepEqual(m, { delivered_seq: 3, read_seq: 3 });
  for (const c of [a, b1, b2]) c.close();
});

test('presence: online when the first device connects, offline with last_seen when the last leaves', async () => {
  const alice = await makeUser(DB), dave = await makeUser(DB, { devices: 2 });
  await direct(DB, alice.id, dave.id);
  const a = await connectAs(gw, alice.id, 1, { label: 'alice' });
  let since = a.mark();
  const d1 = await connectAs(gw, dave.id, 1, { label: 'dave/1' });
  const on = await a.waitFor((f) => f.type === 'presence' && f.user === dave.id, 3000, since);
  assert.equal(on.online, true, JSON.stringify(on));

  // The presence request agrees.
  const res = await a.call({ type: 'presence', users: [dave.id] });
  const list = Array.isArray(res) ? res : Object.values(res).find(Array.isArray);
  assert.ok(Array.isArray(list), `presence result ${JSON.stringify(res)}`);
  const entry = list.find((e) => Number(e.user_id ?? e.user) === dave.id);
  assert.ok(entry, `dave in ${JSON.stringify(res)}`);
  assert.equal(entry.online, true);

  // A second device is not a new "online".
  since = a.mark();
  const d2 = await connectAs(gw, dave.id, 2, { label: 'dave/2' });
  d1.close();
  await d1.closed;
  await a.expectNone((f) => f.type === 'presence' && f.user === dave.id && f.online === false, 400, since);

  // The last device leaves: offline with last_seen.
  since = a.mark();
  d2.close();
  const off = await a.waitFor((f) => f.type === 'presence' && f.user === dave.id && f.online === false, 3000, since);
  assert.ok(off.last_seen && !Number.isNaN(Date.parse(off.last_seen)), `last_seen in ${JSON.stringify(off)}`);
  const [s] = await rows(DB, `SELECT count(*)::int AS n FROM chat.sessions WHERE user_id = ${dave.id}`);
  assert.equal(s.n, 0, 'dave\'s sessions are gone');
  a.close();
});

test('group membership through the gateway: member events, system messages, conversations list', async () => {
  const alice = await makeUser(DB), bob = await makeUser(DB), carol = await makeUser(DB);
  const a = await connectAs(gw, alice.id, 1, { label: 'alice' });
  const b = await connectAs(gw, bob.id, 1, { label: 'bob' });
  const c = await connectAs(gw, carol.id, 1, { label: 'carol' });
  const { conversation: conv } = await a.call({ type: 'create_group', title: 'club', members: [bob.id] });
  assert.ok(Number.isInteger(conv), `create_group result conversation ${conv}`);

  let sinceB = b.mark();
  const sinceC = c.mark();
  await a.call({ type: 'add_member', conversation: conv, user: carol.id });
  const added = (f) => f.type === 'member' && f.conversation === conv && f.user === carol.id && f.action === 'added';
  for (const [cl, since] of [[b, sinceB], [c, sinceC]]) {
    const ev = await cl.waitFor(added, 3000, since);
    assert.equal(ev.role, 'member', JSON.stringify(ev));
  }
  const sys = await b.waitFor((f) => f.type === 'message' && f.conversation === conv && f.kind === 'system', 3000, sinceB);
  assert.equal(sys.sender, alice.id);

  // carol is a member now: her message reaches both.
  const r = await c.call({ type: 'send', conversation: conv, body: 'hi club', client_msg_id: 'club-1' });
  for (const cl of [a, b]) assert.equal((await cl.waitFor((f) => f.type === 'message' && f.seq === r.seq && f.conversation === conv, 3000)).body, 'hi club');

  // bob's chat list shows the group with carol's message unread.
  const list = await b.call({ type: 'conversations' });
  const row = list.conversations.find((x) => x.conversation === conv);
  assert.ok(row, `club in ${JSON.stringify(list)}`);
  assert.equal(row.kind, 'group');
  assert.equal(row.title, 'club');
  assert.equal(row.last_seq, r.seq);
  assert.ok(row.unread >= 1, JSON.stringify(row));

  // Removed: carol hears it, then may not send.
  sinceB = b.mark();
  const sinceC2 = c.mark();
  await a.call({ type: 'remove_member', conversation: conv, user: carol.id });
  const removed = (f) => f.type === 'member' && f.conversation === conv && f.user === carol.id && f.action === 'removed';
  await c.waitFor(removed, 3000, sinceC2);
  await b.waitFor(removed, 3000, sinceB);
  const denied = await c.request({ type: 'send', conversation: conv, body: 'still here?', client_msg_id: 'club-2' });
  assert.equal(denied.type, 'error');
  assert.equal(denied.code, '42501', JSON.stringify(denied));
  // bob (a plain member) may not add anyone.
  const notAdmin = await b.request({ type: 'add_member', conversation: conv, user: carol.id });
  assert.equal(notAdmin.code, '42501', JSON.stringify(notAdmin));
  for (const cl of [a, b, c]) cl.close();
});
