// conversation.js: what the client has stored of each conversation: the
// contiguous seq (ordering), seqs stored above a gap and their repair with
// `after`, dedup, change-log entries applied as edit/delete events, and
// batched acks of the contiguous top.

import { ChatError, isConnectionGone } from './errors.js';
import { resultList } from './requests.js';

/**
 * Whether a message object is a change-log entry (an edit, a delete or a
 * reaction of the message whose seq is its `target`) rather than a message
 * to show.
 * @param {object} m message object (event, sync, after or history result)
 * @returns {boolean}
 */
export function isLogEntry(m) {
  return m != null && m.target != null && (m.kind === 'edit' || m.kind === 'delete' || m.kind === 'reaction');
}

/** Changes remembered per conversation for dedup (the oldest is forgotten first). */
const MAX_CHANGES = 1000;

/**
 * The conversation state of one client.  Uses of the host (ChatClient):
 * `state`, `user`, `ackDelay`, `request`, `_emit` and `_typing.clear`.
 */
export class Conversations {
  constructor(host) {
    this.host = host;
    this.convs = new Map();  // conversation -> {top, pending:Set, repairing, repairWanted, acked, changes}
    this.ackTimer = null;
  }

  /** See ChatClient.conversationState. */
  state(conversation) {
    const c = this.convs.get(conversation);
    return c ? { top: c.top, pending: [...c.pending].sort((a, b) => a - b), acked: c.acked } : { top: undefined, pending: [], acked: 0 };
  }

  /** The state of conversation `id`, created on first use. */
  get(id) {
    let c = this.convs.get(id);
    if (!c) { c = { top: undefined, pending: new Set(), repairing: false, acked: 0 }; this.convs.set(id, c); }
    return c;
  }

  /** A live message event; a "ref" one (body too large for a notification) is fetched with `after`. */
  ingestLive(f) {
    if (f.ref) {
      const c = this.get(f.conversation);
      if (c.top !== undefined && (f.seq <= c.top || c.pending.has(f.seq))) return;
      if (c.top === undefined) c.top = f.seq - 1;
      this.repair(f.conversation, f.seq);
      return;
    }
    this.ingest(f, 'live');
  }

  /**
   * Stores one message ('live', 'own', 'sync', 'after' or 'history'): drops a
   * seq already stored, advances the contiguous top, asks for a gap, applies
   * a change-log entry or emits the message, schedules the ack.  Returns
   * true when it was new.
   */
  ingest(m, source) {
    const c = this.get(m.conversation);
    if (c.top === undefined) c.top = m.seq - 1;  // first sight: the server's cursor is the baseline
    if (m.seq <= c.top || c.pending.has(m.seq)) return false;
    if (m.seq === c.top + 1) {
      c.top = m.seq;
      while (c.pending.delete(c.top + 1)) c.top++;
    } else {
      c.pending.add(m.seq);
      if (source !== 'history') this.repair(m.conversation, m.seq);
    }
    if (m.kind === 'reaction' && isLogEntry(m)) {
      // A reaction entry becomes a 'reaction' event (apply it with
      // applyReaction).  Not from history: a history page's messages carry
      // their current reactions map already.  One without an emoji (its
      // message predates this user's membership) has nothing to apply.
      if (source !== 'history' && typeof m.emoji === 'string') {
        this.host._emit('reaction', {
          type: 'reaction', conversation: m.conversation, seq: m.target, emoji: m.emoji,
          removed: m.removed === true, sender: m.sender, entry: m.seq,
        });
      }
    } else if (isLogEntry(m)) {
      // An edit entry without a body (its message was deleted since, or is
      // older than this user's membership) has nothing to apply.
      if (m.kind === 'delete' || typeof m.body === 'string') {
        this.applyChange(m.conversation, m.target, m.kind, m.body, m.created_at, m.seq, m.sender);
      }
    } else {
      if (m.sender !== undefined && m.sender !== this.host.user) this.host._typing.clear(m.conversation, m.sender);
      if (source !== 'history') this.host._emit('message', source === 'own' ? { ...m, own: true } : m);
    }
    if (source !== 'sync') this.scheduleAck();
    return true;
  }

