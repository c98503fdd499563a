// Helpers for the gateway end-to-end tests: a throwaway gateway per test file,
// SQL through psql, tokens, and WebSocket clients built on the `ws` package.
//
// Every wait has a timeout and every loop a bound; every gateway started here
// is killed by stopAll() (call it from an after() hook) or, failing that, when
// the test process exits.
import { spawn, execFile } from 'node:child_process';
import { createHmac } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';

export const TOP = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const GATEWAY_BIN = path.resolve(TOP, process.env.GATEWAY_BIN || 'gateway/chat-gateway');
export const LOG_DIR = path.resolve(TOP, process.env.GW_LOG_DIR || 'test-artifacts/gateway');
// Timeouts are multiplied by this (the sanitizer build is slower).
export const SCALE = Number(process.env.GW_TIMEOUT_SCALE || 1);
export const SECRET_FILE = process.env.CHAT_TOKEN_SECRET_FILE;
const PSQL = process.env.PSQL || 'psql';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Resolves like promise, or calls onTimeout (whose value or throw wins)
// after ms; the timer is cleared either way so it never holds the process.
export function within(promise, ms, onTimeout) {
  let t;
  const timer = new Promise((resolve, reject) => {
    t = setTimeout(() => { try { resolve(onTimeout()); } catch (e) { reject(e); } }, ms);
  });
  return Promise.race([promise, timer]).finally(() => clearTimeout(t));
}
export const ms = (n) => Math.round(n * SCALE);

// Sanitizer and crash lines that must never appear in a gateway log.
export const SANITIZER_RE = /ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|AddressSanitizer:DEADLYSIGNAL|SUMMARY: (Address|Undefined|Leak)Sanitizer/;

// ---------------------------------------------------------------- SQL

// Runs one SQL string in database db; resolves to psql's unaligned output.
export function psql(db, sql, { timeout = 20000 } = {}) {
  return new Promise((resolve, reject) => {
    execFile(PSQL, ['-qAtX', '-v', 'ON_ERROR_STOP=1', '-d', db, '-c', sql],
      { timeout, env: process.env, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
        if (err) reject(new Error(`psql failed on ${db}: ${sql.slice(0, 300)}\n${stderr || err.message}`));
        else resolve(stdout.replace(/\n$/, ''));
      });
  });
}

// Runs a query and returns its rows as objects (through json_agg).
export async function rows(db, query) {
  const out = await psql(db, `SELECT coalesce(json_agg(t), '[]') FROM (${query}) t`);
  return JSON.parse(out);
}

// Runs a query that returns one value; returns it as text (null for NULL).
export async function value(db, query) {
  const r = await rows(db, `SELECT (${query}) AS v`);
  return r[0].v;
}

// Quotes a SQL literal.
export const lit = (s) => `'${String(s).replace(/'/g, "''")}'`;

