// messenger.js: the demo page's second-batch pieces: names from profiles,
// the conversation menu (group info, mute, block, report, disappearing
// timer), reactions, @-mention autocomplete and highlighting, message
// search that jumps to the message, and the pinned message bar.  app.js
// calls initMessenger once with its hooks; render.js draws reactions and
// mentions with reactionRow and bodyNodes.

import { $, el, toast } from './dom.js';
import { errorText, ttlText } from './format.js';
import { S, nameOf, peerOf, convTitle } from './store.js';
import { applyReaction } from '../chat-client.js';
import { avatarEl, userAvatar, drawGroupAvatar } from './avatars.js';

/** The reactions offered by the picker. */
export const QUICK_REACTIONS = ['👍', '❤️', '😂', '😮', '🙏'];

let client;
let hooks;  // {openConversation, renderMessages, renderList, header, refreshConversations, addMessages}

const MENTION_RE = /(@[\p{L}\p{N}_.-]+)/u;

/** A user's handle, when its profile is known. */
const handleOf = (u) => S.profiles.get(Number(u))?.handle;

/** Remembers a profile (from `profile`, or a `conversations` row's peer); names from the page's names= win. */
export function learnProfile(p) {
  if (!p || p.user == null) return;
  S.profiles.set(Number(p.user), p);
  if (!S.names.has(Number(p.user))) S.names.set(Number(p.user), p.display_name || p.handle);
}

const asked = new Set();
/** Fetches the profiles of users not known yet (one request), then redraws. */
export async function ensureProfiles(ids) {
  const want = [...new Set(ids.map(Number))].filter((u) => u > 0 && !S.profiles.has(u) && !asked.has(u));
  if (!want.length || !client) return;
  want.forEach((u) => asked.add(u));
  try {
    for (const p of await client.profile(want)) learnProfile(p);
    hooks.renderList();
    hooks.header();
    if (S.current !== null) hooks.renderMessages();
  } catch (e) {
    want.forEach((u) => asked.delete(u));
    if (e.code !== 'disconnected' && e.code !== 'closed') toast(errorText(e, 'Could not load profiles'));
  }
}

/** The active members of a conversation (cached), their profiles fetched. */
const loadingMembers = new Map();  // conversation -> promise of its member list
async function membersOf(conv) {
  if (S.members.has(conv)) return S.members.get(conv);
  if (!loadingMembers.has(conv)) {
    loadingMembers.set(conv, client.members(conv).then((list) => {
      S.members.set(conv, list);
      ensureProfiles(list.map((m) => m.user));
      return list;
    }).finally(() => loadingMembers.delete(conv)));
  }
  return loadingMembers.get(conv);
}

// ------------------------------------------------------------- mentions

/** A message body as nodes: @words highlighted (class mention). */
export function bodyNodes(m) {
  const text = m.body ?? '';
  if (!m.mentions || !m.mentions.length) return [text];
  return text.split(MENTION_RE).map((part, i) => (i % 2 ? el('span', { class: 'mention' }, part) : part));
}

/** The ids of the members an outgoing body mentions with @handle or @name. */
export function mentionsIn(conv, body) {
  const members = S.members.get(conv) || [];
  const ids = new Set();
  for (const part of body.split(MENTION_RE)) {
    if (!part.startsWith('@')) continue;
    const word = part.slice(1).toLowerCase();
    for (const m of members) {
      const h = handleOf(m.user);
      const n = S.names.get(Number(m.user));
      if ((h && h.toLowerCase() === word) || (n && n.toLowerCase() === word)) ids.add(Number(m.user));
    }
  }
  return [...ids];
}

/** The @word being typed before the caret, or null. */
function typedMention() {
  const t = $('composer-input');
  const m = /@([\p{L}\p{N}_.-]*)$/u.exec(t.value.slice(0, t.selectionStart));
  return m ? m[1] : null;
}

/** Shows the members matching the @word being typed. */
async function updateMentionList() {
  const list = $('mention-list');
  if (typedMention() === null || S.current === null) { list.hidden = true; return; }
  let members;
  try { members = await membersOf(S.current); } catch { list.hidden = true; return; }
  // The text may have changed while the members loaded: read it now.
  const word = typedMention();
  if (word === null) { list.hidden = true; return; }
  const w = word.toLowerCase();
  const hits = members.filter((m) => m.user !== S.me).filter((m) => {
    const h = (handleOf(m.user) || '').toLowerCase();
    const n = (S.names.get(Number(m.user)) || '').toLowerCase();
    return h.startsWith(w) || n.startsWith(w);
  }).slice(0, 8);
  list.replaceChildren(...hits.map((m) => el('li', { dataset: { user: String(m.user) } },
    el('strong', {}, nameOf(m.user)), handleOf(m.user) ? el('span', { class: 'muted' }, ` @${handleOf(m.user)}`) : null)));
  list.hidden = hits.length === 0;
}

