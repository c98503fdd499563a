// app.js: the pgchat demo page.  Plain DOM on top of chat-client.js: chat
// list, conversation view with history paging, composer, typing, ticks,
// presence, new chats, connection state and errors.  The token comes from the
// URL fragment (#token=...&refresh=URL&names=1:alice,2:bob&conversation=N), put there by the
// application; with refresh=, fresh tokens come from that URL (the
// application's token endpoint, {"token": ...}) before the current one expires.
//
// This file holds the actions and the wiring; app/store.js what the page
// knows, app/render.js how it is drawn, app/format.js its texts, app/dom.js
// the DOM helpers.

import { ChatClient, isLogEntry, tokenClaims, tokenExp } from './chat-client.js';
import { $, toast } from './app/dom.js';
import { errorText } from './app/format.js';
import { S, loadNames, loadLocal, saveLocal, learnPeer, peerOf, setReceipt } from './app/store.js';
import { renderList, renderHeader, renderMessages, renderState } from './app/render.js';
import { setMediaClient, fmtSize } from './app/media.js';
import { initMessenger, learnProfile, ensureProfiles, mentionsIn, refreshPins } from './app/messenger.js';
import { initContacts } from './app/contacts.js';
import { initAvatars, noteGroupUpdate } from './app/avatars.js';
import { E2E, IndexedDBStore, E2EPendingError, encryptFile } from './client/e2e.js';

const HISTORY_PAGE = 30;

const params = new URLSearchParams(location.hash.slice(1));
const token = params.get('token');
const refreshUrl = params.get('refresh');
let currentToken = token;
let client;
let e2e = null;        // this device's end-to-end encryption (client/e2e.js), after hello

/** The token for the next connect or re-authentication: a fresh one from the
 * application's endpoint when the page has one, else the fragment's. */
async function getToken() {
  if (refreshUrl) {
    try {
      const res = await fetch(refreshUrl, { cache: 'no-store' });
      if (res.ok) {
        const t = (await res.json()).token;
        if (typeof t === 'string' && (tokenExp(t) ?? 0) >= (tokenExp(currentToken) ?? 0)) currentToken = t;
      }
    } catch { /* offline or the endpoint is down: the current token, retried later */ }
  }
  return currentToken;
}

/** The header of the open conversation (presence only while connected). */
const header = () => renderHeader(client.state === 'open');

/** Learns a direct chat's peer from something `user` did, redrawing what shows it. */
function notePeer(conv, user) {
  if (!learnPeer(conv, user)) return;
  renderList();
  if (conv === S.current) header();
}

// ------------------------------------------------------------ conversations

let refreshTimer = null;
/** Reloads the chat list (debounced). */
function refreshConversations() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(async () => {
    try {
      const rows = await client.conversations({ limit: 100 });
      const seen = new Set();
      for (const r of rows) {
        const id = r.conversation;
        seen.add(id);
        const old = S.convs.get(id) || {};
        const row = { ...old, ...r };
        // Live events may be ahead of the list; never go back.
        if (old.last_seq > row.last_seq) { row.last_seq = old.last_seq; row.last_message = old.last_message; }
        S.convs.set(id, row);
        if (row.last_message?.kind === 'e2e') decryptMessage(row.last_message);
        if (r.last_message && r.last_message.sender != null) notePeer(id, Number(r.last_message.sender));
        if (r.peer) { learnProfile(r.peer); notePeer(id, Number(r.peer.user)); }
      }
      for (const id of [...S.convs.keys()]) if (!seen.has(id)) S.convs.delete(id);
      renderList();
      header();
      // #conversation=N: opened from a notification.
      const wanted = Number(params.get('conversation'));
      if (S.current === null && Number.isInteger(wanted) && S.convs.has(wanted)) openConversation(wanted);
      else if (S.current === null && rows.length && window.innerWidth > 700) openConversation(rows[0].conversation);
      refreshPresence();
    } catch (e) {
      toast(errorText(e, 'Could not load chats'));
    }
  }, 30);
}

/** Asks for the presence of every direct chat's peer. */
async function refreshPresence() {
  const users = new Set();
  for (const c of S.convs.values()) { const p = peerOf(c); if (p != null) users.add(p); }
  if (!users.size) return;
  try {
    for (const p of await client.presence([...users])) S.presence.set(Number(p.user), p);
    header();
    renderList();
  } catch (e) {
    if (e.code !== 'disconnected') toast(errorText(e, 'Could not load presence'));
  }
}

