// requests.js: request/response by id with a timeout per request.  A request
// made while the connection is not open waits in a queue (within its
// timeout) and goes out right after the next hello; one written to a socket
// that dies is failed with code 'disconnected'.

import { ChatError, isConnectionGone } from './errors.js';

/**
 * The array under `key` of a result (its documented key, see
 * docs/protocol.md), or an empty array when the result has none.
 * @param {any} result @param {string} key
 * @returns {any[]}
 */
export function resultList(result, key) {
  const list = result != null ? result[key] : undefined;
  return Array.isArray(list) ? list : [];
}

/**
 * The requests of one client.  Uses of the host (ChatClient): `state`,
 * `requestTimeout`, `_conn` (closedByUser, isOpen, send) and `_emit`.
 */
export class Requests {
  constructor(host) {
    this.host = host;
    this.nextId = 1;
    this.pending = new Map();  // id -> {id, frame, resolve, reject, timer}: written, not answered
    this.queue = [];           // entries waiting for an open connection
  }

  /**
   * Sends a request and waits for its response (see ChatClient.request).
   * @param {string} type @param {object} [fields] @param {{timeout?: number}} [opts]
   * @returns {Promise<any>}
   */
  request(type, fields = {}, { timeout = this.host.requestTimeout } = {}) {
    return new Promise((resolve, reject) => {
      if (this.host._conn.closedByUser && this.host.state !== 'idle') {
        reject(new ChatError('client closed', { code: 'closed' }));
        return;
      }
      const id = this.nextId++;
      const frame = { id, type, ...fields };
      const entry = { id, frame, resolve, reject, timer: null };
      entry.timer = setTimeout(() => {
        this.pending.delete(id);
        const i = this.queue.indexOf(entry);
        if (i >= 0) this.queue.splice(i, 1);
        reject(new ChatError(`no answer to ${type} within ${timeout} ms`, { code: 'timeout', request: frame }));
      }, timeout);
      if (this.host._conn.isOpen()) this.write(entry);
      else this.queue.push(entry);
    });
  }

  /** A request whose answer nobody waits for (typing); errors become 'error' events. */
  fire(type, fields) {
    if (this.host.state !== 'open') return;
    this.request(type, fields).catch((e) => {
      if (!isConnectionGone(e) && e.code !== '53400') this.host._emit('error', e);
    });
  }

  /** Writes an entry to the socket; a failed write is failed by the close event that follows. */
  write(entry) {
    this.pending.set(entry.id, entry);
    this.host._conn.send(JSON.stringify(entry.frame));
  }

  /** Writes the queued requests (after hello), oldest first. */
  flushQueue() {
    const queued = this.queue;
    this.queue = [];
    for (const q of queued) this.write(q);
  }

  /** Settles the request an ok, error or pong frame answers. */
  onResponse(f) {
    const p = this.pending.get(f.id);
    if (!p) return;  // late answer after a timeout
    this.pending.delete(f.id);
    clearTimeout(p.timer);
    if (f.type === 'error') {
      p.reject(new ChatError(f.message || f.error || `request ${p.frame.type} failed`,
        { code: f.code, error: f.error, request: p.frame }));
    } else {
      p.resolve(f.type === 'pong' ? f : f.result);
    }
  }

  /** Fails the requests written to a socket that died: they will never be answered. */
  failPending() {
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      this.pending.delete(id);
      p.reject(new ChatError('connection lost', { code: 'disconnected', request: p.frame }));
    }
  }

  /** Fails the requests still waiting for a connection (the client closed for good). */
  failQueued(err) {
    for (const q of this.queue) { clearTimeout(q.timer); q.reject(err); }
    this.queue = [];
  }
}
