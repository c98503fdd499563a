// Two users chatting both ways through one gateway: send results, message
// events with their exact fields, replies, idempotent retries, large bodies
// (notified by reference), edits, deletes, history, errors from the database.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { twoUserDb, makeUser, startGateway, stopAll, connectAs, value, rows, psql, MESSAGE_FIELDS, stripType, sleep, ms } from './lib.mjs';

const DB = 'gw_02_chat';
let gw, alice, bob, carol, conv, a, b;

before(async () => {
  ({ alice, bob, conv } = await twoUserDb(DB));
  carol = await makeUser(DB);
  gw = await startGateway({ db: DB });
  a = await connectAs(gw, alice.id, 1, { label: 'alice' });
  b = await connectAs(gw, bob.id, 1, { label: 'bob' });
});
after(stopAll);

// Extra keys a message object may carry besides MESSAGE_FIELDS (always null here).
const TOLERATED = new Set(['edited_at', 'deleted_at', 'mentions', 'attachments']);

// Checks a message event/object field by field against what was sent.
function assertMessage(m, want, where) {
  for (const k of Object.keys(want)) assert.deepEqual(m[k], want[k], `${where}: field ${k} of ${JSON.stringify(m)}`);
  for (const k of MESSAGE_FIELDS) if (k !== 'reply_to') assert.ok(k in m, `${where}: field ${k} missing in ${JSON.stringify(m)}`);
  assert.ok(!('ref' in m), `${where}: unresolved reference ${JSON.stringify(m)}`);
  for (const k of Object.keys(m)) {
    if (k === 'type' || MESSAGE_FIELDS.includes(k)) continue;
    assert.ok(TOLERATED.has(k) && m[k] === null, `${where}: unexpected field ${k} in ${JSON.stringify(m)}`);
  }
  if ('reply_to' in m && !('reply_to' in want)) assert.equal(m.reply_to, null, `${where}: reply_to`);
  assert.ok(!Number.isNaN(Date.parse(m.created_at)), `${where}: created_at ${m.created_at}`);
}

const sameInstant = (x, y) => Math.abs(Date.parse(x) - Date.parse(y)) < 1;

test('direct request gives the conversation made by SQL', async () => {
  const r = await a.call({ type: 'direct', user: bob.id });
  const id = typeof r === 'object' && r !== null ? (r.conversation ?? r.conversation_id ?? r.direct_conversation) : r;
  assert.equal(Number(id), conv, `direct result ${JSON.stringify(r)}`);
});

test('alice sends, bob receives the message event with exact fields', async () => {
  const since = b.mark();
  const r = await a.request({ id: 1, type: 'send', conversation: conv, body: 'hi bob', client_msg_id: 'a-1' });
  assert.equal(r.id, 1);
  assert.equal(r.type, 'ok', JSON.stringify(r));
  assert.equal(r.result.conversation, conv);
  assert.equal(r.result.seq, 1);
  assert.equal(r.result.duplicate, false);
  assert.ok(!Number.isNaN(Date.parse(r.result.created_at)), `created_at ${r.result.created_at}`);
  const ev = await b.waitFor((f) => f.type === 'message' && f.conversation === conv, 3000, since);
  assertMessage(ev, { type: 'message', conversation: conv, seq: 1, sender: alice.id, sender_device: 1, kind: 'text', body: 'hi bob', client_msg_id: 'a-1' }, 'bob');
  assert.ok(sameInstant(ev.created_at, r.result.created_at), `created_at ${ev.created_at} vs ${r.result.created_at}`);
  // The sending device does not get its own message back.
  await a.expectNone((f) => f.type === 'message', 200);
});

