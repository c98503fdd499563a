// chat-client.js: the pgchat client library (protocol chat.v1), an ES module
// without dependencies for browsers and Node >= 20.  It implements the client
// duties of docs/protocol.md: request/response by id with timeouts, sends retried
// with the same client_msg_id, per-conversation contiguous seq with gap repair
// and dedup, batched acks, sync until done, reconnect with exponential backoff
// and full jitter, typing debounce with a TTL on the receiving side.
//
//   import { ChatClient } from './chat-client.js';
//   const chat = new ChatClient({ url: 'ws://host/ws', token });
//   chat.on('message', (m) => render(m));
//   await chat.connect();
//   await chat.send(7, 'hi');

/** Subprotocol spoken by the gateway. */
export const PROTOCOL = 'chat.v1';

/** Close codes after which the client does not reconnect by itself
 * (4001 only when there is no token function to ask for a new token;
 * 4003: the device was removed, a new token would not help). */
const FATAL_CLOSE_CODES = new Set([4001, 4003]);

/**
 * The `exp` claim (unix seconds) of a JWT, read without verifying it (the
 * gateway verifies); null when the token has none or is not a JWT.
 * @param {string} jwt
 * @returns {number|null}
 */
export function tokenExp(jwt) {
  try {
    const part = String(jwt).split('.')[1];
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '=');
    const json = typeof atob === 'function' ? atob(b64) : Buffer.from(b64, 'base64').toString('binary');
    const exp = JSON.parse(json).exp;
    return Number.isFinite(Number(exp)) ? Number(exp) : null;
  } catch {
    return null;
  }
}

/**
 * Milliseconds from `nowMs` until a token expiring at `exp` (unix seconds)
 * should be refreshed: `margin` ms before exp, or halfway when less than
 * twice the margin is left.
 * @param {number} exp @param {number} nowMs @param {number} margin
 * @returns {number}
 */
export function refreshDelay(exp, nowMs, margin) {
  const left = exp * 1000 - nowMs;
  if (left <= 0) return 0;
  return left >= 2 * margin ? left - margin : Math.floor(left / 2);
}

/**
 * Delay before reconnect attempt `attempt` (0-based): exponential backoff
 * with full jitter, uniformly random in [0, min(cap, base * 2^attempt)).
 * @param {number} attempt
 * @param {{base?: number, cap?: number, random?: () => number}} [opts]
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, { base = 500, cap = 30000, random = Math.random } = {}) {
  const ceiling = Math.min(cap, base * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/** A fresh client_msg_id: a UUID where the platform has one. */
export function newClientMsgId() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === 'function') return c.randomUUID();
  let s = '';
  for (let i = 0; i < 4; i++) s += Math.floor(Math.random() * 2 ** 32).toString(16).padStart(8, '0');
  return s;
}

/**
 * Whether a message object is a change-log entry (an edit or a delete of the
 * message whose seq is its `target`) rather than a message to show.
 * @param {object} m message object (event, sync, after or history result)
 * @returns {boolean}
 */
export function isLogEntry(m) {
  return m != null && m.target != null && (m.kind === 'edit' || m.kind === 'delete');
}

/** Error raised for error frames, timeouts and disconnects. */
export class ChatError extends Error {
  /**
   * @param {string} message
   * @param {{code?: string, error?: string, request?: object}} [info]
   */
  constructor(message, { code, error, request } = {}) {
    super(message);
    this.name = 'ChatError';
    /** SQLSTATE of an error frame, or 'timeout' / 'disconnected' / 'closed'. */
    this.code = code;
    /** condition name of an error frame (e.g. insufficient_privilege). */
    this.error = error;
    this.request = request;
  }
}

/** Whether a failed send may succeed when retried with the same client_msg_id. */
function isRetryable(err) {
  return err.code === 'timeout' || err.code === 'disconnected' || err.code === '53400';
}

/** Extracts an array from a result that is either an array or {key: [...]}. */
function listOf(result, ...keys) {
  if (Array.isArray(result)) return result;
  if (result && typeof result === 'object') {
    for (const k of keys) if (Array.isArray(result[k])) return result[k];
    const any = Object.values(result).find(Array.isArray);
    if (any) return any;
  }
  return [];
}

/**
 * A connection to chat-gateway that survives reconnects.
 *
 * Events (subscribe with `on(name, fn)`):
 * - `hello` {user, device, node, heartbeat}: authenticated (every (re)connect)
 * - `state` {state, attempt?, delay?, code?, reason?}: 'connecting', 'open',
 *   'reconnecting' (with the delay in ms), 'offline' (network down), 'closed'
 * - `synced` {conversations}: a sync loop finished; lists conversations that got messages
 * - `message` message event: a message newly stored (never twice for one seq);
 *   also the caller's own sent messages once the server assigned their seq (`own: true`).
 *   Change-log entries (kind `edit` / `delete`, see isLogEntry) are not `message`s:
 *   they take their seq like any message (contiguous top, acks) and are applied as
 * - `edit` {conversation, seq, body, edited_at, entry?, sender?} and `delete`
 *   {conversation, seq, deleted_at, entry?, sender?}: message `seq` was changed.
 *   From a log entry (`entry` is its seq; live, by sync or by gap repair, so an
 *   offline device learns every change) or from the server's live edit/delete
 *   event; each change is emitted once, and never an older one after a newer
 * - `receipt`, `read_state`, `presence`, `member`: server pushes as is
 * - `typing` {conversation, user, typing, expired?}: typing started or stopped
 *   (stopped also when the TTL ran out or the user's message arrived)
 * - `token` {exp}: the connection was re-authenticated with a fresh token (before the old one's exp)
 * - `error` ChatError: a background operation failed (auth rejected, gap repair failed, ...)
 */
