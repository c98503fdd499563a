// The rest of a messenger over the wire (issue 15): mentions in message
// events, reactions as change-log entries with the aggregated map in
// history, pins, mute, search, invite links (join sends the member event),
// message_info after receipts, disappearing messages tombstoned by the
// expiry worker the gateway's heartbeat starts (with one expired event per
// batch to the members online), and a broadcast reaching the users online
// as one event per batch.  Every rejection answers the contract's SQLSTATE
// and leaves nothing behind.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { newDb, makeUser, group, startGateway, stopAll, connectAs, rows, value, psql, sleep, ms, syncAll, parseMetrics } from './lib.mjs';

const DB = 'gw_24_messenger';
let gw;

before(async () => {
  await newDb(DB);
  gw = await startGateway({ db: DB, args: ['--node-heartbeat', '1'] });
});
after(stopAll);

const lastSeq = (conv) => value(DB, `SELECT last_seq FROM chat.conversations WHERE id = ${conv}`);

test('mentions ride on message events; a non-member mention is refused', async () => {
  const a = await makeUser(DB), b = await makeUser(DB), out = await makeUser(DB);
  const conv = await group(DB, a.id, [b.id]);
  const ca = await connectAs(gw, a.id), cb = await connectAs(gw, b.id);
  const since = cb.mark();
  const r = await ca.call({ type: 'send', conversation: conv, body: 'hi @b', client_msg_id: 'm1', mentions: [b.id, b.id] });
  const ev = await cb.waitFor((f) => f.type === 'message' && f.seq === r.seq, 3000, since);
  assert.deepEqual(ev.mentions, [b.id]);
  const before = await lastSeq(conv);
  for (const [mentions, code] of [[[out.id], '22023'], ['x', '22P02'], [[1.5], '22P02']]) {
    const bad = await ca.request({ type: 'send', conversation: conv, body: 'x', mentions });
    assert.deepEqual([bad.type, bad.code], ['error', code], JSON.stringify(bad));
  }
  assert.equal(await lastSeq(conv), before, 'a refused send appends nothing');
  const hist = await cb.call({ type: 'history', conversation: conv });
  assert.deepEqual(hist.messages.find((m) => m.seq === r.seq).mentions, [b.id]);
});

test('reactions: live entries, the map in history and sync, errors', async () => {
  const a = await makeUser(DB), b = await makeUser(DB), out = await makeUser(DB);
  const conv = await group(DB, a.id, [b.id]);
  const ca = await connectAs(gw, a.id), cb = await connectAs(gw, b.id), cx = await connectAs(gw, out.id);
  const { seq } = await ca.call({ type: 'send', conversation: conv, body: 'react to me' });
  let since = ca.mark();
  const res = await cb.call({ type: 'react', conversation: conv, seq, emoji: '👍' });
  assert.equal(res.seq, seq);
  const entry = await ca.waitFor((f) => f.type === 'message' && f.kind === 'reaction' && f.seq === res.entry, 3000, since);
  assert.deepEqual([entry.target, entry.emoji, entry.removed, entry.sender], [seq, '👍', false, b.id]);
  await ca.call({ type: 'react', conversation: conv, seq, emoji: '👍' });
  await ca.call({ type: 'react', conversation: conv, seq, emoji: '❤' });
  const same = await cb.call({ type: 'react', conversation: conv, seq, emoji: '👍' });
  assert.equal(same.entry, null, 'reacting twice changes nothing');
  const hist = await cb.call({ type: 'history', conversation: conv });
  assert.deepEqual(hist.messages.find((m) => m.seq === seq).reactions, { '👍': [b.id, a.id], '❤': [a.id] });
  since = ca.mark();
  const rm = await cb.call({ type: 'react', conversation: conv, seq, emoji: '👍', remove: true });
  const gone = await ca.waitFor((f) => f.type === 'message' && f.seq === rm.entry, 3000, since);
  assert.equal(gone.removed, true);
  const hist2 = await ca.call({ type: 'history', conversation: conv });
  assert.deepEqual(hist2.messages.find((m) => m.seq === seq).reactions, { '👍': [a.id], '❤': [a.id] });
  const before = await lastSeq(conv);
  for (const [who, req, code] of [
    [cx, { type: 'react', conversation: conv, seq, emoji: '👍' }, '42501'],
    [cb, { type: 'react', conversation: conv, seq: 9999, emoji: '👍' }, 'P0002'],
    [cb, { type: 'react', conversation: conv, seq, emoji: '' }, '22023'],
    [cb, { type: 'react', conversation: conv, seq }, '22023'],
    [cb, { type: 'react', conversation: conv, seq: rm.entry, emoji: '👍' }, '42501'],
  ]) {
    const r = await who.request(req);
    assert.deepEqual([r.type, r.code], ['error', code], JSON.stringify(r));
  }
  assert.equal(await lastSeq(conv), before);
  // A device that syncs later gets every entry in order.
  const entries = (await rows(DB, `SELECT seq FROM chat.messages WHERE conversation_id = ${conv} AND kind = 'reaction' ORDER BY seq`)).map((r) => Number(r.seq));
  const synced = await cb.call({ type: 'sync' });
  assert.deepEqual(synced.messages.filter((m) => m.conversation === conv && m.kind === 'reaction').map((m) => m.seq), entries);
});

