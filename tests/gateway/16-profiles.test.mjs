// Profiles, find_user, blocking, reports and privacy over the wire: the
// requests and their errors, a blocked send (42501), typing, receipts and
// presence not flowing between a blocker and the blocked (both ways), and
// read_receipts false (delivery still reported, reads not).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { newDb, makeUser, direct, group, startGateway, stopAll, connectAs, rows, psql, lit } from './lib.mjs';

const DB = 'gw_16_profiles';
let gw;

before(async () => {
  await newDb(DB);
  gw = await startGateway({ db: DB });
});
after(stopAll);

test('profile, set_profile and find_user; conversations name the peer', async () => {
  const alice = await makeUser(DB), bob = await makeUser(DB, { handle: `Bob${Date.now() % 100000}` });
  const conv = await direct(DB, alice.id, bob.id);
  const a = await connectAs(gw, alice.id, 1, { label: 'alice' });
  const b = await connectAs(gw, bob.id, 1, { label: 'bob' });
  // an avatar is a profile picture upload (36-avatars has the bytes), marked ready as chat-media would
  const att = (await b.call({ type: 'upload', purpose: 'avatar', mime: 'image/png', size: 10, sha256: 'a'.repeat(64) })).upload;
  await psql(DB, `SELECT chat.media_uploaded(${lit(att)})`);
  assert.deepEqual(await b.call({ type: 'set_profile', display_name: ' Bobby ', about: 'hello', avatar: att }), {});
  const p = await a.call({ type: 'profile', users: [bob.id, alice.id, 999999999] });
  assert.deepEqual(p.users.map((u) => u.user), [alice.id, bob.id].sort((x, y) => x - y));
  const pb = p.users.find((u) => u.user === bob.id);
  assert.deepEqual(pb, { user: bob.id, handle: bob.handle, display_name: 'Bobby', about: 'hello', avatar: att });
  // Absent fields stay, '' clears.
  await b.call({ type: 'set_profile', avatar: '' });
  const again = (await a.call({ type: 'profile', users: [bob.id] })).users[0];
  assert.deepEqual([again.display_name, again.about, again.avatar], ['Bobby', 'hello', null]);
  // find_user regardless of case.
  const f = await a.call({ type: 'find_user', handle: bob.handle.toUpperCase() });
  assert.equal(f.user.user, bob.id);
  assert.equal(f.user.display_name, 'Bobby');
  // Errors, and nothing changed by them.
  const missing = await a.request({ type: 'find_user', handle: 'no-such-handle-x' });
  assert.deepEqual([missing.type, missing.code], ['error', 'P0002'], JSON.stringify(missing));
  const long = await b.request({ type: 'set_profile', display_name: 'n'.repeat(65), about: 'changed?' });
  assert.equal(long.code, '22001', JSON.stringify(long));
  const badAvatar = await b.request({ type: 'set_profile', avatar: '../etc/passwd' });
  assert.equal(badAvatar.code, '22023', JSON.stringify(badAvatar));
  const badUsers = await a.request({ type: 'profile', users: 'all' });
  assert.equal(badUsers.code, '22P02', JSON.stringify(badUsers));
  const [row] = await rows(DB, `SELECT display_name, about, avatar FROM chat.users WHERE id = ${bob.id}`);
  assert.deepEqual(row, { display_name: 'Bobby', about: 'hello', avatar: null });
  // The chat list names the peer.
  const list = await a.call({ type: 'conversations' });
  const c = list.conversations.find((x) => x.conversation === conv);
  assert.equal(c.peer.user, bob.id, JSON.stringify(c));
  assert.equal(c.peer.display_name, 'Bobby');
  assert.equal(c.title, 'Bobby');
  a.close(); b.close();
});

