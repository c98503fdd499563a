// Group administration over the wire: members, set_role, leave and
// update_group with their errors (each leaving nothing behind), the member
// and system-message events they send, and only_admins_send refusing a
// plain member's send (42501).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { newDb, makeUser, direct, group, startGateway, stopAll, connectAs, rows } from './lib.mjs';

const DB = 'gw_17_groups';
let gw;

before(async () => {
  await newDb(DB);
  gw = await startGateway({ db: DB });
});
after(stopAll);

// The roles of a conversation's active members, by user id.
async function roles(conv) {
  return Object.fromEntries((await rows(DB,
    `SELECT user_id, role FROM chat.members WHERE conversation_id = ${conv} AND left_at IS NULL ORDER BY user_id`))
    .map((r) => [r.user_id, r.role]));
}

test('members, set_role and leave; ownership passes to the admin', async () => {
  const owner = await makeUser(DB), bob = await makeUser(DB), carol = await makeUser(DB), out = await makeUser(DB);
  const conv = await group(DB, owner.id, [bob.id, carol.id]);
  const o = await connectAs(gw, owner.id, 1, { label: 'owner' });
  const b = await connectAs(gw, bob.id, 1, { label: 'bob' });
  const c = await connectAs(gw, carol.id, 1, { label: 'carol' });
  const x = await connectAs(gw, out.id, 1, { label: 'out' });

  const list = await c.call({ type: 'members', conversation: conv });
  assert.deepEqual(list.members.map((m) => [m.user, m.role]),
    [[owner.id, 'owner'], [bob.id, 'member'], [carol.id, 'member']]);
  assert.ok(list.members.every((m) => typeof m.joined_at === 'string' && m.joined_at.length > 0), JSON.stringify(list));
  const notMember = await x.request({ type: 'members', conversation: conv });
  assert.deepEqual([notMember.type, notMember.code], ['error', '42501'], JSON.stringify(notMember));
  const unknown = await x.request({ type: 'members', conversation: 999999999 });
  assert.equal(unknown.code, 'P0002', JSON.stringify(unknown));

  // set_role: a member event and a system message reach the members.
  let sinceC = c.mark();
  assert.deepEqual(await o.call({ type: 'set_role', conversation: conv, user: bob.id, role: 'admin' }), {});
  const ev = await c.waitFor((f) => f.type === 'member' && f.conversation === conv && f.user === bob.id, 3000, sinceC);
  assert.deepEqual([ev.action, ev.role], ['role', 'admin']);
  const sys = await c.waitFor((f) => f.type === 'message' && f.conversation === conv && f.kind === 'system', 3000, sinceC);
  assert.deepEqual(JSON.parse(sys.body), { action: 'role', user: bob.id, by: owner.id, role: 'admin' });

  // Rejections leave the roles as they were.
  const before = await roles(conv);
  for (const [who, req, code] of [
    [c, { type: 'set_role', conversation: conv, user: bob.id, role: 'member' }, '42501'],
    [b, { type: 'set_role', conversation: conv, user: owner.id, role: 'member' }, '42501'],
    [o, { type: 'set_role', conversation: conv, user: carol.id, role: 'owner' }, '22023'],
    [o, { type: 'set_role', conversation: conv, user: out.id, role: 'admin' }, 'P0002'],
    [o, { type: 'set_role', conversation: conv, user: carol.id }, '22023'],
    [o, { type: 'set_role', conversation: conv, user: 'carol', role: 'admin' }, '22P02'],
  ]) {
    const r = await who.request(req);
    assert.deepEqual([r.type, r.code], ['error', code], `${JSON.stringify(req)} -> ${JSON.stringify(r)}`);
  }
  assert.deepEqual(await roles(conv), before);

  // leave: a direct conversation cannot be left; the owner's leaving makes bob (admin) owner.
  const d = await direct(DB, owner.id, out.id);
  const leaveDirect = await o.request({ type: 'leave', conversation: d });
  assert.equal(leaveDirect.code, '22023', JSON.stringify(leaveDirect));
  sinceC = c.mark();
  assert.deepEqual(await o.call({ type: 'leave', conversation: conv }), {});
  const heir = await c.waitFor((f) => f.type === 'member' && f.conversation === conv && f.user === bob.id && f.role === 'owner', 3000, sinceC);
  assert.equal(heir.action, 'role');
  const left = await c.waitFor((f) => f.type === 'message' && f.conversation === conv && f.kind === 'system'
    && JSON.parse(f.body).action === 'left', 3000, sinceC);
  assert.equal(JSON.parse(left.body).user, owner.id);
  assert.deepEqual(await roles(conv), { [bob.id]: 'owner', [carol.id]: 'member' });
  const again = await o.request({ type: 'leave', conversation: conv });
  assert.equal(again.code, '42501', JSON.stringify(again));
  o.close(); b.close(); c.close(); x.close();
});

