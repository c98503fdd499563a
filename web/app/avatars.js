// avatars.js: profile and group pictures on the demo page (docs/media.md
// "Avatars"): the chat list, the conversation header, group senders, the
// group info dialog and the profile dialog show a picture where there is
// one, the initial otherwise.  URLs come from client.avatarUrl (cached by
// the client until shortly before they expire); an <img> that fails (its
// URL expired while the page slept, or the picture was replaced) forgets
// the URL and asks again, at most once per picture every 30 s.

import { $, el, toast } from './dom.js';
import { errorText } from './format.js';
import { S, peerOf } from './store.js';

let client;
let hooks;   // {renderList, header, renderMessages, learnProfile}
const urls = new Map();      // attachment id -> URL last resolved (null: none to show)
const loading = new Set();   // attachment ids being asked for
const retried = new Map();   // attachment id -> when a failed <img> last asked again (ms)

/** The attachment id of a user's picture (from its profile), or null. */
export const userAvatar = (u) => S.profiles.get(Number(u))?.avatar || null;

/** The picture of a chat list row: a group's own, a direct chat's peer's. */
export function convAvatar(c) {
  if (!c) return null;
  if (c.kind === 'group') return c.avatar || null;
  const peer = peerOf(c) ?? c.peer?.user ?? null;
  return (peer != null && userAvatar(peer)) || c.peer?.avatar || null;
}

/** Puts url into the avatar box (an <img> instead of the initial); null: the initial. */
function fill(box, id, url) {
  let img = box.querySelector('img');
  if (!url) {
    if (img) { img.remove(); box.textContent = box.dataset.initial; }
    return;
  }
  if (img && img.getAttribute('src') === url) return;
  if (!img) {
    img = el('img', { class: 'avatar-img', alt: '', decoding: 'async' });
    img.addEventListener('error', () => failed(id, img.getAttribute('src')));
    box.textContent = '';
    box.append(img);
  }
  img.src = url;
}

/** Every avatar box on the page showing attachment id. */
const boxesOf = (id) => document.querySelectorAll(`.avatar[data-avatar="${CSS.escape(id)}"]`);

/** Asks for the URL of attachment id (the client answers from its cache while valid) and fills its boxes. */
function load(id) {
  if (loading.has(id) || !client) return;
  loading.add(id);
  client.avatarUrl(id).then((url) => {
    urls.set(id, url);
    for (const box of boxesOf(id)) fill(box, id, url);
  }, () => { /* offline or refused: the initial stays; the next draw asks again */ })
    .finally(() => loading.delete(id));
}

/** An <img> of attachment id did not load: forget its URL and ask again (once per 30 s). */
function failed(id, url) {
  if (urls.get(id) === url) urls.delete(id);
  client?.forgetAvatarUrl(id);
  for (const box of boxesOf(id)) fill(box, id, null);
  const last = retried.get(id) || 0;
  if (Date.now() - last < 30000) return;
  retried.set(id, Date.now());
  load(id);
}

/**
 * An avatar: the picture of attachment id when there is one the user may
 * see, else the initial of label.  cls: extra classes (small, large, online).
 */
export function avatarEl(id, label, cls = '') {
  const initial = (String(label || '').trim()[0] || '?').toUpperCase();
  const box = el('div', { class: `avatar ${cls}`.trim(), 'aria-hidden': 'true', dataset: id ? { avatar: id, initial } : { initial } }, initial);
  if (id) {
    if (urls.get(id)) fill(box, id, urls.get(id));
    load(id);   // cached by the client: a new URL only when the old one is about to expire
  }
  return box;
}

// ------------------------------------------------------- setting pictures

/** The profile dialog: my picture, display name and about; a file picker for the picture. */
async function showProfile() {
  let me = S.profiles.get(S.me);
  try { [me] = await client.profile([S.me]); if (me) hooks.learnProfile(me); } catch { /* shown as known */ }
  $('profile-name').value = me?.display_name || '';
  $('profile-about').value = me?.about || '';
  drawProfileAvatar();
  if (!$('dialog-profile').open) $('dialog-profile').showModal();
}

