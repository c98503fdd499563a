// Sync after a missed stretch and gap repair with `after`: a device that was
// away gets exactly what it missed, page by page, and nothing again once acked.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { twoUsers, newDb, makeUser, direct, group, startGateway, stopAll, connectAs, syncAll, rows, psql } from './lib.mjs';

const DB = 'gw_05_sync';
let gw;

before(async () => {
  await newDb(DB);
  gw = await startGateway({ db: DB });
});
after(stopAll);

test('a device that was offline syncs exactly the messages it missed', async () => {
  const { alice, bob, conv } = await twoUsers(DB);
  const a = await connectAs(gw, alice.id, 1, { label: 'alice' });
  let b = await connectAs(gw, bob.id, 1, { label: 'bob' });
  // Two messages bob receives live and acks.
  for (let i = 1; i <= 2; i++) await a.call({ type: 'send', conversation: conv, body: `live${i}`, client_msg_id: `live-${i}` });
  await b.waitFor((f) => f.type === 'message' && f.seq === 2, 3000);
  await b.call({ type: 'ack', conversation: conv, seq: 2 });
  b.close();
  await b.closed;

  // Bob is away: alice sends N.
  const N = 7;
  const sent = [];
  for (let i = 0; i < N; i++) sent.push(await a.call({ type: 'send', conversation: conv, body: `missed${i}`, client_msg_id: `missed-${i}` }));
  assert.deepEqual(sent.map((r) => r.seq), [3, 4, 5, 6, 7, 8, 9]);

  // Bob reconnects and syncs in pages of 3 until more is false.
  b = await connectAs(gw, bob.id, 1, { label: 'bob again' });
  const pages = [];
  for (let page = 0; page < 10; page++) {
    const r = await b.call({ type: 'sync', limit: 3 });
    assert.equal(typeof r.more, 'boolean', JSON.stringify(r));
    pages.push(r.messages.map((m) => m.seq));
    if (r.messages.length) await b.call({ type: 'ack', conversation: conv, seq: r.messages.at(-1).seq });
    if (!r.more) break;
  }
  assert.deepEqual(pages.flat(), [3, 4, 5, 6, 7, 8, 9], `pages ${JSON.stringify(pages)}`);
  assert.deepEqual(pages[0], [3, 4, 5]);
  const got = await b.call({ type: 'after', conversation: conv, after_seq: 2 });
  assert.deepEqual(got.messages.map((m) => m.body), sent.map((_, i) => `missed${i}`));
  for (const m of got.messages) {
    assert.equal(m.conversation, conv);
    assert.equal(m.sender, alice.id);
  }
  // Everything acked: a new sync is empty.
  const again = await b.call({ type: 'sync' });
  assert.deepEqual(again.messages, []);
  assert.equal(again.more, false);
  const [cur] = await rows(DB, `SELECT acked_seq::int FROM chat.device_cursors WHERE user_id = ${bob.id} AND device_id = 1 AND conversation_id = ${conv}`);
  assert.equal(cur.acked_seq, 9);
  a.close(); b.close();
});

test('sync spans conversations, ordered by conversation then seq', async () => {
  const alice = await makeUser(DB), bob = await makeUser(DB), carol = await makeUser(DB);
  const c1 = await direct(DB, alice.id, bob.id);
  const c2 = await group(DB, carol.id, [bob.id], 'g');
  // The group's creation may post system messages; bob catches up first.
  let b = await connectAs(gw, bob.id, 1, { label: 'bob' });
  await syncAll(b);
  b.close();
  await b.closed;
  const a = await connectAs(gw, alice.id, 1, { label: 'alice' });
  const c = await connectAs(gw, carol.id, 1, { label: 'carol' });
  for (let i = 0; i < 3; i++) {
    await a.call({ type: 'send', conversation: c1, body: `a${i}`, client_msg_id: `sa-${i}` });
    await c.call({ type: 'send', conversation: c2, body: `c${i}`, client_msg_id: `sc-${i}` });
  }
  b = await connectAs(gw, bob.id, 1, { label: 'bob again' });
  const all = await syncAll(b, { limit: 2 });
  const key = all.map((m) => [m.conversation, m.seq]);
  const sorted = [...key].sort((x, y) => x[0] - y[0] || x[1] - y[1]);
  assert.deepEqual(key, sorted, 'ordered by (conversation, seq)');
  assert.deepEqual(all.filter((m) => m.conversation === c1).map((m) => m.body), ['a0', 'a1', 'a2']);
  assert.deepEqual(all.filter((m) => m.conversation === c2 && m.kind === 'text').map((m) => m.body), ['c0', 'c1', 'c2']);
  a.close(); b.close(); c.close();
});

test('after fills a gap the client noticed', async () => {
  const { alice, bob, conv } = await twoUsers(DB);
  const a = await connectAs(gw, alice.id, 1, { label: 'alice' });
  const b = await connectAs(gw, bob.id, 1, { label: 'bob' });
  for (let i = 1; i <= 2; i++) await a.call({ type: 'send', conversation: conv, body: `m${i}`, client_msg_id: `g-${i}` });
  await b.waitFor((f) => f.type === 'message' && f.seq === 2, 3000);
  // Messages 3..5 are written straight into the table, so nothing notifies
  // them (a stretch the live stream missed); 6 arrives live.
  await psql(DB, `INSERT INTO chat.messages (conversation_id, seq, sender_id, sender_device, body, client_msg_id)
                  SELECT ${conv}, s, ${alice.id}, 1, 'm' || s, 'g-' || s FROM generate_series(3, 5) s;
                  UPDATE chat.conversations SET last_seq = 5 WHERE id = ${conv}`);
  const since = b.mark();
  const r6 = await a.call({ type: 'send', conversation: conv, body: 'm6', client_msg_id: 'g-6' });
  assert.equal(r6.seq, 6);
  const ev = await b.waitFor((f) => f.type === 'message' && f.conversation === conv, 3000, since);
  assert.equal(ev.seq, 6, 'the next live event jumps: a gap 3..5');
  // Client duty 2: store it, request the gap with after.
  const gap = await b.call({ type: 'after', conversation: conv, after_seq: 2 });
  assert.deepEqual(gap.messages.map((m) => m.seq), [3, 4, 5, 6]);
  assert.deepEqual(gap.messages.map((m) => m.body), ['m3', 'm4', 'm5', 'm6']);
  const limited = await b.call({ type: 'after', conversation: conv, after_seq: 2, limit: 2 });
  assert.deepEqual(limited.messages.map((m) => m.seq), [3, 4]);
  a.close(); b.close();
});