/** Replaces the @word being typed with the member's @handle. */
function pickMention(user) {
  const t = $('composer-input');
  const before = t.value.slice(0, t.selectionStart);
  const after = t.value.slice(t.selectionStart);
  const name = handleOf(user) || S.names.get(Number(user)) || String(user);
  const start = before.replace(/@[\p{L}\p{N}_.-]*$/u, '');
  t.value = `${start}@${name} ${after}`;
  const pos = start.length + name.length + 2;
  t.setSelectionRange(pos, pos);
  $('mention-list').hidden = true;
  t.focus();
}

// ------------------------------------------------------------- reactions

/** The reactions under a message: one chip per emoji (mine marked), and the picker. */
export function reactionRow(conv, m) {
  if (m.kind === 'system' || m.deleted_at) return null;
  const chips = Object.entries(m.reactions || {}).map(([emoji, users]) => el('button', {
    type: 'button', class: `reaction${users.includes(S.me) ? ' mine' : ''}`,
    dataset: { emoji, seq: String(m.seq) }, title: users.map(nameOf).join(', '),
  }, `${emoji} ${users.length}`));
  const picking = S.picker === m.seq;
  return el('div', { class: 'reactions' }, ...chips,
    picking
      ? el('span', { class: 'picker' }, ...QUICK_REACTIONS.map((emoji) => el('button', { type: 'button', class: 'reaction-pick', dataset: { emoji, seq: String(m.seq) } }, emoji)))
      : el('button', { type: 'button', class: 'react-add', dataset: { seq: String(m.seq) }, title: 'React', 'aria-label': 'React' }, '☺+'));
}

/** Adds or takes back my reaction (the server's entry updates the view). */
async function toggleReaction(seq, emoji) {
  const conv = S.current;
  const m = S.messages.get(conv)?.get(seq);
  const mine = !!m?.reactions?.[emoji]?.includes(S.me);
  S.picker = null;
  hooks.renderMessages();
  try { await client.react(conv, seq, emoji, { remove: mine }); } catch (e) { toast(errorText(e, 'Could not react')); }
}

// ----------------------------------------------------------------- search

let searchTimer = null;
/** Runs the search box's query (debounced); an empty box shows the chat list again. */
function runSearch() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(async () => {
    const q = $('search-input').value.trim();
    const results = $('search-results');
    if (!q) { results.hidden = true; $('chat-list').hidden = false; return; }
    try {
      const found = await client.search(q, { limit: 30 });
      ensureProfiles(found.map((m) => m.sender));
      results.replaceChildren(...(found.length ? found.map((m) => el('li', { dataset: { conversation: String(m.conversation), seq: String(m.seq) } },
        el('div', { class: 'row-top' }, el('span', { class: 'title' }, convTitle(S.convs.get(m.conversation)) || `Chat ${m.conversation}`),
          el('span', { class: 'muted' }, nameOf(m.sender))),
        el('div', { class: 'preview' }, m.body))) : [el('li', { class: 'empty' }, 'No messages found')]));
      results.hidden = false;
      $('chat-list').hidden = true;
    } catch (e) { toast(errorText(e, 'Search failed')); }
  }, 250);
}

/** Opens a conversation at message `seq` (loading the history down to it) and highlights it. */
export async function jumpTo(conv, seq) {
  await hooks.openConversation(conv);
  if (!S.messages.get(conv)?.has(seq)) {
    const oldest = S.oldest.get(conv) || seq + 1;
    try {
      const msgs = await client.history(conv, { beforeSeq: oldest, limit: Math.min(1000, oldest - seq + 10) });
      hooks.addMessages(conv, msgs);
      if (msgs.length) S.oldest.set(conv, msgs[0].seq <= 1 ? 1 : msgs[0].seq);
    } catch (e) { toast(errorText(e, 'Could not load the message')); return; }
  }
  hooks.renderMessages();
  const li = document.querySelector(`#message-list li[data-seq="${seq}"]`);
  if (li) { li.scrollIntoView({ block: 'center' }); li.classList.add('flash'); setTimeout(() => li.classList.remove('flash'), 2000); }
}

// ------------------------------------------------------------------- pins

/** Loads the pins of a conversation and redraws the pinned bar. */
export async function refreshPins(conv) {
  try {
    S.pins.set(conv, await client.pins(conv));
  } catch { S.pins.set(conv, []); }
  if (conv === S.current) renderPinned();
}

/** The text a pinned message shows: an e2e one its decrypted text only, never the ciphertext. */
function pinnedText(m) {
  if (m.deleted_at) return 'message deleted';
  if (m.kind !== 'e2e') return m.body ?? '';
  if (typeof m.plain === 'string') return m.plain;
  return Array.isArray(m.plain?.files) ? String(m.plain.text || 'encrypted file') : '🔒 encrypted message';
}