/** Shows conversation `id`, loading its newest page of history the first time. */
async function openConversation(id) {
  if (S.current !== null && S.current !== id) client.typing(S.current, false);
  S.current = id;
  document.body.classList.add('show-conv');
  $('composer').hidden = false;
  renderList();
  header();
  renderMessages();
  if (!S.oldest.has(id)) {
    try {
      const msgs = await client.history(id, { limit: HISTORY_PAGE });
      addMessages(id, msgs);
      S.oldest.set(id, msgs.length ? msgs[0].seq : 1);
      if (msgs.length < HISTORY_PAGE) S.oldest.set(id, 1);
    } catch (e) {
      toast(errorText(e, 'Could not load messages'));
    }
  }
  if (S.current !== id) return;
  refreshPins(id);
  const box = $('messages');
  renderMessages();
  box.scrollTop = box.scrollHeight;
  markCurrentRead();
  if (peerOf(S.convs.get(id)) != null) refreshPresence();
  $('composer-input').focus({ preventScroll: true });
}

/** Loads the page of history above the oldest message shown. */
async function loadOlder() {
  const id = S.current;
  const before = S.oldest.get(id);
  if (!(before > 1)) return;
  $('older').disabled = true;
  try {
    const msgs = await client.history(id, { beforeSeq: before, limit: HISTORY_PAGE });
    addMessages(id, msgs);
    S.oldest.set(id, msgs.length && msgs[0].seq > 1 && msgs.length >= HISTORY_PAGE ? msgs[0].seq : 1);
    if (S.current === id) renderMessages({ keepBottomOffset: true });
  } catch (e) {
    toast(errorText(e, 'Could not load older messages'));
  } finally {
    $('older').disabled = false;
  }
}

/** Stores messages of `conv` (change-log entries are applied by the client
 * as edit/delete events, never shown as messages of their own). */
function addMessages(conv, msgs) {
  if (!S.messages.has(conv)) S.messages.set(conv, new Map());
  const map = S.messages.get(conv);
  for (const m of msgs) {
    if (isLogEntry(m)) continue;
    map.set(m.seq, m);
    if (m.kind === 'e2e') decryptMessage(m);
    // enable_e2e's system message: the conversation is encrypted from now on.
    if (m.kind === 'system' && /"action": ?"e2e"/.test(m.body || '') && S.convs.has(conv)) S.convs.get(conv).e2e = true;
    noteGroupUpdate(conv, m);   // avatars: a group's new picture
    if (m.sender != null && m.sender !== S.me && m.kind !== 'system') notePeer(conv, Number(m.sender));
  }
  ensureProfiles(msgs.filter((m) => m.sender != null && m.kind !== 'system').map((m) => m.sender));
}

let readTimer = null;
/** Marks the open conversation read up to its newest message, when the page is visible. */
function markCurrentRead() {
  clearTimeout(readTimer);
  readTimer = setTimeout(() => {
    const id = S.current;
    const c = S.convs.get(id);
    if (!c || document.visibilityState === 'hidden') return;
    const map = S.messages.get(id);
    const newest = Math.max(c.last_seq || 0, ...(map ? map.keys() : []));
    if (!(newest > (c.read_seq || 0))) { if (c.unread) { c.unread = 0; renderList(); } return; }
    c.read_seq = newest;
    c.unread = 0;
    renderList();
    client.markRead(id, newest).catch((e) => {
      if (e.code !== 'disconnected' && e.code !== 'closed') toast(errorText(e, 'Could not mark as read'));
      c.read_seq = 0;  // try again next time
    });
  }, 50);
}

// ---------------------------------------------------- end-to-end encryption

/**
 * Decrypts an e2e message in place (m.plain), or marks it pending (its key
 * has not arrived: retried when keys arrive) or bad (failed verification).
 */
async function decryptMessage(m) {
  if (m.plain !== undefined || m.deleted_at || !e2e) return;
  try {
    m.plain = await e2e.decrypt(m);
    m.e2e = 'ok';
  } catch (err) {
    m.e2e = err instanceof E2EPendingError ? 'pending' : 'bad';
  }
  const id = Number(m.conversation);
  if (id === S.current) renderMessages();
  if (S.convs.get(id)?.last_message?.seq === m.seq) { S.convs.get(id).last_message = m; renderList(); }
}