export class ChatClient {
  /**
   * @param {object} opts
   * @param {string} opts.url WebSocket URL of the gateway, e.g. 'ws://127.0.0.1:8080/ws'
   * @param {string | (() => string | Promise<string>)} opts.token JWT, or a function that returns a fresh one
   *   (asked on every connect and, before the current token's exp, to re-authenticate the open connection)
   * @param {() => string | Promise<string>} [opts.getToken] same as a token function (wins over `token`;
   *   `refreshToken` is accepted as another name for it)
   * @param {number} [opts.refreshMargin=60000] ms before the token's exp at which a token function is asked
   *   for a new one (halfway through when the token lives less than twice this)
   * @param {typeof WebSocket} [opts.WebSocket] WebSocket constructor (default: globalThis.WebSocket; in Node pass `ws`)
   * @param {number} [opts.requestTimeout=10000] ms until an unanswered request fails
   * @param {number} [opts.ackDelay=200] ms to batch acks
   * @param {number} [opts.backoffBase=500] ms, reconnect backoff base
   * @param {number} [opts.backoffCap=30000] ms, reconnect backoff cap
   * @param {number} [opts.typingIdle=3000] ms without keystrokes after which `typing` sends stop
   * @param {number} [opts.typingRefresh=4000] ms between repeated "typing" while the user keeps typing
   * @param {number} [opts.typingTtl=6000] ms after which someone else's typing indicator expires
   * @param {number} [opts.typingInterval=3000] the server's rate limit (GUC chat.typing_interval): a start
   *   sent sooner after the previous typing event is dropped by the server, so it is repeated once the interval passed
   * @param {number} [opts.pingInterval=25000] ms between liveness pings (0: none)
   * @param {number} [opts.syncLimit=500] page size of sync
   * @param {number} [opts.maxSendAttempts=Infinity] attempts before a send promise rejects
   * @param {boolean} [opts.watchNetwork] follow the browser's online/offline events (default: when available)
   * @param {() => number} [opts.random=Math.random] randomness for the jitter
   */
  constructor(opts) {
    if (!opts || !opts.url) throw new TypeError('ChatClient: url is required');
    this.url = opts.url;
    this.token = opts.getToken || opts.refreshToken || opts.token;
    this.refreshMargin = opts.refreshMargin ?? 60000;
    this._refreshTimer = null;
    this._exp = null;               // exp (unix seconds) of the token the open connection runs on
    this.WebSocket = opts.WebSocket || globalThis.WebSocket;
    if (!this.WebSocket) throw new TypeError('ChatClient: no WebSocket constructor; pass opts.WebSocket');
    this.requestTimeout = opts.requestTimeout ?? 10000;
    this.ackDelay = opts.ackDelay ?? 200;
    this.backoffBase = opts.backoffBase ?? 500;
    this.backoffCap = opts.backoffCap ?? 30000;
    this.typingIdle = opts.typingIdle ?? 3000;
    this.typingRefresh = opts.typingRefresh ?? 4000;
    this.typingTtl = opts.typingTtl ?? 6000;
    this.typingInterval = opts.typingInterval ?? 3000;
    this.pingInterval = opts.pingInterval ?? 25000;
    this.syncLimit = opts.syncLimit ?? 500;
    this.maxSendAttempts = opts.maxSendAttempts ?? Infinity;
    this.random = opts.random || Math.random;

    /** 'idle' | 'connecting' | 'open' | 'reconnecting' | 'offline' | 'closed' */
    this.state = 'idle';
    /** user and device from the last hello */
    this.user = null;
    this.device = null;

    this._handlers = new Map();
    this._ws = null;
    this._nextId = 1;
    this._pending = new Map();      // id -> {resolve, reject, timer, frame, send}
    this._queue = [];               // requests waiting for an open connection
    this._outbox = [];              // unanswered sends, in order
    this._convs = new Map();        // conversation -> {top, pending:Set, repairing, acked}
    this._ackTimer = null;
    this._attempt = 0;
    this._reconnectTimer = null;
    this._pingTimer = null;
    this._syncing = false;
    this._syncGeneration = 0;
    this._resyncWanted = false;
    this._heldEvents = [];          // message events that arrived during a sync loop
    this._typingOut = new Map();    // conversation -> {idleTimer, lastSent, retryTimer}
    this._typingLast = new Map();   // conversation -> when the last typing event (start or stop) was sent
    this._typingIn = new Map();     // "conv:user" -> timer
    this._closedByUser = false;
    this._connectWaiters = [];
    this._networkUp = true;

    const watch = opts.watchNetwork ?? (typeof globalThis.addEventListener === 'function' && 'onLine' in (globalThis.navigator || {}));
    if (watch) {
      this._onOffline = () => this.setNetwork(false);
      this._onOnline = () => this.setNetwork(true);
      globalThis.addEventListener('offline', this._onOffline);
      globalThis.addEventListener('online', this._onOnline);
      if (globalThis.navigator && globalThis.navigator.onLine === false) this._networkUp = false;
    }
  }