// Creates database name with the chat extension (dropping an old one).
export async function newDb(name) {
  await psql('postgres', `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
  await psql('postgres', `CREATE DATABASE "${name}"`);
  await psql(name, 'CREATE EXTENSION chat');
  return name;
}

let nextUserId = 1000 + (process.pid % 1000) * 1000;

// Creates a user with `devices` devices; returns {id, handle, devices:[1..]}.
export async function makeUser(db, { devices = 1, id, handle } = {}) {
  id = id ?? nextUserId++;
  handle = handle ?? `u${id}`;
  await psql(db, `SELECT chat.upsert_user(${id}, ${lit(handle)}, ${lit('User ' + id)})`);
  const devs = [];
  for (let i = 0; i < devices; i++) devs.push(Number(await value(db, `SELECT chat.register_device(${id})`)));
  return { id, handle, devices: devs };
}

// The direct conversation of users a and b (get-or-create).
export async function direct(db, a, b) {
  return Number(await value(db, `SELECT chat.direct_conversation(${a}, ${b})`));
}

// Two new users of `db`, alice and bob (makeUser options for each), and
// their direct conversation.
export async function twoUsers(db, { alice: aliceOpts, bob: bobOpts } = {}) {
  const alice = await makeUser(db, aliceOpts);
  const bob = await makeUser(db, bobOpts);
  const conv = await direct(db, alice.id, bob.id);
  return { alice, bob, conv };
}

// A new database `db` with twoUsers: the setup most test files start from.
export async function twoUserDb(db, opts) {
  await newDb(db);
  return twoUsers(db, opts);
}

// A group created by creator with members.
export async function group(db, creator, members, title = 'group') {
  return Number(await value(db, `SELECT chat.create_group(${creator}, ${lit(title)}, ARRAY[${members.join(',')}]::bigint[])`));
}

// ---------------------------------------------------------------- tokens

const b64url = (buf) => Buffer.from(buf).toString('base64').replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');

export function secret() {
  if (!SECRET_FILE) throw new Error('CHAT_TOKEN_SECRET_FILE is not set');
  return fs.readFileSync(SECRET_FILE, 'utf8').replace(/\s+$/, '');
}

// Signs a JWT.  Options let tests break it: alg ('HS256', 'HS384', 'none'),
// key (another secret), exp (unix seconds), extra header/claims.
export function signToken({ sub, dev, exp, ttl = 3600, alg = 'HS256', key, header = {}, claims = {} } = {}) {
  const h = { alg, typ: 'JWT', ...header };
  const p = { sub, dev, exp: exp ?? Math.floor(Date.now() / 1000) + ttl, ...claims };
  for (const k of Object.keys(p)) if (p[k] === undefined) delete p[k];
  const input = `${b64url(JSON.stringify(h))}.${b64url(JSON.stringify(p))}`;
  if (alg === 'none') return `${input}.`;
  const hash = { HS256: 'sha256', HS384: 'sha384', HS512: 'sha512' }[alg] || 'sha256';
  return `${input}.${b64url(createHmac(hash, key ?? secret()).update(input).digest())}`;
}

// A valid token for (user, device).
export const token = (user, dev = 1, opts = {}) => signToken({ sub: user, dev, ...opts });

// A token made by the database's chat.issue_token.
export async function issueToken(db, user, dev = 1, ttl = '1 hour') {
  return value(db, `SELECT chat.issue_token(${user}, ${dev}, ${lit(ttl)}::interval)`);
}

// ---------------------------------------------------------------- gateway

// A TCP port on 127.0.0.1 that nothing listens on right now.
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

export function dsn(db) {
  const parts = [`dbname=${db}`];
  if (process.env.PGHOST) parts.push(`host=${process.env.PGHOST}`);
  if (process.env.PGPORT) parts.push(`port=${process.env.PGPORT}`);
  if (process.env.PGUSER) parts.push(`user=${process.env.PGUSER}`);
  return parts.join(' ');
}

const gateways = new Set();
let nodeCounter = 0;
// A node name unique to this test process.
export const nodeName = () => `t${fileTag}_${process.pid % 100000}_${nodeCounter++}`.slice(0, 40);
const fileTag = path.basename(process.argv[1] || 'x').replace(/\.test\.mjs$/, '').replace(/[^a-z0-9]+/gi, '').toLowerCase().slice(0, 12) || 'x';

// Prints the last lines of a file (for failure messages).
export function tail(file, n = 40) {
  try { return fs.readFileSync(file, 'utf8').split('\n').slice(-n).join('\n'); } catch { return '(no log)'; }
}

export class Gateway {
  constructor({ db, node, port, args, env, label, tls }) {
    this.db = db; this.node = node; this.port = port; this.args = args; this.env = env;
    this.url = `${tls ? 'wss' : 'ws'}://127.0.0.1:${port}`;
    this.http = `${tls ? 'https' : 'http'}://127.0.0.1:${port}`;
    this.ca = tls ? fs.readFileSync(tls.cert) : undefined;
    fs.mkdirSync(LOG_DIR, { recursive: true });
    this.log = path.join(LOG_DIR, `${fileTag}-${label || node}.log`);
    this.exit = null;
  }

  // Spawns the process (again, after a crash: same node, port and log).
  spawn() {
    const fd = fs.openSync(this.log, 'a');
    fs.writeSync(fd, `\n=== ${new Date().toISOString()} ${GATEWAY_BIN} ${this.args.join(' ')}\n`);
    this.proc = spawn(GATEWAY_BIN, this.args, { stdio: ['ignore', fd, fd], env: { ...process.env, ...this.env } });
    fs.closeSync(fd);
    this.exit = null;
    const proc = this.proc;
    this.exited = new Promise((resolve) => {
      proc.on('exit', (code, signal) => { if (this.proc === proc) this.exit = { code, signal }; resolve({ code, signal }); });
      proc.on('error', (err) => { if (this.proc === proc) this.exit = { code: -1, signal: null, error: err }; resolve(this.exit); });
    });
    gateways.add(this);
    return this;
  }

  get pid() { return this.proc?.pid; }
  get running() { return this.proc && !this.exit; }

  // URL of the WebSocket endpoint, with ?token= when given.
  wsUrl(tok) { return tok === undefined ? `${this.url}/ws` : `${this.url}/ws?token=${encodeURIComponent(tok)}`; }

  // GET path; resolves {status, text, headers} or {status: 0} when unreachable.
  get(p, timeout = 2000) {
    return new Promise((resolve) => {
      const mod = this.ca ? https : http;
      const req = mod.get(this.http + p, { ca: this.ca, agent: false, timeout: ms(timeout) }, (res) => {
        const chunks = [];
        res.on('data', (d) => chunks.push(d));
        res.on('end', () => resolve({ status: res.statusCode, text: Buffer.concat(chunks).toString('utf8'), headers: { get: (h) => res.headers[h.toLowerCase()] } }));
        res.on('error', (e) => resolve({ status: 0, text: String(e) }));
      });
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.on('error', (e) => resolve({ status: 0, text: String(e) }));
    });
  }

  async healthz() { return (await this.get('/healthz')).status; }

  // Waits until /healthz answers want (200 by default); fails early if the process dies.
  async waitHealth(want = 200, timeout = 15000) {
    const deadline = Date.now() + ms(timeout);
    let last = 0;
    while (Date.now() < deadline) {
      if (this.exit) throw new Error(`gateway ${this.node} exited (${JSON.stringify(this.exit)}) while waiting for /healthz ${want}; log:\n${tail(this.log)}`);
      last = await this.healthz();
      if (last === want) return;
      await sleep(100);
    }
    throw new Error(`gateway ${this.node}: /healthz stayed ${last}, wanted ${want} within ${ms(timeout)} ms; log:\n${tail(this.log)}`);
  }

  // Sends signal and waits for exit; SIGKILL after the timeout.  Resolves {code, signal}.
  async stop(signal = 'SIGTERM', timeout = 10000) {
    if (!this.proc) return null;
    if (!this.exit) {
      try { this.proc.kill(signal); } catch { /* already gone */ }
      const t = await within(this.exited, ms(timeout), () => null);
      if (!t) { try { this.proc.kill('SIGKILL'); } catch { /* gone */ } await this.exited; this.exit.forced = true; }
    }
    return this.exit;
  }

  // kill -9, as a crash.
  async kill9() { return this.stop('SIGKILL', 5000); }

  // Sanitizer report lines in the log, if any.
  sanitizerLines() {
    try { return fs.readFileSync(this.log, 'utf8').split('\n').filter((l) => SANITIZER_RE.test(l)); } catch { return []; }
  }
}