/** The pinned bar: the newest pin of the open conversation. */
export function renderPinned() {
  const bar = $('pinned');
  const seqs = S.pins.get(S.current) || [];
  if (!seqs.length) { bar.hidden = true; return; }
  const m = S.messages.get(S.current)?.get(seqs[0]);
  bar.replaceChildren(el('span', { 'aria-hidden': 'true' }, '📌 '),
    el('span', { class: 'pinned-body' }, m ? pinnedText(m) : `message ${seqs[0]}`),
    seqs.length > 1 ? el('span', { class: 'muted' }, ` (+${seqs.length - 1})`) : null);
  bar.dataset.seq = String(seqs[0]);
  bar.hidden = false;
}

// ---------------------------------------------------------- the menu

/** Redraws the conversation menu's options for the open conversation. */
export function renderMenu() {
  const menu = $('conv-menu');
  const c = S.convs.get(S.current);
  menu.hidden = !c;
  if (!c) return;
  const peer = peerOf(c) ?? c.peer?.user ?? null;
  const opts = [['', '⋯'], ['info', c.kind === 'group' ? 'Group info' : 'Members'],
    c.muted_until ? ['unmute', 'Unmute'] : ['mute', 'Mute for 8 hours'],
    ['timer', 'Disappearing messages…'], ['pin', 'Pin the last message']];
  if (c.kind === 'direct' && peer != null) opts.push(S.blocked.has(peer) ? ['unblock', 'Unblock'] : ['block', 'Block']);
  if (peer != null) opts.push(['report', 'Report…']);
  menu.replaceChildren(...opts.map(([value, label]) => el('option', { value }, label)));
  menu.value = '';
}

/** Runs a menu action on the open conversation. */
async function menuAction(action) {
  const conv = S.current;
  const c = S.convs.get(conv);
  const peer = peerOf(c) ?? c?.peer?.user ?? null;
  try {
    switch (action) {
      case 'info': await showInfo(conv); break;
      case 'mute': await client.mute(conv, new Date(Date.now() + 8 * 3600 * 1000)); toast('Muted for 8 hours (mentions still notify)', 'info'); break;
      case 'unmute': await client.mute(conv, null); toast('Unmuted', 'info'); break;
      case 'timer': {
        const v = prompt('Messages disappear after how many seconds? (empty: off)', '86400');
        if (v === null) break;
        await client.setDisappearing(conv, v.trim() === '' ? null : Number(v));
        toast(v.trim() === '' ? 'Disappearing messages off' : `Messages disappear after ${ttlText(Number(v))}`, 'info');
        break;
      }
      case 'pin': {
        const msgs = [...(S.messages.get(conv)?.values() || [])].filter((m) => m.kind !== 'system' && !m.deleted_at);
        const last = msgs.sort((a, b) => b.seq - a.seq)[0];
        if (last) { await client.pin(conv, last.seq); await refreshPins(conv); }
        break;
      }
      case 'block': await client.block(peer); S.blocked.add(peer); toast(`${nameOf(peer)} is blocked`, 'info'); break;
      case 'unblock': await client.unblock(peer); S.blocked.delete(peer); toast(`${nameOf(peer)} is unblocked`, 'info'); break;
      case 'report': {
        const reason = prompt(`Why do you report ${nameOf(peer)}?`, 'spam');
        if (reason) { await client.report({ user: peer, conversation: conv, reason }); toast('Reported. Thank you.', 'info'); }
        break;
      }
      default: break;
    }
    if (action === 'mute' || action === 'unmute' || action === 'timer') hooks.refreshConversations();
  } catch (e) {
    toast(errorText(e, 'That did not work'));
  }
  renderMenu();
}

/** The group info dialog: members with roles, admin actions, invite link, leave. */
async function showInfo(conv) {
  S.members.delete(conv);
  const members = await membersOf(conv);
  const me = members.find((m) => m.user === S.me);
  const admin = me && me.role !== 'member';
  const c = S.convs.get(conv);
  $('info-title').textContent = convTitle(c);
  $('info-members').replaceChildren(...members.map((m) => el('li', { dataset: { user: String(m.user) } },
    avatarEl(userAvatar(m.user), nameOf(m.user), 'small'), el('span', { class: 'title' }, nameOf(m.user)), el('span', { class: 'role' }, m.role),
    admin && m.user !== S.me && m.role !== 'owner' && c?.kind === 'group'
      ? el('span', { class: 'member-actions' },
        el('button', { type: 'button', dataset: { act: m.role === 'admin' ? 'demote' : 'promote', user: String(m.user) } }, m.role === 'admin' ? 'Make member' : 'Make admin'),
        el('button', { type: 'button', dataset: { act: 'remove', user: String(m.user) } }, 'Remove'))
      : null)));
  $('info-admin').hidden = !(admin && c?.kind === 'group');
  drawGroupAvatar(conv, admin);
  $('info-leave').hidden = c?.kind !== 'group';
  $('invite-code').value = '';
  $('dialog-info').dataset.conversation = String(conv);
  if (!$('dialog-info').open) $('dialog-info').showModal();
}