  // ---------------------------------------------------------------- events

  /**
   * Subscribes to an event.
   * @param {string} event
   * @param {(data: any) => void} fn
   * @returns {() => void} unsubscribe
   */
  on(event, fn) {
    if (!this._handlers.has(event)) this._handlers.set(event, new Set());
    this._handlers.get(event).add(fn);
    return () => this._handlers.get(event)?.delete(fn);
  }

  /** Calls the handlers of `event`; a throwing handler does not break the client. */
  _emit(event, data) {
    const hs = this._handlers.get(event);
    if (!hs) return;
    for (const fn of [...hs]) {
      try { fn(data); } catch (e) { if (event !== 'error') this._emit('error', e); }
    }
  }

  _setState(state, extra = {}) {
    this.state = state;
    this._emit('state', { state, ...extra });
  }

  // ------------------------------------------------------------ connection

  /**
   * Opens the connection (and keeps it open until `close()`).
   * @returns {Promise<{user:number, device:number, node:string}>} resolves on the first hello;
   *   rejects when the token is refused (close 4001)
   */
  connect() {
    this._closedByUser = false;
    const p = new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
    if (!this._ws && !this._reconnectTimer && !this._opening) this._open();
    else if (this.state === 'open') this._settleConnect(null, { user: this.user, device: this.device });
    return p;
  }

  _settleConnect(err, hello) {
    const ws = this._connectWaiters;
    this._connectWaiters = [];
    for (const w of ws) err ? w.reject(err) : w.resolve(hello);
  }

  async _open() {
    this._reconnectTimer = null;
    if (this._closedByUser || this._opening || this._ws) return;
    if (!this._networkUp) { this._setState('offline'); return; }
    this._setState(this._attempt === 0 ? 'connecting' : 'reconnecting', { attempt: this._attempt });
    let token;
    this._opening = true;
    try {
      token = typeof this.token === 'function' ? await this.token() : this.token;
    } catch (e) {
      this._opening = false;
      this._emit('error', new ChatError(`could not get a token: ${e.message}`, { code: 'token' }));
      this._scheduleReconnect({});
      return;
    }
    this._opening = false;
    if (this._closedByUser || this._ws) return;
    let ws;
    try {
      // The token goes in the first frame, never in the URL (proxies log URLs).
      ws = new this.WebSocket(this.url, PROTOCOL);
    } catch (e) {
      this._emit('error', new ChatError(`could not open ${this.url}: ${e.message}`, { code: 'connect' }));
      this._scheduleReconnect({});
      return;
    }
    this._ws = ws;
    this._exp = tokenExp(token);
    ws.onopen = () => {
      if (this._ws !== ws) return;
      try { ws.send(JSON.stringify({ type: 'auth', token })); } catch { /* the close event follows */ }
    };
    ws.onmessage = (ev) => { if (this._ws === ws) this._onFrame(ev.data); };
    ws.onclose = (ev) => { if (this._ws === ws) this._onClose(ev.code, ev.reason); };
    ws.onerror = () => {};  // a close event follows and carries what we need
  }

  /** Handles the end of the current socket, then reconnects unless told not to. */
  _onClose(code, reason) {
    this._ws = null;
    clearInterval(this._pingTimer);
    this._pingTimer = null;
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    // The sync loop of this socket is over; held pushes wait for the next loop.
    this._syncing = false;
    this._syncGeneration++;
    // Requests written to the dead socket will never be answered.
    for (const [id, p] of this._pending) {
      clearTimeout(p.timer);
      this._pending.delete(id);
      p.reject(new ChatError('connection lost', { code: 'disconnected', request: p.frame }));
    }
    for (const m of this._outbox) m.inflight = false;
    if (this._closedByUser) { this._setState('closed', { code, reason }); return; }
    if (FATAL_CLOSE_CODES.has(code) && (code === 4003 || typeof this.token !== 'function')) {
      const what = code === 4003 ? 'the device was revoked' : 'the gateway refused the token';
      const err = new ChatError(`${what} (close ${code}${reason ? ': ' + reason : ''})`, { code: String(code) });
      this._closedByUser = true;
      this._failQueued(err);
      this._setState('closed', { code, reason });
      this._emit('error', err);
      this._settleConnect(err);
      return;
    }
    if (!this._networkUp) { this._setState('offline', { code, reason }); return; }
    this._scheduleReconnect({ code, reason });
  }

  _scheduleReconnect(extra) {
    if (this._closedByUser || this._reconnectTimer) return;
    const delay = backoffDelay(this._attempt, { base: this.backoffBase, cap: this.backoffCap, random: this.random });
    this._attempt++;
    this._setState('reconnecting', { ...extra, attempt: this._attempt, delay });
    this._reconnectTimer = setTimeout(() => this._open(), delay);
  }

