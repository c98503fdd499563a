// The fault checker: steady load through a gateway by dutiful devices
// (tests/gateway/lib.mjs's DutifulClient), a record of every `ok` answer
// and of every device's view, and one judgement used by every scenario.
//
// The promise it checks: a send answered `ok` reaches every member device
// exactly once in its view, after recovery.  judge() is pure (it takes the
// records, not the live objects) so that the self-test can feed it
// fabricated records and see it fail.
import fs from 'node:fs';
import { newDb, makeUser, direct, group, startGateway, freePort, Client, DutifulClient, token, rows, sleep, within } from '../gateway/lib.mjs';

// Every send request frame of the devices (DutifulClient retries inside
// one Load.sendOne) with the time it took to be answered, for the
// scenarios that bound the behaviour while a fault lasts.
let sendLog = null;
const clientRequest = Client.prototype.request;
Client.prototype.request = function request(obj, timeout) {
  const p = clientRequest.call(this, obj, timeout);
  if (sendLog && obj?.type === 'send') {
    const e = { t0: Date.now(), t1: null, code: null };
    sendLog.push(e);
    p.then((f) => { e.t1 = Date.now(); e.code = f.type === 'ok' ? null : f.code; if (f.type !== 'ok') e.message = f.message; },
      () => { e.t1 = Date.now(); e.code = 'unanswered'; });
  }
  return p;
};

// SQLSTATE classes of an error frame after which the send may or may not
// have been applied (connection lost, backend terminated, server crash):
// the client retries with the same client_msg_id, as for an unanswered send.
// 53400 (rate, in flight, busy) was refused before the database saw it:
// retried later with the same client_msg_id as well, and so is 53100
// (disk full: the transaction was rolled back, nothing was stored).
const RETRYABLE = /^(08|57P|53400$|53100$)/;

// ---------------------------------------------------------------- judgement

