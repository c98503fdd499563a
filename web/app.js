// app.js: the pgchat demo page.  Plain DOM on top of chat-client.js: chat
// list, conversation view with history paging, composer, typing, ticks,
// presence, new chats, connection state and errors.  The token comes from the
// URL fragment (#token=...&refresh=URL&names=1:alice,2:bob), put there by the
// application; with refresh=, fresh tokens come from that URL (the
// application's token endpoint, {"token": ...}) before the current one expires.

import { ChatClient, isLogEntry, tokenExp } from './chat-client.js';

const $ = (id) => document.getElementById(id);
const HISTORY_PAGE = 30;

// ------------------------------------------------------------------ state

const params = new URLSearchParams(location.hash.slice(1));
const token = params.get('token');
const refreshUrl = params.get('refresh');
let currentToken = token;

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

const S = {
  me: null,
  names: new Map(),        // user id -> display name (from the fragment's names=)
  convs: new Map(),        // conversation id -> chat list row (+ peer, members)
  messages: new Map(),     // conversation id -> Map seq -> message
  pending: new Map(),      // conversation id -> [{client_msg_id, body, failed}]
  oldest: new Map(),       // conversation id -> lowest seq loaded (1 = everything)
  receipts: new Map(),     // conversation id -> Map user -> {delivered, read}
  presence: new Map(),     // user id -> {online, last_seen}
  typing: new Map(),       // conversation id -> Set of user ids
  current: null,
};

for (const pair of (params.get('names') || '').split(',')) {
  const [id, name] = pair.split(':');
  if (id && name) S.names.set(Number(id), decodeURIComponent(name));
}

/** The user id in the token (display only; the gateway verifies the token). */
function tokenUser(jwt) {
  try {
    const b64 = jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return Number(JSON.parse(atob(b64)).sub);
  } catch { return null; }
}

const nameOf = (u) => (u === S.me ? 'You' : S.names.get(Number(u)) || `user ${u}`);
const store = (key) => `pgchat:${S.me}:${key}`;

/** Receipt watermarks and direct-chat peers survive reloads in localStorage. */
function loadLocal() {
  try {
    const r = JSON.parse(localStorage.getItem(store('receipts')) || '{}');
    for (const [c, users] of Object.entries(r)) S.receipts.set(Number(c), new Map(Object.entries(users).map(([u, w]) => [Number(u), w])));
    S.peers = new Map(Object.entries(JSON.parse(localStorage.getItem(store('peers')) || '{}')).map(([c, u]) => [Number(c), u]));
  } catch { S.peers = new Map(); }
}
function saveLocal() {
  try {
    const r = {};
    for (const [c, users] of S.receipts) r[c] = Object.fromEntries(users);
    localStorage.setItem(store('receipts'), JSON.stringify(r));
    localStorage.setItem(store('peers'), JSON.stringify(Object.fromEntries(S.peers)));
  } catch { /* storage full or disabled: ticks start over on reload */ }
}

// ------------------------------------------------------------- formatting

function fmtTime(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const today = new Date();
  const hm = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  return d.toDateString() === today.toDateString() ? hm : `${d.toLocaleDateString([], { month: 'short', day: 'numeric' })} ${hm}`;
}

function lastSeenText(p) {
  if (!p) return '';
  if (p.online) return 'online';
  if (!p.last_seen) return 'offline';
  return `last seen ${fmtTime(p.last_seen)}`;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) e.append(c);
  return e;
}

/** A system message (body: JSON {action, by, user, title, members}) as a sentence. */
function systemText(m) {
  let e;
  try { e = JSON.parse(m.body); } catch { return m.body || ''; }
  if (!e || typeof e !== 'object') return String(m.body);
  const who = (u) => (u === S.me ? 'you' : nameOf(u));
  const by = e.by != null ? who(Number(e.by)) : 'someone';
  const By = by[0].toUpperCase() + by.slice(1);
  switch (e.action) {
    case 'created': {
      const others = (e.members || []).map(Number).filter((u) => u !== Number(e.by)).map(who);
      return `${By} created the group${e.title ? ` “${e.title}”` : ''}${others.length ? ` with ${others.join(', ')}` : ''}`;
    }
    case 'added': return `${By} added ${who(Number(e.user))}`;
    case 'removed': return `${By} removed ${who(Number(e.user))}`;
    case 'left': { const u = who(Number(e.user)); return `${u[0].toUpperCase() + u.slice(1)} left`; }
    default: return e.action ? `${By}: ${e.action}` : String(m.body);
  }
}