  /**
   * Tells the client whether the network is up.  Down closes the socket
   * (browsers may keep a dead one open) and stops reconnecting; up reconnects
   * at once.  Browsers call this from their online/offline events.
   * @param {boolean} up
   */
  setNetwork(up) {
    if (up === this._networkUp) return;
    this._networkUp = up;
    if (this._closedByUser || this.state === 'idle') return;
    if (!up) {
      clearTimeout(this._reconnectTimer);
      this._reconnectTimer = null;
      const ws = this._ws;
      if (ws) { this._onClose(1006, 'network offline'); try { ws.close(); } catch { /* already closed */ } }
      else this._setState('offline');
    } else {
      clearTimeout(this._reconnectTimer);
      this._reconnectTimer = null;
      this._attempt = 0;
      if (!this._ws) this._open();
    }
  }

  /** Drops the current socket and reconnects (e.g. after a liveness ping timed out). */
  reconnect() {
    if (this._closedByUser) return;
    const ws = this._ws;
    if (ws) { this._onClose(1006, 'reconnect'); try { ws.close(); } catch { /* already closed */ } }
    else if (!this._reconnectTimer) this._open();
  }

  /** Closes the connection for good; pending requests and sends reject. */
  close() {
    this._closedByUser = true;
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    clearTimeout(this._ackTimer);
    this._ackTimer = null;
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    for (const t of this._typingOut.values()) { clearTimeout(t.idleTimer); clearTimeout(t.retryTimer); }
    this._typingOut.clear();
    for (const t of this._typingIn.values()) clearTimeout(t);
    this._typingIn.clear();
    if (this._onOffline) {
      globalThis.removeEventListener('offline', this._onOffline);
      globalThis.removeEventListener('online', this._onOnline);
    }
    const err = new ChatError('client closed', { code: 'closed' });
    const ws = this._ws;
    if (ws) { this._onClose(1000, 'client closed'); try { ws.close(1000); } catch { /* already closed */ } }
    else this._setState('closed');
    this._failQueued(err);
    for (const m of this._outbox) m.reject(err);
    this._outbox = [];
    this._settleConnect(err);
  }

  _failQueued(err) {
    for (const q of this._queue) { clearTimeout(q.timer); q.reject(err); }
    this._queue = [];
  }

  // ---------------------------------------------------------------- frames

  _onFrame(data) {
    let f;
    try { f = JSON.parse(typeof data === 'string' ? data : String(data)); } catch {
      this._emit('error', new ChatError('gateway sent a frame that is not JSON', { code: 'protocol' }));
      return;
    }
    if (f.id !== undefined && f.id !== null && (f.type === 'ok' || f.type === 'error' || f.type === 'pong')) {
      this._onResponse(f);
      return;
    }
    switch (f.type) {
      case 'hello': this._onHello(f); break;
      case 'resync': this._sync(); break;
      case 'message':
        if (this._syncing) this._heldEvents.push({ f, source: 'live' });
        else this._ingestLive(f);
        break;
      case 'typing': this._onTyping(f); break;
      case 'edit': case 'delete':
        this._onChangeEvent(f);
        break;
      case 'receipt': case 'read_state': case 'presence': case 'member':
        this._emit(f.type, f);
        break;
      default:
        if (f.type === 'error') this._emit('error', new ChatError(f.message || f.error || 'error', { code: f.code, error: f.error }));
        else this._emit(f.type, f);
    }
  }

  _onHello(f) {
    this.user = f.user;
    this.device = f.device;
    this._attempt = 0;
    this._setState('open', { user: f.user, device: f.device, node: f.node });
    this._emit('hello', f);
    this._settleConnect(null, f);
    if (this.pingInterval > 0) {
      clearInterval(this._pingTimer);
      this._pingTimer = setInterval(() => this._ping(), this.pingInterval);
    }
    this._scheduleRefresh();
    // Queued requests and unanswered sends go out first (sends keep their order);
    // the sync runs alongside, and live messages wait until it is done.
    const queued = this._queue;
    this._queue = [];
    for (const q of queued) this._write(q);
    this._flushOutbox();
    this._sync();
  }

  /**
   * With a token function: asks it for a new token refreshMargin ms before
   * the current one's exp and sends {"type":"auth"} on the open connection,
   * which moves the connection's expiry (the gateway closes it with 4001 at
   * exp otherwise).  A failure is retried until exp; after that the gateway
   * closes and the reconnect asks for a token again.
   */
  _scheduleRefresh(retryMs) {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    if (typeof this.token !== 'function' || this._exp == null || this.state !== 'open') return;
    const delay = retryMs ?? refreshDelay(this._exp, Date.now(), this.refreshMargin);
    this._refreshTimer = setTimeout(() => this._refresh(), delay);
  }