// Starts a gateway for database db on a free port and waits for /healthz 200.
// args: extra flags; node: node name (unique per test by default).
// bare: pass only args (the test configures listen/node/... by env or file).
// tls: {cert, key} PEM files: serve wss:// and https://.
export async function startGateway({ db, node, port, args = [], env = {}, label, wait = true, healthTimeout = 15000, tls, bare = false } = {}) {
  if (!fs.existsSync(GATEWAY_BIN)) throw new Error(`gateway binary ${GATEWAY_BIN} not built (make -C gateway)`);
  node = node ?? nodeName();
  port = port ?? await freePort();
  const all = bare ? [...args] : ['--listen', `127.0.0.1:${port}`, '--node', node, '--dsn', dsn(db),
    '--token-secret-file', SECRET_FILE, ...(tls ? ['--tls-cert', tls.cert, '--tls-key', tls.key] : []), ...args];
  const gw = new Gateway({ db, node, port, args: all, env, label, tls }).spawn();
  if (wait) await gw.waitHealth(200, healthTimeout);
  return gw;
}

// Kills every gateway still running and fails if any log has a sanitizer report.
export async function stopAll() {
  const bad = [];
  for (const d of dutiful) await d.stop();
  dutiful.clear();
  for (const gw of gateways) {
    await gw.stop('SIGTERM', 8000);
    const lines = gw.sanitizerLines();
    if (lines.length) bad.push(`${gw.log}:\n  ${lines.slice(0, 10).join('\n  ')}`);
  }
  gateways.clear();
  for (const c of clients) c.terminate();
  clients.clear();
  if (bad.length) throw new Error(`sanitizer reports in gateway logs:\n${bad.join('\n')}`);
}