test('block: the blocked cannot send (42501); typing, receipts and presence stop both ways; unblock restores them', async () => {
  const alice = await makeUser(DB), bob = await makeUser(DB), carol = await makeUser(DB);
  const conv = await direct(DB, alice.id, bob.id);
  const grp = await group(DB, carol.id, [alice.id, bob.id]);
  const a = await connectAs(gw, alice.id, 1, { label: 'alice' });
  const b = await connectAs(gw, bob.id, 1, { label: 'bob' });
  const c = await connectAs(gw, carol.id, 1, { label: 'carol' });
  const m1 = await a.call({ type: 'send', conversation: conv, body: 'hi bob', client_msg_id: 'blk-a1' });
  await b.waitFor((f) => f.type === 'message' && f.conversation === conv && f.seq === m1.seq, 3000);

  // bob blocks alice: each is shown the other offline at once.
  let sinceA = a.mark();
  let sinceB = b.mark();
  assert.deepEqual(await b.call({ type: 'block', user: alice.id }), {});
  const offA = await a.waitFor((f) => f.type === 'presence' && f.user === bob.id && f.online === false, 3000, sinceA);
  assert.deepEqual([offA.online, offA.last_seen], [false, null]);
  const offB = await b.waitFor((f) => f.type === 'presence' && f.user === alice.id && f.online === false, 3000, sinceB);
  assert.deepEqual([offB.online, offB.last_seen], [false, null]);
  assert.deepEqual(await b.call({ type: 'blocked' }), { users: [alice.id] });

  // alice cannot send to bob; nothing is stored or delivered.
  sinceB = b.mark();
  const denied = await a.request({ type: 'send', conversation: conv, body: 'let me in', client_msg_id: 'blk-a2' });
  assert.deepEqual([denied.type, denied.code], ['error', '42501'], JSON.stringify(denied));
  const [n] = await rows(DB, `SELECT count(*)::int AS n FROM chat.messages WHERE client_msg_id = 'blk-a2'`);
  assert.equal(n.n, 0);
  // bob (the blocker) still can; alice gets it, but her receipts do not reach bob.
  const m2 = await b.call({ type: 'send', conversation: conv, body: 'I blocked you', client_msg_id: 'blk-b1' });
  await a.waitFor((f) => f.type === 'message' && f.conversation === conv && f.seq === m2.seq, 3000);
  sinceB = b.mark();
  await a.call({ type: 'ack', conversation: conv, seq: m2.seq });
  await a.call({ type: 'read', conversation: conv, seq: m2.seq });
  // Typing, both ways, in the direct conversation and in the shared group.
  await a.call({ type: 'typing', conversation: conv, typing: true });
  const sinceC = c.mark();
  await a.call({ type: 'typing', conversation: grp, typing: true });
  await c.waitFor((f) => f.type === 'typing' && f.conversation === grp && f.user === alice.id, 3000, sinceC);
  sinceA = a.mark();
  await b.call({ type: 'typing', conversation: conv, typing: true });
  await b.call({ type: 'typing', conversation: grp, typing: true });
  await c.waitFor((f) => f.type === 'typing' && f.conversation === grp && f.user === bob.id, 3000, sinceC);
  // bob reads alice's group message: no receipt to alice.
  const g1 = await a.call({ type: 'send', conversation: grp, body: 'in the group', client_msg_id: 'blk-g1' });
  await b.waitFor((f) => f.type === 'message' && f.conversation === grp && f.seq === g1.seq, 3000);
  await b.call({ type: 'ack', conversation: grp, seq: g1.seq });
  await b.call({ type: 'read', conversation: grp, seq: g1.seq });
  // ...while carol's read of it does reach alice.
  await c.call({ type: 'read', conversation: grp, seq: g1.seq });
  await a.waitFor((f) => f.type === 'receipt' && f.conversation === grp && f.user === carol.id, 3000, sinceA);
  await b.expectNone((f) => (f.type === 'receipt' || f.type === 'typing') && f.user === alice.id, 300, sinceB);
  await a.expectNone((f) => (f.type === 'receipt' || f.type === 'typing') && f.user === bob.id, 300, sinceA);
  // Presence requests agree, both ways.
  const pa = await a.call({ type: 'presence', users: [bob.id] });
  assert.equal(pa.users[0].online, false, JSON.stringify(pa));
  const pb = await b.call({ type: 'presence', users: [alice.id] });
  assert.equal(pb.users[0].online, false, JSON.stringify(pb));

  // Unblock: presence comes back at once, sends and typing flow again.
  sinceA = a.mark();
  assert.deepEqual(await b.call({ type: 'unblock', user: alice.id }), {});
  const onA = await a.waitFor((f) => f.type === 'presence' && f.user === bob.id, 3000, sinceA);
  assert.equal(onA.online, true, JSON.stringify(onA));
  assert.deepEqual(await b.call({ type: 'blocked' }), { users: [] });
  sinceB = b.mark();
  const m3 = await a.call({ type: 'send', conversation: conv, body: 'thanks', client_msg_id: 'blk-a3' });
  await b.waitFor((f) => f.type === 'message' && f.conversation === conv && f.seq === m3.seq, 3000, sinceB);
  await a.call({ type: 'typing', conversation: conv, typing: false });
  await b.waitFor((f) => f.type === 'typing' && f.conversation === conv && f.user === alice.id, 3000, sinceB);

  // Bad requests.
  const self = await a.request({ type: 'block', user: alice.id });
  assert.equal(self.code, '22023', JSON.stringify(self));
  const nobody = await a.request({ type: 'block', user: 999999999 });
  assert.equal(nobody.code, 'P0002', JSON.stringify(nobody));
  const noUser = await a.request({ type: 'unblock' });
  assert.equal(noUser.code, '22023', JSON.stringify(noUser));
  for (const cl of [a, b, c]) cl.close();
});