  async _refresh() {
    this._refreshTimer = null;
    const ws = this._ws;
    if (!ws || this.state !== 'open') return;
    const retry = () => {
      const left = this._exp * 1000 - Date.now();
      if (left > 0 && this._ws === ws) this._scheduleRefresh(Math.max(50, Math.min(5000, Math.floor(left / 4))));
    };
    let token;
    try {
      token = await this.token();
    } catch (e) {
      this._emit('error', new ChatError(`could not get a token: ${e.message}`, { code: 'token' }));
      retry();
      return;
    }
    const exp = tokenExp(token);
    if (this._ws !== ws) return;
    if (exp == null || exp <= this._exp) {  // not a newer token: ask again later
      retry();
      return;
    }
    try {
      const res = await this.request('auth', { token });
      this._exp = Number(res && res.exp) || exp;
      this._emit('token', { exp: this._exp });
      if (this._ws === ws) this._scheduleRefresh();
    } catch (e) {
      // A refused token closes the connection (4001); a timeout is retried.
      if (e.code === 'timeout') retry();
    }
  }

  /** Liveness check: a ping without answer means the socket is dead. */
  _ping() {
    if (this.state !== 'open') return;
    this.request('ping', {}, { timeout: this.requestTimeout }).catch((e) => {
      if (e.code === 'timeout') this.reconnect();
    });
  }

  // -------------------------------------------------------------- requests

  /**
   * Sends a request and waits for its response.
   * Requests made while disconnected wait for the connection (within the timeout).
   * @param {string} type request type (see docs/protocol.md)
   * @param {object} [fields]
   * @param {{timeout?: number}} [opts]
   * @returns {Promise<any>} the `result` of the ok frame; rejects with a ChatError
   */
  request(type, fields = {}, { timeout = this.requestTimeout } = {}) {
    return new Promise((resolve, reject) => {
      if (this._closedByUser && this.state !== 'idle') {
        reject(new ChatError('client closed', { code: 'closed' }));
        return;
      }
      const id = this._nextId++;
      const frame = { id, type, ...fields };
      const entry = { id, frame, resolve, reject, timer: null };
      entry.timer = setTimeout(() => {
        this._pending.delete(id);
        const i = this._queue.indexOf(entry);
        if (i >= 0) this._queue.splice(i, 1);
        reject(new ChatError(`no answer to ${type} within ${timeout} ms`, { code: 'timeout', request: frame }));
      }, timeout);
      if (this.state === 'open' && this._ws) this._write(entry);
      else this._queue.push(entry);
    });
  }

  _write(entry) {
    this._pending.set(entry.id, entry);
    try {
      this._ws.send(JSON.stringify(entry.frame));
    } catch (e) {
      // The close event follows; the entry is failed there.
    }
  }

  _onResponse(f) {
    const p = this._pending.get(f.id);
    if (!p) return;  // late answer after a timeout
    this._pending.delete(f.id);
    clearTimeout(p.timer);
    if (f.type === 'error') {
      p.reject(new ChatError(f.message || f.error || `request ${p.frame.type} failed`,
        { code: f.code, error: f.error, request: p.frame }));
    } else {
      p.resolve(f.type === 'pong' ? f : f.result);
    }
  }

  // ------------------------------------------------------------------ send

  /**
   * Sends a message.  Until answered, the send is retried with the same
   * client_msg_id (after a timeout, and after every reconnect), so the
   * server stores it once.
   * @param {number} conversation
   * @param {string} body
   * @param {{replyTo?: number, clientMsgId?: string}} [opts]
   * @returns {Promise<{conversation:number, seq:number, created_at:string, duplicate:boolean}>}
   */
  send(conversation, body, { replyTo, clientMsgId } = {}) {
    this.typing(conversation, false);
    return new Promise((resolve, reject) => {
      const m = {
        conversation, body, client_msg_id: clientMsgId || newClientMsgId(),
        reply_to: replyTo, attempts: 0, inflight: false, resolve, reject,
      };
      this._outbox.push(m);
      if (this.state === 'open' && this._ws) this._sendOne(m);
    });
  }

  /** Unanswered sends of this client, oldest first (for showing "sending…"). */
  get outbox() {
    return this._outbox.map(({ conversation, body, client_msg_id, attempts }) => ({ conversation, body, client_msg_id, attempts }));
  }

  _flushOutbox() {
    for (const m of this._outbox) if (!m.inflight) this._sendOne(m);
  }

  _sendOne(m) {
    m.inflight = true;
    m.attempts++;
    const fields = { conversation: m.conversation, body: m.body, client_msg_id: m.client_msg_id };
    if (m.reply_to != null) fields.reply_to = m.reply_to;
    this.request('send', fields).then((result) => {
      this._removeFromOutbox(m);
      if (result && result.seq != null) {
        const own = {
          type: 'message', conversation: result.conversation ?? m.conversation, seq: result.seq,
          sender: this.user, sender_device: this.device, kind: 'text', body: m.body,
          client_msg_id: m.client_msg_id, reply_to: m.reply_to ?? null, created_at: result.created_at,
        };
        // During a sync, earlier messages of the conversation may still be on their way.
        if (this._syncing) this._heldEvents.push({ f: own, source: 'own' });
        else this._ingest(own, 'own');
      }
      m.resolve(result);
    }, (err) => {
      m.inflight = false;
      if (!this._outbox.includes(m)) return;
      if (!isRetryable(err) || m.attempts >= this.maxSendAttempts) {
        this._removeFromOutbox(m);
        m.reject(err);
      } else if (err.code !== 'disconnected' && this.state === 'open' && this._ws) {
        // Timed out or rate limited on a live connection: try again after a pause
        // (a disconnect resends from _onHello).
        const delay = backoffDelay(m.attempts, { base: this.backoffBase, cap: this.backoffCap, random: this.random });
        setTimeout(() => { if (!m.inflight && this._outbox.includes(m) && this.state === 'open') this._sendOne(m); }, delay);
      }
    });
  }

