// typing.js: typing indicators.  Outgoing: debounced (one "typing" per
// burst of keystrokes, repeated while they continue, "stopped" after a
// pause).  Incoming: each indicator expires after a TTL without refresh,
// and a message from that user clears it.

/**
 * Typing state of one client.  Uses of the host (ChatClient): `state`,
 * `user`, `_emit`, `_requests.fire` and the options typingIdle,
 * typingRefresh, typingTtl, typingInterval.
 */
export class Typing {
  constructor(host) {
    this.host = host;
    this.out = new Map();       // conversation -> {idleTimer, lastSent, retryTimer}
    this.lastSent = new Map();  // conversation -> when the last typing event (start or stop) was sent
    this.incoming = new Map();  // "conv:user" -> expiry timer
  }

  /** See ChatClient.typing. */
  typing(conversation, isTyping = true) {
    const host = this.host;
    const t = this.out.get(conversation);
    if (!isTyping) {
      if (!t) return;
      clearTimeout(t.idleTimer);
      clearTimeout(t.retryTimer);
      this.out.delete(conversation);
      this.send(conversation, false);
      return;
    }
    const now = Date.now();
    if (!t) {
      const last = this.lastSent.get(conversation);
      const entry = { lastSent: now, idleTimer: this.idleTimer(conversation), retryTimer: null };
      this.out.set(conversation, entry);
      this.send(conversation, true);
      // The server drops a start that follows its previous event too closely: repeat it then.
      if (last !== undefined && now - last < host.typingInterval) {
        entry.retryTimer = setTimeout(() => {
          if (this.out.get(conversation) !== entry) return;
          entry.lastSent = Date.now();
          this.send(conversation, true);
        }, last + host.typingInterval + 50 - now);
      }
      return;
    }
    clearTimeout(t.idleTimer);
    t.idleTimer = this.idleTimer(conversation);
    if (now - t.lastSent >= host.typingRefresh) {
      t.lastSent = now;
      this.send(conversation, true);
    }
  }

  /** Sends one typing event (only on an open connection). */
  send(conversation, typing) {
    if (this.host.state !== 'open') return;
    this.lastSent.set(conversation, Date.now());
    this.host._requests.fire('typing', { conversation, typing });
  }

  /** The timer that sends "stopped" after typingIdle ms without a keystroke. */
  idleTimer(conversation) {
    return setTimeout(() => this.typing(conversation, false), this.host.typingIdle);
  }

  /** Someone's typing event: emitted, and expired after typingTtl ms without a refresh. */
  onEvent(f) {
    const host = this.host;
    if (f.user === host.user) return;
    const key = `${f.conversation}:${f.user}`;
    clearTimeout(this.incoming.get(key));
    this.incoming.delete(key);
    if (f.typing !== false) {
      this.incoming.set(key, setTimeout(() => {
        this.incoming.delete(key);
        host._emit('typing', { conversation: f.conversation, user: f.user, typing: false, expired: true });
      }, host.typingTtl));
    }
    host._emit('typing', { conversation: f.conversation, user: f.user, typing: f.typing !== false });
  }

  /** A message from `user` arrived: their indicator stops. */
  clear(conversation, user) {
    const key = `${conversation}:${user}`;
    if (!this.incoming.has(key)) return;
    clearTimeout(this.incoming.get(key));
    this.incoming.delete(key);
    this.host._emit('typing', { conversation, user, typing: false });
  }

  /** See ChatClient.typingUsers. */
  users(conversation) {
    const out = [];
    for (const key of this.incoming.keys()) {
      const [c, u] = key.split(':');
      if (String(conversation) === c) out.push(Number(u));
    }
    return out;
  }

  /** Stops every timer (the client closed). */
  reset() {
    for (const t of this.out.values()) { clearTimeout(t.idleTimer); clearTimeout(t.retryTimer); }
    this.out.clear();
    for (const t of this.incoming.values()) clearTimeout(t);
    this.incoming.clear();
  }
}
