// contacts.js: the demo page's contact search box (issue 15), above the
// chat list: as you type (debounced), the users whose handle or display
// name starts with the text, your contacts first (search_users); a click
// opens the direct conversation with that user (created when there is
// none).  app.js calls initContacts once with its openDirect.

import { $, el, toast } from './dom.js';
import { errorText } from './format.js';
import { learnProfile } from './messenger.js';

/** How long typing must pause before the page asks (ms). */
export const CONTACT_SEARCH_DELAY = 200;

let client;
let openDirect;     // (userId) => Promise: opens (or creates) the direct conversation
let timer = null;
let asked = 0;      // the latest query's number: answers to older ones are dropped
const found = new Map();   // user id -> profile of the rows shown

/** Hides the results (and forgets a pending search). */
function clearResults() {
  clearTimeout(timer);
  asked++;
  $('contact-results').hidden = true;
  $('contact-results').replaceChildren();
}

/** One result row: name, @handle, a "contact" mark. */
function row(u) {
  const name = u.display_name || u.handle;
  return el('li', { dataset: { user: String(u.user) }, role: 'option', tabindex: '0' },
    el('div', { class: 'row-top' }, el('span', { class: 'title' }, name),
      u.contact ? el('span', { class: 'badge contact' }, 'contact') : null),
    el('div', { class: 'preview' }, `@${u.handle}`));
}

/** Asks for the box's text (after the pause) and shows the answer, unless a newer query came meanwhile. */
function onInput() {
  clearTimeout(timer);
  const q = $('contact-search').value.trim();
  if (!q) { clearResults(); return; }
  const n = ++asked;
  timer = setTimeout(async () => {
    try {
      const users = await client.searchUsers(q.slice(0, 64), { limit: 20 });
      if (n !== asked) return;
      found.clear();
      for (const u of users) { found.set(Number(u.user), u); learnProfile(u); }
      $('contact-results').replaceChildren(...(users.length ? users.map(row)
        : [el('li', { class: 'empty' }, 'No one found')]));
      $('contact-results').hidden = false;
    } catch (e) {
      if (n === asked) toast(errorText(e, 'Contact search failed'));
    }
  }, CONTACT_SEARCH_DELAY);
}

/** Opens the direct conversation with the user of a result row. */
async function pick(li) {
  const user = Number(li?.dataset.user);
  if (!Number.isInteger(user) || user <= 0) return;
  $('contact-search').value = '';
  clearResults();
  try { await openDirect(user); } catch (e) { toast(errorText(e, `Could not start a chat with user ${user}`)); }
}

/** Wires the box: client (a ChatClient), hooks.openDirect(userId). */
export function initContacts(c, hooks) {
  client = c;
  openDirect = hooks.openDirect;
  $('contact-search').addEventListener('input', onInput);
  $('contact-search').addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape') { $('contact-search').value = ''; clearResults(); }
    if (ev.key === 'Enter') { ev.preventDefault(); pick($('contact-results').querySelector('li[data-user]')); }
  });
  $('contact-results').addEventListener('click', (ev) => pick(ev.target.closest('li[data-user]')));
  $('contact-results').addEventListener('keydown', (ev) => { if (ev.key === 'Enter') pick(ev.target.closest('li[data-user]')); });
}