  _removeFromOutbox(m) {
    const i = this._outbox.indexOf(m);
    if (i >= 0) this._outbox.splice(i, 1);
  }

  // ------------------------------------------------- seq tracking and acks

  /**
   * What the client has stored of a conversation: `top` is the highest
   * contiguous seq (undefined before the first message), `pending` the seqs
   * stored above a gap.
   * @param {number} conversation
   * @returns {{top: number|undefined, pending: number[], acked: number}}
   */
  conversationState(conversation) {
    const c = this._convs.get(conversation);
    return c ? { top: c.top, pending: [...c.pending].sort((a, b) => a - b), acked: c.acked } : { top: undefined, pending: [], acked: 0 };
  }

  _conv(id) {
    let c = this._convs.get(id);
    if (!c) { c = { top: undefined, pending: new Set(), repairing: false, acked: 0 }; this._convs.set(id, c); }
    return c;
  }

  _ingestLive(f) {
    if (f.ref) {  // body too large for a notification: fetch it with `after`
      const c = this._conv(f.conversation);
      if (c.top !== undefined && (f.seq <= c.top || c.pending.has(f.seq))) return;
      if (c.top === undefined) c.top = f.seq - 1;
      this._repair(f.conversation, f.seq);
      return;
    }
    this._ingest(f, 'live');
  }

  /**
   * Stores one message: drops a seq already stored, advances the contiguous
   * top, asks for a gap, schedules the ack.  Returns true when it was new.
   */
  _ingest(m, source) {
    const c = this._conv(m.conversation);
    if (c.top === undefined) c.top = m.seq - 1;  // first sight: the server's cursor is the baseline
    if (m.seq <= c.top || c.pending.has(m.seq)) return false;
    if (m.seq === c.top + 1) {
      c.top = m.seq;
      while (c.pending.delete(c.top + 1)) c.top++;
    } else {
      c.pending.add(m.seq);
      if (source !== 'history') this._repair(m.conversation, m.seq);
    }
    if (isLogEntry(m)) {
      // An edit entry without a body (its message was deleted since, or is
      // older than this user's membership) has nothing to apply.
      if (m.kind === 'delete' || typeof m.body === 'string') {
        this._applyChange(m.conversation, m.target, m.kind, m.body, m.created_at, m.seq, m.sender);
      }
    } else {
      if (m.sender !== undefined && m.sender !== this.user) this._clearTyping(m.conversation, m.sender);
      if (source !== 'history') this._emit('message', source === 'own' ? { ...m, own: true } : m);
    }
    if (source !== 'sync') this._scheduleAck();
    return true;
  }

  /**
   * A live edit/delete event of the server (it also appends a log entry,
   * which carries the same change and may come before or after it).  A
   * "ref" edit carries no body: its log entry brings it.
   */
  _onChangeEvent(f) {
    if (f.type === 'edit' && (f.ref || typeof f.body !== 'string')) return;
    this._applyChange(f.conversation, f.seq, f.type, f.body, f.type === 'edit' ? f.edited_at : f.deleted_at, 0, undefined);
  }

  /**
   * Emits a change of message `target` once: log entries are ordered by
   * their seq (`entry`; 0 for a live event, which is always the newest), so
   * an older entry arriving late (gap repair, a page of sync) never undoes a
   * newer change, a change already emitted is not emitted again, and nothing
   * follows a delete.
   */
  _applyChange(conversation, target, kind, body, at, entry, sender) {
    const c = this._conv(conversation);
    if (!c.changes) c.changes = new Map();
    const prev = c.changes.get(target);
    if (prev) {
      if (prev.kind === 'delete') { if (entry) prev.entry = Math.max(prev.entry, entry); return; }
      if (entry && prev.entry > entry) return;  // a newer entry was applied
      const same = prev.kind === kind && (kind === 'delete' || prev.body === body);
      if (entry) prev.entry = entry;
      if (same) return;
    }
    if (c.changes.size >= 1000 && !prev) c.changes.delete(c.changes.keys().next().value);
    c.changes.set(target, { kind, body: kind === 'edit' ? body : null, entry: entry || (prev ? prev.entry : 0) });
    const ev = { type: kind, conversation, seq: target };
    if (kind === 'edit') { ev.body = body; ev.edited_at = at; } else ev.deleted_at = at;
    if (entry) ev.entry = entry;
    if (sender !== undefined) ev.sender = sender;
    this._emit(kind, ev);
  }