/** A click inside the group info dialog. */
async function infoClick(ev) {
  const conv = Number($('dialog-info').dataset.conversation);
  const b = ev.target.closest('button[data-act]');
  if (!b) return;
  const user = Number(b.dataset.user);
  try {
    if (b.dataset.act === 'promote') await client.setRole(conv, user, 'admin');
    else if (b.dataset.act === 'demote') await client.setRole(conv, user, 'member');
    else if (b.dataset.act === 'remove') await client.removeMember(conv, user);
    else if (b.dataset.act === 'add') {
      const u = Number($('info-add-user').value);
      if (!Number.isInteger(u) || u <= 0) { toast('Enter a user id'); return; }
      await client.addMember(conv, u);
      $('info-add-user').value = '';
    } else if (b.dataset.act === 'invite') {
      const link = await client.inviteLink(conv, { expiresIn: 7 * 86400 });
      $('invite-code').value = link.code;
      return;
    } else if (b.dataset.act === 'leave') {
      await client.leave(conv);
      $('dialog-info').close();
      hooks.refreshConversations();
      return;
    }
    await showInfo(conv);
  } catch (e) { toast(errorText(e, 'That did not work')); }
}

// ------------------------------------------------------------------ setup

/** Wires the pieces to the page and to `c`'s events; `h` are app.js's hooks. */
export function initMessenger(c, h) {
  client = c;
  hooks = h;
  client.on('hello', async () => {
    try { S.blocked = new Set((await client.blocked()).map(Number)); renderMenu(); } catch { /* shown as not blocked */ }
  });
  client.on('reaction', (e) => {
    const m = S.messages.get(Number(e.conversation))?.get(e.seq);
    if (!m) return;
    m.reactions = applyReaction(m.reactions, e);
    if (Number(e.conversation) === S.current) hooks.renderMessages();
  });
  client.on('message', (m) => {
    if (m.kind === 'system' && /"(un)?pinned"/.test(m.body || '')) refreshPins(Number(m.conversation));
    if (m.sender != null) ensureProfiles([m.sender]);
  });
  client.on('member', (e) => S.members.delete(Number(e.conversation)));

  $('message-list').addEventListener('click', (ev) => {
    const chip = ev.target.closest('button.reaction, button.reaction-pick');
    if (chip) { toggleReaction(Number(chip.dataset.seq), chip.dataset.emoji); return; }
    const add = ev.target.closest('button.react-add');
    if (add) { S.picker = Number(add.dataset.seq); hooks.renderMessages(); }
  });
  $('search-input').addEventListener('input', runSearch);
  $('search-input').addEventListener('keydown', (ev) => { if (ev.key === 'Escape') { $('search-input').value = ''; runSearch(); } });
  $('search-results').addEventListener('click', (ev) => {
    const li = ev.target.closest('li[data-seq]');
    if (li) jumpTo(Number(li.dataset.conversation), Number(li.dataset.seq));
  });
  $('pinned').addEventListener('click', () => { if ($('pinned').dataset.seq) jumpTo(S.current, Number($('pinned').dataset.seq)); });
  $('conv-menu').addEventListener('change', () => { const a = $('conv-menu').value; if (a) menuAction(a); });
  $('dialog-info').addEventListener('click', infoClick);
  $('join-group').addEventListener('click', async () => {
    const code = prompt('Invite code');
    if (!code) return;
    try {
      const conv = await client.join(code.trim());
      hooks.refreshConversations();
      hooks.openConversation(conv);
    } catch (e) { toast(errorText(e, 'Could not join')); }
  });
  const input = $('composer-input');
  input.addEventListener('input', updateMentionList);
  input.addEventListener('keydown', (ev) => {
    const list = $('mention-list');
    if (list.hidden || !(ev.key === 'Enter' || ev.key === 'Tab')) return;
    const first = list.querySelector('li[data-user]');
    if (!first) return;
    ev.preventDefault();
    ev.stopImmediatePropagation();
    pickMention(Number(first.dataset.user));
  }, { capture: true });
  $('mention-list').addEventListener('mousedown', (ev) => {
    const li = ev.target.closest('li[data-user]');
    if (li) { ev.preventDefault(); pickMention(Number(li.dataset.user)); }
  });
}