process.on('exit', () => {
  for (const gw of gateways) if (gw.proc && !gw.exit) { try { gw.proc.kill('SIGKILL'); } catch { /* gone */ } }
});

// ---------------------------------------------------------------- clients

const clients = new Set();
const dutiful = new Set();

// A WebSocket client speaking chat.v1: requests by id, frames collected.
export class Client {
  constructor(ws, label, onFrame) {
    this.ws = ws;
    this.label = label;
    this.onFrame = onFrame;
    this.frames = [];      // every parsed text frame, in arrival order
    this.pending = new Map();
    this.nextId = 1;
    this.closeInfo = null;
    this.waiters = new Set();
    this.hello = null;
    clients.add(this);
    this.closed = new Promise((resolve) => {
      ws.on('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString() };
        for (const [, p] of this.pending) p.reject(new Error(`${label}: connection closed (${code}) before the response`));
        this.pending.clear();
        for (const w of this.waiters) w.check();
        clients.delete(this);
        resolve(this.closeInfo);
      });
    });
    ws.on('error', (err) => { this.lastError = err; });
    ws.on('message', (data, isBinary) => {
      let f;
      try { f = JSON.parse(data.toString('utf8')); } catch { f = { unparsable: data.toString('utf8'), binary: isBinary }; }
      this.frames.push(f);
      if (this.onFrame) this.onFrame(f);
      if (f && f.id !== undefined && f.id !== null && this.pending.has(f.id) && (f.type === 'ok' || f.type === 'error' || f.type === 'pong')) {
        const p = this.pending.get(f.id);
        this.pending.delete(f.id);
        p.resolve(f);
      }
      for (const w of this.waiters) w.check();
    });
  }

  // Opens a connection.  token: in the query; auth: token sent as a first
  // frame; hello: wait for (and check) the hello frame.  Resolves the Client
  // once open (and hello arrived); rejects if the connection fails or closes.
  static async connect(gw, { token: tok, auth, hello = true, label = 'client', timeout = 5000, protocol = 'chat.v1', url, onFrame, wsOptions = {} } = {}) {
    url = url ?? (typeof gw === 'string' ? gw : gw.wsUrl(tok));
    const ca = typeof gw === 'object' && gw?.ca ? { ca: gw.ca } : {};
    const ws = new WebSocket(url, protocol ? [protocol] : [], { handshakeTimeout: ms(timeout), perMessageDeflate: false, ...ca, ...wsOptions });
    const c = new Client(ws, label, onFrame);
    await new Promise((resolve, reject) => {
      const t = setTimeout(() => { ws.terminate(); reject(new Error(`${label}: open timed out (${url})`)); }, ms(timeout));
      ws.once('open', () => { clearTimeout(t); resolve(); });
      ws.once('close', (code) => { clearTimeout(t); reject(Object.assign(new Error(`${label}: closed (${code}) before open`), { code })); });
      ws.once('unexpected-response', (req, res) => { clearTimeout(t); ws.terminate(); reject(new Error(`${label}: HTTP ${res.statusCode} instead of an upgrade`)); });
      ws.once('error', (e) => { clearTimeout(t); reject(e); });
    });
    if (auth !== undefined) c.sendJson({ type: 'auth', token: auth });
    if (hello) {
      c.hello = await c.waitFor((f) => f.type === 'hello', timeout);
    }
    return c;
  }

  get open() { return this.ws.readyState === WebSocket.OPEN; }
  get events() { return this.frames.filter((f) => f.id === undefined || f.id === null); }
  mark() { return this.frames.length; }

  sendJson(obj) { this.ws.send(JSON.stringify(obj)); }
  sendRaw(data, opts = {}) { this.ws.send(data, opts); }

  // Sends a request (an id is added when missing); resolves the response frame.
  request(obj, timeout = 5000) {
    const req = { ...obj };
    if (req.id === undefined) req.id = this.nextId++;
    return new Promise((resolve, reject) => {
      if (!this.open) { reject(new Error(`${this.label}: not open`)); return; }
      const t = setTimeout(() => { this.pending.delete(req.id); reject(new Error(`${this.label}: no response to ${JSON.stringify(req).slice(0, 200)} within ${ms(timeout)} ms`)); }, ms(timeout));
      this.pending.set(req.id, {
        resolve: (f) => { clearTimeout(t); resolve(f); },
        reject: (e) => { clearTimeout(t); reject(e); },
      });
      this.sendJson(req);
    });
  }

  // Sends a request and returns its result; throws on an error frame.
  async call(obj, timeout) {
    const r = await this.request(obj, timeout);
    if (r.type !== 'ok') throw new Error(`${this.label}: ${obj.type} failed: ${JSON.stringify(r)}`);
    return r.result;
  }

  // Resolves the first frame (from index `since`) matching pred; rejects after timeout.
  waitFor(pred, timeout = 5000, since = 0) {
    return new Promise((resolve, reject) => {
      const w = {
        check: () => {
          for (let i = since; i < this.frames.length; i++) {
            if (pred(this.frames[i])) { done(); resolve(this.frames[i]); return; }
          }
          if (this.closeInfo) { done(); reject(new Error(`${this.label}: closed (${this.closeInfo.code} ${this.closeInfo.reason}) while waiting; frames: ${this.recent()}`)); }
        },
      };
      const t = setTimeout(() => { done(); reject(new Error(`${this.label}: timed out after ${ms(timeout)} ms waiting for ${pred}; frames: ${this.recent()}`)); }, ms(timeout));
      const done = () => { clearTimeout(t); this.waiters.delete(w); };
      this.waiters.add(w);
      w.check();
    });
  }

  // Waits `wait` ms and throws if any frame since `since` matches pred.
  async expectNone(pred, wait = 300, since = 0) {
    await sleep(ms(wait));
    const f = this.frames.slice(since).find(pred);
    if (f) throw new Error(`${this.label}: unexpected frame ${JSON.stringify(f)}`);
  }

  // Resolves {code, reason} when the server closes the connection.
  waitClose(timeout = 5000) {
    return within(this.closed, ms(timeout), () => { throw new Error(`${this.label}: not closed within ${ms(timeout)} ms; frames: ${this.recent()}`); });
  }

  recent(n = 8) { return JSON.stringify(this.frames.slice(-n)).slice(0, 1500); }

  close() { try { this.ws.close(1000); } catch { /* gone */ } }
  terminate() { try { this.ws.terminate(); } catch { /* gone */ } }
}