// ---------------------------------------------------------------- toasts

function toast(text, kind = 'error') {
  const t = el('div', { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text);
  $('toasts').append(t);
  setTimeout(() => t.remove(), 6000);
}

/** A readable line for a ChatError (or any error). */
function errorText(e, what) {
  const known = {
    '42501': 'not allowed', P0002: 'not found', '22023': 'invalid input', '22001': 'message too long',
    '54000': 'group is full', '53400': 'slow down (rate limit)', '55000': 'no longer possible',
    timeout: 'no answer from the server', disconnected: 'connection lost', closed: 'disconnected',
  };
  const why = e && e.message ? e.message : String(e);
  const label = e && known[e.code] ? `${known[e.code]}: ` : '';
  return `${what ? what + ' — ' : ''}${label}${why}`;
}

// ------------------------------------------------------------ conversations

function convTitle(c) {
  if (!c) return '';
  if (c.kind === 'group') return c.title || `Group ${c.conversation_id}`;
  const peer = peerOf(c);
  return c.title || (peer ? nameOf(peer) : `Chat ${c.conversation_id}`);
}

/** The other member of a direct chat, from the server's row or what we learned. */
function peerOf(c) {
  if (!c || c.kind !== 'direct') return null;
  const explicit = c.peer ?? c.other_user ?? c.peer_id;
  if (explicit != null) return Number(explicit);
  const members = membersOf(c);
  const other = members.find((u) => u !== S.me);
  if (other != null) return other;
  return S.peers.get(c.conversation_id) ?? null;
}

/** Member ids of a conversation when the server lists them. */
function membersOf(c) {
  if (!c || !Array.isArray(c.members)) return [];
  return c.members.map((m) => Number(typeof m === 'object' ? m.user ?? m.user_id : m));
}

function learnPeer(convId, user) {
  const c = S.convs.get(convId);
  if (!c || c.kind !== 'direct' || user === S.me || S.peers.get(convId) === user) return;
  S.peers.set(convId, user);
  saveLocal();
  renderList();
  if (convId === S.current) renderHeader();
}

let refreshTimer = null;
/** Reloads the chat list (debounced). */
function refreshConversations() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(async () => {
    try {
      const rows = await client.conversations({ limit: 100 });
      const seen = new Set();
      for (const r of rows) {
        const id = Number(r.conversation_id ?? r.conversation);
        seen.add(id);
        const old = S.convs.get(id) || {};
        const row = { ...old, ...r, conversation_id: id };
        // Live events may be ahead of the list; never go back.
        if (old.last_seq > row.last_seq) { row.last_seq = old.last_seq; row.last_message = old.last_message; }
        S.convs.set(id, row);
        if (Array.isArray(r.members)) {
          for (const m of r.members) {
            if (typeof m !== 'object') continue;
            const u = Number(m.user ?? m.user_id);
            if (m.handle || m.display_name) S.names.set(u, m.display_name || m.handle);
            if (m.delivered_seq != null || m.read_seq != null) setReceipt(id, u, { delivered: m.delivered_seq, read: m.read_seq });
          }
        }
        if (r.last_message && r.last_message.sender != null) learnPeer(id, Number(r.last_message.sender));
      }
      for (const id of [...S.convs.keys()]) if (!seen.has(id)) S.convs.delete(id);
      renderList();
      renderHeader();
      if (S.current === null && rows.length && window.innerWidth > 700) openConversation(Number(rows[0].conversation_id ?? rows[0].conversation));
      refreshPresence();
    } catch (e) {
      toast(errorText(e, 'Could not load chats'));
    }
  }, 30);
}

