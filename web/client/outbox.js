// outbox.js: sends that are not answered yet.  A send is retried with the
// same client_msg_id (after a timeout or a rate limit, and after every
// reconnect, in order), so the server stores it once; once answered it
// becomes the caller's own message in the conversation state.

import { backoffDelay } from './connection.js';

/** A fresh client_msg_id: a UUID where the platform has one. */
export function newClientMsgId() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === 'function') return c.randomUUID();
  let s = '';
  for (let i = 0; i < 4; i++) s += Math.floor(Math.random() * 2 ** 32).toString(16).padStart(8, '0');
  return s;
}

/**
 * Whether a failed send may succeed when retried with the same client_msg_id.
 * Besides timeouts, disconnects and rate limits: the gateway's database
 * connection failing (SQLSTATE class 08, e.g. 08006 "the request may or may
 * not have been applied") or the server being shut down or restarted (57P).
 * The send may already be stored; the retry, being idempotent, gets its seq
 * back instead of the app sending a second copy.
 */
export function isRetryable(err) {
  const code = typeof err.code === 'string' ? err.code : '';
  return code === 'timeout' || code === 'disconnected' || code === '53400' ||
    code.startsWith('08') || code.startsWith('57P');
}

/**
 * The outbox of one client.  Uses of the host (ChatClient): `state`, `user`,
 * `device`, `request`, `_conn.isOpen`, `_sync.deliver` and the options
 * maxSendAttempts, backoffBase, backoffCap, random.
 */
export class Outbox {
  constructor(host) {
    this.host = host;
    this.items = [];  // {conversation, body, client_msg_id, reply_to, attempts, inflight, resolve, reject}, in order
  }

  /** See ChatClient.send. */
  add(conversation, body, { replyTo, clientMsgId, attachments, mentions, kind } = {}) {
    return new Promise((resolve, reject) => {
      const m = {
        conversation, body, client_msg_id: clientMsgId || newClientMsgId(),
        reply_to: replyTo, mentions: Array.isArray(mentions) && mentions.length ? [...new Set(mentions)].sort((a, b) => a - b) : undefined,
        kind, attempts: 0, inflight: false, resolve, reject,
        attachments,  // media: [{id, mime, size, name, ...}] of finished uploads
      };
      this.items.push(m);
      if (this.host._conn.isOpen()) this.sendOne(m);
    });
  }

  /** What is not answered yet, oldest first (see ChatClient.outbox). */
  view() {
    return this.items.map(({ conversation, body, client_msg_id, attempts }) => ({ conversation, body, client_msg_id, attempts }));
  }

  /** Sends everything not in flight (after hello), in order. */
  flush() {
    for (const m of this.items) if (!m.inflight) this.sendOne(m);
  }

  /** The socket died: nothing is in flight any more (flush resends after the next hello). */
  disconnected() {
    for (const m of this.items) m.inflight = false;
  }

  /** Rejects every send (the client closed for good). */
  failAll(err) {
    for (const m of this.items) m.reject(err);
    this.items = [];
  }

  /** One attempt of send `m`; settles it, or retries it when that may help. */
  sendOne(m) {
    const host = this.host;
    m.inflight = true;
    m.attempts++;
    const fields = { conversation: m.conversation, body: m.body, client_msg_id: m.client_msg_id };
    if (m.reply_to != null) fields.reply_to = m.reply_to;
    if (m.attachments) fields.attachments = m.attachments.map((a) => a.id);
    if (m.mentions) fields.mentions = m.mentions;
    if (m.kind != null) fields.kind = m.kind;   // 'e2e': body is a ciphertext (e2e.js)
    host.request('send', fields).then((result) => {
      this.remove(m);
      if (result && result.seq != null) {
        host._sync.deliver({
          type: 'message', conversation: result.conversation, seq: result.seq,
          sender: host.user, sender_device: host.device, kind: m.kind ?? 'text', body: m.body,
          client_msg_id: m.client_msg_id, reply_to: m.reply_to ?? null, created_at: result.created_at,
          ...(m.attachments ? { attachments: m.attachments } : {}),
          ...(m.mentions ? { mentions: m.mentions } : {}),
        }, 'own');
      }
      m.resolve(result);
    }, (err) => {
      m.inflight = false;
      if (!this.items.includes(m)) return;
      if (!isRetryable(err) || m.attempts >= host.maxSendAttempts) {
        this.remove(m);
        m.reject(err);
      } else if (err.code !== 'disconnected' && host._conn.isOpen()) {
        // Timed out or rate limited on a live connection: try again after a pause
        // (a disconnect resends from hello).
        const delay = backoffDelay(m.attempts, { base: host.backoffBase, cap: host.backoffCap, random: host.random });
        setTimeout(() => { if (!m.inflight && this.items.includes(m) && host.state === 'open') this.sendOne(m); }, delay);
      }
    });
  }

  /** Takes `m` out of the outbox. */
  remove(m) {
    const i = this.items.indexOf(m);
    if (i >= 0) this.items.splice(i, 1);
  }
}
