// A fake WebSocket for the client unit tests: records what the client sends
// and lets a test play the gateway (hello, responses, pushes, closes).

export class FakeSocket {
  static instances = [];

  constructor(url, protocol) {
    this.url = url;
    this.protocol = protocol;
    this.sent = [];
    this.closed = false;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    this.responder = null;
    FakeSocket.instances.push(this);
    // Opens once the client has set its handlers (as a browser's would).
    queueMicrotask(() => { if (!this.closed && this.onopen) this.onopen({}); });
  }

  static reset() { FakeSocket.instances = []; }
  static last() { return FakeSocket.instances[FakeSocket.instances.length - 1]; }

  // Client side.
  send(data) {
    if (this.closed) throw new Error('socket closed');
    const frame = JSON.parse(data);
    this.sent.push(frame);
    if (this.responder) {
      const reply = this.responder(frame);
      if (reply !== undefined) queueMicrotask(() => this.push(reply));
    }
  }
  close(code = 1000, reason = '') {
    if (this.closed) return;
    this.closed = true;
    queueMicrotask(() => this.onclose && this.onclose({ code, reason }));
  }

  // Gateway side.
  push(obj) { if (!this.closed) this.onmessage({ data: JSON.stringify(obj) }); }
  hello(user = 1, device = 1) { this.push({ type: 'hello', user, device, node: 'gw1', heartbeat: 30 }); }
  ok(frame, result) { this.push({ id: frame.id, type: 'ok', result }); }
  serverClose(code, reason = '') {
    this.closed = true;
    this.onclose({ code, reason });
  }
  /** Frames of one type the client sent. */
  of(type) { return this.sent.filter((f) => f.type === type); }
  /** Frames the client sent, its auth frames left out. */
  get requests() { return this.sent.filter((f) => f.type !== 'auth'); }
}

/** A responder that answers like an idle gateway: empty sync, ok to everything else. */
export function idleGateway(overrides = {}) {
  return (f) => {
    if (overrides[f.type]) return overrides[f.type](f);
    if (f.type === 'sync') return { id: f.id, type: 'ok', result: { messages: [], more: false } };
    if (f.type === 'ping') return { id: f.id, type: 'pong' };
    if (f.type === 'auth') return f.id === undefined ? undefined : { id: f.id, type: 'ok', result: { exp: JSON.parse(Buffer.from(f.token.split('.')[1], 'base64url')).exp } };
    return { id: f.id, type: 'ok', result: null };
  };
}

/** Resolves after ms milliseconds. */
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Waits until cond() is true, polling every 2 ms, failing after `ms`. */
export async function until(cond, ms = 1000, what = 'condition') {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

/**
 * Connects `client` (a ChatClient made with WebSocket: FakeSocket) to a new
 * fake gateway that answers like idleGateway(overrides), says hello as
 * user/device once the auth frame came, and resolves with the socket when
 * connect() did; with waitSync, also after the first sync request went out.
 */
export async function connectClient(client, { overrides, user = 17, device = 1, waitSync = false } = {}) {
  const p = client.connect();
  await until(() => FakeSocket.instances.length > 0, 500, 'socket');
  const ws = FakeSocket.last();
  ws.responder = idleGateway(overrides);
  await until(() => ws.sent.length > 0, 500, 'auth frame');
  ws.hello(user, device);
  await p;
  if (waitSync) {
    await until(() => ws.of('sync').length >= 1, 1000, 'sync');
    await sleep(1);
  }
  return ws;
}

/** A message event of conversation c with sequence seq. */
export function msg(c, seq, extra = {}) {
  return { type: 'message', conversation: c, seq, sender: 2, sender_device: 1, kind: 'text', body: `m${seq}`, client_msg_id: `x${seq}`, created_at: '2026-11-28T10:00:00Z', ...extra };
}