async function refreshPresence() {
  const users = new Set();
  for (const c of S.convs.values()) { const p = peerOf(c); if (p != null) users.add(p); }
  if (!users.size) return;
  try {
    for (const p of await client.presence([...users])) S.presence.set(Number(p.user), p);
    renderHeader();
    renderList();
  } catch (e) {
    if (e.code !== 'disconnected') toast(errorText(e, 'Could not load presence'));
  }
}

function setReceipt(conv, user, { delivered, read }) {
  if (!S.receipts.has(conv)) S.receipts.set(conv, new Map());
  const m = S.receipts.get(conv);
  const w = m.get(user) || { delivered: 0, read: 0 };
  if (delivered != null) w.delivered = Math.max(w.delivered, Number(delivered));
  if (read != null) { w.read = Math.max(w.read, Number(read)); w.delivered = Math.max(w.delivered, w.read); }
  m.set(user, w);
}

/** 'sent' | 'delivered' | 'read' for one of my messages, from receipt watermarks. */
function tickOf(conv, seq) {
  const c = S.convs.get(conv);
  const w = S.receipts.get(conv) || new Map();
  let others = membersOf(c).filter((u) => u !== S.me);
  if (!others.length) {
    const p = peerOf(c);
    others = p != null ? [p] : [...w.keys()].filter((u) => u !== S.me);
  }
  if (!others.length) return 'sent';
  const all = (f) => others.every((u) => (w.get(u)?.[f] || 0) >= seq);
  if (all('read')) return 'read';
  if (all('delivered')) return 'delivered';
  return 'sent';
}

// ---------------------------------------------------------------- render

function renderList() {
  const list = $('chat-list');
  const rows = [...S.convs.values()].sort((a, b) => String(b.last_activity || '').localeCompare(String(a.last_activity || '')) || b.conversation_id - a.conversation_id);
  list.replaceChildren(...rows.map((c) => {
    const id = c.conversation_id;
    const typing = [...(S.typing.get(id) || [])];
    const lm = c.last_message;
    let preview;
    if (typing.length) preview = el('span', { class: 'typing' }, `${typing.map(nameOf).join(', ')} typing…`);
    else if (lm && lm.kind === 'system') preview = systemText(lm);
    else if (lm) preview = `${lm.sender === S.me ? 'You: ' : c.kind === 'group' && lm.sender != null ? nameOf(lm.sender) + ': ' : ''}${lm.deleted_at ? 'message deleted' : lm.body ?? ''}`;
    else preview = el('span', { class: 'muted' }, 'no messages yet');
    const peer = peerOf(c);
    const online = peer != null && S.presence.get(peer)?.online;
    return el('li', { class: id === S.current ? 'active' : '', dataset: { conversation: String(id) }, onclick: () => openConversation(id) },
      el('div', { class: `avatar${online ? ' online' : ''}`, 'aria-hidden': 'true' }, (convTitle(c)[0] || '?').toUpperCase()),
      el('div', { class: 'row-main' },
        el('div', { class: 'row-top' }, el('span', { class: 'title' }, convTitle(c)), el('time', {}, fmtTime(lm?.created_at || c.last_activity))),
        el('div', { class: 'row-bottom' }, el('span', { class: 'preview' }, preview),
          c.unread > 0 && id !== S.current ? el('span', { class: 'badge', 'aria-label': `${c.unread} unread` }, String(c.unread)) : null)));
  }));
  $('chat-list-empty').hidden = rows.length > 0;
}

function renderHeader() {
  const c = S.convs.get(S.current);
  $('conv-name').textContent = c ? convTitle(c) : 'Select a chat';
  const sub = $('conv-sub');
  const typing = [...(S.typing.get(S.current) || [])];
  sub.classList.toggle('typing', typing.length > 0);
  if (!c) sub.textContent = '';
  else if (typing.length) sub.textContent = `${typing.map(nameOf).join(', ')} ${typing.length > 1 ? 'are' : 'is'} typing…`;
  else if (c.kind === 'direct') sub.textContent = client.state === 'open' ? lastSeenText(S.presence.get(peerOf(c))) : '';
  else {
    const n = membersOf(c).length;
    sub.textContent = n ? `group · ${n} members` : 'group';
  }
}