// Connects a device with a freshly signed token.
export function connectAs(gw, user, dev = 1, opts = {}) {
  return Client.connect(gw, { token: token(user, dev), label: opts.label ?? `u${user}/${dev}`, ...opts });
}

// Keys a message object has in a message event (type aside).
export const MESSAGE_FIELDS = ['conversation', 'seq', 'sender', 'sender_device', 'kind', 'body', 'client_msg_id', 'reply_to', 'created_at'];

// The message object without the event's "type" (sync/history/after results
// have exactly the shape of a message event).
export const stripType = (m) => { const { type, ...rest } = m; return rest; };

// Runs sync until more is false, acking each page; returns every message.
export async function syncAll(c, { limit, maxPages = 100 } = {}) {
  const all = [];
  for (let page = 0; page < maxPages; page++) {
    const r = await c.call(limit ? { type: 'sync', limit } : { type: 'sync' });
    all.push(...r.messages);
    const high = new Map();
    for (const m of r.messages) high.set(m.conversation, Math.max(high.get(m.conversation) ?? 0, m.seq));
    for (const [conversation, seq] of high) await c.call({ type: 'ack', conversation, seq });
    if (!r.more) return all;
  }
  throw new Error(`sync still had more after ${maxPages} pages`);
}

// Parses Prometheus text into [{name, labels, value}].
export function parseMetrics(text) {
  const out = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)(\s+\d+)?$/);
    if (!m) throw new Error(`not Prometheus text: ${line}`);
    const labels = {};
    if (m[3]) for (const kv of m[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[kv[1]] = kv[2];
    out.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return out;
}

// The sum of the samples of one series in gw's /metrics (0 when absent).
export async function metricSum(gw, name) {
  return parseMetrics((await gw.get('/metrics')).text).filter((m) => m.name === name).reduce((t, m) => t + m.value, 0);
}

// ---------------------------------------------------------------- dutiful client

// A device that follows docs/protocol.md's client duties: keeps per-conversation
// contiguous seqs, stores and dedups by seq, repairs gaps with `after`, acks
// what it stored, syncs on connect and on resync, retries unanswered sends
// with the same client_msg_id, reconnects with jittered exponential backoff.
export class DutifulClient {
  constructor({ url, user, dev = 1, label, backoffBase = 100, backoffCap = 1000 }) {
    this.url = url;                // function returning the ws URL (token included)
    this.user = user; this.dev = dev;
    this.label = label ?? `dutiful u${user}/${dev}`;
    this.store = new Map();        // conversation -> Map(seq -> message)
    this.contig = new Map();       // conversation -> highest contiguous seq
    this.duplicatesDropped = 0;
    this.received = 0;             // message events seen
    this.connects = 0;
    this.outbox = [];              // sends not yet answered: {conversation, body, client_msg_id, resolve}
    this.results = new Map();      // client_msg_id -> ok result
    this.backoffBase = backoffBase; this.backoffCap = backoffCap;
    this.stopped = false;
    this.c = null;
    this.errors = [];
  }

  start() { dutiful.add(this); this.loop = this.run(); return this; }

  async run() {
    let attempt = 0;
    for (let i = 0; i < 1000 && !this.stopped; i++) {
      try {
        this.c = await Client.connect(this.url(), { label: this.label, timeout: 3000, onFrame: (f) => this.onFrame(f) });
        this.connects++;
        attempt = 0;
        await this.syncAll();
        this.flushSends();
        await this.c.closed;
      } catch (e) {
        if (this.stopped) break;
        this.errors.push(String(e.message || e));
      }
      if (this.stopped) break;
      // Full jitter: sleep uniformly in [0, min(cap, base * 2^attempt)).
      await sleep(Math.random() * Math.min(this.backoffCap, this.backoffBase * 2 ** attempt++));
    }
  }

  onFrame(f) {
    if (!f || f.id !== undefined && f.id !== null) return;
    if (f.type === 'message') { this.received++; this.storeMessage(f); this.scheduleAck(); }
    else if (f.type === 'resync') this.syncAll().catch((e) => this.errors.push(String(e.message)));
  }

  storeMessage(m) {
    let s = this.store.get(m.conversation);
    if (!s) { s = new Map(); this.store.set(m.conversation, s); this.contig.set(m.conversation, 0); }
    if (s.has(m.seq)) { this.duplicatesDropped++; return; }
    s.set(m.seq, m);
    let c = this.contig.get(m.conversation);
    const before = c;
    while (s.has(c + 1)) c++;
    this.contig.set(m.conversation, c);
    // A seq beyond the next one: ask for the gap.
    if (m.seq > before + 1 && c < m.seq) this.repairGap(m.conversation).catch((e) => this.errors.push(String(e.message)));
  }

  // One `after` per conversation at a time; a gap seen meanwhile is
  // covered by the running one or by the next round.
  async repairGap(conversation) {
    this.repairing ??= new Map();
    if (this.repairing.has(conversation)) { this.repairing.set(conversation, true); return; }
    this.repairing.set(conversation, false);
    try {
      for (let round = 0; round < 20; round++) {
        const c = this.c;
        if (!c?.open) return;
        const r = await c.call({ type: 'after', conversation, after_seq: this.contig.get(conversation) });
        for (const m of r.messages) this.storeMessage(m);
        this.scheduleAck();
        if (!this.repairing.get(conversation)) return;
        this.repairing.set(conversation, false);
      }
    } finally {
      this.repairing.delete(conversation);
    }
  }

  scheduleAck() {
    if (this.ackTimer) return;
    this.ackTimer = setTimeout(() => { this.ackTimer = null; this.ackNow().catch((e) => this.errors.push(String(e.message))); }, 20);
  }

  async ackNow() {
    const c = this.c;
    if (!c?.open) return;
    for (const [conversation, seq] of this.contig) {
      if (seq > 0 && seq > (this.acked?.get(conversation) ?? 0)) {
        await c.call({ type: 'ack', conversation, seq });
        (this.acked ??= new Map()).set(conversation, seq);
      }
    }
  }

  async syncAll() {
    const c = this.c;
    for (let page = 0; page < 200 && c.open; page++) {
      const r = await c.call({ type: 'sync' }, 10000);
      for (const m of r.messages) this.storeMessage(m);
      const high = new Map();
      for (const m of r.messages) high.set(m.conversation, Math.max(high.get(m.conversation) ?? 0, m.seq));
      for (const [conversation, seq] of high) await c.call({ type: 'ack', conversation, seq });
      if (!r.more) return;
    }
  }

  // Queues a send; resolves its ok result once answered (retried across reconnects).
  send(conversation, body, client_msg_id) {
    return new Promise((resolve, reject) => {
      const item = { conversation, body, client_msg_id, resolve, reject, inflight: null, tries: 0 };
      this.outbox.push(item);
      this.trySend(item);
    });
  }

  flushSends() { for (const item of this.outbox) this.trySend(item); }

  trySend(item) {
    const c = this.c;
    if (!c?.open || item.inflight === c) return;
    item.inflight = c;
    item.tries++;
    c.request({ type: 'send', conversation: item.conversation, body: item.body, client_msg_id: item.client_msg_id }, 10000)
      .then((r) => {
        if (r.type === 'ok') {
          this.outbox.splice(this.outbox.indexOf(item), 1);
          this.results.set(item.client_msg_id, r.result);
          item.resolve(r.result);
        } else if (r.code === '53400' || /^(08|57P)/.test(r.code ?? '')) {
          // Rate limited, or the gateway lost its database (maybe applied):
          // not done, the same client_msg_id again a second later.
          if (r.code === '53400') this.rateLimited = (this.rateLimited ?? 0) + 1;
          if (item.inflight === c) item.inflight = null;
          setTimeout(() => { if (!this.stopped) this.trySend(item); }, 1000);
        } else {
          this.outbox.splice(this.outbox.indexOf(item), 1);
          item.reject(new Error(`send ${item.client_msg_id}: ${JSON.stringify(r)}`));
        }
      })
      .catch(() => {
        // Unanswered: retried with the same client_msg_id, now if the
        // connection still stands (timeout), else after the reconnect.
        if (item.inflight === c) item.inflight = null;
        if (!this.stopped && c.open) setTimeout(() => this.trySend(item), 200);
      });
  }

  // Messages stored for a conversation, by seq.
  messages(conversation) {
    return [...(this.store.get(conversation)?.values() ?? [])].sort((a, b) => a.seq - b.seq);
  }

  async stop() {
    dutiful.delete(this);
    this.stopped = true;
    clearTimeout(this.ackTimer);
    this.c?.close();
    await within(this.loop, 3000, () => null);
    this.c?.terminate();
  }
}

// ---------------------------------------------------------------- cluster

// pg_ctl on the test cluster through tests/lib/cluster.sh: stop | start | restart.
export function clusterCtl(action, timeout = 90000) {
  if (!process.env.CHAT_TEST_PGDATA) throw new Error('CHAT_TEST_PGDATA is not set (run under tests/run.sh or cluster_start)');
  return new Promise((resolve, reject) => {
    execFile('bash', ['-c', '. tests/lib/cluster.sh && cluster_ctl "$1"', 'cluster_ctl', action],
      { cwd: TOP, timeout, env: process.env }, (err, stdout, stderr) => {
        if (err) reject(new Error(`cluster_ctl ${action} failed: ${stderr || err.message}`));
        else resolve();
      });
  });
}