test('pins, mute and search', async () => {
  const a = await makeUser(DB), b = await makeUser(DB);
  const conv = await group(DB, a.id, [b.id]);
  const ca = await connectAs(gw, a.id), cb = await connectAs(gw, b.id);
  const m1 = await ca.call({ type: 'send', conversation: conv, body: 'the zebra crossing' });
  const m2 = await cb.call({ type: 'send', conversation: conv, body: 'zebra zebra zebra' });
  const since = ca.mark();
  assert.deepEqual(await cb.call({ type: 'pin', conversation: conv, seq: m1.seq, pinned: true }), {});
  const sys = await ca.waitFor((f) => f.type === 'message' && f.kind === 'system' && f.conversation === conv, 3000, since);
  assert.deepEqual(JSON.parse(sys.body), { action: 'pinned', seq: m1.seq, by: b.id });
  assert.deepEqual(await ca.call({ type: 'pins', conversation: conv }), { pins: [m1.seq] });
  const badPin = await ca.request({ type: 'pin', conversation: conv, seq: 9999, pinned: true });
  assert.equal(badPin.code, 'P0002');

  assert.deepEqual(await cb.call({ type: 'mute', conversation: conv, until: '2099-01-01T00:00:00Z' }), {});
  assert.equal(await value(DB, `SELECT muted_until > now() FROM chat.members WHERE conversation_id = ${conv} AND user_id = ${b.id}`), true);
  const badMute = await cb.request({ type: 'mute', conversation: conv, until: 'tomorrow-ish' });
  assert.equal(badMute.code, '22007');
  assert.deepEqual(await cb.call({ type: 'mute', conversation: conv, until: null }), {});
  assert.equal(await value(DB, `SELECT muted_until IS NULL FROM chat.members WHERE conversation_id = ${conv} AND user_id = ${b.id}`), true);

  const found = await cb.call({ type: 'search', query: 'zebra', conversation: conv });
  assert.deepEqual(found.messages.map((m) => m.seq), [m2.seq, m1.seq], 'best match first');
  assert.equal(found.messages[0].type, 'message');
  const none = await cb.call({ type: 'search', query: 'giraffe' });
  assert.deepEqual(none.messages, []);
  const empty = await cb.request({ type: 'search', query: '' });
  assert.equal(empty.code, '22023');
});

test('invite links: join sends the member event; revoked and expired codes are 55000', async () => {
  const a = await makeUser(DB), b = await makeUser(DB), joiner = await makeUser(DB), late = await makeUser(DB);
  const conv = await group(DB, a.id, [b.id]);
  const ca = await connectAs(gw, a.id), cb = await connectAs(gw, b.id), cj = await connectAs(gw, joiner.id), cl = await connectAs(gw, late.id);
  const denied = await cb.request({ type: 'invite_link', conversation: conv });
  assert.equal(denied.code, '42501');
  const link = await ca.call({ type: 'invite_link', conversation: conv, expires_in: 3600 });
  assert.match(link.code, /^[0-9a-f]{32}$/);
  assert.ok(Date.parse(link.expires_at) > Date.now());
  const since = cb.mark();
  assert.deepEqual(await cj.call({ type: 'join', code: link.code }), { conversation: conv });
  const ev = await cb.waitFor((f) => f.type === 'member' && f.user === joiner.id, 3000, since);
  assert.equal(ev.action, 'added');
  assert.deepEqual(await ca.call({ type: 'revoke_invite', code: link.code }), {});
  const revoked = await cl.request({ type: 'join', code: link.code });
  assert.equal(revoked.code, '55000');
  await psql(DB, `INSERT INTO chat.invites (code, conversation_id, created_by, expires_at)
                  VALUES ('${'e'.repeat(32)}', ${conv}, ${a.id}, now() - interval '1 s')`);
  const expired = await cl.request({ type: 'join', code: 'e'.repeat(32) });
  assert.equal(expired.code, '55000', JSON.stringify(expired));
  const unknown = await cl.request({ type: 'join', code: 'nope' });
  assert.equal(unknown.code, 'P0002');
  assert.equal(await value(DB, `SELECT count(*) FROM chat.members WHERE conversation_id = ${conv} AND user_id = ${late.id}`), 0);
});

