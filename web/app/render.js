// render.js: draws the demo page from the store: chat list, conversation
// header, messages (with ticks and pending sends), connection banner.

import { $, el } from './dom.js';
import { fmtTime, lastSeenText, systemText, ttlText } from './format.js';
import { S, nameOf, whoOf, peerOf, convTitle, tickOf } from './store.js';
import { bodyNodes, reactionRow, renderPinned, renderMenu } from './messenger.js';
import { attachmentView, e2eAttachmentView } from './media.js';
import { avatarEl, convAvatar, userAvatar } from './avatars.js';

/**
 * What a message shows as its text: an e2e message its decrypted text, or
 * a placeholder while its key has not arrived (retried when it does), or a
 * warning when it failed verification (e2e.js sets m.plain / m.e2e).
 */
export function bodyText(m) {
  if (m.deleted_at) return 'message deleted';
  if (m.kind !== 'e2e') return m.body ?? '';
  if (m.plain !== undefined) {
    if (typeof m.plain === 'string') return m.plain;
    // an encrypted file: {text: caption, files: [...]} (app.js sendFileE2E)
    return Array.isArray(m.plain?.files) ? String(m.plain.text ?? '') : JSON.stringify(m.plain);
  }
  if (m.e2e === 'bad') return '⚠ This message could not be verified and is not shown';
  return '🔒 Waiting for the key of this encrypted message…';
}

/**
 * What is known of attachment i of m: for an e2e message the name, type
 * and size from its decrypted body (the server has ciphertext only), else
 * the attachment object itself.
 */
export function fileMeta(m, i) {
  const a = m.attachments?.[i] || {};
  if (m.kind !== 'e2e') return a;
  const f = Array.isArray(m.plain?.files) ? m.plain.files[i] : undefined;
  return f ? { ...f, id: a.id } : { id: a.id, name: 'encrypted file', mime: a.mime, size: a.size };
}

/** The chat list, newest activity first (a click on a row is handled by app.js). */
export function renderList() {
  const list = $('chat-list');
  const rows = [...S.convs.values()].sort((a, b) => String(b.last_activity || '').localeCompare(String(a.last_activity || '')) || b.conversation - a.conversation);
  list.replaceChildren(...rows.map((c) => {
    const id = c.conversation;
    const typing = [...(S.typing.get(id) || [])];
    const lm = c.last_message;
    let preview;
    if (typing.length) preview = el('span', { class: 'typing' }, `${typing.map(nameOf).join(', ')} typing…`);
    else if (lm && lm.kind === 'system') preview = systemText(lm, whoOf);
    else if (lm) preview = `${lm.sender === S.me ? 'You: ' : c.kind === 'group' && lm.sender != null ? nameOf(lm.sender) + ': ' : ''}${bodyText(lm) || (lm.attachments ? 'File: ' + (fileMeta(lm, 0).name || fileMeta(lm, 0).mime) : '')}`;
    else preview = el('span', { class: 'muted' }, 'no messages yet');
    const peer = peerOf(c);
    const online = peer != null && S.presence.get(peer)?.online;
    return el('li', { class: id === S.current ? 'active' : '', dataset: { conversation: String(id) } },
      avatarEl(convAvatar(c), convTitle(c), online ? 'online' : ''),
      el('div', { class: 'row-main' },
        el('div', { class: 'row-top' }, el('span', { class: 'title' }, c.e2e ? el('span', { class: 'lock', title: 'end-to-end encrypted' }, '🔒 ') : null, convTitle(c)), el('time', {}, fmtTime(lm?.created_at || c.last_activity))),
        el('div', { class: 'row-bottom' }, el('span', { class: 'preview' }, preview),
          c.unread > 0 && id !== S.current ? el('span', { class: 'badge', 'aria-label': `${c.unread} unread` }, String(c.unread)) : null)));
  }));
  $('chat-list-empty').hidden = rows.length > 0;
}