  /** Fetches the messages between the contiguous top and `upTo` with `after`. */
  async _repair(conversation, upTo) {
    const c = this._conv(conversation);
    if (c.repairing) { c.repairWanted = Math.max(c.repairWanted || 0, upTo); return; }
    c.repairing = true;
    try {
      for (let round = 0; round < 20; round++) {
        const missingTo = Math.max(upTo, c.repairWanted || 0, c.pending.size ? Math.max(...c.pending) : 0);
        c.repairWanted = 0;
        if (c.top >= missingTo) break;
        const res = await this.request('after', { conversation, after_seq: c.top, limit: Math.min(500, missingTo - c.top) });
        const msgs = listOf(res, 'messages');
        for (const m of msgs) this._ingest(m, 'after');
        if (msgs.length === 0) break;
      }
    } catch (e) {
      if (e.code !== 'disconnected' && e.code !== 'closed') this._emit('error', new ChatError(`could not fetch missing messages of conversation ${conversation}: ${e.message}`, { code: e.code }));
    } finally {
      c.repairing = false;
    }
  }

  _scheduleAck() {
    if (this._ackTimer) return;
    this._ackTimer = setTimeout(() => { this._ackTimer = null; this._flushAcks().catch(() => {}); }, this.ackDelay);
  }

  /** Acks the highest contiguous seq of every conversation that moved. */
  async _flushAcks() {
    if (this.state !== 'open') return;
    const work = [];
    for (const [conversation, c] of this._convs) {
      if (c.top !== undefined && c.top > c.acked) {
        const seq = c.top;
        work.push(this.request('ack', { conversation, seq }).then(() => { c.acked = Math.max(c.acked, seq); }));
      }
    }
    const results = await Promise.allSettled(work);
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
  }

  // ------------------------------------------------------------------ sync

  /** Runs `sync` until `more` is false, acking each page; reruns when a resync came meanwhile. */
  async _sync() {
    if (this._syncing) { this._resyncWanted = true; return; }
    this._syncing = true;
    const generation = ++this._syncGeneration;
    const touched = new Set();
    try {
      do {
        this._resyncWanted = false;
        for (let page = 0; page < 1000; page++) {
          const res = await this.request('sync', { limit: this.syncLimit });
          const msgs = listOf(res, 'messages');
          for (const m of msgs) { touched.add(m.conversation); this._ingest(m, 'sync'); }
          await this._flushAcks();
          if (!res || !res.more || msgs.length === 0) break;
          // The next page starts after the acked cursors; without progress it would repeat.
          if (msgs.every((m) => this._conv(m.conversation).acked < m.seq)) {
            throw new ChatError('sync made no progress (messages above a gap cannot be acked)', { code: 'sync' });
          }
        }
      } while (this._resyncWanted && this.state === 'open');
    } catch (e) {
      if (e.code !== 'disconnected' && e.code !== 'closed') {
        this._emit('error', new ChatError(`sync failed: ${e.message}`, { code: e.code }));
      }
    } finally {
      // A loop of a dead connection must not end the loop of the next one.
      if (generation === this._syncGeneration) {
        this._syncing = false;
        const held = this._heldEvents;
        this._heldEvents = [];
        for (const { f, source } of held) source === 'own' ? this._ingest(f, 'own') : this._ingestLive(f);
        if (this.state === 'open') this._emit('synced', { conversations: [...touched] });
      }
    }
  }

  // ---------------------------------------------------------------- typing

  /**
   * Reports the local user's typing, debounced: call it on every keystroke
   * (`typing(c)`) and with `false` when done.  Sends "typing" once, repeats
   * it every typingRefresh ms while keystrokes continue, and sends "stopped"
   * after typingIdle ms without one.
   * @param {number} conversation
   * @param {boolean} [isTyping=true]
   */
  typing(conversation, isTyping = true) {
    const t = this._typingOut.get(conversation);
    if (!isTyping) {
      if (!t) return;
      clearTimeout(t.idleTimer);
      clearTimeout(t.retryTimer);
      this._typingOut.delete(conversation);
      this._sendTyping(conversation, false);
      return;
    }
    const now = Date.now();
    if (!t) {
      const last = this._typingLast.get(conversation);
      const entry = { lastSent: now, idleTimer: this._typingIdleTimer(conversation), retryTimer: null };
      this._typingOut.set(conversation, entry);
      this._sendTyping(conversation, true);
      // The server drops a start that follows its previous event too closely: repeat it then.
      if (last !== undefined && now - last < this.typingInterval) {
        entry.retryTimer = setTimeout(() => {
          if (this._typingOut.get(conversation) !== entry) return;
          entry.lastSent = Date.now();
          this._sendTyping(conversation, true);
        }, last + this.typingInterval + 50 - now);
      }
      return;
    }
    clearTimeout(t.idleTimer);
    t.idleTimer = this._typingIdleTimer(conversation);
    if (now - t.lastSent >= this.typingRefresh) {
      t.lastSent = now;
      this._sendTyping(conversation, true);
    }
  }

  _sendTyping(conversation, typing) {
    if (this.state !== 'open') return;
    this._typingLast.set(conversation, Date.now());
    this._fire('typing', { conversation, typing });
  }

  _typingIdleTimer(conversation) {
    return setTimeout(() => this.typing(conversation, false), this.typingIdle);
  }

  /** A request whose answer nobody waits for (typing, read); errors become 'error' events. */
  _fire(type, fields) {
    if (this.state !== 'open') return;
    this.request(type, fields).catch((e) => {
      if (e.code !== 'disconnected' && e.code !== 'closed' && e.code !== '53400') this._emit('error', e);
    });
  }

