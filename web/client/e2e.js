// e2e.js: end-to-end encryption for pgchat (docs/e2e.md), for browsers and
// Node >= 20.  The server stores keys and ciphertext, never plaintext.
//
// Model (Signal's, as Megolm/sender keys): every device has an identity
// (an Ed25519 signing key and an X25519 DH key), a signed prekey, a pool of
// one-time prekeys and a fallback key in the server's key directory.
// Devices talk pairwise through X3DH (with a claimed one-time key) and a
// Double Ratchet; over those pairwise sessions each sending device shares
// its *sender key* for a conversation with every member device, through
// the server's to-device inbox.  A message is encrypted once with the
// sender key (a hash ratchet: one key per message), signed by the sending
// device's identity key, and stored once in the conversation's log.  The
// sender key is replaced when a member leaves or a device disappears, so
// they cannot read what follows; a device that appears gets the current
// chain, so it reads from its joining on.
//
// Only primitives come from a library (the audited @noble packages,
// bundled into web/vendor/noble.js); the protocols follow the published
// specifications (X3DH, Double Ratchet, Signal sender keys) step by step.
//
//   const e2e = new E2E({ user, device, store, call: (req) => client.call(req) });
//   await e2e.init();                       // keys made and uploaded once
//   const body = await e2e.encrypt(conv, 'hi');   // send it with kind 'e2e'
//   chat.on('to_device', (ev) => e2e.receiveToDevice([ev]));
//   const text = await e2e.decrypt(message);      // E2EPendingError: keys not here yet
//
// call(request) sends one request ({type, ...}) and resolves with its
// result or rejects with its error.  The store keeps everything (keys,
// sessions) as JSON values: MemoryStore in Node, IndexedDBStore in browsers.

import { x25519, ed25519, hkdf, hmac, sha256, sha512, gcm, randomBytes } from '../vendor/noble.js';

const enc = new TextEncoder();
const dec = new TextDecoder();
const INFO_X3DH = enc.encode('pgchat x3dh v1');
const INFO_RATCHET = enc.encode('pgchat ratchet v1');
const INFO_MESSAGE = enc.encode('pgchat message key v1');
const MAX_SKIP = 2000;          // message keys kept per chain for late messages
const OTK_POOL = 50;            // one-time keys kept on the server
const FALLBACK_ID = 'fallback';

/** The keys of a message are not here (yet): show a placeholder, retry when keys arrive. */
export class E2EPendingError extends Error {
  constructor(message, sid) { super(message); this.name = 'E2EPendingError'; this.sid = sid; }
}

/** A ciphertext that fails authentication (tampered, forged or replayed): never shown. */
export class E2EVerifyError extends Error {
  constructor(message) { super(message); this.name = 'E2EVerifyError'; }
}

// ------------------------------------------------------------- encoding

export const b64 = (bytes) => {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
};
export const unb64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));

// Concatenation of byte arrays.
function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}

// A 32-bit big-endian integer as bytes (counters in signed/associated data).
const u32 = (n) => { const b = new Uint8Array(4); new DataView(b.buffer).setUint32(0, n); return b; };