/** Redraws the profile dialog's picture and my picture in the sidebar. */
function drawProfileAvatar() {
  const label = S.profiles.get(S.me)?.display_name || S.names.get(S.me) || `user ${S.me}`;
  $('profile-avatar').replaceChildren(avatarEl(userAvatar(S.me), label, 'large'));
  $('me-avatar').replaceChildren(avatarEl(userAvatar(S.me), label, 'small'));
}

/** Remembers that my picture is now id (null: none) and redraws. */
function setMine(id) {
  const p = S.profiles.get(S.me) || { user: S.me, handle: null, display_name: null, about: null };
  hooks.learnProfile({ ...p, avatar: id });
  drawProfileAvatar();
  hooks.renderList();
  hooks.header();
}

/** Uploads the picked file as my profile picture. */
async function pickProfilePicture(ev) {
  const file = ev.target.files?.[0];
  ev.target.value = '';
  if (!file) return;
  try {
    setMine(await client.setAvatar(file));
    toast('Profile picture set', 'info');
  } catch (e) { toast(errorText(e, 'Could not set the picture')); }
}

/** Uploads the picked file as the picture of the group whose info is open. */
async function pickGroupPicture(ev) {
  const file = ev.target.files?.[0];
  ev.target.value = '';
  const conv = Number($('dialog-info').dataset.conversation);
  if (!file || !conv) return;
  try {
    const id = await client.setGroupAvatar(conv, file);
    const c = S.convs.get(conv);
    if (c) c.avatar = id;
    drawGroupAvatar(conv);
    hooks.renderList();
    hooks.header();
    toast('Group picture set', 'info');
  } catch (e) { toast(errorText(e, 'Could not set the group picture')); }
}

/** Draws the group info dialog's picture of conv (and shows the picker to owners and admins). */
export function drawGroupAvatar(conv, admin) {
  const c = S.convs.get(conv);
  $('info-avatar').replaceChildren(avatarEl(c?.avatar || null, c?.title || 'G', 'large'));
  if (admin !== undefined) $('info-avatar-set').hidden = !(admin && c?.kind === 'group');
}

/** A group's new 'updated' system message that changed its picture: the chat list row
 * follows (older ones, from history pages, are not the current picture: the list row is). */
export function noteGroupUpdate(conv, m) {
  if (m.kind !== 'system' || !/"avatar"/.test(m.body || '')) return false;
  let e;
  try { e = JSON.parse(m.body); } catch { return false; }
  const c = S.convs.get(conv);
  if (!c || e.action !== 'updated' || !('avatar' in e) || !(m.seq > (c.last_seq || 0))) return false;
  c.avatar = e.avatar || null;
  return true;
}

/** Wires the pickers and the profile dialog; `h` are app.js's hooks. */
export function initAvatars(c, h) {
  client = c;
  hooks = h;
  $('me-avatar').addEventListener('click', showProfile);
  $('me-name').addEventListener('click', showProfile);
  $('profile-avatar-set').addEventListener('click', () => $('profile-avatar-file').click());
  $('profile-avatar-file').addEventListener('change', pickProfilePicture);
  $('profile-avatar-clear').addEventListener('click', async () => {
    try { await client.setProfile({ avatar: '' }); setMine(null); } catch (e) { toast(errorText(e, 'Could not remove the picture')); }
  });
  $('profile-save').addEventListener('click', async () => {
    try {
      await client.setProfile({ displayName: $('profile-name').value, about: $('profile-about').value });
      const p = S.profiles.get(S.me) || { user: S.me, handle: null, avatar: null };
      hooks.learnProfile({ ...p, display_name: $('profile-name').value.trim() || null, about: $('profile-about').value || null });
    } catch (e) { toast(errorText(e, 'Could not save the profile')); }
  });
  $('info-avatar-set').addEventListener('click', () => $('info-avatar-file').click());
  $('info-avatar-file').addEventListener('change', pickGroupPicture);
  client.on('hello', async () => {
    try { const [me] = await client.profile([S.me]); if (me) hooks.learnProfile(me); } catch { /* the initial stays */ }
    drawProfileAvatar();
  });
}