test('update_group: admins only, a system message, only_admins_send refuses a member\'s send', async () => {
  const owner = await makeUser(DB), admin = await makeUser(DB), mem = await makeUser(DB);
  const conv = await group(DB, owner.id, [admin.id, mem.id]);
  const o = await connectAs(gw, owner.id, 1, { label: 'owner' });
  const a = await connectAs(gw, admin.id, 1, { label: 'admin' });
  const m = await connectAs(gw, mem.id, 1, { label: 'member' });
  await o.call({ type: 'set_role', conversation: conv, user: admin.id, role: 'admin' });

  const denied = await m.request({ type: 'update_group', conversation: conv, title: 'mine' });
  assert.deepEqual([denied.type, denied.code], ['error', '42501'], JSON.stringify(denied));
  const long = await a.request({ type: 'update_group', conversation: conv, title: 't'.repeat(256), only_admins_send: true });
  assert.equal(long.code, '22001', JSON.stringify(long));
  const badBool = await a.request({ type: 'update_group', conversation: conv, only_admins_send: 'yes' });
  assert.equal(badBool.code, '22P02', JSON.stringify(badBool));
  let [row] = await rows(DB, `SELECT title, settings FROM chat.conversations WHERE id = ${conv}`);
  assert.deepEqual(row, { title: 'group', settings: {} });

  const sinceM = m.mark();
  assert.deepEqual(await a.call({ type: 'update_group', conversation: conv, title: 'Lunch', description: 'noon', only_admins_send: true }), {});
  const sys = await m.waitFor((f) => f.type === 'message' && f.conversation === conv && f.kind === 'system'
    && JSON.parse(f.body).action === 'updated', 3000, sinceM);
  assert.deepEqual(JSON.parse(sys.body), { action: 'updated', by: admin.id, title: 'Lunch', description: 'noon', only_admins_send: true });
  [row] = await rows(DB, `SELECT title, settings FROM chat.conversations WHERE id = ${conv}`);
  assert.deepEqual(row, { title: 'Lunch', settings: { description: 'noon', only_admins_send: true } });

  const refused = await m.request({ type: 'send', conversation: conv, body: 'may I?', client_msg_id: 'g17-m1' });
  assert.deepEqual([refused.type, refused.code], ['error', '42501'], JSON.stringify(refused));
  const [n] = await rows(DB, `SELECT count(*)::int AS n FROM chat.messages WHERE client_msg_id = 'g17-m1'`);
  assert.equal(n.n, 0);
  assert.ok((await a.call({ type: 'send', conversation: conv, body: 'admins speak' })).seq > 0);
  await o.call({ type: 'update_group', conversation: conv, only_admins_send: false });
  assert.ok((await m.call({ type: 'send', conversation: conv, body: 'now I may', client_msg_id: 'g17-m1' })).seq > 0);
  o.close(); a.close(); m.close();
});
