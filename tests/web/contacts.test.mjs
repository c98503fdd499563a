// ChatClient.searchUsers (contact search, issue 15): the frame it sends,
// the list it returns, no request for an empty query, server errors passed on.
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { ChatClient, ChatError } from '../../web/chat-client.js';
import { FakeSocket, connectClient } from './fake-socket.mjs';

const opts = { url: 'ws://gw.test/ws', token: 't', WebSocket: FakeSocket, requestTimeout: 200, ackDelay: 5, pingInterval: 0, watchNetwork: false, backoffBase: 1 };
const alan = { user: 2, handle: 'alan', display_name: 'Alan', about: null, avatar: null, contact: true };
const alma = { user: 4, handle: 'zed', display_name: 'Alma', about: null, avatar: null, contact: false };

beforeEach(() => FakeSocket.reset());

test('searchUsers sends query (and limit when given) and returns the users in the server\'s order', async () => {
  const client = new ChatClient(opts);
  const ws = await connectClient(client, {
    overrides: {
      search_users: (f) => (f.query.length > 64
        ? { id: f.id, type: 'error', code: '22001', error: 'string_data_right_truncation', message: 'search query of 65 characters is longer than 64' }
        : { id: f.id, type: 'ok', result: { users: f.query === 'al' ? [alan, alma] : [] } }),
    },
  });
  assert.deepEqual(await client.searchUsers('al'), [alan, alma]);
  const f = ws.of('search_users').at(-1);
  assert.deepEqual([f.query, 'limit' in f], ['al', false]);
  assert.deepEqual(await client.searchUsers('al', { limit: 5 }), [alan, alma]);
  assert.equal(ws.of('search_users').at(-1).limit, 5);
  assert.deepEqual(await client.searchUsers('zz'), []);
  await assert.rejects(client.searchUsers('x'.repeat(65)), (e) => e instanceof ChatError && e.code === '22001');
  client.close();
});

test('searchUsers with an empty or blank query resolves to [] without a request', async () => {
  const client = new ChatClient(opts);
  const ws = await connectClient(client, { overrides: {} });
  const before = ws.of('search_users').length;
  assert.deepEqual(await client.searchUsers(''), []);
  assert.deepEqual(await client.searchUsers('   '), []);
  assert.deepEqual(await client.searchUsers(undefined), []);
  assert.equal(ws.of('search_users').length, before);
  client.close();
});