test('bob replies, alice receives it with reply_to', async () => {
  const since = a.mark();
  const res = await b.call({ id: 'r2', type: 'send', conversation: conv, body: 'hello alice 👋 "quoted"\nnew line', client_msg_id: 'b-1', reply_to: 1 });
  assert.equal(res.seq, 2);
  const ev = await a.waitFor((f) => f.type === 'message' && f.seq === 2, 3000, since);
  assertMessage(ev, { type: 'message', conversation: conv, seq: 2, sender: bob.id, sender_device: 1, kind: 'text', body: 'hello alice 👋 "quoted"\nnew line', client_msg_id: 'b-1', reply_to: 1 }, 'alice');
});

test('a burst both ways arrives complete and in seq order on each side', async () => {
  const sinceA = a.mark(), sinceB = b.mark();
  const sends = [];
  for (let i = 0; i < 10; i++) {
    sends.push(a.call({ type: 'send', conversation: conv, body: `a${i}`, client_msg_id: `a-burst-${i}` }));
    sends.push(b.call({ type: 'send', conversation: conv, body: `b${i}`, client_msg_id: `b-burst-${i}` }));
  }
  const results = await Promise.all(sends);
  const seqs = results.map((r) => r.seq).sort((x, y) => x - y);
  assert.deepEqual(seqs, Array.from({ length: 20 }, (_, i) => i + 3), 'gapless seqs 3..22');
  // Each client's own sends keep their order.
  const aSeqs = results.filter((_, i) => i % 2 === 0).map((r) => r.seq);
  assert.deepEqual(aSeqs, [...aSeqs].sort((x, y) => x - y), 'alice\'s sends are executed in order');
  await b.waitFor(() => b.frames.slice(sinceB).filter((f) => f.type === 'message').length >= 10, 5000, sinceB);
  await a.waitFor(() => a.frames.slice(sinceA).filter((f) => f.type === 'message').length >= 10, 5000, sinceA);
  await new Promise((r) => setTimeout(r, 200));
  const gotB = b.frames.slice(sinceB).filter((f) => f.type === 'message');
  const gotA = a.frames.slice(sinceA).filter((f) => f.type === 'message');
  assert.deepEqual(gotB.map((m) => m.body), Array.from({ length: 10 }, (_, i) => `a${i}`), 'bob got alice\'s burst, in order, once');
  assert.deepEqual(gotA.map((m) => m.body), Array.from({ length: 10 }, (_, i) => `b${i}`), 'alice got bob\'s burst, in order, once');
  for (const list of [gotA, gotB]) {
    const s = list.map((m) => m.seq);
    assert.deepEqual(s, [...s].sort((x, y) => x - y), 'events arrive in seq order');
  }
});

test('a retried send with the same client_msg_id is a duplicate and notifies no one', async () => {
  const first = await a.call({ type: 'send', conversation: conv, body: 'once', client_msg_id: 'a-dup' });
  await b.waitFor((f) => f.type === 'message' && f.client_msg_id === 'a-dup', 3000);
  const since = b.mark();
  const again = await a.call({ type: 'send', conversation: conv, body: 'once', client_msg_id: 'a-dup' });
  assert.equal(again.seq, first.seq);
  assert.equal(again.duplicate, true);
  assert.equal(first.duplicate, false);
  await b.expectNone((f) => f.type === 'message', 300, since);
  assert.equal(Number(await value(DB, `SELECT count(*) FROM chat.messages WHERE conversation_id = ${conv} AND client_msg_id = 'a-dup'`)), 1);
});

test('a 50 KB body (notified by reference) reaches bob in full', async () => {
  const body = 'x'.repeat(25000) + 'é'.repeat(12500);   // 50,000 bytes of UTF-8
  const since = b.mark();
  const r = await a.call({ type: 'send', conversation: conv, body, client_msg_id: 'a-big' });
  const ev = await b.waitFor((f) => f.type === 'message' && f.seq === r.seq, 5000, since);
  assert.equal(ev.body.length, body.length);
  assert.ok(ev.body === body, 'body differs');
  assertMessage(ev, { conversation: conv, seq: r.seq, sender: alice.id, client_msg_id: 'a-big' }, 'bob big');
});

