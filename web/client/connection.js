// connection.js: the socket and its life cycle: first-frame auth, reconnect
// with exponential backoff and full jitter, the browser's online/offline
// events, liveness pings, and re-authentication with a fresh token before
// the current one expires.

import { ChatError } from './errors.js';
import { tokenExp, refreshDelay } from './token.js';

/** Subprotocol spoken by the gateway. */
export const PROTOCOL = 'chat.v1';

/** Close codes after which the client does not reconnect by itself
 * (4001 only when there is no token function to ask for a new token;
 * 4003: the device was removed, a new token would not help). */
const FATAL_CLOSE_CODES = new Set([4001, 4003]);

/** Attempts after a 1012 close (the gateway is restarting) that use half
 * the backoff base: a restart keeps the gateway away for about half a
 * second, and a refused connect costs it nothing, so the clients come back
 * within about 2.5 s instead of 4.5 s.  Later attempts back off as usual. */
export const RESTART_ATTEMPTS = 4;

/**
 * Delay before reconnect attempt `attempt` (0-based): exponential backoff
 * with full jitter, uniformly random in [0, min(cap, base * 2^attempt)),
 * with base halved for the first RESTART_ATTEMPTS attempts when `restart`
 * (the last close was 1012, service restart).
 * @param {number} attempt
 * @param {{base?: number, cap?: number, random?: () => number, restart?: boolean}} [opts]
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, { base = 500, cap = 30000, random = Math.random, restart = false } = {}) {
  const b = restart && attempt < RESTART_ATTEMPTS ? base / 2 : base;
  const ceiling = Math.min(cap, b * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/**
 * The connection of one client, kept open until close().  Uses of the host
 * (ChatClient): its options (url, token, WebSocket, refreshMargin,
 * backoffBase, backoffCap, random, pingInterval, requestTimeout), `state`,
 * `_setState`, `_emit`, `request`, `_onFrame` (every frame of the current
 * socket), `_onDisconnect` (the socket ended) and `_requests.failQueued`.
 */
export class Connection {
  constructor(host, { watchNetwork }) {
    this.host = host;
    this.ws = null;
    this.opening = false;         // waiting for the token function
    this.attempt = 0;             // reconnect attempts since the last hello
    this.reconnectTimer = null;
    this.pingTimer = null;
    this.refreshTimer = null;
    this.exp = null;              // exp (unix seconds) of the token the open connection runs on
    this.closedByUser = false;
    this.connectWaiters = [];
    this.networkUp = true;

    if (watchNetwork) {
      this.onOffline = () => host.setNetwork(false);
      this.onOnline = () => host.setNetwork(true);
      globalThis.addEventListener('offline', this.onOffline);
      globalThis.addEventListener('online', this.onOnline);
      if (globalThis.navigator && globalThis.navigator.onLine === false) this.networkUp = false;
    }
  }

  /** Whether requests can be written now: a socket that said hello. */
  isOpen() {
    return this.host.state === 'open' && this.ws !== null;
  }

  /** Writes a frame; a failed write is followed by the close event, which fails what was pending. */
  send(text) {
    try { this.ws.send(text); } catch { /* the close event follows */ }
  }

  /** See ChatClient.connect. */
  connect() {
    this.closedByUser = false;
    const p = new Promise((resolve, reject) => this.connectWaiters.push({ resolve, reject }));
    if (!this.ws && !this.reconnectTimer && !this.opening) this.open();
    else if (this.host.state === 'open') this.settleConnect(null, { user: this.host.user, device: this.host.device });
    return p;
  }

  /** Settles the promises of connect(): with the hello, or with the error that ended the client. */
  settleConnect(err, hello) {
    const ws = this.connectWaiters;
    this.connectWaiters = [];
    for (const w of ws) err ? w.reject(err) : w.resolve(hello);
  }

  /** Asks for a token and opens a socket; its first frame is the auth frame. */
  async open() {
    const host = this.host;
    this.reconnectTimer = null;
    if (this.closedByUser || this.opening || this.ws) return;
    if (!this.networkUp) { host._setState('offline'); return; }
    host._setState(this.attempt === 0 ? 'connecting' : 'reconnecting', { attempt: this.attempt });
    let token;
    this.opening = true;
    try {
      token = typeof host.token === 'function' ? await host.token() : host.token;
    } catch (e) {
      this.opening = false;
      host._emit('error', new ChatError(`could not get a token: ${e.message}`, { code: 'token' }));
      this.scheduleReconnect({});
      return;
    }
    this.opening = false;
    if (this.closedByUser || this.ws) return;
    let ws;
    try {
      // The token goes in the first frame, never in the URL (proxies log URLs).
      ws = new host.WebSocket(host.url, PROTOCOL);
    } catch (e) {
      host._emit('error', new ChatError(`could not open ${host.url}: ${e.message}`, { code: 'connect' }));
      this.scheduleReconnect({});
      return;
    }
    this.ws = ws;
    this.exp = tokenExp(token);
    ws.onopen = () => {
      if (this.ws !== ws) return;
      try { ws.send(JSON.stringify({ type: 'auth', token })); } catch { /* the close event follows */ }
    };
    ws.onmessage = (ev) => { if (this.ws === ws) host._onFrame(ev.data); };
    ws.onclose = (ev) => { if (this.ws === ws) this.onClose(ev.code, ev.reason); };
    ws.onerror = () => {};  // a close event follows and carries what we need
  }

