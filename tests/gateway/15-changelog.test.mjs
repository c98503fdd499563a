// The change log (edits and deletes as log entries that reach every device),
// receipts only to current members, and presence only to contacts when a
// user's privacy is 'contacts'.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { twoUsers, newDb, makeUser, group, startGateway, stopAll, connectAs, rows, psql, syncAll } from './lib.mjs';

const DB = 'gw_14_changelog';
let gw;

before(async () => {
  await newDb(DB);
  // A short chat.presence_grace and a 1 s node heartbeat: the offline
  // presence below comes within its wait (25-presence-debounce.test.mjs).
  await psql(DB, `ALTER DATABASE ${DB} SET chat.presence_grace = '200ms'`);
  gw = await startGateway({ db: DB, args: ['--node-heartbeat', '1'] });
});
after(stopAll);

test('a device offline during an edit and a delete gets both as log entries by sync', async () => {
  const { alice, bob, conv } = await twoUsers(DB, { bob: { devices: 2 } });
  const a = await connectAs(gw, alice.id, 1, { label: 'alice' });
  let b2 = await connectAs(gw, bob.id, 2, { label: 'bob/2' });
  const m1 = await a.call({ type: 'send', conversation: conv, body: 'first', client_msg_id: 'cl-1' });
  const m2 = await a.call({ type: 'send', conversation: conv, body: 'second', client_msg_id: 'cl-2' });
  // bob's laptop stores both, acks, and goes away.
  const got = await syncAll(b2);
  assert.deepEqual(got.filter((m) => m.conversation === conv).map((m) => m.seq), [m1.seq, m2.seq]);
  b2.close();
  await b2.closed;

  // While it is away: alice edits the first, and deletes the second.
  const b1 = await connectAs(gw, bob.id, 1, { label: 'bob/1' });
  let since = b1.mark();
  await a.call({ type: 'edit', conversation: conv, seq: m1.seq, body: 'first (edited)' });
  await a.call({ type: 'delete', conversation: conv, seq: m2.seq });
  // An online device sees the entries live, as message events with target.
  const liveEdit = await b1.waitFor((f) => f.type === 'message' && f.conversation === conv && f.kind === 'edit', 3000, since);
  assert.deepEqual([liveEdit.seq, liveEdit.target, liveEdit.body], [m2.seq + 1, m1.seq, 'first (edited)'], JSON.stringify(liveEdit));
  const liveDelete = await b1.waitFor((f) => f.type === 'message' && f.conversation === conv && f.kind === 'delete', 3000, since);
  assert.deepEqual([liveDelete.seq, liveDelete.target, liveDelete.body], [m2.seq + 2, m2.seq, null], JSON.stringify(liveDelete));
  // The legacy edit/delete events still come too.
  await b1.waitFor((f) => f.type === 'edit' && f.conversation === conv && f.seq === m1.seq, 3000, since);
  await b1.waitFor((f) => f.type === 'delete' && f.conversation === conv && f.seq === m2.seq, 3000, since);
  b1.close();

  // The laptop comes back: sync carries both changes, after its cursor.
  b2 = await connectAs(gw, bob.id, 2, { label: 'bob/2 again' });
  const again = (await syncAll(b2)).filter((m) => m.conversation === conv);
  assert.deepEqual(again.map((m) => [m.seq, m.kind, m.target, m.body]),
    [[m2.seq + 1, 'edit', m1.seq, 'first (edited)'], [m2.seq + 2, 'delete', m2.seq, null]], JSON.stringify(again));
  // Acking covers the entries: nothing more to sync.
  assert.equal((await syncAll(b2)).filter((m) => m.conversation === conv).length, 0);
  const [cur] = await rows(DB, `SELECT acked_seq::int FROM chat.device_cursors WHERE user_id = ${bob.id} AND device_id = 2 AND conversation_id = ${conv}`);
  assert.equal(cur.acked_seq, m2.seq + 2);
  // after and history carry them as well; history shows the current state.
  const after = await b2.call({ type: 'after', conversation: conv, after_seq: m2.seq });
  assert.deepEqual(after.messages.map((m) => [m.kind, m.target]), [['edit', m1.seq], ['delete', m2.seq]]);
  const hist = await b2.call({ type: 'history', conversation: conv });
  const byseq = new Map(hist.messages.map((m) => [m.seq, m]));
  assert.equal(byseq.get(m1.seq).body, 'first (edited)');
  assert.ok(byseq.get(m1.seq).edited_at, JSON.stringify(byseq.get(m1.seq)));
  assert.equal(byseq.get(m2.seq).body, null);
  assert.ok(byseq.get(m2.seq).deleted_at, JSON.stringify(byseq.get(m2.seq)));
  // The entries are no unread news for bob and not alice's last message.
  const list = await b2.call({ type: 'conversations' });
  const row = list.conversations.find((x) => x.conversation === conv);
  assert.equal(row.last_seq, m2.seq + 2);
  assert.equal(row.unread, 2, JSON.stringify(row));
  assert.equal(row.last_message.seq, m2.seq, JSON.stringify(row));
  a.close(); b2.close();
});