  _onTyping(f) {
    if (f.user === this.user) return;
    const key = `${f.conversation}:${f.user}`;
    clearTimeout(this._typingIn.get(key));
    this._typingIn.delete(key);
    if (f.typing !== false) {
      this._typingIn.set(key, setTimeout(() => {
        this._typingIn.delete(key);
        this._emit('typing', { conversation: f.conversation, user: f.user, typing: false, expired: true });
      }, this.typingTtl));
    }
    this._emit('typing', { conversation: f.conversation, user: f.user, typing: f.typing !== false });
  }

  _clearTyping(conversation, user) {
    const key = `${conversation}:${user}`;
    if (!this._typingIn.has(key)) return;
    clearTimeout(this._typingIn.get(key));
    this._typingIn.delete(key);
    this._emit('typing', { conversation, user, typing: false });
  }

  /**
   * Users currently typing in a conversation (TTL applied).
   * @param {number} conversation
   * @returns {number[]}
   */
  typingUsers(conversation) {
    const out = [];
    for (const key of this._typingIn.keys()) {
      const [c, u] = key.split(':');
      if (String(conversation) === c) out.push(Number(u));
    }
    return out;
  }

  // --------------------------------------------------- the other requests

  /**
   * Edits one of the user's own messages.
   * @param {number} conversation @param {number} seq @param {string} body
   */
  edit(conversation, seq, body) { return this.request('edit', { conversation, seq, body }); }

  /**
   * Deletes a message (leaves a tombstone).
   * @param {number} conversation @param {number} seq
   */
  delete(conversation, seq) { return this.request('delete', { conversation, seq }); }

  /**
   * Marks everything up to `seq` read (sends read receipts).
   * @param {number} conversation @param {number} seq
   */
  markRead(conversation, seq) { return this.request('read', { conversation, seq }); }

  /**
   * The chat list, newest activity first.
   * @param {{limit?: number, before?: string}} [opts]
   * @returns {Promise<Array<{conversation_id:number, kind:string, title:string|null, last_seq:number,
   *   read_seq:number, unread:number, last_activity:string, last_message:object|null}>>}
   */
  async conversations({ limit, before } = {}) {
    const fields = {};
    if (limit != null) fields.limit = limit;
    if (before != null) fields.before = before;
    return listOf(await this.request('conversations', fields), 'conversations');
  }

  /**
   * A page of history: the `limit` messages just below `beforeSeq` (or the
   * newest), ascending.  They count as stored for dedup.
   * @param {number} conversation
   * @param {{beforeSeq?: number, limit?: number}} [opts]
   * @returns {Promise<object[]>} messages
   */
  async history(conversation, { beforeSeq, limit } = {}) {
    const fields = { conversation };
    if (beforeSeq != null) fields.before_seq = beforeSeq;
    if (limit != null) fields.limit = limit;
    const msgs = listOf(await this.request('history', fields), 'messages');
    const c = this._conv(conversation);
    if (msgs.length && c.top === undefined && beforeSeq == null) c.top = msgs[0].seq - 1;
    for (const m of msgs) if (c.top !== undefined && m.seq > c.top) this._ingest(m, 'history');
    return msgs;
  }

  /**
   * Messages after `afterSeq`, ascending (what gap repair uses).
   * @param {number} conversation @param {number} afterSeq @param {{limit?: number}} [opts]
   * @returns {Promise<object[]>}
   */
  async after(conversation, afterSeq, { limit } = {}) {
    const fields = { conversation, after_seq: afterSeq };
    if (limit != null) fields.limit = limit;
    return listOf(await this.request('after', fields), 'messages');
  }

  /**
   * The direct conversation with a user (created on first use).
   * @param {number} user @returns {Promise<number>} conversation id
   */
  async direct(user) { return conversationId(await this.request('direct', { user })); }

  /**
   * Creates a group; the caller becomes its owner.
   * @param {string} title @param {number[]} members
   * @returns {Promise<number>} conversation id
   */
  async createGroup(title, members = []) { return conversationId(await this.request('create_group', { title, members })); }

  /**
   * Adds a member to a group (owner/admin only).
   * @param {number} conversation @param {number} user @param {string} [role]
   */
  addMember(conversation, user, role) {
    return this.request('add_member', role ? { conversation, user, role } : { conversation, user });
  }

  /**
   * Removes a member (or yourself) from a group.
   * @param {number} conversation @param {number} user
   */
  removeMember(conversation, user) { return this.request('remove_member', { conversation, user }); }

  /**
   * Presence of users.
   * @param {number[]} users
   * @returns {Promise<Array<{user:number, online:boolean, last_seen:string|null}>>}
   */
  async presence(users) {
    const rows = listOf(await this.request('presence', { users }), 'users', 'presence');
    return rows.map((r) => ({ ...r, user: r.user ?? r.user_id }));
  }
}

/** Conversation id from a result that is a number or {conversation|conversation_id: n}. */
function conversationId(result) {
  if (typeof result === 'number' || typeof result === 'string') return Number(result);
  if (result && typeof result === 'object') {
    const id = result.conversation ?? result.conversation_id ?? result.id
      ?? result.direct_conversation ?? result.create_group ?? Object.values(result).find((v) => typeof v === 'number');
    return Number(id);
  }
  return NaN;
}