test('sync results have exactly the shape of message events', async () => {
  const since = b.mark();
  const r = await a.call({ type: 'send', conversation: conv, body: 'shape', client_msg_id: 'a-shape' });
  const ev = await b.waitFor((f) => f.type === 'message' && f.seq === r.seq, 3000, since);
  const after = await b.call({ type: 'after', conversation: conv, after_seq: r.seq - 1 });
  assert.equal(after.messages.length, 1);
  assert.deepEqual(stripType(after.messages[0]), stripType(ev), 'after result vs event');
  const hist = await b.call({ type: 'history', conversation: conv, limit: 3 });
  assert.deepEqual(hist.messages.map((m) => m.seq), [r.seq - 2, r.seq - 1, r.seq], 'history: the newest 3, ascending');
  assert.deepEqual(stripType(hist.messages[2]), stripType(ev), 'history result vs event');
});

test('edit and delete reach the peer', async () => {
  const r = await a.call({ type: 'send', conversation: conv, body: 'typo', client_msg_id: 'a-edit' });
  let since = b.mark();
  await a.call({ type: 'edit', conversation: conv, seq: r.seq, body: 'fixed' });
  const ed = await b.waitFor((f) => f.type === 'edit' && f.seq === r.seq, 3000, since);
  assert.equal(ed.conversation, conv);
  assert.equal(ed.body, 'fixed');
  since = b.mark();
  await a.call({ type: 'delete', conversation: conv, seq: r.seq });
  const del = await b.waitFor((f) => f.type === 'delete' && f.seq === r.seq, 3000, since);
  assert.equal(del.conversation, conv);
  const [row] = await rows(DB, `SELECT body, deleted_at IS NOT NULL AS deleted FROM chat.messages WHERE conversation_id = ${conv} AND seq = ${r.seq}`);
  assert.deepEqual(row, { body: null, deleted: true });
});

test('a non-member gets an error frame 42501 with the request id', async () => {
  const c = await connectAs(gw, carol.id, 1, { label: 'carol' });
  const r = await c.request({ id: 'nm', type: 'send', conversation: conv, body: 'let me in', client_msg_id: 'c-1' });
  assert.equal(r.id, 'nm');
  assert.equal(r.type, 'error');
  assert.equal(r.code, '42501', JSON.stringify(r));
  assert.equal(typeof r.message, 'string');
  const u = await c.request({ id: 'np', type: 'send', conversation: 999999, body: 'nowhere', client_msg_id: 'c-2' });
  assert.equal(u.type, 'error');
  assert.ok(['P0002', '42501'].includes(u.code), JSON.stringify(u));
  // The connection stays usable after errors.
  assert.equal((await c.request({ type: 'ping' })).type, 'pong');
  c.close();
});

test('100 pipelined sends from one connection are executed in arrival order (pool of 4)', async () => {
  // All 100 at the database at once: --max-inflight (16 by default) raised.
  const gw2 = await startGateway({ db: DB, args: ['--pool', '4', '--rate', '1000', '--max-inflight', '100'], label: 'order' });
  const x = await connectAs(gw2, alice.id, 1, { label: 'alice pipelined' });
  const y = await connectAs(gw2, bob.id, 1, { label: 'bob pipelined' });
  const since = y.mark();
  const results = await Promise.all(Array.from({ length: 100 }, (_, i) =>
    x.call({ type: 'send', conversation: conv, body: `p${i}`, client_msg_id: `a-pipe-${i}` }, 10000)));
  const seqs = results.map((r) => r.seq);
  for (let i = 1; i < seqs.length; i++) assert.equal(seqs[i], seqs[i - 1] + 1, `send ${i} got seq ${seqs[i]} after ${seqs[i - 1]}`);
  await y.waitFor((f) => f.type === 'message' && f.seq === seqs.at(-1), 5000, since);
  const got = y.frames.slice(since).filter((f) => f.type === 'message' && f.conversation === conv);
  assert.deepEqual(got.map((m) => m.body), results.map((_, i) => `p${i}`), 'bob got them once each, in order');
  x.close(); y.close();
  await gw2.stop();
});