// Judges one run.  records:
//   acks     [{conversation, seq, client_msg_id, sender, device}]  every ok answer
//   devices  [{label, user, device, view: [{conversation, seq, sender, client_msg_id}]}]
//            what each device has in its view after recovery
//   members  {conversation: [user, ...]}
//   table    [{conversation, seq, sender, client_msg_id}]  chat.messages after recovery
// Returns counts and the first examples of each failure.
export function judge({ acks, devices, members, table }) {
  const key = (c, s) => `${c}:${s}`;
  const tableAt = new Map();
  const out = { acked: 0, lost: 0, lostInTable: 0, lostOnDevice: 0, unseen: 0, dupView: 0, dupTable: 0, ackConflicts: 0, examples: [] };
  const example = (s) => { if (out.examples.length < 10) out.examples.push(s); };

  // The table: one row per (conversation, seq) by its key; a
  // (sender, client_msg_id) stored twice is a duplicate.
  const byCmid = new Map();
  for (const r of table) {
    tableAt.set(key(r.conversation, r.seq), r);
    if (r.client_msg_id == null) continue;
    const k = `${r.conversation}:${r.sender}:${r.client_msg_id}`;
    byCmid.set(k, (byCmid.get(k) ?? 0) + 1);
  }
  for (const [k, n] of byCmid) if (n > 1) { out.dupTable += n - 1; example(`duplicated in table: ${k} stored ${n} times`); }

  // Acks: one (conversation, seq) per client_msg_id and one client_msg_id
  // per (conversation, seq); each must be in the table as acknowledged.
  const ackBySeq = new Map(), ackByCmid = new Map();
  for (const a of acks) {
    const k = key(a.conversation, a.seq);
    const prev = ackByCmid.get(a.client_msg_id);
    if (prev && prev !== k) { out.ackConflicts++; example(`client_msg_id ${a.client_msg_id} acked as ${prev} and as ${k}`); continue; }
    const other = ackBySeq.get(k);
    if (other && other.client_msg_id !== a.client_msg_id) { out.ackConflicts++; example(`${k} acked for ${other.client_msg_id} and ${a.client_msg_id}`); continue; }
    if (prev) continue;               // the same ok seen twice (a retry answered duplicate)
    ackByCmid.set(a.client_msg_id, k);
    ackBySeq.set(k, a);
  }
  out.acked = ackBySeq.size;

  const lostKeys = new Set();
  for (const [k, a] of ackBySeq) {
    const r = tableAt.get(k);
    if (!r || r.client_msg_id !== a.client_msg_id || Number(r.sender) !== Number(a.sender)) {
      out.lostInTable++; lostKeys.add(k);
      example(`lost in table: ${k} acked for ${a.client_msg_id}, table has ${r ? r.client_msg_id : 'nothing'}`);
    }
  }

  // Each member device's view: every acked message once, every other
  // committed message too (unseen), and no client_msg_id at two seqs.
  for (const d of devices) {
    const have = new Map();
    const cmidSeqs = new Map();
    for (const m of d.view) {
      const k = key(m.conversation, m.seq);
      if (have.has(k)) { out.dupView++; example(`${d.label}: ${k} twice in the view`); continue; }
      have.set(k, m);
      if (m.client_msg_id == null) continue;
      const ck = `${m.conversation}:${m.sender}:${m.client_msg_id}`;
      if (cmidSeqs.has(ck)) { out.dupView++; example(`${d.label}: ${ck} at seq ${cmidSeqs.get(ck)} and ${m.seq}`); }
      else cmidSeqs.set(ck, m.seq);
    }
    for (const [k, a] of ackBySeq) {
      if (!(members[a.conversation] ?? []).map(Number).includes(Number(d.user))) continue;
      const m = have.get(k);
      if (!m || m.client_msg_id !== a.client_msg_id) {
        out.lostOnDevice++; lostKeys.add(k);
        example(`${d.label}: acked ${k} (${a.client_msg_id}) ${m ? `is ${m.client_msg_id} in the view` : 'missing from the view'}`);
      }
    }
    for (const r of table) {
      const k = key(r.conversation, r.seq);
      if (ackBySeq.has(k)) continue;
      if (!(members[r.conversation] ?? []).map(Number).includes(Number(d.user))) continue;
      if (!have.has(k)) { out.unseen++; example(`${d.label}: committed ${k} (${r.client_msg_id}, never acked) missing from the view`); }
    }
  }
  out.lost = lostKeys.size;
  out.pass = out.lost === 0 && out.dupView === 0 && out.dupTable === 0 && out.unseen === 0 && out.ackConflicts === 0 && out.acked > 0;
  return out;
}

// ---------------------------------------------------------------- load

// Users, devices and conversations in db; dutiful devices on a gateway;
// each device sends one message at a time to one of its conversations.
export class Load {
  constructor({ db, users = 4, devices = 2, period = 150, body = 40 } = {}) {
    Object.assign(this, { db, nUsers: users, nDevices: devices, period, bodySize: body });
    this.acks = [];            // every ok answer
    this.own = new Map();      // device label -> [{conversation, seq, sender, client_msg_id}] it sent, answered ok
    this.errors = new Map();   // error code -> count (error frames to sends)
    this.retries = 0;
    this.failed = [];          // sends given up (a non-retryable error)
    this.attempts = [];        // every send frame on the wire: {t0, t1, code} (code null: ok)
    sendLog = this.attempts;
    this.sending = false;
  }

  // Creates the database, users, a group of everyone and a ring of directs.
  async setup() {
    await newDb(this.db);
    this.users = [];
    for (let i = 0; i < this.nUsers; i++) this.users.push(await makeUser(this.db, { devices: this.nDevices }));
    const ids = this.users.map((u) => u.id);
    this.members = {};
    const g = await group(this.db, ids[0], ids.slice(1), 'faults');
    this.members[g] = ids;
    for (let i = 0; i < ids.length; i++) {
      const a = ids[i], b = ids[(i + 1) % ids.length];
      if (a === b) continue;
      const c = await direct(this.db, a, b);
      this.members[c] = [a, b];
    }
    this.convsOf = new Map(ids.map((u) => [u, Object.keys(this.members).map(Number).filter((c) => this.members[c].includes(u))]));
  }