function renderMessages({ keepBottomOffset = false } = {}) {
  const box = $('messages');
  const wasAtBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  const fromBottom = box.scrollHeight - box.scrollTop;
  const conv = S.current;
  const msgs = [...(S.messages.get(conv)?.values() || [])].sort((a, b) => a.seq - b.seq);
  const c = S.convs.get(conv);
  const items = msgs.map((m) => {
    const mine = m.sender === S.me;
    if (m.kind === 'system') return el('li', { class: 'msg system', dataset: { seq: String(m.seq) } }, systemText(m));
    const tick = mine ? tickOf(conv, m.seq) : null;
    return el('li', { class: `msg ${mine ? 'mine' : 'theirs'}${m.deleted_at ? ' deleted' : ''}`, dataset: { seq: String(m.seq) } },
      !mine && c?.kind === 'group' ? el('span', { class: 'sender' }, nameOf(m.sender)) : null,
      el('span', { class: 'body' }, m.deleted_at ? 'message deleted' : m.body ?? ''),
      el('span', { class: 'meta' },
        m.edited_at && !m.deleted_at ? el('span', { class: 'edited' }, 'edited') : null,
        el('time', {}, fmtTime(m.created_at)),
        tick ? el('span', { class: `ticks ${tick}`, dataset: { status: tick }, title: tick }, tick === 'sent' ? '✓' : '✓✓') : null));
  });
  for (const p of S.pending.get(conv) || []) {
    items.push(el('li', { class: `msg mine pending${p.failed ? ' failed' : ''}`, dataset: { clientMsgId: p.client_msg_id } },
      el('span', { class: 'body' }, p.body),
      el('span', { class: 'meta' }, p.failed
        ? el('span', { class: 'ticks failed', dataset: { status: 'failed' }, title: p.failed }, '!  not sent')
        : el('span', { class: 'ticks sending', dataset: { status: 'sending' }, title: 'sending' }, '🕓'))));
  }
  $('message-list').replaceChildren(...items);
  const oldest = S.oldest.get(conv);
  $('older').hidden = !(oldest > 1);
  if (keepBottomOffset) box.scrollTop = box.scrollHeight - fromBottom;
  else if (wasAtBottom) box.scrollTop = box.scrollHeight;
}

function renderState(s) {
  if (S.current !== null) renderHeader();
  const banner = $('banner');
  const dot = $('status-dot');
  dot.className = `dot ${s.state}`;
  dot.title = s.state;
  document.body.dataset.connection = s.state;
  let text = '';
  if (s.state === 'connecting') text = 'Connecting…';
  else if (s.state === 'reconnecting') text = s.delay != null ? `Connection lost — reconnecting in ${Math.max(1, Math.round(s.delay / 1000))} s…` : 'Reconnecting…';
  else if (s.state === 'offline') text = 'You are offline — messages will be sent when the network is back.';
  else if (s.state === 'closed') text = 'Disconnected.';
  banner.textContent = text;
  banner.hidden = !text;
  banner.className = `banner ${s.state}`;
}

// -------------------------------------------------------------- actions

async function openConversation(id) {
  if (S.current !== null && S.current !== id) client.typing(S.current, false);
  S.current = id;
  document.body.classList.add('show-conv');
  $('composer').hidden = false;
  renderList();
  renderHeader();
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
  const box = $('messages');
  renderMessages();
  box.scrollTop = box.scrollHeight;
  markCurrentRead();
  const peer = peerOf(S.convs.get(id));
  if (peer != null) refreshPresence();
  $('composer-input').focus({ preventScroll: true });
}

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

function addMessages(conv, msgs) {
  if (!S.messages.has(conv)) S.messages.set(conv, new Map());
  const map = S.messages.get(conv);
  for (const m of msgs) {
    // Change-log entries are applied by the client (edit/delete events),
    // never shown as messages of their own.
    if (isLogEntry(m)) continue;
    map.set(m.seq, m);
    if (m.sender != null && m.sender !== S.me && m.kind !== 'system') learnPeer(conv, Number(m.sender));
  }
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
  client.send(conv, body, { clientMsgId }).then(() => {
    dropPending(conv, clientMsgId);
  }, (e) => {
    p.failed = errorText(e);
    toast(errorText(e, 'Message not sent'));
    if (S.current === conv) renderMessages();
  });
}