/** Retries every message still waiting for its key (a sender key arrived). */
function retryPending() {
  for (const map of S.messages.values())
    for (const m of map.values()) if (m.kind === 'e2e' && m.plain === undefined && m.e2e !== 'bad') decryptMessage(m);
  for (const c of S.convs.values()) if (c.last_message?.kind === 'e2e') decryptMessage(c.last_message);
}

/** Sets up this device's keys after hello (once per page). */
async function startE2E(user, device) {
  if (e2e) return;
  e2e = new E2E({ user, device, store: new IndexedDBStore(`pgchat-e2e-${user}-${device}`),
    call: ({ type, ...fields }) => client.request(type, fields) });
  window.e2e = e2e;   // for the console and the browser test
  e2e.onKeys(retryPending);
  try {
    await e2e.init();
  } catch (err) {
    toast(errorText(err, 'Could not set up end-to-end encryption'));
  }
  retryPending();
}

/** Shows the safety number of the open direct chat. */
async function showSafetyNumber() {
  const c = S.convs.get(S.current);
  const peer = peerOf(c);
  if (!e2e || peer == null) return;
  $('safety-number').textContent = '…';
  $('dialog-safety').showModal();
  try { $('safety-number').textContent = await e2e.safetyNumber(peer); } catch (err) { $('safety-number').textContent = errorText(err); }
}

/** Sends the composer's text to the open conversation, shown as pending until stored. */
function sendCurrent() {
  const input = $('composer-input');
  const body = input.value.trim();
  const conv = S.current;
  if (!body || conv === null) return;
  input.value = '';
  autoGrow();
  const clientMsgId = crypto.randomUUID ? crypto.randomUUID() : String(Math.random()).slice(2);
  if (!S.pending.has(conv)) S.pending.set(conv, []);
  const p = { client_msg_id: clientMsgId, body, failed: null };
  S.pending.get(conv).push(p);
  renderMessages();
  $('messages').scrollTop = $('messages').scrollHeight;
  // In an e2e conversation the text is encrypted here; the server gets
  // ciphertext only, and the mentions as member ids (found in the plaintext).
  const c = S.convs.get(conv);
  const mentions = mentionsIn(conv, body);
  const sending = c?.e2e
    ? (e2e ? e2e.encrypt(conv, body) : Promise.reject(new Error('end-to-end encryption is not ready')))
      .then((cipher) => client.send(conv, cipher, { clientMsgId, kind: 'e2e', mentions }))
    : client.send(conv, body, { clientMsgId, mentions });
  sending.then(() => {
    dropPending(conv, clientMsgId);
  }, (e) => {
    p.failed = errorText(e);
    toast(errorText(e, 'Message not sent'));
    if (S.current === conv) renderMessages();
  });
}

/** Sends a file to the open conversation (media): a pending entry with a
 * progress bar until the upload and the send are done. */
function sendFileCurrent(file) {
  const conv = S.current;
  if (conv === null || !file) return;
  const caption = $('composer-input').value.trim();
  $('composer-input').value = '';
  autoGrow();
  const clientMsgId = crypto.randomUUID ? crypto.randomUUID() : String(Math.random()).slice(2);
  if (!S.pending.has(conv)) S.pending.set(conv, []);
  const p = { client_msg_id: clientMsgId, body: `${file.name} (${fmtSize(file.size)})${caption ? ' ' + caption : ''}`, failed: null, progress: 0 };
  S.pending.get(conv).push(p);
  renderMessages();
  $('messages').scrollTop = $('messages').scrollHeight;
  const onProgress = (loaded, total) => {
    p.progress = total ? loaded / total : 1;
    const bar = document.querySelector(`[data-client-msg-id="${clientMsgId}"] progress`);
    if (bar) bar.value = p.progress;
  };
  const mentions = caption ? mentionsIn(conv, caption) : undefined;
  // In an e2e conversation the file is encrypted here (the server gets
  // ciphertext without a name); its key, name and type travel in the
  // encrypted body with the caption.
  const sending = S.convs.get(conv)?.e2e
    ? (e2e ? sendFileE2E(conv, file, caption, clientMsgId, onProgress, mentions) : Promise.reject(new Error('end-to-end encryption is not ready')))
    : client.sendFile(conv, file, { caption, clientMsgId, mentions, onProgress });
  sending.then(() => dropPending(conv, clientMsgId), (e) => {
    p.failed = errorText(e);
    toast(errorText(e, 'File not sent'));
    if (S.current === conv) renderMessages();
  });
}

