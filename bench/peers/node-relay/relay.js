#!/usr/bin/env node
// node-relay: the chat.v1 gateway as a Node.js team would write it (ws + pg).
// Same job as chat-gateway: HS256 JWT auth, every client frame through
// chat.client_request on a pg pool, LISTEN chat_node_<node>, routing of the
// notification payload by user id, pings, bounded per-connection buffers.
// See README.md for what is and is not tuned.
import { createServer } from 'node:http';
import { createHmac, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import pg from 'pg';
import { WebSocketServer } from 'ws';

// ---- configuration: flags, then CHAT_* environment variables ----
function parseArgs(argv) {
  const o = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`);
    const eq = a.indexOf('=');
    if (eq > 0) o[a.slice(2, eq)] = a.slice(eq + 1);
    else o[a.slice(2)] = argv[++i];
  }
  return o;
}
const args = parseArgs(process.argv.slice(2));
const conf = (name, dflt) => args[name] ?? process.env['CHAT_' + name.toUpperCase().replace(/-/g, '_')] ?? dflt;

const [listenHost, listenPort] = (() => {
  const l = conf('listen', '127.0.0.1:8080');
  const i = l.lastIndexOf(':');
  return [l.slice(0, i) || '127.0.0.1', Number(l.slice(i + 1))];
})();
const node = conf('node', 'node1');
if (!/^[a-z0-9_]{1,40}$/.test(node)) throw new Error(`--node: "${node}" must match [a-z0-9_]{1,40}`);
const dsn = conf('dsn', '');
const secretFile = conf('token-secret-file');
if (!secretFile) throw new Error('--token-secret-file is required');
const secret = readFileSync(secretFile, 'utf8').trim();
const poolSize = Number(conf('pool', 4));
const ratePerSec = Number(conf('rate', 50));
const heartbeatSec = Number(conf('heartbeat', 30));
const authTimeoutMs = Number(conf('auth-timeout', 5)) * 1000;
const maxQueueBytes = Number(conf('max-queue', 1 << 20));
const maxFrame = Number(conf('max-frame', 65536));

// libpq keyword=value connection strings (the gateway's format) → pg config.
function parseDsn(s) {
  if (/^postgres(ql)?:\/\//.test(s)) return { connectionString: s };
  const cfg = {};
  const re = /(\w+)\s*=\s*(?:'((?:[^'\\]|\\.)*)'|(\S+))/g;
  let m;
  while ((m = re.exec(s))) {
    const v = m[2] !== undefined ? m[2].replace(/\\(.)/g, '$1') : m[3];
    const k = { dbname: 'database', hostaddr: 'host' }[m[1]] ?? m[1];
    cfg[k] = k === 'port' ? Number(v) : v;
  }
  return cfg;
}
const pgConfig = parseDsn(dsn);

// ---- database ----
const pool = new pg.Pool({ ...pgConfig, max: poolSize });
pool.on('error', (e) => log('pool error', e.message));
let listener = null;
let dbUp = false;

function log(...a) {
  process.stderr.write(`node-relay[${node}]: ${a.join(' ')}\n`);
}

// ---- connections, routing ----
const byUser = new Map();          // user id (string) → Set of connections
const conns = new Set();

class Conn {
  constructor(ws) {
    this.ws = ws;
    this.user = null;              // string
    this.device = 0;
    this.chain = Promise.resolve();
    this.tokens = ratePerSec;
    this.lastRefill = Date.now();
    this.violations = 0;
    this.missedPongs = 0;
  }
  send(data) {
    if (this.ws.readyState !== 1) return;
    if (this.ws.bufferedAmount > maxQueueBytes) {
      this.ws.close(4009, 'lagging');
      return;
    }
    this.ws.send(data);
  }
}

function b64urlDecode(s) {
  return Buffer.from(s.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
}

// Returns {user, device} or null.
function verifyToken(token) {
  if (typeof token !== 'string') return null;
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  const mac = createHmac('sha256', secret).update(parts[0] + '.' + parts[1]).digest();
  const sig = b64urlDecode(parts[2]);
  if (sig.length !== mac.length || !timingSafeEqual(sig, mac)) return null;
  try {
    const header = JSON.parse(b64urlDecode(parts[0]).toString());
    const claims = JSON.parse(b64urlDecode(parts[1]).toString());
    if (header.alg !== 'HS256') return null;
    if (typeof claims.exp !== 'number' || claims.exp * 1000 < Date.now()) return null;
    if (claims.sub === undefined || claims.dev === undefined) return null;
    return { user: String(claims.sub), device: Number(claims.dev) };
  } catch {
    return null;
  }
}

async function authenticate(c, token) {
  const id = verifyToken(token);
  if (!id) {
    c.ws.close(4001, 'bad token');
    return;
  }
  c.user = id.user;
  c.device = id.device;
  let set = byUser.get(c.user);
  if (!set) byUser.set(c.user, (set = new Set()));
  set.add(c);
  try {
    await pool.query({ name: 'connect', text: 'SELECT chat.connect($1, $2, $3)', values: [node, c.user, c.device] });
  } catch (e) {
    log('connect failed:', e.message);
  }
  c.send(JSON.stringify({ type: 'hello', user: Number(c.user), device: c.device, node, heartbeat: heartbeatSec }));
}

function errorFrame(id, code, error, message) {
  return JSON.stringify({ id, type: 'error', code, error, message });
}

// Token bucket per connection: --rate requests per second.
function allowRequest(c) {
  const now = Date.now();
  c.tokens = Math.min(ratePerSec, c.tokens + ((now - c.lastRefill) / 1000) * ratePerSec);
  c.lastRefill = now;
  if (c.tokens >= 1) {
    c.tokens -= 1;
    c.violations = 0;
    return true;
  }
  c.violations++;
  return false;
}

function onFrame(c, data, isBinary) {
  if (isBinary) {
    c.ws.close(1003, 'binary frames are not part of chat.v1');
    return;
  }
  const text = data.toString();
  let req;
  try {
    req = JSON.parse(text);
  } catch {
    c.send(errorFrame(null, '22P02', 'invalid_text_representation', 'frame is not JSON'));
    return;
  }
  if (req === null || typeof req !== 'object' || typeof req.type !== 'string') {
    c.send(errorFrame(req?.id ?? null, '22P02', 'invalid_text_representation', 'frame has no type'));
    return;
  }
  if (c.user === null) {
    if (req.type === 'auth') authenticate(c, req.token);
    else c.ws.close(4001, 'not authenticated');
    return;
  }
  if (req.type === 'ping') {
    c.send(JSON.stringify({ id: req.id, type: 'pong' }));
    return;
  }
  if (!allowRequest(c)) {
    c.send(errorFrame(req.id ?? null, '53400', 'configuration_limit_exceeded', `more than ${ratePerSec} requests per second`));
    if (c.violations > ratePerSec) c.ws.close(1008, 'rate limit');
    return;
  }
  // One request at a time per connection, in arrival order.
  c.chain = c.chain.then(async () => {
    try {
      const r = await pool.query({
        name: 'client_request',
        text: 'SELECT chat.client_request($1, $2, $3, $4::jsonb)::text AS r',
        values: [node, c.user, c.device, text],
      });
      c.send(r.rows[0].r);
    } catch (e) {
      c.send(errorFrame(req.id ?? null, e.code ?? 'XX000', 'internal_error', e.message));
    }
  });
}

// ---- notifications ----
// Payload: a line "v1 <hex HMAC-SHA256>" over the rest (key: HMAC(secret,
// "chat-notify")), then pairs of lines, a header of comma-separated user ids,
// then the event.  Unsigned or badly signed payloads are dropped, as the
// gateway does (and at the same cost).
let notifyKey = null;
function signatureValid(payload) {
  notifyKey ??= createHmac('sha256', secret).update('chat-notify').digest();
  if (payload.length < 68 || !payload.startsWith('v1 ') || payload[67] !== '\n') return false;
  const given = Buffer.from(payload.slice(3, 67), 'hex');
  const mac = createHmac('sha256', notifyKey).update(payload.slice(68)).digest();
  return given.length === mac.length && timingSafeEqual(given, mac);
}

function route(payload) {
  if (!signatureValid(payload)) {
    log('dropped a notification without a valid signature');
    return;
  }
  const lines = payload.slice(68).split('\n');
  for (let i = 0; i + 1 < lines.length; i += 2) {
    const header = lines[i];
    const json = lines[i + 1];
    let ev;
    try {
      ev = JSON.parse(json);
    } catch {
      continue;
    }
    if (ev.type === 'message' && ev.ref === true) {
      deliverRef(header, ev);
      continue;
    }
    deliver(header, ev, Buffer.from(json));
  }
}

function deliver(header, ev, buf) {
  const isMessage = ev.type === 'message';
  const sender = isMessage ? String(ev.sender) : null;
  for (const uid of header.split(',')) {
    const set = byUser.get(uid);
    if (!set) continue;
    for (const c of set) {
      if (isMessage && uid === sender && c.device === ev.sender_device) continue;
      c.send(buf);
    }
  }
}

// A message too large for NOTIFY: fetch it once, then deliver it.
async function deliverRef(header, ev) {
  try {
    const r = await pool.query(
      `SELECT json_build_object('type', 'message', 'conversation', m.conversation_id, 'seq', m.seq,
         'sender', m.sender_id, 'sender_device', m.sender_device, 'kind', m.kind, 'body', m.body,
         'client_msg_id', m.client_msg_id, 'reply_to', m.reply_to, 'created_at', m.created_at)::text AS e
       FROM chat.get_message($1, $2, $3) m`, [ev.sender, ev.conversation, ev.seq]);
    if (r.rows.length) deliver(header, ev, Buffer.from(r.rows[0].e));
  } catch (e) {
    log('ref fetch failed:', e.message);
  }
}

async function startListener(attempt = 0) {
  const client = new pg.Client(pgConfig);
  client.on('notification', (msg) => route(msg.payload));
  client.on('error', (e) => log('listen connection error', e.message));
  client.on('end', () => {
    if (listener !== client) return;
    listener = null;
    dbUp = false;
    setTimeout(() => startListener(1), 500);
  });
  try {
    await client.connect();
    await client.query(`LISTEN chat_node_${node}`);
    listener = client;
    dbUp = true;
    if (attempt > 0) {
      // We may have missed events: re-register the sessions and tell clients to sync.
      for (const c of conns) {
        if (c.user === null) continue;
        pool.query('SELECT chat.connect($1, $2, $3)', [node, c.user, c.device]).catch(() => {});
        c.send('{"type":"resync"}');
      }
    }
  } catch (e) {
    log('listen failed:', e.message);
    client.end().catch(() => {});
    setTimeout(() => startListener(attempt + 1), Math.min(30000, 500 * 2 ** attempt));
  }
}

// ---- server ----
const http = createServer((req, res) => {
  if (req.url === '/healthz') {
    res.writeHead(dbUp ? 200 : 503, { 'content-type': 'text/plain' });
    res.end(dbUp ? 'ok\n' : 'database down\n');
    return;
  }
  res.writeHead(404);
  res.end();
});

const wss = new WebSocketServer({
  server: http,
  path: '/ws',
  perMessageDeflate: false,
  maxPayload: maxFrame,
  clientTracking: false,
  handleProtocols: (protocols) => (protocols.has('chat.v1') ? 'chat.v1' : false),
});

wss.on('connection', (ws, req) => {
  const c = new Conn(ws);
  conns.add(c);
  ws.on('message', (data, isBinary) => onFrame(c, data, isBinary));
  ws.on('pong', () => { c.missedPongs = 0; });
  ws.on('error', () => {});
  ws.on('close', () => {
    conns.delete(c);
    clearTimeout(c.authTimer);
    if (c.user === null) return;
    const set = byUser.get(c.user);
    if (set) {
      set.delete(c);
      if (!set.size) byUser.delete(c.user);
    }
    if (!shuttingDown) pool.query('SELECT chat.disconnect($1, $2, $3)', [node, c.user, c.device]).catch(() => {});
  });
  const token = new URL(req.url, 'http://x').searchParams.get('token');
  if (token !== null) authenticate(c, token);
  else c.authTimer = setTimeout(() => { if (c.user === null) ws.close(4008, 'auth timeout'); }, authTimeoutMs);
});

// Heartbeat: WebSocket ping; two missed pongs close the connection.
setInterval(() => {
  for (const c of conns) {
    if (c.missedPongs >= 2) {
      c.ws.close(1001, 'ping timeout');
      continue;
    }
    c.missedPongs++;
    c.ws.ping();
  }
}, heartbeatSec * 1000).unref();

setInterval(() => {
  pool.query('SELECT chat.node_heartbeat($1)', [node]).catch((e) => log('heartbeat failed:', e.message));
}, 5000).unref();

let shuttingDown = false;
async function shutdown() {
  if (shuttingDown) return;
  shuttingDown = true;
  http.close();
  for (const c of conns) c.ws.close(1012, 'service restart');
  try {
    await pool.query('SELECT chat.node_reset($1)', [node]);
  } catch (e) {
    log('node_reset failed:', e.message);
  }
  // Let the close frames go out (at most 2 s), then exit.
  const deadline = Date.now() + 2000;
  while (conns.size && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

await pool.query('SELECT chat.node_reset($1)', [node]);
await startListener();
http.listen({ host: listenHost, port: listenPort, backlog: 4096 }, () => {
  log(`listening on ${listenHost}:${listenPort}`);
});