test('message_info: delivery and read times per member', async () => {
  const a = await makeUser(DB), b = await makeUser(DB), c = await makeUser(DB);
  const conv = await group(DB, a.id, [b.id, c.id]);
  const ca = await connectAs(gw, a.id), cb = await connectAs(gw, b.id), cc = await connectAs(gw, c.id);
  const { seq } = await ca.call({ type: 'send', conversation: conv, body: 'did you get it?' });
  await cb.call({ type: 'ack', conversation: conv, seq });
  await cc.call({ type: 'read', conversation: conv, seq });
  const info = await ca.call({ type: 'message_info', conversation: conv, seq });
  const byUser = Object.fromEntries(info.members.map((m) => [m.user, m]));
  assert.ok(byUser[b.id].delivered_at && byUser[b.id].read_at === null, JSON.stringify(info));
  assert.ok(byUser[c.id].delivered_at && byUser[c.id].read_at, JSON.stringify(info));
  const denied = await cb.request({ type: 'message_info', conversation: conv, seq });
  assert.equal(denied.code, '42501');
});

test('disappearing messages are tombstoned by the expiry worker; online members get an expired event', async () => {
  const a = await makeUser(DB), b = await makeUser(DB);
  const conv = await group(DB, a.id, [b.id]);
  const ca = await connectAs(gw, a.id), cb = await connectAs(gw, b.id);
  const bad = await cb.request({ type: 'set_disappearing', conversation: conv, ttl: 5 });
  assert.equal(bad.code, '42501', 'a plain member of a group cannot set the timer');
  assert.deepEqual(await ca.call({ type: 'set_disappearing', conversation: conv, ttl: 5 }), {});
  const since = cb.mark();
  const { seq } = await ca.call({ type: 'send', conversation: conv, body: 'this will vanish' });
  const { seq: seq2 } = await ca.call({ type: 'send', conversation: conv, body: 'this one too' });
  const logTop = await lastSeq(conv);
  // The heartbeat (every second here) starts the worker once it is due; it
  // tombstones both in one batch and tells the online members in one event.
  const ev = await cb.waitFor((f) => f.type === 'expired' && f.conversation === conv, ms(20000), since);
  assert.deepEqual(ev.seqs, [seq, seq2]);
  assert.match(ev.deleted_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  assert.equal(cb.frames.filter((f) => f.type === 'expired').length, 1, 'one event for the batch');
  const msg = (await cb.call({ type: 'history', conversation: conv })).messages.find((m) => m.seq === seq);
  assert.ok(msg.deleted_at, `not tombstoned: ${JSON.stringify(msg)}`);
  assert.equal(msg.body, null);
  assert.equal(await lastSeq(conv), logTop, 'expiry appends no log entry');
  const search = await cb.call({ type: 'search', query: 'vanish' });
  assert.deepEqual(search.messages, []);
});

test('broadcast: one event per batch for the online users; the message waits in their read-only service conversation', async () => {
  const u = await makeUser(DB), v = await makeUser(DB), offline = await makeUser(DB);
  const cu = await connectAs(gw, u.id), cv = await connectAs(gw, v.id);
  const su = cu.mark(), sv = cv.mark();
  await syncAll(cu); await syncAll(cv);
  const eventsTotal = async () => parseMetrics((await gw.get('/metrics')).text).find((m) => m.name === 'chat_gateway_events_total').value;
  const eventsBefore = await eventsTotal();
  const id = await value(DB, `SELECT chat.broadcast('Notice', 'maintenance at 22:00')`);
  const want = { type: 'broadcast', broadcast: Number(id), title: 'Notice', body: 'maintenance at 22:00' };
  for (const [c, since] of [[cu, su], [cv, sv]]) {
    const ev = await c.waitFor((f) => f.type === 'broadcast', 5000, since);
    assert.deepEqual(ev, want);
  }
  const eventsAfter = await eventsTotal();
  assert.equal(eventsAfter - eventsBefore, 1, 'one notification for both users of this node');
  assert.equal(cu.frames.filter((f) => f.type === 'message' && f.kind === 'system').length, 0, 'no message event per user');
  // The client syncs on the event: the message is in its service conversation.
  const synced = (await syncAll(cu)).filter((m) => m.kind === 'system' && /broadcast/.test(m.body || ''));
  assert.equal(synced.length, 1);
  assert.deepEqual(JSON.parse(synced[0].body), { action: 'broadcast', broadcast: Number(id), title: 'Notice', body: 'maintenance at 22:00' });
  const refused = await cu.request({ type: 'send', conversation: synced[0].conversation, body: 'reply?' });
  assert.deepEqual([refused.type, refused.code], ['error', '42501']);
  const list = await cu.call({ type: 'conversations' });
  assert.equal(list.conversations.find((c) => c.conversation === synced[0].conversation)?.kind, 'service');
  // The offline user finds it on connecting.
  const co = await connectAs(gw, offline.id);
  const later = (await syncAll(co)).filter((m) => m.kind === 'system' && /broadcast/.test(m.body || ''));
  assert.equal(later.length, 1);
  assert.ok(Number(await value(DB, `SELECT recipients FROM chat.broadcasts WHERE id = ${id}`)) >= 3);
  await assert.rejects(psql(DB, `SELECT chat.broadcast('Again', 'too soon')`), /less than a minute/);
});