/** Encrypts file (encryptFile), then sends it with its key in an e2e body. */
async function sendFileE2E(conv, file, caption, clientMsgId, onProgress, mentions) {
  const { bytes, key } = encryptFile(new Uint8Array(await file.arrayBuffer()));
  const meta = { ...key, name: file.name || null, mime: file.type || 'application/octet-stream', size: file.size };
  const body = await e2e.encrypt(conv, { text: caption, files: [meta] });
  return client.sendFile(conv, bytes, { mime: 'application/octet-stream', caption: body, kind: 'e2e', clientMsgId, mentions, onProgress });
}

/** A pending send was stored: its placeholder goes. */
function dropPending(conv, clientMsgId) {
  const list = S.pending.get(conv);
  if (!list) return;
  const i = list.findIndex((p) => p.client_msg_id === clientMsgId);
  if (i >= 0) { list.splice(i, 1); if (S.current === conv) renderMessages(); }
}

/** The composer grows with its text, up to 160 px. */
function autoGrow() {
  const t = $('composer-input');
  t.style.height = 'auto';
  t.style.height = `${Math.min(t.scrollHeight, 160)}px`;
}

/** A new chat row, until the chat list is reloaded. */
function addRow(id, kind, title) {
  if (!S.convs.has(id)) S.convs.set(id, { conversation: id, kind, title, last_seq: 0, read_seq: 0, unread: 0, last_activity: new Date().toISOString() });
}

// ------------------------------------------------------------ client events

/** Connects and follows the client's events. */
// ------------------------------------------------------------- notifications

let vapidKey = null;

/** The bytes of a base64url string (the VAPID key of hello). */
function b64urlBytes(s) {
  const b = atob(s.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (s.length % 4)) % 4));
  return Uint8Array.from(b, (c) => c.charCodeAt(0));
}

/** Shows "Enable notifications" when the gateway announces a VAPID key and the browser can push. */
function offerNotifications(key) {
  vapidKey = typeof key === 'string' && key ? key : null;
  const able = vapidKey && 'serviceWorker' in navigator && 'PushManager' in window && 'Notification' in window;
  $('notify').hidden = !able || Notification.permission === 'denied';
  if (able && Notification.permission === 'granted') enableNotifications(true);
}

/** Tells the service worker the names the page knows, so that notifications are titled with them. */
async function tellWorker() {
  const reg = await navigator.serviceWorker?.getRegistration?.();
  reg?.active?.postMessage({ type: 'names', names: [...S.names] });
  reg?.active?.postMessage({ type: 'page', url: location.href });
}

/** Subscribes with the gateway's VAPID key and registers the subscription (register_push). */
async function enableNotifications(quiet = false) {
  try {
    if (!quiet && (await Notification.requestPermission()) !== 'granted') { toast('Notifications are blocked for this page', 'info'); return; }
    const reg = await navigator.serviceWorker.register('sw.js');
    await navigator.serviceWorker.ready;
    await tellWorker();
    let sub = await reg.pushManager.getSubscription();
    if (sub && sub.options?.applicationServerKey) {
      const had = new Uint8Array(sub.options.applicationServerKey);
      const want = b64urlBytes(vapidKey);
      if (had.length !== want.length || had.some((b, i) => b !== want[i])) { await sub.unsubscribe(); sub = null; }
    }
    sub = sub || await reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: b64urlBytes(vapidKey) });
    const { endpoint, keys } = sub.toJSON();
    await client.request('register_push', { platform: 'webpush', subscription: { endpoint, keys } });
    $('notify').textContent = 'Notifications on';
    $('notify').disabled = true;
    if (!quiet) toast('Notifications are on', 'info');
  } catch (e) { if (!quiet) toast(errorText(e, 'Could not enable notifications')); }
}