  // Starts a gateway (args: extra flags, or a function of its port
  // returning them; host: the address clients reach it at when not
  // 127.0.0.1, e.g. in a network namespace) and every device.
  async start(gwArgs = [], { host } = {}) {
    const port = await freePort();
    const args = typeof gwArgs === 'function' ? gwArgs(port) : gwArgs;
    this.gw = await startGateway({ db: this.db, args, port, label: this.db, wait: false });
    if (host) {
      this.gw.url = `ws://${host}:${port}`;
      this.gw.http = `http://${host}:${port}`;
    }
    // For the runner's cleanup, should this process die without its own.
    if (process.env.FAULTS_PIDFILE) fs.appendFileSync(process.env.FAULTS_PIDFILE, `${this.gw.pid}\n`);
    await this.gw.waitHealth(200, 15000);
    this.devices = [];
    for (const u of this.users) {
      for (const dev of u.devices) {
        // A fresh token on every (re)connect.
        this.devices.push(new DutifulClient({ url: () => this.gw.wsUrl(token(u.id, dev)), user: u.id, dev, label: `u${u.id}/${dev}`, backoffBase: 100, backoffCap: 1000 }));
      }
    }
    for (const d of this.devices) {
      const repair = d.repairGap.bind(d);
      d.repairGap = (conversation) => { d.gapRepairs = (d.gapRepairs ?? 0) + 1; return repair(conversation); };
      d.start();
    }
    const deadline = Date.now() + 10000;
    while (this.devices.some((d) => d.connects === 0) && Date.now() < deadline) await sleep(50);
    if (this.devices.some((d) => d.connects === 0)) throw new Error('devices did not connect within 10 s');
  }

  // One device's sender: one send at a time, retried with the same
  // client_msg_id after an error that may not have been applied.
  async sender(d) {
    let n = 0;
    while (this.sending) {
      const convs = this.convsOf.get(d.user);
      const conversation = convs[n % convs.length];
      await this.sendOne(d, conversation, `f-${d.user}-${d.dev}-${n}`, 'x'.repeat(this.bodySize));
      n++;
      await sleep(this.period * (0.5 + Math.random()));
    }
  }

  // Sends until answered ok or failed for good (bounded: 60 tries).
  async sendOne(d, conversation, cmid, body) {
    const t0 = Date.now();
    for (let attempt = 0; attempt < 60; attempt++) {
      try {
        const p = d.send(conversation, body, cmid);
        p.catch(() => {});           // an abandoned try must not reject unhandled
        const r = await within(p, 30000, () => { throw new Error('send unanswered for 30 s'); });
        const a = { conversation: r.conversation, seq: r.seq, client_msg_id: cmid, sender: d.user, device: d.dev, at: Date.now() };
        this.acks.push(a);
        this.maxLatency = Math.max(this.maxLatency ?? 0, a.at - t0);
        const label = `${d.user}/${d.dev}`;
        if (!this.own.has(label)) this.own.set(label, []);
        this.own.get(label).push(a);
        return a;
      } catch (e) {
        const m = String(e.message).match(/"code":"([0-9A-Z]{5})"/);
        const code = m ? m[1] : 'none';
        this.errors.set(code, (this.errors.get(code) ?? 0) + 1);
        if (m && !RETRYABLE.test(code)) { this.failed.push(`${cmid}: ${e.message}`); return null; }
        this.retries++;
        await sleep(200 + Math.random() * 300);
      }
    }
    this.failed.push(`${cmid}: gave up after 60 tries`);
    return null;
  }