  /** The gateway said hello: liveness pings and the token refresh start. */
  opened() {
    if (this.host.pingInterval > 0) {
      clearInterval(this.pingTimer);
      this.pingTimer = setInterval(() => this.ping(), this.host.pingInterval);
    }
    this.scheduleRefresh();
  }

  /** Handles the end of the current socket, then reconnects unless told not to. */
  onClose(code, reason) {
    const host = this.host;
    this.ws = null;
    clearInterval(this.pingTimer);
    this.pingTimer = null;
    clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
    host._onDisconnect();
    if (this.closedByUser) { host._setState('closed', { code, reason }); return; }
    if (FATAL_CLOSE_CODES.has(code) && (code === 4003 || typeof host.token !== 'function')) {
      const what = code === 4003 ? 'the device was revoked' : 'the gateway refused the token';
      const err = new ChatError(`${what} (close ${code}${reason ? ': ' + reason : ''})`, { code: String(code) });
      this.closedByUser = true;
      host._requests.failQueued(err);
      host._setState('closed', { code, reason });
      host._emit('error', err);
      this.settleConnect(err);
      return;
    }
    if (!this.networkUp) { host._setState('offline', { code, reason }); return; }
    if (code === 1012) this.restarting = true;  // until the next hello (ChatClient._onHello)
    this.scheduleReconnect({ code, reason });
  }

  /** Ends the current socket now (without waiting for its close event) and closes it. */
  drop(code, reason) {
    const ws = this.ws;
    if (!ws) return false;
    this.onClose(code, reason);
    try { code === 1000 ? ws.close(1000) : ws.close(); } catch { /* already closed */ }
    return true;
  }

  /** Opens again after the backoff delay of the next attempt. */
  scheduleReconnect(extra) {
    const host = this.host;
    if (this.closedByUser || this.reconnectTimer) return;
    const delay = backoffDelay(this.attempt, {
      base: host.backoffBase, cap: host.backoffCap, random: host.random, restart: !!this.restarting,
    });
    this.attempt++;
    host._setState('reconnecting', { ...extra, attempt: this.attempt, delay });
    this.reconnectTimer = setTimeout(() => this.open(), delay);
  }

  /** See ChatClient.setNetwork. */
  setNetwork(up) {
    if (up === this.networkUp) return;
    this.networkUp = up;
    if (this.closedByUser || this.host.state === 'idle') return;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    if (!up) {
      if (!this.drop(1006, 'network offline')) this.host._setState('offline');
    } else {
      this.attempt = 0;
      if (!this.ws) this.open();
    }
  }

  /** See ChatClient.reconnect. */
  reconnect() {
    if (this.closedByUser) return;
    if (!this.drop(1006, 'reconnect') && !this.reconnectTimer) this.open();
  }

  /** Closes for good: no reconnect, no timers, no network listeners; the socket is closed with 1000. */
  close() {
    this.closedByUser = true;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
    if (this.onOffline) {
      globalThis.removeEventListener('offline', this.onOffline);
      globalThis.removeEventListener('online', this.onOnline);
    }
  }

  /**
   * With a token function: asks it for a new token refreshMargin ms before
   * the current one's exp and sends {"type":"auth"} on the open connection,
   * which moves the connection's expiry (the gateway closes it with 4001 at
   * exp otherwise).  A failure is retried until exp; after that the gateway
   * closes and the reconnect asks for a token again.
   */
  scheduleRefresh(retryMs) {
    const host = this.host;
    clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
    if (typeof host.token !== 'function' || this.exp == null || host.state !== 'open') return;
    const delay = retryMs ?? refreshDelay(this.exp, Date.now(), host.refreshMargin);
    this.refreshTimer = setTimeout(() => this.refresh(), delay);
  }

  /** Re-authenticates the open connection with a newer token (see scheduleRefresh). */
  async refresh() {
    const host = this.host;
    this.refreshTimer = null;
    const ws = this.ws;
    if (!ws || host.state !== 'open') return;
    const retry = () => {
      const left = this.exp * 1000 - Date.now();
      if (left > 0 && this.ws === ws) this.scheduleRefresh(Math.max(50, Math.min(5000, Math.floor(left / 4))));
    };
    let token;
    try {
      token = await host.token();
    } catch (e) {
      host._emit('error', new ChatError(`could not get a token: ${e.message}`, { code: 'token' }));
      retry();
      return;
    }
    const exp = tokenExp(token);
    if (this.ws !== ws) return;
    if (exp == null || exp <= this.exp) {  // not a newer token: ask again later
      retry();
      return;
    }
    try {
      const res = await host.request('auth', { token });
      this.exp = Number(res?.exp) || exp;
      host._emit('token', { exp: this.exp });
      if (this.ws === ws) this.scheduleRefresh();
    } catch (e) {
      // A refused token closes the connection (4001); a timeout is retried.
      if (e.code === 'timeout') retry();
    }
  }

  /** Liveness check: a ping without answer means the socket is dead. */
  ping() {
    const host = this.host;
    if (host.state !== 'open') return;
    host.request('ping', {}, { timeout: host.requestTimeout }).catch((e) => {
      if (e.code === 'timeout') this.reconnect();
    });
  }
}