function start() {
  if (!token) {
    $('app').hidden = true;
    $('no-token').hidden = false;
    return;
  }
  const sub = tokenClaims(token)?.sub;  // display only; the gateway verifies the token
  S.me = sub != null ? Number(sub) : null;
  loadNames(params.get('names'));
  loadLocal();
  $('me-name').textContent = S.names.get(S.me) || (S.me != null ? `user ${S.me}` : 'pgchat');
  document.title = `pgchat — ${S.names.get(S.me) || `user ${S.me}`}`;

  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  client = new ChatClient({ url: `${proto}//${location.host}/ws`, ...(refreshUrl ? { getToken } : { token }) });
  window.chat = client;  // for the console and the browser test
  setMediaClient(client);

  client.on('state', (s) => {
    if (S.current !== null) header();
    renderState(s);
  });
  client.on('hello', (h) => {
    S.me = Number(h.user);
    refreshConversations();
    offerNotifications(h.vapid_public_key);
    startE2E(Number(h.user), Number(h.device));
  });
  // E2E events (client/e2e.js): key shares, the key pool, identity changes.
  client.on('to_device', (ev) => e2e?.receiveToDevice([ev]));
  client.on('to_device_batch', ({ entries }) => e2e?.receiveToDevice(entries));
  client.on('keys_low', (ev) => e2e?.onKeysLow(ev));
  client.on('identity_changed', (ev) => e2e?.onIdentityChanged(ev));
  client.on('synced', () => refreshConversations());
  client.on('message', (m) => {
    const id = Number(m.conversation);
    addMessages(id, [m]);
    if (m.client_msg_id) dropPending(id, m.client_msg_id);
    const c = S.convs.get(id);
    if (!c) { refreshConversations(); return; }
    if (!(c.last_seq >= m.seq)) { c.last_seq = m.seq; c.last_message = m; c.last_activity = m.created_at || c.last_activity; }
    const mine = m.sender === S.me;
    if (mine) c.read_seq = Math.max(c.read_seq || 0, m.seq);
    if (id === S.current && document.visibilityState !== 'hidden') markCurrentRead();
    else if (!mine && m.seq > (c.read_seq || 0)) c.unread = (c.unread || 0) + 1;
    renderList();
    if (id === S.current) renderMessages();
  });
  const patch = (f) => (e) => {
    const m = S.messages.get(Number(e.conversation))?.get(e.seq);
    if (m) { f(m, e); if (Number(e.conversation) === S.current) renderMessages(); }
    const c = S.convs.get(Number(e.conversation));
    if (c && c.last_message && c.last_message.seq === e.seq) { f(c.last_message, e); renderList(); }
  };
  client.on('edit', patch((m, e) => { m.body = e.body; m.edited_at = e.edited_at || new Date().toISOString(); }));
  client.on('delete', patch((m, e) => { m.body = null; m.deleted_at = e.deleted_at || new Date().toISOString(); }));
  client.on('receipt', (r) => {
    notePeer(Number(r.conversation), Number(r.user));
    setReceipt(Number(r.conversation), Number(r.user), r);
    saveLocal();
    if (Number(r.conversation) === S.current) renderMessages();
  });
  client.on('read_state', (r) => {
    const c = S.convs.get(Number(r.conversation));
    if (!c) return;
    c.read_seq = Math.max(c.read_seq || 0, r.read);
    c.unread = Math.max(0, Math.min(c.unread || 0, (c.last_seq || 0) - c.read_seq));
    renderList();
  });
  client.on('typing', (t) => {
    const id = Number(t.conversation);
    if (!S.typing.has(id)) S.typing.set(id, new Set());
    if (t.typing) S.typing.get(id).add(Number(t.user)); else S.typing.get(id).delete(Number(t.user));
    notePeer(id, Number(t.user));
    renderList();
    if (id === S.current) header();
  });
  client.on('presence', (p) => {
    S.presence.set(Number(p.user), p);
    renderList();
    header();
  });
  client.on('member', (e) => {
    refreshConversations();
    if (Number(e.user) === S.me && e.action === 'removed' && Number(e.conversation) === S.current) toast('You left this conversation', 'info');
  });
  client.on('error', (e) => toast(errorText(e)));
  initMessenger(client, {
    openConversation, renderList, header, refreshConversations, addMessages,
    renderMessages: (o) => renderMessages(o),
  });
  initContacts(client, { openDirect: (user) => openDirect(user, false) });
  initAvatars(client, { renderList, header, learnProfile, renderMessages: (o) => renderMessages(o) });

  client.connect().catch((e) => toast(errorText(e, 'Cannot connect')));
}

// ------------------------------------------------------------- page events

