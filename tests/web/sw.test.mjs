// web/sw.js, the demo page's service worker, run in a vm with a fake
// ServiceWorkerGlobalScope: a push shows a notification titled with the
// sender (a name the page told it, else "User <id>"), the preview or "New
// message" / "<n> new messages", tagged per conversation; a click focuses an
// open page and asks it to open the conversation, or opens the page on it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import vm from 'node:vm';

const SOURCE = fs.readFileSync(new URL('../../web/sw.js', import.meta.url), 'utf8');

// A fresh worker with its fake scope; returns {fire, shown, windows, opened}.
function worker({ windows = [] } = {}) {
  const listeners = new Map();
  const shown = [];
  const opened = [];
  const self = {
    addEventListener: (type, fn) => listeners.set(type, fn),
    skipWaiting: () => {},
    registration: { scope: 'https://chat.example/', showNotification: async (title, options) => { shown.push({ title, options }); } },
    clients: {
      claim: async () => {},
      matchAll: async () => windows,
      openWindow: async (url) => { opened.push(url); },
    },
  };
  vm.runInNewContext(SOURCE, { self, URL, URLSearchParams, console });
  // Dispatches an event; resolves once what it passed to waitUntil settles.
  const fire = async (type, fields) => {
    let pending = Promise.resolve();
    listeners.get(type)({ ...fields, waitUntil: (p) => { pending = p; } });
    await pending;
  };
  return { fire, shown, opened };
}

const push = (payload) => ({ data: { json: () => (typeof payload === 'string' ? JSON.parse(payload) : payload) } });

test('a push shows the sender, the preview, and a tag per conversation', async () => {
  const w = worker();
  await w.fire('message', { data: { type: 'names', names: [[2, 'bob']] } });
  await w.fire('push', push({ type: 'message', conversation: 7, seq: 9, sender: 2, unread: 3, body: 'hi there' }));
  assert.equal(w.shown.length, 1);
  assert.equal(w.shown[0].title, 'bob');
  assert.equal(w.shown[0].options.body, 'hi there');
  assert.equal(w.shown[0].options.tag, 'c7');
  assert.deepEqual({ ...w.shown[0].options.data }, { conversation: 7, seq: 9, unread: 3 });
});

test('no preview: "New message", or "<n> new messages" for a coalesced one; unknown sender: "User <id>"', async () => {
  const w = worker();
  await w.fire('push', push({ type: 'message', conversation: 7, seq: 9, sender: 5, unread: 1 }));
  await w.fire('push', push({ type: 'message', conversation: 7, seq: 12, first_seq: 9, sender: 5, unread: 4 }));
  assert.deepEqual(w.shown.map((s) => [s.title, s.options.body]), [['User 5', 'New message'], ['User 5', '4 new messages']]);
});

test('a payload that is not a chat message, or not JSON, shows nothing', async () => {
  const w = worker();
  await w.fire('push', push({ type: 'other' }));
  await w.fire('push', { data: { json: () => { throw new SyntaxError('bad'); } } });
  await w.fire('push', { data: null });
  assert.equal(w.shown.length, 0);
});

test('a click focuses an open page and asks it to open the conversation', async () => {
  const posted = [];
  let focused = 0;
  const win = { focus: async () => { focused++; }, postMessage: (m) => posted.push(m) };
  const w = worker({ windows: [win] });
  let closed = false;
  await w.fire('notificationclick', { notification: { data: { conversation: 7 }, close: () => { closed = true; } } });
  assert.ok(closed);
  assert.equal(focused, 1);
  assert.deepEqual(posted.map((m) => ({ ...m })), [{ type: 'open', conversation: 7 }]);
  assert.deepEqual(w.opened, []);
});

test('a click with no page open opens the page it was enabled from, on the conversation', async () => {
  const w = worker();
  await w.fire('notificationclick', { notification: { data: { conversation: 7 }, close: () => {} } });
  assert.deepEqual(w.opened, ['https://chat.example/#conversation=7']);
  await w.fire('message', { data: { type: 'page', url: 'https://chat.example/app/#token=abc&names=1%3Aal' } });
  await w.fire('notificationclick', { notification: { data: { conversation: 8 }, close: () => {} } });
  assert.equal(w.opened[1], 'https://chat.example/app/#token=abc&names=1%3Aal&conversation=8');
});