test('read_receipts false: delivery is reported, reads are not; the reader\'s own devices still get read_state', async () => {
  const alice = await makeUser(DB), bob = await makeUser(DB, { devices: 2 });
  const conv = await direct(DB, alice.id, bob.id);
  const a = await connectAs(gw, alice.id, 1, { label: 'alice' });
  const b1 = await connectAs(gw, bob.id, 1, { label: 'bob/1' });
  const b2 = await connectAs(gw, bob.id, 2, { label: 'bob/2' });
  assert.deepEqual(await b1.call({ type: 'set_privacy', read_receipts: false }), {});
  const m = await a.call({ type: 'send', conversation: conv, body: 'read me', client_msg_id: 'rr-1' });
  await b1.waitFor((f) => f.type === 'message' && f.seq === m.seq, 3000);
  let since = a.mark();
  await b1.call({ type: 'ack', conversation: conv, seq: m.seq });
  const d = await a.waitFor((f) => f.type === 'receipt' && f.user === bob.id, 3000, since);
  assert.equal(d.delivered, m.seq, JSON.stringify(d));
  since = a.mark();
  const since2 = b2.mark();
  await b1.call({ type: 'read', conversation: conv, seq: m.seq });
  const rs = await b2.waitFor((f) => f.type === 'read_state', 3000, since2);
  assert.equal(rs.read, m.seq);
  // A read without an ack first still reports delivery, never the read.
  const m2 = await a.call({ type: 'send', conversation: conv, body: 'again', client_msg_id: 'rr-2' });
  await b1.waitFor((f) => f.type === 'message' && f.seq === m2.seq, 3000);
  await b1.call({ type: 'read', conversation: conv, seq: m2.seq });
  const d2 = await a.waitFor((f) => f.type === 'receipt' && f.user === bob.id && f.delivered === m2.seq, 3000, since);
  assert.equal(d2.read, undefined);
  // bob replying (sending implies reading) reports no read either.
  await b1.call({ type: 'send', conversation: conv, body: 'reply', client_msg_id: 'rr-3' });
  await a.expectNone((f) => f.type === 'receipt' && f.read !== undefined, 300, since);
  // Switched back on: reads are reported again.
  await b1.call({ type: 'set_privacy', read_receipts: true });
  const m3 = await a.call({ type: 'send', conversation: conv, body: 'now?', client_msg_id: 'rr-4' });
  await b1.waitFor((f) => f.type === 'message' && f.seq === m3.seq, 3000);
  since = a.mark();
  await b1.call({ type: 'read', conversation: conv, seq: m3.seq });
  const r = await a.waitFor((f) => f.type === 'receipt' && f.read !== undefined, 3000, since);
  assert.equal(r.read, m3.seq);
  const bad = await b1.request({ type: 'set_privacy', read_receipts: 'no' });
  assert.equal(bad.code, '22P02', JSON.stringify(bad));
  for (const cl of [a, b1, b2]) cl.close();
});