test('a 50 KB edit reaches an online peer in full (the entry travels by ref)', async () => {
  const { alice, bob, conv } = await twoUsers(DB);
  const a = await connectAs(gw, alice.id, 1, { label: 'alice' });
  const b = await connectAs(gw, bob.id, 1, { label: 'bob' });
  const sent = await a.call({ type: 'send', conversation: conv, body: 'short', client_msg_id: 'big-1' });
  await b.waitFor((f) => f.type === 'message' && f.seq === sent.seq, 3000);
  const big = 'x'.repeat(50 * 1024);
  const since = b.mark();
  await a.call({ type: 'edit', conversation: conv, seq: sent.seq, body: big });
  const entry = await b.waitFor((f) => f.type === 'message' && f.conversation === conv && f.kind === 'edit', 5000, since);
  assert.equal(entry.ref, undefined, 'the gateway resolved the ref');
  assert.equal(entry.target, sent.seq);
  assert.equal(entry.seq, sent.seq + 1);
  assert.equal(entry.body.length, big.length);
  assert.equal(entry.body, big);
  a.close(); b.close();
});

test('a removed member who sent messages gets no receipt for them; current members do', async () => {
  const alice = await makeUser(DB), bob = await makeUser(DB), carol = await makeUser(DB);
  const conv = await group(DB, alice.id, [bob.id, carol.id], 'receipts');
  const a = await connectAs(gw, alice.id, 1, { label: 'alice' });
  const b = await connectAs(gw, bob.id, 1, { label: 'bob' });
  const c = await connectAs(gw, carol.id, 1, { label: 'carol' });
  const fromCarol = await c.call({ type: 'send', conversation: conv, body: 'carol was here', client_msg_id: 'rm-1' });
  const fromAlice = await a.call({ type: 'send', conversation: conv, body: 'alice too', client_msg_id: 'rm-2' });
  await b.waitFor((f) => f.type === 'message' && f.seq === fromAlice.seq, 3000);
  await a.call({ type: 'remove_member', conversation: conv, user: carol.id });
  await c.waitFor((f) => f.type === 'member' && f.action === 'removed' && f.user === carol.id, 3000);

  const sinceA = a.mark(), sinceC = c.mark();
  await b.call({ type: 'ack', conversation: conv, seq: fromAlice.seq });
  await b.call({ type: 'read', conversation: conv, seq: fromAlice.seq });
  const isReceipt = (f) => f.type === 'receipt' && f.conversation === conv;
  const rd = await a.waitFor((f) => isReceipt(f) && f.read !== undefined, 3000, sinceA);
  assert.equal(rd.user, bob.id);
  await c.expectNone(isReceipt, 500, sinceC);
  assert.ok(fromCarol.seq < fromAlice.seq);
  a.close(); b.close(); c.close();
});

test('presence with privacy contacts: a stranger who opens a direct conversation gets no presence until both have written', async () => {
  const alice = await makeUser(DB), stranger = await makeUser(DB);
  await psql(DB, `UPDATE chat.users SET presence_privacy = 'contacts' WHERE id = ${alice.id}`);
  const s = await connectAs(gw, stranger.id, 1, { label: 'stranger' });
  const { conversation: conv } = await s.call({ type: 'direct', user: alice.id });
  const isAlice = (f) => f.type === 'presence' && f.user === alice.id;
  let since = s.mark();
  let a = await connectAs(gw, alice.id, 1, { label: 'alice' });
  await s.expectNone(isAlice, 500, since);
  let res = await s.call({ type: 'presence', users: [alice.id] });
  assert.deepEqual(res.users.map((u) => [u.user, u.online, u.last_seen]), [[alice.id, false, null]], JSON.stringify(res));
  a.close();
  await a.closed;
  await s.expectNone(isAlice, 300, since);

  // The stranger writes: still no contact.  Alice answers: contacts.
  await s.call({ type: 'send', conversation: conv, body: 'hi, remember me?', client_msg_id: 'p-1' });
  since = s.mark();
  a = await connectAs(gw, alice.id, 1, { label: 'alice' });
  await s.expectNone(isAlice, 500, since);
  await a.call({ type: 'send', conversation: conv, body: 'hello', client_msg_id: 'p-2' });
  since = s.mark();
  a.close();
  await a.closed;
  const off = await s.waitFor(isAlice, 3000, since);
  assert.equal(off.online, false);
  res = await s.call({ type: 'presence', users: [alice.id] });
  assert.ok(res.users[0].last_seen, JSON.stringify(res));
  s.close();
});