test('identity comes from the token only: fields naming another user are ignored', async () => {
  const since = b.mark();
  const r = await a.call({ type: 'send', conversation: conv, body: 'who am i', client_msg_id: 'a-spoof',
    sender: bob.id, sender_device: 9, user: bob.id, user_id: bob.id, device: 9, node: 'evil' });
  const ev = await b.waitFor((f) => f.type === 'message' && f.seq === r.seq, 3000, since);
  assert.equal(ev.sender, alice.id);
  assert.equal(ev.sender_device, 1);
  const [row] = await rows(DB, `SELECT sender_id::int, sender_device FROM chat.messages WHERE conversation_id = ${conv} AND seq = ${r.seq}`);
  assert.deepEqual(row, { sender_id: alice.id, sender_device: 1 });
  // An ack "for bob" moves alice's own cursor, not bob's.
  const [before] = await rows(DB, `SELECT acked_seq::int FROM chat.device_cursors WHERE user_id = ${bob.id} AND device_id = 1 AND conversation_id = ${conv}`);
  await a.call({ type: 'ack', conversation: conv, seq: r.seq, user: bob.id, device: 1 });
  const [afterAck] = await rows(DB, `SELECT acked_seq::int FROM chat.device_cursors WHERE user_id = ${bob.id} AND device_id = 1 AND conversation_id = ${conv}`);
  assert.deepEqual(afterAck, before, 'bob\'s cursor moved by alice\'s ack');
});

test('a request blocked in the database does not block the event loop', async () => {
  // Another session holds the conversation row for 2 s: alice's send waits
  // in the database while the gateway keeps answering everyone else.
  // The locker prints the time just before it commits.
  const locker = psql(DB, `BEGIN; SELECT id FROM chat.conversations WHERE id = ${conv} FOR UPDATE; SELECT pg_sleep(2) /* gw02-locker */;
                           SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'); COMMIT`)
    .then((out) => out.trim().split('\n').at(-1));
  let held = 0;
  for (let i = 0; i < 50 && !held; i++) {
    held = Number(await value(DB, `SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%gw02-locker%' AND state = 'active' AND pid <> pg_backend_pid()`));
    if (!held) await sleep(50);
  }
  assert.ok(held, 'the locking session did not start');
  const pending = a.request({ type: 'send', conversation: conv, body: 'slow', client_msg_id: 'a-blocked' }, 10000);
  await sleep(100);
  const lat = [];
  for (let i = 0; i < 5; i++) {
    const t = Date.now();
    assert.equal((await b.request({ type: 'ping' }, 2000)).type, 'pong');
    assert.equal(await gw.healthz(), 200);
    lat.push(Date.now() - t);
  }
  // A blocked loop would show the rest of the 2 s lock (over 1.5 s) here.
  assert.ok(Math.max(...lat) < 800, `ping + /healthz took ${lat} ms while a request was blocked`);
  const c = await connectAs(gw, carol.id, 1, { label: 'carol during the block' });
  c.close();
  const r = await pending;
  const unlockedAt = await locker;
  assert.equal(r.type, 'ok', JSON.stringify(r));
  assert.ok(Date.parse(r.result.created_at) >= Date.parse(unlockedAt) - 1,
    `the send was stored at ${r.result.created_at}, before the lock went at ${unlockedAt}: it did not wait`);
});

test('the database holds every message once, gapless', async () => {
  // Edits and deletes are log entries (no client_msg_id) with seqs of their own.
  const [r] = await rows(DB, `SELECT count(*)::int AS n, max(seq)::int AS max, count(DISTINCT client_msg_id)::int AS ids,
                                     count(*) FILTER (WHERE target IS NULL)::int AS sends
                                FROM chat.messages WHERE conversation_id = ${conv}`);
  assert.equal(r.n, r.max);
  assert.equal(r.ids, r.sends);
});
