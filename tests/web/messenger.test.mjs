// ChatClient's second-batch methods (groups, invite links, message info,
// reactions, pins, mute, search, disappearing timer, mentions on send):
// the frames they send (fields left out when not given), the results they
// return, and reaction log entries turned into 'reaction' events.
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { ChatClient, ChatError, isLogEntry, applyReaction } from '../../web/chat-client.js';
import { FakeSocket, connectClient, until, msg } from './fake-socket.mjs';

const opts = { url: 'ws://gw.test/ws', token: 't', WebSocket: FakeSocket, requestTimeout: 200, ackDelay: 5, pingInterval: 0, watchNetwork: false, backoffBase: 1 };
const ok = (result) => (f) => ({ id: f.id, type: 'ok', result });
const err = (code, message) => (f) => ({ id: f.id, type: 'error', code, error: 'x', message });

beforeEach(() => FakeSocket.reset());

test('group methods send the protocol fields and return the results', async () => {
  const client = new ChatClient(opts);
  const ws = await connectClient(client, {
    overrides: {
      members: ok({ members: [{ user: 1, role: 'owner', joined_at: 't' }] }),
      invite_link: ok({ code: 'c0de', expires_at: null }),
      join: (f) => (f.code === 'c0de' ? ok({ conversation: 9 })(f) : err('55000', 'invite code "old" was revoked')(f)),
      message_info: ok({ members: [{ user: 2, delivered_at: 'd', read_at: null }] }),
    },
  });
  assert.deepEqual(await client.members(9), [{ user: 1, role: 'owner', joined_at: 't' }]);
  await client.setRole(9, 2, 'admin');
  assert.deepEqual(ws.of('set_role').at(-1), { id: ws.of('set_role').at(-1).id, type: 'set_role', conversation: 9, user: 2, role: 'admin' });
  await client.leave(9);
  assert.equal(ws.of('leave').at(-1).conversation, 9);
  await client.updateGroup(9, { title: 'T', avatar: '', onlyAdminsSend: false });
  const ug = ws.of('update_group').at(-1);
  assert.deepEqual([ug.title, ug.avatar, ug.only_admins_send, 'description' in ug], ['T', '', false, false]);
  assert.deepEqual(await client.inviteLink(9), { code: 'c0de', expires_at: null });
  assert.equal('expires_in' in ws.of('invite_link').at(-1), false);
  await client.inviteLink(9, { expiresIn: 60 });
  assert.equal(ws.of('invite_link').at(-1).expires_in, 60);
  await client.revokeInvite('c0de');
  assert.equal(ws.of('revoke_invite').at(-1).code, 'c0de');
  assert.equal(await client.join('c0de'), 9);
  await assert.rejects(client.join('old'), (e) => e instanceof ChatError && e.code === '55000');
  assert.deepEqual(await client.messageInfo(9, 4), [{ user: 2, delivered_at: 'd', read_at: null }]);
  assert.deepEqual([ws.of('message_info').at(-1).conversation, ws.of('message_info').at(-1).seq], [9, 4]);
  client.close();
});

