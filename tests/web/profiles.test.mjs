// ChatClient's profile, blocking, report and privacy methods: the frames
// they send (fields left out when not given) and the results they return.
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { ChatClient, ChatError } from '../../web/chat-client.js';
import { FakeSocket, connectClient } from './fake-socket.mjs';

const opts = { url: 'ws://gw.test/ws', token: 't', WebSocket: FakeSocket, requestTimeout: 200, ackDelay: 5, pingInterval: 0, watchNetwork: false, backoffBase: 1 };
const ok = (result) => (f) => ({ id: f.id, type: 'ok', result });
const bob = { user: 2, handle: 'bob', display_name: 'Bob', about: null, avatar: 'a1' };

beforeEach(() => FakeSocket.reset());

test('profile, setProfile and findUser send the protocol fields and return the results', async () => {
  const client = new ChatClient(opts);
  const ws = await connectClient(client, {
    overrides: {
      profile: ok({ users: [bob] }),
      find_user: (f) => (f.handle === 'bob' ? ok({ user: bob })(f)
        : { id: f.id, type: 'error', code: 'P0002', error: 'no_data_found', message: `no user has the handle "${f.handle}"` }),
      set_profile: ok({}),
    },
  });
  assert.deepEqual(await client.profile([2, 9]), [bob]);
  assert.deepEqual(ws.of('profile').at(-1).users, [2, 9]);
  assert.deepEqual(await client.findUser('bob'), bob);
  assert.equal(await client.findUser('nobody'), null);
  await client.setProfile({ displayName: 'Al', avatar: '' });
  const sp = ws.of('set_profile').at(-1);
  assert.deepEqual([sp.display_name, sp.avatar, 'about' in sp], ['Al', '', false]);
  client.close();
});

test('block, unblock, blocked, report and setPrivacy', async () => {
  const client = new ChatClient(opts);
  const ws = await connectClient(client, {
    overrides: {
      blocked: ok({ users: [4, 5] }),
      report: (f) => (f.reason ? ok({ report: 12 })(f)
        : { id: f.id, type: 'error', code: '22023', error: 'invalid_parameter_value', message: 'request field "reason" is missing' }),
    },
  });
  await client.block(4);
  await client.unblock(4);
  assert.deepEqual([ws.of('block').at(-1).user, ws.of('unblock').at(-1).user], [4, 4]);
  assert.deepEqual(await client.blocked(), [4, 5]);
  assert.equal(await client.report({ conversation: 7, seq: 3, reason: 'spam' }), 12);
  const r = ws.of('report').at(-1);
  assert.deepEqual([r.conversation, r.seq, r.reason, 'user' in r], [7, 3, 'spam', false]);
  await assert.rejects(client.report({ user: 4 }), (e) => e instanceof ChatError && e.code === '22023');
  await client.setPrivacy({ readReceipts: false });
  const p = ws.of('set_privacy').at(-1);
  assert.deepEqual([p.read_receipts, 'last_seen' in p], [false, false]);
  await client.setPrivacy({ lastSeen: 'contacts' });
  assert.equal(ws.of('set_privacy').at(-1).last_seen, 'contacts');
  client.close();
});