  /**
   * A page of history (`fromNewest`: no before_seq): the messages count as
   * stored; the first page of a conversation not seen yet sets its baseline.
   */
  ingestHistory(conversation, msgs, fromNewest) {
    const c = this.get(conversation);
    if (msgs.length && c.top === undefined && fromNewest) c.top = msgs[0].seq - 1;
    for (const m of msgs) if (c.top !== undefined && m.seq > c.top) this.ingest(m, 'history');
  }

  /**
   * A live edit/delete event of the server (it also appends a log entry,
   * which carries the same change and may come before or after it).  A
   * "ref" edit carries no body: its log entry brings it.
   */
  onChangeEvent(f) {
    if (f.type === 'edit' && (f.ref || typeof f.body !== 'string')) return;
    this.applyChange(f.conversation, f.seq, f.type, f.body, f.type === 'edit' ? f.edited_at : f.deleted_at, 0, undefined);
  }

  /**
   * Emits a change of message `target` once: log entries are ordered by
   * their seq (`entry`; 0 for a live event, which is always the newest), so
   * an older entry arriving late (gap repair, a page of sync) never undoes a
   * newer change, a change already emitted is not emitted again, and nothing
   * follows a delete.
   */
  applyChange(conversation, target, kind, body, at, entry, sender) {
    const c = this.get(conversation);
    if (!c.changes) c.changes = new Map();
    const prev = c.changes.get(target);
    if (prev) {
      if (prev.kind === 'delete') { if (entry) prev.entry = Math.max(prev.entry, entry); return; }
      if (entry && prev.entry > entry) return;  // a newer entry was applied
      const same = prev.kind === kind && (kind === 'delete' || prev.body === body);
      if (entry) prev.entry = entry;
      if (same) return;
    }
    if (c.changes.size >= MAX_CHANGES && !prev) c.changes.delete(c.changes.keys().next().value);
    c.changes.set(target, { kind, body: kind === 'edit' ? body : null, entry: entry || (prev ? prev.entry : 0) });
    const ev = { type: kind, conversation, seq: target };
    if (kind === 'edit') { ev.body = body; ev.edited_at = at; } else ev.deleted_at = at;
    if (entry) ev.entry = entry;
    if (sender !== undefined) ev.sender = sender;
    this.host._emit(kind, ev);
  }

  /** Fetches the messages between the contiguous top and `upTo` with `after`, one repair per conversation at a time. */
  async repair(conversation, upTo) {
    const c = this.get(conversation);
    if (c.repairing) { c.repairWanted = Math.max(c.repairWanted || 0, upTo); return; }
    c.repairing = true;
    try {
      for (let round = 0; round < 20; round++) {
        const missingTo = Math.max(upTo, c.repairWanted || 0, c.pending.size ? Math.max(...c.pending) : 0);
        c.repairWanted = 0;
        if (c.top >= missingTo) break;
        const res = await this.host.request('after', { conversation, after_seq: c.top, limit: Math.min(500, missingTo - c.top) });
        const msgs = resultList(res, 'messages');
        for (const m of msgs) this.ingest(m, 'after');
        if (msgs.length === 0) break;
      }
    } catch (e) {
      if (!isConnectionGone(e)) this.host._emit('error', new ChatError(`could not fetch missing messages of conversation ${conversation}: ${e.message}`, { code: e.code }));
    } finally {
      c.repairing = false;
    }
  }

  /** Acks after ackDelay ms, batching what arrives meanwhile. */
  scheduleAck() {
    if (this.ackTimer) return;
    this.ackTimer = setTimeout(() => { this.ackTimer = null; this.flushAcks().catch(() => {}); }, this.host.ackDelay);
  }

  /** Cancels a scheduled ack (the client closed). */
  stopAcks() {
    clearTimeout(this.ackTimer);
    this.ackTimer = null;
  }

  /** Acks the highest contiguous seq of every conversation that moved. */
  async flushAcks() {
    if (this.host.state !== 'open') return;
    const work = [];
    for (const [conversation, c] of this.convs) {
      if (c.top !== undefined && c.top > c.acked) {
        const seq = c.top;
        work.push(this.host.request('ack', { conversation, seq }).then(() => { c.acked = Math.max(c.acked, seq); }));
      }
    }
    const results = await Promise.allSettled(work);
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
  }
}