$('chat-list').addEventListener('click', (ev) => {
  const li = ev.target.closest('li[data-conversation]');
  if (li) openConversation(Number(li.dataset.conversation));
});
$('composer').addEventListener('submit', (ev) => { ev.preventDefault(); sendCurrent(); });
$('composer-input').addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); sendCurrent(); }
});
$('composer-input').addEventListener('input', () => {
  autoGrow();
  if (S.current === null) return;
  if ($('composer-input').value.trim()) client.typing(S.current); else client.typing(S.current, false);
});
$('older').addEventListener('click', loadOlder);
// media: the attach button and drag-and-drop onto the conversation
$('composer-attach').addEventListener('click', () => $('composer-file').click());
$('composer-file').addEventListener('change', () => {
  for (const f of $('composer-file').files) sendFileCurrent(f);
  $('composer-file').value = '';
});
for (const target of [$('messages'), $('composer')]) {
  target.addEventListener('dragover', (ev) => { if (S.current !== null) { ev.preventDefault(); document.body.classList.add('dropping'); } });
  target.addEventListener('dragleave', () => document.body.classList.remove('dropping'));
  target.addEventListener('drop', (ev) => {
    ev.preventDefault();
    document.body.classList.remove('dropping');
    for (const f of ev.dataTransfer?.files || []) sendFileCurrent(f);
  });
}
$('safety').addEventListener('click', showSafetyNumber);
$('messages').addEventListener('scroll', () => { if ($('messages').scrollTop === 0 && !$('older').hidden && !$('older').disabled) loadOlder(); });
$('back').addEventListener('click', () => { document.body.classList.remove('show-conv'); });
document.addEventListener('visibilitychange', () => { if (document.visibilityState === 'visible') markCurrentRead(); });
window.addEventListener('hashchange', () => location.reload());

$('notify').addEventListener('click', () => enableNotifications());
// A notification was clicked while the page is open: the worker asks it to open the conversation.
navigator.serviceWorker?.addEventListener('message', (ev) => {
  if (ev.data?.type === 'open' && Number.isInteger(ev.data.conversation)) openConversation(ev.data.conversation);
});
$('new-direct').addEventListener('click', () => { $('direct-user').value = ''; $('direct-secret').checked = false; $('dialog-direct').showModal(); });
$('dialog-direct').addEventListener('close', async () => {
  if ($('dialog-direct').returnValue !== 'ok') return;
  const input = $('direct-user').value.trim().replace(/^@/, '');
  let user = /^[0-9]+$/.test(input) ? Number(input) : null;
  if (!input) { toast('Enter a handle or a user id'); return; }
  if (user === null) {
    // A contact search by handle (regardless of case).
    try {
      const p = await client.findUser(input);
      if (!p) { toast(`No user has the handle “${input}”`); return; }
      learnProfile(p);
      user = Number(p.user);
    } catch (e) { toast(errorText(e, `Could not look up “${input}”`)); return; }
  }
  if (!Number.isInteger(user) || user <= 0) { toast('Enter a handle or a user id (a positive number)'); return; }
  try {
    await openDirect(user, $('direct-secret').checked);
  } catch (e) { toast(errorText(e, `Could not start a chat with user ${user}`)); }
});

/** Opens the direct conversation with user (created when there is none;
 * secret: made end-to-end encrypted).  The "New chat" dialog and the
 * contact search box (app/contacts.js) start chats here. */
async function openDirect(user, secret) {
  const id = await client.direct(user);
  if (secret) await client.request('enable_e2e', { conversation: id });
  addRow(id, 'direct', null);
  S.peers.set(id, user);
  saveLocal();
  refreshConversations();
  await openConversation(id);
}

$('new-group').addEventListener('click', () => { $('group-title').value = ''; $('group-members').value = ''; $('group-secret').checked = false; $('dialog-group').showModal(); });
$('dialog-group').addEventListener('close', async () => {
  if ($('dialog-group').returnValue !== 'ok') return;
  const title = $('group-title').value.trim();
  const members = $('group-members').value.split(/[\s,]+/).filter(Boolean).map(Number);
  if (!title) { toast('A group needs a title'); return; }
  if (members.some((m) => !Number.isInteger(m) || m <= 0)) { toast('Member ids are positive numbers, separated by commas'); return; }
  try {
    const id = await client.createGroup(title, members);
    if ($('group-secret').checked) await client.request('enable_e2e', { conversation: id });
    addRow(id, 'group', title);
    refreshConversations();
    openConversation(id);
  } catch (e) { toast(errorText(e, 'Could not create the group')); }
});

start();