/** The open conversation's title and subtitle (typing, presence while `online`, or "group"). */
export function renderHeader(online) {
  const c = S.convs.get(S.current);
  $('conv-name').textContent = c ? `${c.e2e ? '🔒 ' : ''}${convTitle(c)}` : 'Select a chat';
  $('conv-avatar').replaceChildren(...(c ? [avatarEl(convAvatar(c), convTitle(c), 'small')] : []));
  $('safety').hidden = !(c && c.e2e && c.kind === 'direct' && peerOf(c) != null);
  const sub = $('conv-sub');
  const typing = [...(S.typing.get(S.current) || [])];
  sub.classList.toggle('typing', typing.length > 0);
  if (!c) sub.textContent = '';
  else if (typing.length) sub.textContent = `${typing.map(nameOf).join(', ')} ${typing.length > 1 ? 'are' : 'is'} typing…`;
  else if (c.kind === 'direct') sub.textContent = online ? lastSeenText(S.presence.get(peerOf(c))) : '';
  else sub.textContent = c.kind === 'service' ? 'announcements' : 'group';
  if (c && !typing.length) {
    const extra = [c.muted_until ? '🔕 muted' : '', c.ttl ? `⏱ ${ttlText(c.ttl)}` : ''].filter(Boolean);
    if (extra.length) sub.textContent = [sub.textContent, ...extra].filter(Boolean).join(' · ');
  }
  renderMenu();
}

/** The open conversation's messages and pending sends; stays at the bottom when it was
 * there, or keeps the distance from the bottom (after older messages were added above). */
export function renderMessages({ keepBottomOffset = false } = {}) {
  const box = $('messages');
  const wasAtBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  const fromBottom = box.scrollHeight - box.scrollTop;
  const conv = S.current;
  const msgs = [...(S.messages.get(conv)?.values() || [])].sort((a, b) => a.seq - b.seq);
  const c = S.convs.get(conv);
  const items = msgs.map((m) => {
    const mine = m.sender === S.me;
    if (m.kind === 'system') return el('li', { class: 'msg system', dataset: { seq: String(m.seq) } }, systemText(m, whoOf));
    const tick = mine ? tickOf(conv, m.seq) : null;
    const mentioned = !mine && Array.isArray(m.mentions) && m.mentions.includes(S.me);
    return el('li', { class: `msg ${mine ? 'mine' : 'theirs'}${m.deleted_at ? ' deleted' : ''}${mentioned ? ' mentioned' : ''}`, dataset: { seq: String(m.seq) } },
      !mine && c?.kind === 'group' ? el('span', { class: 'sender-line' }, avatarEl(userAvatar(m.sender), nameOf(m.sender), 'tiny'), el('span', { class: 'sender' }, nameOf(m.sender))) : null,
      ...(!m.deleted_at && m.attachments ? m.attachments.map((a, i) => m.kind === 'e2e' ? e2eAttachmentView(a, Array.isArray(m.plain?.files) ? m.plain.files[i] : undefined) : attachmentView(a)) : []),
      m.deleted_at || bodyText(m) || !m.attachments
        ? el('span', { class: `body${m.kind === 'e2e' && m.plain === undefined ? ` e2e-${m.e2e || 'pending'}` : ''}` },
          // mentions highlighted in the text shown (an e2e message's decrypted text)
          ...(m.deleted_at || (m.kind === 'e2e' && typeof m.plain !== 'string' && !Array.isArray(m.plain?.files))
            ? [bodyText(m)] : bodyNodes({ body: bodyText(m), mentions: m.mentions }))) : null,
      el('span', { class: 'meta' },
        m.edited_at && !m.deleted_at ? el('span', { class: 'edited' }, 'edited') : null,
        el('time', {}, fmtTime(m.created_at)),
        tick ? el('span', { class: `ticks ${tick}`, dataset: { status: tick }, title: tick }, tick === 'sent' ? '✓' : '✓✓') : null),
      reactionRow(conv, m));
  });
  for (const p of S.pending.get(conv) || []) {
    items.push(el('li', { class: `msg mine pending${p.failed ? ' failed' : ''}`, dataset: { clientMsgId: p.client_msg_id } },
      el('span', { class: 'body' }, p.body),
      p.progress != null && !p.failed ? el('progress', { class: 'upload', max: '1', value: String(p.progress) }) : null,
      el('span', { class: 'meta' }, p.failed
        ? el('span', { class: 'ticks failed', dataset: { status: 'failed' }, title: p.failed }, '!  not sent')
        : el('span', { class: 'ticks sending', dataset: { status: 'sending' }, title: 'sending' }, '🕓'))));
  }
  $('message-list').replaceChildren(...items);
  renderPinned();
  const oldest = S.oldest.get(conv);
  $('older').hidden = !(oldest > 1);
  if (keepBottomOffset) box.scrollTop = box.scrollHeight - fromBottom;
  else if (wasAtBottom) box.scrollTop = box.scrollHeight;
}

/** The connection state {state, delay}: status dot and banner. */
export function renderState(s) {
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