function dropPending(conv, clientMsgId) {
  const list = S.pending.get(conv);
  if (!list) return;
  const i = list.findIndex((p) => p.client_msg_id === clientMsgId);
  if (i >= 0) { list.splice(i, 1); if (S.current === conv) renderMessages(); }
}

function autoGrow() {
  const t = $('composer-input');
  t.style.height = 'auto';
  t.style.height = `${Math.min(t.scrollHeight, 160)}px`;
}

// ------------------------------------------------------------ start-up

let client;

function start() {
  if (!token) {
    $('app').hidden = true;
    $('no-token').hidden = false;
    return;
  }
  S.me = tokenUser(token);
  loadLocal();
  $('me-name').textContent = S.names.get(S.me) || (S.me != null ? `user ${S.me}` : 'pgchat');
  document.title = `pgchat — ${S.names.get(S.me) || `user ${S.me}`}`;

  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  client = new ChatClient({ url: `${proto}//${location.host}/ws`, ...(refreshUrl ? { getToken } : { token }) });
  window.chat = client;  // for the console and the browser test

  client.on('state', renderState);
  client.on('hello', (h) => {
    S.me = Number(h.user);
    refreshConversations();
  });
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
    learnPeer(Number(r.conversation), Number(r.user));
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
    learnPeer(id, Number(t.user));
    renderList();
    if (id === S.current) renderHeader();
  });
  client.on('presence', (p) => {
    S.presence.set(Number(p.user), p);
    renderList();
    renderHeader();
  });
  client.on('member', (e) => {
    refreshConversations();
    if (Number(e.user) === S.me && e.action === 'removed' && Number(e.conversation) === S.current) toast('You left this conversation', 'info');
  });
  client.on('error', (e) => toast(errorText(e)));

  client.connect().catch((e) => toast(errorText(e, 'Cannot connect')));
}

// ------------------------------------------------------------- wiring

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
$('messages').addEventListener('scroll', () => { if ($('messages').scrollTop === 0 && !$('older').hidden && !$('older').disabled) loadOlder(); });
$('back').addEventListener('click', () => { document.body.classList.remove('show-conv'); });
document.addEventListener('visibilitychange', () => { if (document.visibilityState === 'visible') markCurrentRead(); });
window.addEventListener('hashchange', () => location.reload());

$('new-direct').addEventListener('click', () => { $('direct-user').value = ''; $('dialog-direct').showModal(); });
$('dialog-direct').addEventListener('close', async () => {
  if ($('dialog-direct').returnValue !== 'ok') return;
  const user = Number($('direct-user').value);
  if (!Number.isInteger(user) || user <= 0) { toast('Enter a user id (a positive number)'); return; }
  try {
    const id = await client.direct(user);
    if (!S.convs.has(id)) S.convs.set(id, { conversation_id: id, kind: 'direct', title: null, last_seq: 0, read_seq: 0, unread: 0, last_activity: new Date().toISOString() });
    S.peers.set(id, user);
    saveLocal();
    refreshConversations();
    openConversation(id);
  } catch (e) { toast(errorText(e, `Could not start a chat with user ${user}`)); }
});

$('new-group').addEventListener('click', () => { $('group-title').value = ''; $('group-members').value = ''; $('dialog-group').showModal(); });
$('dialog-group').addEventListener('close', async () => {
  if ($('dialog-group').returnValue !== 'ok') return;
  const title = $('group-title').value.trim();
  const members = $('group-members').value.split(/[\s,]+/).filter(Boolean).map(Number);
  if (!title) { toast('A group needs a title'); return; }
  if (members.some((m) => !Number.isInteger(m) || m <= 0)) { toast('Member ids are positive numbers, separated by commas'); return; }
  try {
    const id = await client.createGroup(title, members);
    if (!S.convs.has(id)) S.convs.set(id, { conversation_id: id, kind: 'group', title, last_seq: 0, read_seq: 0, unread: 0, last_activity: new Date().toISOString() });
    refreshConversations();
    openConversation(id);
  } catch (e) { toast(errorText(e, 'Could not create the group')); }
});

start();
