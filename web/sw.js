// sw.js: the demo page's service worker: shows pgchat's Web Push
// notifications and opens the conversation when one is clicked.
//
// The push payload (decrypted by the browser) is the notification of the
// chat protocol: {"type":"message","conversation","seq","sender","unread"},
// "first_seq" when it stands for several messages, "body" only when the
// recipient allows previews and the conversation is not end-to-end
// encrypted.  Title: the sender's name (the page tells this worker the names
// it knows), else "User <id>"; body: the preview, else "New message" (or
// "<n> new messages"); tag: the conversation, so a newer notification
// replaces the older one.  A classic script (not a module) so that every
// browser with Push runs it (tests/web/sw.test.mjs runs it in a vm).
/* global self, clients */
'use strict';

const names = new Map();        // user id -> display name, from the page
let pageUrl = null;             // the page that registered us (its fragment holds the token)

// The title and options of the notification for payload p.
function notificationFor(p, nameMap) {
  const sender = Number(p.sender);
  const title = nameMap.get(sender) || (Number.isFinite(sender) ? `User ${sender}` : 'pgchat');
  const n = p.first_seq != null ? Number(p.seq) - Number(p.first_seq) + 1 : 1;
  const body = typeof p.body === 'string' && p.body !== '' ? p.body : n > 1 ? `${n} new messages` : 'New message';
  return {
    title,
    options: {
      body,
      tag: `c${p.conversation}`,
      renotify: true,
      data: { conversation: Number(p.conversation), seq: Number(p.seq), unread: Number(p.unread) },
    },
  };
}

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

// The page tells us the names it knows and its own address.
self.addEventListener('message', (event) => {
  const m = event.data || {};
  if (m.type === 'names' && Array.isArray(m.names)) for (const [id, name] of m.names) names.set(Number(id), String(name));
  if (m.type === 'page' && typeof m.url === 'string') pageUrl = m.url;
});

self.addEventListener('push', (event) => {
  let p;
  try { p = event.data ? event.data.json() : null; } catch { p = null; }
  if (!p || p.type !== 'message') return;
  const { title, options } = notificationFor(p, names);
  event.waitUntil(self.registration.showNotification(title, options));
});

// A click focuses an open page and asks it to open the conversation, or opens the page on it.
self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  const conversation = event.notification.data?.conversation;
  event.waitUntil((async () => {
    const wins = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
    for (const w of wins) {
      if ('focus' in w) {
        await w.focus();
        w.postMessage({ type: 'open', conversation });
        return;
      }
    }
    const base = pageUrl || self.registration.scope;
    const url = new URL(base);
    const frag = new URLSearchParams(url.hash.slice(1));
    frag.set('conversation', String(conversation));
    url.hash = frag.toString();
    await self.clients.openWindow(url.href);
  })());
});