test('react, pin, pins, mute, search and setDisappearing', async () => {
  const client = new ChatClient(opts);
  const ws = await connectClient(client, {
    overrides: {
      react: ok({ conversation: 9, seq: 4, entry: 7 }),
      pins: ok({ pins: [4, 2] }),
      search: (f) => (f.query ? ok({ messages: [msg(9, 4, { body: 'zebra' })] })(f) : err('22023', 'search query must not be empty')(f)),
    },
  });
  assert.deepEqual(await client.react(9, 4, '👍'), { conversation: 9, seq: 4, entry: 7 });
  assert.equal('remove' in ws.of('react').at(-1), false);
  await client.react(9, 4, '👍', { remove: true });
  assert.equal(ws.of('react').at(-1).remove, true);
  await client.pin(9, 4);
  await client.pin(9, 4, false);
  assert.deepEqual(ws.of('pin').map((f) => f.pinned), [true, false]);
  assert.deepEqual(await client.pins(9), [4, 2]);
  await client.mute(9, new Date('2030-01-01T00:00:00Z'));
  await client.mute(9, null);
  assert.deepEqual(ws.of('mute').map((f) => f.until), ['2030-01-01T00:00:00.000Z', null]);
  const found = await client.search('zebra', { conversation: 9 });
  assert.deepEqual(found.map((m) => m.body), ['zebra']);
  assert.deepEqual([ws.of('search').at(-1).conversation, 'limit' in ws.of('search').at(-1)], [9, false]);
  await assert.rejects(client.search(''), (e) => e.code === '22023');
  await client.setDisappearing(9, 3600);
  await client.setDisappearing(9, null);
  assert.deepEqual(ws.of('set_disappearing').map((f) => f.ttl), [3600, null]);
  client.close();
});

test('send carries mentions (each once, ascending) and the own message has them', async () => {
  const client = new ChatClient(opts);
  const own = [];
  client.on('message', (m) => own.push(m));
  const ws = await connectClient(client, { overrides: { send: (f) => ok({ conversation: f.conversation, seq: 3, created_at: 't', duplicate: false })(f) } });
  await client.send(9, 'hi @a @b', { mentions: [5, 2, 5] });
  assert.deepEqual(ws.of('send').at(-1).mentions, [2, 5]);
  await client.send(9, 'no one');
  assert.equal('mentions' in ws.of('send').at(-1), false);
  await until(() => own.length >= 1, 500, 'own message');
  assert.deepEqual(own[0].mentions, [2, 5]);
  client.close();
});

test('reaction entries become reaction events (not messages) and advance the seq', async () => {
  const client = new ChatClient(opts);
  const got = { message: [], reaction: [] };
  for (const k of Object.keys(got)) client.on(k, (e) => got[k].push(e));
  const ws = await connectClient(client, { waitSync: true });
  const entry = (seq, target, emoji, removed, sender) => msg(9, seq, { kind: 'reaction', target, body: emoji, emoji, removed, sender });
  assert.equal(isLogEntry(entry(2, 1, 'x', false, 3)), true);
  ws.push(msg(9, 1));
  ws.push(entry(2, 1, '👍', false, 3));
  ws.push(entry(3, 1, '👍', true, 3));
  ws.push(entry(3, 1, '👍', true, 3));                     // a duplicate: dropped
  ws.push(msg(9, 4, { kind: 'reaction', target: 1, body: null, sender: 5 }));  // redacted: nothing to apply
  await until(() => got.reaction.length === 2 && client.conversationState(9).top === 4, 500, 'entries applied');
  assert.deepEqual(got.message.map((m) => m.seq), [1]);
  assert.deepEqual(got.reaction.map((r) => [r.seq, r.emoji, r.removed, r.sender, r.entry]),
    [[1, '👍', false, 3, 2], [1, '👍', true, 3, 3]]);
  client.close();
});

test('applyReaction adds and removes a user under an emoji, idempotently', () => {
  let r = applyReaction(undefined, { sender: 3, emoji: '👍' });
  assert.deepEqual(r, { '👍': [3] });
  r = applyReaction(r, { sender: 4, emoji: '👍' });
  r = applyReaction(r, { sender: 4, emoji: '👍' });
  assert.deepEqual(r, { '👍': [3, 4] });
  const before = r;
  r = applyReaction(r, { sender: 3, emoji: '👍', removed: true });
  assert.deepEqual(r, { '👍': [4] });
  assert.deepEqual(before, { '👍': [3, 4] }, 'the input is not changed');
  r = applyReaction(r, { sender: 4, emoji: '👍', removed: true });
  assert.deepEqual(r, {});
  assert.deepEqual(applyReaction({ a: [1] }, null), { a: [1] });
});