test('set_privacy last_seen: peers who lose sight get an offline presence at once', async () => {
  const alice = await makeUser(DB), bob = await makeUser(DB);
  await direct(DB, alice.id, bob.id);
  const a = await connectAs(gw, alice.id, 1, { label: 'alice' });
  let since = a.mark();
  const b = await connectAs(gw, bob.id, 1, { label: 'bob' });
  await a.waitFor((f) => f.type === 'presence' && f.user === bob.id && f.online === true, 3000, since);
  since = a.mark();
  await b.call({ type: 'set_privacy', last_seen: 'nobody' });
  const off = await a.waitFor((f) => f.type === 'presence' && f.user === bob.id, 3000, since);
  assert.deepEqual([off.online, off.last_seen], [false, null]);
  assert.equal((await a.call({ type: 'presence', users: [bob.id] })).users[0].online, false);
  since = a.mark();
  await b.call({ type: 'set_privacy', last_seen: 'everyone' });
  const on = await a.waitFor((f) => f.type === 'presence' && f.user === bob.id, 3000, since);
  assert.equal(on.online, true);
  const bad = await b.request({ type: 'set_privacy', last_seen: 'friends' });
  assert.equal(bad.code, '22023', JSON.stringify(bad));
  const [u] = await rows(DB, `SELECT presence_privacy FROM chat.users WHERE id = ${bob.id}`);
  assert.equal(u.presence_privacy, 'everyone');
  a.close(); b.close();
});

test('report: stored with a copy of the message; errors store nothing', async () => {
  const alice = await makeUser(DB), bob = await makeUser(DB), eve = await makeUser(DB);
  const conv = await direct(DB, alice.id, bob.id);
  const a = await connectAs(gw, alice.id, 1, { label: 'alice' });
  const b = await connectAs(gw, bob.id, 1, { label: 'bob' });
  const e = await connectAs(gw, eve.id, 1, { label: 'eve' });
  const m = await b.call({ type: 'send', conversation: conv, body: 'buy now', client_msg_id: 'rep-1' });
  const r = await a.call({ type: 'report', conversation: conv, seq: m.seq, reason: 'spam' });
  assert.ok(Number.isInteger(r.report), JSON.stringify(r));
  const [row] = await rows(DB, `SELECT reporter, reported_user, message->>'body' AS body FROM chat.reports WHERE id = ${r.report}`);
  assert.deepEqual(row, { reporter: alice.id, reported_user: bob.id, body: 'buy now' });
  const before = await rows(DB, 'SELECT count(*)::int AS n FROM chat.reports');
  const outsider = await e.request({ type: 'report', conversation: conv, seq: m.seq, reason: 'peek' });
  assert.equal(outsider.code, '42501', JSON.stringify(outsider));
  const noReason = await a.request({ type: 'report', user: bob.id });
  assert.equal(noReason.code, '22023', JSON.stringify(noReason));
  const longReason = await a.request({ type: 'report', user: bob.id, reason: 'r'.repeat(1001) });
  assert.equal(longReason.code, '22001', JSON.stringify(longReason));
  const after = await rows(DB, 'SELECT count(*)::int AS n FROM chat.reports');
  assert.equal(after[0].n, before[0].n);
  for (const cl of [a, b, e]) cl.close();
});