// Constant-time comparison of two byte arrays.
function equalBytes(a, b) {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

// AES-256-GCM under a one-time message key: key and nonce are derived from
// mk (each mk encrypts one message only, so the nonce never repeats).
function seal(mk, plaintext, ad) {
  const k = hkdf(sha256, mk, new Uint8Array(32), INFO_MESSAGE, 44);
  return gcm(k.subarray(0, 32), k.subarray(32, 44), ad).encrypt(plaintext);
}

// The inverse of seal; throws E2EVerifyError when authentication fails.
function open(mk, ciphertext, ad) {
  const k = hkdf(sha256, mk, new Uint8Array(32), INFO_MESSAGE, 44);
  try {
    return gcm(k.subarray(0, 32), k.subarray(32, 44), ad).decrypt(ciphertext);
  } catch {
    throw new E2EVerifyError('ciphertext failed authentication');
  }
}

// The symmetric-key ratchet step (Double Ratchet KDF_CK, sender keys):
// the next chain key and this step's message key.
function chainStep(ck) {
  return [hmac(sha256, ck, Uint8Array.of(2)), hmac(sha256, ck, Uint8Array.of(1))];
}

// The root-key ratchet step (Double Ratchet KDF_RK): new root and chain keys.
function rootStep(rk, dhOut) {
  const out = hkdf(sha256, dhOut, rk, INFO_RATCHET, 64);
  return [out.slice(0, 32), out.slice(32, 64)];
}

// A new X25519 key pair, as stored: {priv, pub} in base64.
function newDhPair() {
  const priv = x25519.utils.randomSecretKey();
  return { priv: b64(priv), pub: b64(x25519.getPublicKey(priv)) };
}

const dh = (privB64, pubB64) => x25519.getSharedSecret(unb64(privB64), unb64(pubB64));

// A device's published identity key: Ed25519 (signing) || X25519 (DH), base64.
const identityKey = (id) => b64(concat(unb64(id.sigPub), unb64(id.dhPub)));

// The two halves of a published identity key; throws on a malformed one.
function splitIdentity(ik) {
  const bytes = unb64(ik);
  if (bytes.length !== 64) throw new E2EVerifyError('identity key is not 64 bytes');
  return { sigPub: bytes.subarray(0, 32), dhPub: bytes.subarray(32, 64) };
}

// ----------------------------------------------------------------- files

/**
 * Encrypts a file for an e2e message (attachments): AES-256-GCM under a
 * fresh random key, so the server stores only ciphertext (upload it as
 * application/octet-stream, without a name).  The key travels inside the
 * encrypted message body: content {text, files: [{...key, name, mime,
 * size}]}, files[i] describing attachments[i].
 * @param {Uint8Array} bytes the plaintext file
 * @returns {{bytes: Uint8Array, key: {alg: string, k: string, iv: string, sha256: string}}}
 */
export function encryptFile(bytes) {
  const k = randomBytes(32);
  const iv = randomBytes(12);
  const ct = gcm(k, iv).encrypt(bytes);
  return { bytes: ct, key: { alg: 'A256GCM', k: b64(k), iv: b64(iv), sha256: b64(sha256(ct)) } };
}

/**
 * The plaintext of a file that encryptFile made, given its key; throws
 * E2EVerifyError when the bytes are not that file (tampered or swapped).
 */
export function decryptFile(bytes, key) {
  if (key?.alg !== 'A256GCM' || typeof key.k !== 'string' || typeof key.iv !== 'string')
    throw new E2EVerifyError('file key is malformed');
  if (typeof key.sha256 === 'string' && !equalBytes(sha256(bytes), unb64(key.sha256)))
    throw new E2EVerifyError('file ciphertext does not match its digest');
  try {
    return gcm(unb64(key.k), unb64(key.iv)).decrypt(bytes);
  } catch {
    throw new E2EVerifyError('file ciphertext failed authentication');
  }
}

// ---------------------------------------------------------------- stores

/**
 * Everything in memory, for Node and tests.  dump() and MemoryStore.load()
 * make the JSON round trip a reload would (the state survives it).
 */
export class MemoryStore {
  constructor(entries) { this.map = new Map(entries ? Object.entries(entries) : []); }
  async get(key) { const v = this.map.get(key); return v === undefined ? undefined : JSON.parse(v); }
  async put(key, value) { this.map.set(key, JSON.stringify(value)); }
  async delete(key) { this.map.delete(key); }
  async keys(prefix) { return [...this.map.keys()].filter((k) => k.startsWith(prefix)); }
  dump() { return JSON.stringify(Object.fromEntries(this.map)); }
  static load(json) { return new MemoryStore(JSON.parse(json)); }
}

/** The browser's IndexedDB (one object store "kv" in database `name`). */
export class IndexedDBStore {
  constructor(name = 'pgchat-e2e') { this.name = name; this.db = null; }
  // Opens the database once.
  _open() {
    this.db ??= new Promise((resolve, reject) => {
      const req = indexedDB.open(this.name, 1);
      req.onupgradeneeded = () => req.result.createObjectStore('kv');
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
    return this.db;
  }
  // Runs fn on the object store in a transaction of mode; resolves with the request's result.
  async _tx(mode, fn) {
    const db = await this._open();
    return new Promise((resolve, reject) => {
      const tx = db.transaction('kv', mode);
      const req = fn(tx.objectStore('kv'));
      tx.oncomplete = () => resolve(req?.result);
      tx.onerror = () => reject(tx.error);
    });
  }
  get(key) { return this._tx('readonly', (s) => s.get(key)); }
  put(key, value) { return this._tx('readwrite', (s) => s.put(value, key)); }
  delete(key) { return this._tx('readwrite', (s) => s.delete(key)); }
  async keys(prefix) {
    const all = await this._tx('readonly', (s) => s.getAllKeys());
    return all.filter((k) => typeof k === 'string' && k.startsWith(prefix));
  }
}

// ------------------------------------------------------- double ratchet

// Double Ratchet: encrypts with the sending chain, ratcheting the DH keys
// when the peer's ratchet key changed.  state is the session (mutated).
function ratchetEncrypt(state, plaintext, ad) {
  const [ck, mk] = chainStep(unb64(state.cks));
  state.cks = b64(ck);
  const header = { dh: state.dhs.pub, pn: state.pn, n: state.ns };
  state.ns += 1;
  const ct = seal(mk, plaintext, concat(ad, enc.encode(JSON.stringify(header))));
  return { header, ct: b64(ct) };
}

// Stores the message keys of the receiving chain up to n (skipped messages).
function skipKeys(state, until) {
  if (!state.ckr) return;
  if (until - state.nr > MAX_SKIP) throw new E2EVerifyError('too many skipped messages');
  let ck = unb64(state.ckr);
  while (state.nr < until) {
    const [next, mk] = chainStep(ck);
    state.skipped[`${state.dhr}:${state.nr}`] = b64(mk);
    ck = next;
    state.nr += 1;
  }
  state.ckr = b64(ck);
  const keys = Object.keys(state.skipped);
  for (const k of keys.slice(0, Math.max(0, keys.length - MAX_SKIP))) delete state.skipped[k];
}

// Double Ratchet decryption of {header, ct}; the state is only changed
// when the message authenticates (the caller works on a copy).
function ratchetDecrypt(state, msg, ad) {
  const { header } = msg;
  const fullAd = concat(ad, enc.encode(JSON.stringify(header)));
  const skippedKey = state.skipped[`${header.dh}:${header.n}`];
  if (skippedKey) {
    const pt = open(unb64(skippedKey), unb64(msg.ct), fullAd);
    delete state.skipped[`${header.dh}:${header.n}`];
    return pt;
  }
  if (header.dh !== state.dhr) {
    skipKeys(state, header.pn);
    state.pn = state.ns;
    state.ns = 0;
    state.nr = 0;
    state.dhr = header.dh;
    let [rk, ck] = rootStep(unb64(state.rk), dh(state.dhs.priv, state.dhr));
    state.ckr = b64(ck);
    state.dhs = newDhPair();
    [rk, ck] = rootStep(rk, dh(state.dhs.priv, state.dhr));
    state.rk = b64(rk);
    state.cks = b64(ck);
  }
  skipKeys(state, header.n);
  const [ck, mk] = chainStep(unb64(state.ckr));
  const pt = open(mk, unb64(msg.ct), fullAd);
  state.ckr = b64(ck);
  state.nr += 1;
  return pt;
}

// ------------------------------------------------------------------ E2E

/** One device's end-to-end encryption: keys, pairwise sessions, sender keys. */
export class E2E {
  /**
   * @param {object} opts
   * @param {number} opts.user this device's user id
   * @param {number} opts.device this device's id
   * @param {object} opts.store MemoryStore, IndexedDBStore or the same interface
   * @param {(req: object) => Promise<object>} opts.call one request to the gateway, resolving with its result
   */
  constructor({ user, device, store, call }) {
    this.user = Number(user);
    this.device = Number(device);
    this.store = store;
    this.call = call;
    this.queue = Promise.resolve();
    this.listeners = new Set();
  }

  // Runs fn after every earlier operation: the ratchets are never used by
  // two operations at once.
  _serial(fn) {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => {});
    return run;
  }

  /** Calls fn(sid) whenever a sender key arrives (retry the pending messages). */
  onKeys(fn) { this.listeners.add(fn); return () => this.listeners.delete(fn); }

  /**
   * Makes this device's identity, signed prekey, fallback key and one-time
   * keys on first use and uploads them; tops the pool up later calls.
   */
  init() {
    return this._serial(async () => {
      let id = await this.store.get('identity');
      if (!id) {
        const sigPriv = ed25519.utils.randomSecretKey();
        const dhPair = newDhPair();
        id = { user: this.user, device: this.device, sigPriv: b64(sigPriv),
          sigPub: b64(ed25519.getPublicKey(sigPriv)), dhPriv: dhPair.priv, dhPub: dhPair.pub, nextOtk: 1 };
        const spk = this._signed(id, 1);
        const fallback = this._signed(id, FALLBACK_ID);
        await this.store.put('spk:1', spk);
        await this.store.put(`otk:${FALLBACK_ID}`, fallback);
        await this.store.put('identity', id);
        await this.call({ type: 'keys_upload', identity_key: identityKey(id),
          signed_prekey: { id: 1, key: spk.pub, signature: spk.signature },
          fallback_key: { id: FALLBACK_ID, key: fallback.pub, signature: fallback.signature } });
      }
      this.identity = id;
      await this._replenish(0);
    });
  }

  // A signed X25519 prekey {id, priv, pub, signature} of identity id.
  _signed(id, keyId) {
    const pair = newDhPair();
    return { id: keyId, ...pair, signature: b64(ed25519.sign(unb64(pair.pub), unb64(id.sigPriv))) };
  }

  // Uploads one-time keys until the server holds OTK_POOL (it has `count`).
  async _replenish(count) {
    const id = this.identity;
    const have = count || (await this.call({ type: 'keys_upload', one_time_keys: [] })).one_time_keys;
    const keys = [];
    for (let i = have; i < OTK_POOL; i++) {
      const keyId = `o${id.nextOtk++}`;
      const pair = newDhPair();
      await this.store.put(`otk:${keyId}`, { id: keyId, ...pair });
      keys.push({ id: keyId, key: pair.pub });
    }
    await this.store.put('identity', id);
    if (keys.length) await this.call({ type: 'keys_upload', one_time_keys: keys });
  }

  /** This device's published identity key (base64 Ed25519 || X25519). */
  get identityKey() { return identityKey(this.identity); }

  /**
   * The safety number of this user and a peer: 60 digits from both users'
   * identity keys (every device), the same on both sides; compare them in
   * person to rule out a man in the middle.
   */
  async safetyNumber(peer) {
    const { devices } = await this.call({ type: 'keys_query', users: [this.user, Number(peer)] });
    const part = (u) => {
      const keys = devices.filter((d) => d.user === u).map((d) => d.identity_key).sort().join(',');
      let h = sha512(enc.encode(`${u}:${keys}`));
      for (let i = 0; i < 1024; i++) h = sha512(concat(h, enc.encode(keys)));
      let digits = '';
      for (let i = 0; i < 30; i += 5) {
        const n = (h[i] * 2 ** 32 + h[i + 1] * 2 ** 24 + h[i + 2] * 2 ** 16 + h[i + 3] * 2 ** 8 + h[i + 4]) % 100000;
        digits += String(n).padStart(5, '0');
      }
      return digits;
    };
    const [a, b] = [part(this.user), part(Number(peer))];
    const all = this.user < Number(peer) ? a + b : b + a;
    return all.match(/.{5}/g).join(' ');
  }

  // ------------------------------------------------ pairwise sessions

  // The sessions with one peer device, newest first.
  async _sessions(user, device) { return (await this.store.get(`sess:${user}:${device}`)) ?? []; }
  async _putSessions(user, device, list) { await this.store.put(`sess:${user}:${device}`, list.slice(0, 3)); }

  // Claims bundles for the devices without a session and starts X3DH
  // sessions with them (initiator side), after checking each signed prekey
  // against the device's identity key.
  async _ensureSessions(devices) {
    const missing = [];
    for (const d of devices) if ((await this._sessions(d.user, d.device)).length === 0) missing.push(d);
    const bundles = [];
    for (let i = 0; i < missing.length; i += 1000) {     // the server's limit per claim
      const r = await this.call({ type: 'keys_claim',
        devices: missing.slice(i, i + 1000).map((d) => ({ user: d.user, device: d.device })) });
      bundles.push(...r.bundles);
    }
    for (const b of bundles) {
      const ik = splitIdentity(b.identity_key);
      const spk = b.signed_prekey;
      if (!ed25519.verify(unb64(spk.signature), unb64(spk.key), ik.sigPub))
        throw new E2EVerifyError(`signed prekey of device ${b.device} of user ${b.user} has a bad signature`);
      const otk = b.one_time_key;
      if (b.fallback && otk && !ed25519.verify(unb64(otk.signature), unb64(otk.key), ik.sigPub))
        throw new E2EVerifyError(`fallback key of device ${b.device} of user ${b.user} has a bad signature`);
      const ek = newDhPair();
      const id = this.identity;
      const parts = [dh(id.dhPriv, spk.key), dh(ek.priv, b64(ik.dhPub)), dh(ek.priv, spk.key)];
      if (otk) parts.push(dh(ek.priv, otk.key));
      const sk = hkdf(sha256, concat(new Uint8Array(32).fill(0xff), ...parts), new Uint8Array(32), INFO_X3DH, 32);
      const dhs = newDhPair();
      const [rk, cks] = rootStep(sk, dh(dhs.priv, spk.key));
      const session = {
        peerIdentity: b.identity_key, ad: b64(concat(unb64(identityKey(id)), unb64(b.identity_key))),
        rk: b64(rk), dhs, dhr: spk.key, cks: b64(cks), ckr: null, ns: 0, nr: 0, pn: 0, skipped: {},
        // X3DH header, sent with every message until the peer answers.
        pending: { ik: identityKey(id), ek: ek.pub, spk: String(spk.id), otk: otk ? String(otk.id) : null },
      };
      const list = await this._sessions(b.user, b.device);
      await this._putSessions(b.user, b.device, [session, ...list]);
    }
  }

  // Encrypts payload (an object) for one peer device through the newest
  // session: the to_device envelope {user, device, type, ciphertext}.
  async _encryptPairwise(user, device, payload) {
    const list = await this._sessions(user, device);
    const s = list[0];
    const msg = ratchetEncrypt(s, enc.encode(JSON.stringify(payload)), unb64(s.ad));
    await this._putSessions(user, device, list);
    const type = s.pending ? 'prekey' : 'msg';
    const body = s.pending ? { ...msg, x3dh: s.pending } : msg;
    return { user, device, type, ciphertext: b64(enc.encode(JSON.stringify(body))) };
  }

  // Decrypts an envelope from a peer device (responder side of X3DH for a
  // 'prekey' envelope of a new session); returns the payload object.
  async _decryptPairwise(fromUser, fromDevice, type, ciphertext) {
    const body = JSON.parse(dec.decode(unb64(ciphertext)));
    const list = await this._sessions(fromUser, fromDevice);
    // An existing session: try each (a copy, kept only when it works).
    for (let i = 0; i < list.length; i++) {
      const copy = structuredClone(list[i]);
      try {
        const pt = ratchetDecrypt(copy, body, unb64(copy.ad));
        delete copy.pending;            // the peer answered: it has the session
        list.splice(i, 1);
        await this._putSessions(fromUser, fromDevice, [copy, ...list]);
        return JSON.parse(dec.decode(pt));
      } catch {
        // not this session (or a malformed header): try the next
      }
    }
    if (type !== 'prekey' || !body.x3dh) throw new E2EVerifyError('no session decrypts the envelope');
    const x = body.x3dh;
    const spk = await this.store.get(`spk:${x.spk}`);
    if (!spk) throw new E2EVerifyError(`unknown signed prekey ${x.spk}`);
    const otk = x.otk ? await this.store.get(`otk:${x.otk}`) : null;
    if (x.otk && !otk) throw new E2EVerifyError(`one-time key ${x.otk} is unknown or used`);
    const peer = splitIdentity(x.ik);
    const id = this.identity;
    const parts = [dh(spk.priv, b64(peer.dhPub)), dh(id.dhPriv, x.ek), dh(spk.priv, x.ek)];
    if (otk) parts.push(dh(otk.priv, x.ek));
    const sk = hkdf(sha256, concat(new Uint8Array(32).fill(0xff), ...parts), new Uint8Array(32), INFO_X3DH, 32);
    const session = {
      peerIdentity: x.ik, ad: b64(concat(unb64(x.ik), unb64(identityKey(id)))),
      rk: b64(sk), dhs: { priv: spk.priv, pub: spk.pub }, dhr: null, cks: null, ckr: null,
      ns: 0, nr: 0, pn: 0, skipped: {},
    };
    const pt = ratchetDecrypt(session, body, unb64(session.ad));
    // A one-time key is used once; the fallback key stays.
    if (otk && x.otk !== FALLBACK_ID) await this.store.delete(`otk:${x.otk}`);
    await this._putSessions(fromUser, fromDevice, [session, ...list]);
    return JSON.parse(dec.decode(pt));
  }

  // ------------------------------------------------------ sender keys

  // The devices that must hold this device's sender key for conversation:
  // every device with keys of every member, this one excepted.
  async _recipients(conversation) {
    const { members } = await this.call({ type: 'members', conversation });
    const { devices } = await this.call({ type: 'keys_query', users: members.map((m) => m.user) });
    return devices.filter((d) => !(d.user === this.user && d.device === this.device))
      .map((d) => ({ user: d.user, device: d.device, identity_key: d.identity_key }));
  }

  /**
   * Encrypts text (or any JSON value) for conversation with this device's
   * sender key: the body of a send of kind e2e.  Shares or rotates the
   * sender key first: a new member device gets the chain from here on; a
   * device that is gone (member left, device removed, identity replaced)
   * makes a new sender key that it never gets.
   */
  encrypt(conversation, content) {
    return this._serial(async () => {
      conversation = Number(conversation);
      const recipients = await this._recipients(conversation);
      const tag = (d) => `${d.user}:${d.device}:${d.identity_key}`;
      let out = await this.store.get(`out:${conversation}`);
      const now = new Set(recipients.map(tag));
      if (out && out.sharedWith.some((t) => !now.has(t))) out = null;   // someone is gone: rotate
      if (!out) {
        out = { sid: b64(randomBytes(16)), ck: b64(randomBytes(32)), n: 0, sharedWith: [] };
        // Our own copy, so that this device reads its own messages too.
        await this._putInbound(out.sid, { user: this.user, device: this.device, conversation,
          signer: this.identity.sigPub, ck: out.ck, n: 0, skipped: {} });
      }
      const newcomers = recipients.filter((d) => !out.sharedWith.includes(tag(d)));
      if (newcomers.length) {
        await this._ensureSessions(newcomers);
        const share = { type: 'sender_key', conversation, sid: out.sid, ck: out.ck, n: out.n };
        const messages = [];
        for (const d of newcomers) messages.push(await this._encryptPairwise(d.user, d.device, share));
        for (let i = 0; i < messages.length; i += 1024)
          await this.call({ type: 'to_device', txn: b64(randomBytes(12)), messages: messages.slice(i, i + 1024) });
        out.sharedWith.push(...newcomers.map(tag));
      }
      const [next, mk] = chainStep(unb64(out.ck));
      const n = out.n;
      const ad = concat(enc.encode(out.sid), u32(n), enc.encode(String(conversation)));
      const ct = seal(mk, enc.encode(JSON.stringify({ content })), ad);
      const sig = ed25519.sign(concat(ad, ct), unb64(this.identity.sigPriv));
      out.ck = b64(next);
      out.n = n + 1;
      await this.store.put(`out:${conversation}`, out);
      return JSON.stringify({ v: 1, sid: out.sid, n, ct: b64(ct), sig: b64(sig) });
    });
  }

  /** Forgets this device's sender key of conversation: the next encrypt makes a new one. */
  rotate(conversation) { return this._serial(() => this.store.delete(`out:${Number(conversation)}`)); }

  async _putInbound(sid, session) { await this.store.put(`in:${sid}`, session); }

  /**
   * The content of an e2e message (a message object: conversation, sender,
   * sender_device, body).  Throws E2EPendingError while its sender key has
   * not arrived, E2EVerifyError when it is tampered or not from the device
   * that shared the key.
   */
  decrypt(message) {
    return this._serial(async () => {
      let body;
      try { body = JSON.parse(message.body); } catch { throw new E2EVerifyError('e2e body is not JSON'); }
      if (body?.v !== 1 || typeof body.sid !== 'string' || !Number.isInteger(body.n) || body.n < 0)
        throw new E2EVerifyError('e2e body is malformed');
      const s = await this.store.get(`in:${body.sid}`);
      if (!s) throw new E2EPendingError(`no sender key ${body.sid} yet`, body.sid);
      if (s.conversation !== Number(message.conversation) || s.user !== Number(message.sender) ||
          (message.sender_device != null && s.device !== Number(message.sender_device)))
        throw new E2EVerifyError('sender key does not belong to this sender or conversation');
      const ct = unb64(body.ct);
      const ad = concat(enc.encode(body.sid), u32(body.n), enc.encode(String(s.conversation)));
      if (!ed25519.verify(unb64(body.sig), concat(ad, ct), unb64(s.signer)))
        throw new E2EVerifyError('signature of the sending device does not verify');
      let mk;
      if (s.skipped[body.n]) {
        mk = unb64(s.skipped[body.n]);
      } else {
        if (body.n < s.n) throw new E2EPendingError(`message ${body.n} is older than the key this device got`, body.sid);
        if (body.n - s.n > MAX_SKIP) throw new E2EVerifyError('too many skipped messages');
        let ck = unb64(s.ck);
        for (let i = s.n; i < body.n; i++) {
          const [next, k] = chainStep(ck);
          s.skipped[i] = b64(k);
          ck = next;
        }
        [ck, mk] = chainStep(ck);
        s.ck = b64(ck);
        s.n = body.n + 1;
      }
      const pt = open(mk, ct, ad);
      // Keep the key of a decrypted message (history is read again); only
      // chain keys move forward.
      s.skipped[body.n] = b64(mk);
      const keys = Object.keys(s.skipped);
      for (const k of keys.slice(0, Math.max(0, keys.length - MAX_SKIP))) delete s.skipped[k];
      await this._putInbound(body.sid, s);
      return JSON.parse(dec.decode(pt)).content;
    });
  }

  /**
   * Handles to_device entries (live events or sync's "to_device"): sender
   * keys are stored, then the inbox is acked up to the last one.  Entries
   * that fail are dropped (counted in the result) rather than retried.
   */
  receiveToDevice(entries) {
    return this._serial(async () => {
      let last = 0, stored = 0, failed = 0;
      const sids = [];
      for (const e of entries) {
        last = Math.max(last, Number(e.id));
        if (Number(e.device) !== this.device && e.device != null) continue;
        try {
          const p = await this._decryptPairwise(Number(e.from_user), Number(e.from_device),
            e.message_type, e.ciphertext);
          if (p?.type === 'sender_key') {
            const list = await this._sessions(Number(e.from_user), Number(e.from_device));
            const signer = b64(splitIdentity(list[0].peerIdentity).sigPub);
            const known = await this.store.get(`in:${p.sid}`);
            if (!known || known.n > p.n) {
              await this._putInbound(p.sid, { user: Number(e.from_user), device: Number(e.from_device),
                conversation: Number(p.conversation), signer, ck: p.ck, n: p.n, skipped: known?.skipped ?? {} });
            }
            sids.push(p.sid);
            stored++;
          }
        } catch {
          // Forged, tampered or malformed: dropped, never applied; an
          // envelope that can never decrypt must not block the inbox.
          failed++;
        }
      }
      if (last > 0) await this.call({ type: 'to_device_ack', up_to: last });
      for (const sid of sids) for (const fn of this.listeners) fn(sid);
      return { stored, failed };
    });
  }

  /** keys_low: uploads one-time keys up to the pool size again. */
  onKeysLow(ev) { return this._serial(() => this._replenish(Number(ev.count))); }

  /**
   * identity_changed: the user's device has a new identity; its sessions
   * are dropped (a new one is made on the next share), and every sender
   * key it held is replaced on the next encrypt (sharedWith names the old
   * identity key, so the device no longer matches it).
   */
  onIdentityChanged(ev) {
    return this._serial(() => this.store.delete(`sess:${Number(ev.user)}:${Number(ev.device)}`));
  }
}
