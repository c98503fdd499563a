// store.js: what the demo page knows: the chat list, loaded messages,
// pending sends, receipt watermarks, presence, typing, display names, and
// the rules read from them (a direct chat's peer, titles, ticks).  Receipt
// watermarks and direct-chat peers survive reloads in localStorage.

export const S = {
  me: null,
  names: new Map(),        // user id -> display name (from the fragment's names=)
  convs: new Map(),        // conversation id -> chat list row (docs/protocol.md `conversations`)
  messages: new Map(),     // conversation id -> Map seq -> message
  pending: new Map(),      // conversation id -> [{client_msg_id, body, failed}]
  oldest: new Map(),       // conversation id -> lowest seq loaded (1 = everything)
  receipts: new Map(),     // conversation id -> Map user -> {delivered, read}
  peers: new Map(),        // direct conversation id -> the other user, as learned
  presence: new Map(),     // user id -> {online, last_seen}
  typing: new Map(),       // conversation id -> Set of user ids
  profiles: new Map(),     // user id -> profile {user, handle, display_name, about, avatar}
  members: new Map(),      // conversation id -> [{user, role, joined_at}] (group info, mentions)
  pins: new Map(),         // conversation id -> pinned seqs, newest first
  blocked: new Set(),      // users I blocked
  picker: null,            // seq whose reaction picker is open
  current: null,
};

/** Display names from the fragment's names=1:alice,2:bob. */
export function loadNames(spec) {
  for (const pair of (spec || '').split(',')) {
    const [id, name] = pair.split(':');
    if (id && name) S.names.set(Number(id), decodeURIComponent(name));
  }
}

/** A user's display name ("You" for the reader). */
export const nameOf = (u) => (u === S.me ? 'You' : S.names.get(Number(u)) || `user ${u}`);

/** A user as named inside a sentence ("you" for the reader). */
export const whoOf = (u) => (u === S.me ? 'you' : nameOf(u));

const storeKey = (key) => `pgchat:${S.me}:${key}`;

/** Loads receipt watermarks and peers saved by an earlier visit. */
export function loadLocal() {
  try {
    const r = JSON.parse(localStorage.getItem(storeKey('receipts')) || '{}');
    for (const [c, users] of Object.entries(r)) S.receipts.set(Number(c), new Map(Object.entries(users).map(([u, w]) => [Number(u), w])));
    S.peers = new Map(Object.entries(JSON.parse(localStorage.getItem(storeKey('peers')) || '{}')).map(([c, u]) => [Number(c), u]));
  } catch { S.peers = new Map(); }
}

/** Saves receipt watermarks and peers. */
export function saveLocal() {
  try {
    const r = {};
    for (const [c, users] of S.receipts) r[c] = Object.fromEntries(users);
    localStorage.setItem(storeKey('receipts'), JSON.stringify(r));
    localStorage.setItem(storeKey('peers'), JSON.stringify(Object.fromEntries(S.peers)));
  } catch { /* storage full or disabled: ticks start over on reload */ }
}

/** The other member of a direct chat, as learned from its messages, receipts and typing. */
export function peerOf(c) {
  if (!c || c.kind !== 'direct') return null;
  return S.peers.get(c.conversation) ?? null;
}

/** Learns the peer of direct chat `conv` from something `user` did; true when it is new. */
export function learnPeer(conv, user) {
  const c = S.convs.get(conv);
  if (!c || c.kind !== 'direct' || user === S.me || S.peers.get(conv) === user) return false;
  S.peers.set(conv, user);
  saveLocal();
  return true;
}

/** The title of a chat list row. */
export function convTitle(c) {
  if (!c) return '';
  if (c.kind === 'group') return c.title || `Group ${c.conversation}`;
  const peer = peerOf(c);
  return c.title || (peer ? nameOf(peer) : `Chat ${c.conversation}`);
}

/** Raises the receipt watermarks of `user` in `conv` (read implies delivered). */
export function setReceipt(conv, user, { delivered, read }) {
  if (!S.receipts.has(conv)) S.receipts.set(conv, new Map());
  const m = S.receipts.get(conv);
  const w = m.get(user) || { delivered: 0, read: 0 };
  if (delivered != null) w.delivered = Math.max(w.delivered, Number(delivered));
  if (read != null) { w.read = Math.max(w.read, Number(read)); w.delivered = Math.max(w.delivered, w.read); }
  m.set(user, w);
}

/** 'sent' | 'delivered' | 'read' for one of my messages, from the receipt watermarks
 * of the peer (direct chat) or of everyone who sent receipts (group). */
export function tickOf(conv, seq) {
  const w = S.receipts.get(conv) || new Map();
  const p = peerOf(S.convs.get(conv));
  const others = p != null ? [p] : [...w.keys()].filter((u) => u !== S.me);
  if (!others.length) return 'sent';
  const all = (f) => others.every((u) => (w.get(u)?.[f] || 0) >= seq);
  if (all('read')) return 'read';
  if (all('delivered')) return 'delivered';
  return 'sent';
}