  // Starts one sender per device.
  startSending() {
    this.sending = true;
    this.senders = this.devices.map((d) => this.sender(d));
  }

  // Stops the senders; waits (bounded) for their last sends to be answered.
  async stopSending(timeout = 40000) {
    this.sending = false;
    await within(Promise.all(this.senders), timeout, () => { throw new Error(`senders still busy after ${timeout} ms`); });
  }

  // A device's view: what it stored plus what it sent and got ok for.
  view(d) {
    const v = [];
    for (const s of d.store.values()) for (const m of s.values()) v.push({ conversation: m.conversation, seq: m.seq, sender: m.sender, client_msg_id: m.client_msg_id });
    for (const a of this.own.get(`${d.user}/${d.dev}`) ?? []) {
      if (!d.store.get(a.conversation)?.has(a.seq)) v.push({ conversation: a.conversation, seq: a.seq, sender: a.sender, client_msg_id: a.client_msg_id });
    }
    return v;
  }

  // Highest seq per conversation in the table now.
  async lastSeqs() {
    const r = await rows(this.db, 'SELECT id AS conversation, last_seq FROM chat.conversations');
    return new Map(r.map((x) => [Number(x.conversation), Number(x.last_seq)]));
  }

  // True when every device's view holds seqs 1..upto[c] of each of its conversations.
  synced(upto) {
    for (const d of this.devices) {
      const own = new Set((this.own.get(`${d.user}/${d.dev}`) ?? []).map((a) => `${a.conversation}:${a.seq}`));
      for (const c of this.convsOf.get(d.user)) {
        const s = d.store.get(c);
        for (let q = 1; q <= (upto.get(c) ?? 0); q++) if (!s?.has(q) && !own.has(`${c}:${q}`)) return false;
      }
    }
    return true;
  }

  // Recovery: service is back (the first send answered ok after faultEnd),
  // and every device holds every message committed up to then (live
  // delivery, gap repair or sync).  Resolves the ms from faultEnd until both
  // hold, or null after timeout.
  async waitSynced(faultEnd, timeout) {
    const deadline = faultEnd + timeout;
    while (!this.acks.some((a) => a.at > faultEnd) && Date.now() < deadline) await sleep(25);
    if (Date.now() >= deadline) return null;
    const upto = await this.lastSeqs();
    while (Date.now() < deadline) {
      if (this.synced(upto)) return Date.now() - faultEnd;
      await sleep(25);
    }
    return null;
  }

  // Gap repairs (`after` rounds started) of all devices: events that
  // arrived out of order or not at all.
  get gapRepairs() { return this.devices.reduce((n, d) => n + (d.gapRepairs ?? 0), 0); }

  // After the senders stopped: every device syncs until done (a resync
  // duty run on purpose, bounded), then the records go to judge().
  async finish() {
    for (const d of this.devices) {
      if (d.c?.open) await within(d.syncAll(), 20000, () => { throw new Error(`${d.label}: final sync did not finish in 20 s`); });
    }
    const upto = await this.lastSeqs();
    const deadline = Date.now() + 20000;
    while (!this.synced(upto) && Date.now() < deadline) await sleep(50);
    const table = (await rows(this.db, 'SELECT conversation_id AS conversation, seq, sender_id AS sender, client_msg_id FROM chat.messages'))
      .map((r) => ({ ...r, conversation: Number(r.conversation), seq: Number(r.seq), sender: Number(r.sender) }));
    const devices = this.devices.map((d) => ({ label: d.label, user: d.user, device: d.dev, view: this.view(d) }));
    return judge({ acks: this.acks, devices, members: this.members, table });
  }

  // Stops the devices and the gateway (the runner kills what is left).
  async stop() {
    this.sending = false;
    for (const d of this.devices ?? []) await d.stop();
    if (this.gw) await this.gw.stop('SIGTERM', 8000);
  }
}
