// Unit tests of web/client/e2e.js against an in-memory key directory and
// inbox (no gateway): the protocol's corner cases that the gateway tests
// cannot order at will — messages out of order, envelopes out of order,
// both sides starting a session at once, an empty pool (the fallback key),
// a replayed envelope, a bad signed prekey, the safety number.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { E2E, MemoryStore, E2EPendingError, E2EVerifyError, b64, unb64 } from '../../web/client/e2e.js';

// A stand-in for the server's key directory, inbox and member lists.
function fakeServer() {
  const keys = new Map();
  const inbox = new Map();
  const members = new Map();
  let nextId = 1;
  const server = {
    keys, inbox, members, claims: [],
    handler(user, device) {
      return async (req) => {
        const me = `${user}:${device}`;
        switch (req.type) {
          case 'keys_upload': {
            const k = keys.get(me) ?? { otks: [] };
            if (req.identity_key) Object.assign(k, { identity_key: req.identity_key, signed_prekey: { ...req.signed_prekey, id: String(req.signed_prekey.id) }, fallback: req.fallback_key });
            for (const o of req.one_time_keys ?? []) k.otks.push({ id: String(o.id), key: o.key });
            keys.set(me, k);
            return { one_time_keys: k.otks.length };
          }
          case 'members': return { members: members.get(req.conversation).map((u) => ({ user: u })) };
          case 'keys_query': return { devices: [...keys.entries()].filter(([ud]) => req.users.includes(Number(ud.split(':')[0])))
            .map(([ud, k]) => ({ user: Number(ud.split(':')[0]), device: Number(ud.split(':')[1]), identity_key: k.identity_key, signed_prekey: k.signed_prekey })) };
          case 'keys_claim': return { bundles: req.devices.map((d) => {
            const k = keys.get(`${d.user}:${d.device}`);
            const otk = k.otks.shift();
            server.claims.push(otk ? otk.id : 'fallback');
            return { user: d.user, device: d.device, identity_key: k.identity_key, signed_prekey: k.signed_prekey,
              one_time_key: otk ?? k.fallback, ...(otk ? {} : { fallback: true }) };
          }) };
          case 'to_device':
            for (const m of req.messages) {
              const key = `${m.user}:${m.device}`;
              if (!inbox.has(key)) inbox.set(key, []);
              inbox.get(key).push({ id: nextId++, from_user: user, from_device: device, message_type: m.type, ciphertext: m.ciphertext, device: m.device });
            }
            return {};
          case 'to_device_ack': return {};
          default: throw new Error(`fake server: ${req.type}`);
        }
      };
    },
    // Takes the inbox of user:device (what sync would return).
    take(user, device) { const l = inbox.get(`${user}:${device}`) ?? []; inbox.set(`${user}:${device}`, []); return l; },
  };
  return server;
}

async function dev(server, user, device = 1) {
  const e = new E2E({ user, device, store: new MemoryStore(), call: server.handler(user, device) });
  await e.init();
  return e;
}

const msg = (conversation, sender, body, sender_device = 1) => ({ conversation, sender, sender_device, body });

test('messages of a sender key decrypt out of order, each once keyed; far jumps are refused', async () => {
  const s = fakeServer();
  s.members.set(1, [1, 2]);
  const a = await dev(s, 1), b = await dev(s, 2);
  const bodies = [];
  for (let i = 0; i < 5; i++) bodies.push(await a.encrypt(1, `m${i}`));
  await b.receiveToDevice(s.take(2, 1));
  for (const i of [4, 0, 3, 1, 2]) assert.equal(await b.decrypt(msg(1, 1, bodies[i])), `m${i}`);
  assert.equal(await b.decrypt(msg(1, 1, bodies[2])), 'm2', 'a message read again (history) still decrypts');
  const far = JSON.parse(await a.encrypt(1, 'far'));
  far.n += 5000;
  await assert.rejects(b.decrypt(msg(1, 1, JSON.stringify(far))), E2EVerifyError);
});

test('pairwise envelopes out of order, both sides starting sessions at once, replays refused', async () => {
  const s = fakeServer();
  s.members.set(1, [1, 2]);
  const a = await dev(s, 1), b = await dev(s, 2);
  // Both encrypt before either received anything: two sessions cross.
  const ba = await a.encrypt(1, 'from a');
  const bb = await b.encrypt(1, 'from b');
  const toA = s.take(1, 1), toB = s.take(2, 1);
  assert.deepEqual(await a.receiveToDevice(toA), { stored: 1, failed: 0 });
  assert.deepEqual(await b.receiveToDevice(toB), { stored: 1, failed: 0 });
  assert.equal(await b.decrypt(msg(1, 1, ba)), 'from a');
  assert.equal(await a.decrypt(msg(1, 2, bb)), 'from b');
  // A replayed envelope is dropped, not applied twice.
  assert.deepEqual(await b.receiveToDevice(toB), { stored: 0, failed: 1 });

  // Rotations make more envelopes over the same sessions; delivered out of order.
  const envelopes = [];
  for (let i = 0; i < 3; i++) {
    await a.rotate(1);
    await a.encrypt(1, `rotation ${i}`);
    envelopes.push(...s.take(2, 1));
  }
  assert.deepEqual(await b.receiveToDevice([envelopes[2], envelopes[0], envelopes[1]]), { stored: 3, failed: 0 });
});

test('an empty pool: the fallback key is used and kept; the one-time keys are used once', async () => {
  const s = fakeServer();
  s.members.set(1, [1, 2]);
  s.members.set(2, [1, 3]);
  const b = await dev(s, 2);
  s.keys.get('2:1').otks = [];                       // pool claimed empty by others
  const a = await dev(s, 1);
  const body = await a.encrypt(1, 'over the fallback key');
  assert.deepEqual(s.claims, ['fallback']);
  await b.receiveToDevice(s.take(2, 1));
  assert.equal(await b.decrypt(msg(1, 1, body)), 'over the fallback key');
  assert.ok(await b.store.get('otk:fallback'), 'the fallback key stays');

  const c = await dev(s, 3);
  await a.encrypt(2, 'one-time');
  const used = s.claims.at(-1);
  assert.notEqual(used, 'fallback');
  await c.receiveToDevice(s.take(3, 1));
  assert.equal(await c.store.get(`otk:${used}`), undefined, 'a used one-time key is deleted');
});

test('a signed prekey with a bad signature is refused before any session', async () => {
  const s = fakeServer();
  s.members.set(1, [1, 2]);
  await dev(s, 2);
  const spk = s.keys.get('2:1').signed_prekey;
  const sig = unb64(spk.signature);
  sig[0] ^= 1;
  spk.signature = b64(sig);
  const a = await dev(s, 1);
  await assert.rejects(a.encrypt(1, 'x'), E2EVerifyError);
});

test('keys_low tops the pool up; a message before the key arrives is pending', async () => {
  const s = fakeServer();
  s.members.set(1, [1, 2]);
  const a = await dev(s, 1), b = await dev(s, 2);
  s.keys.get('2:1').otks.splice(0, 45);
  await b.onKeysLow({ count: 5 });
  assert.equal(s.keys.get('2:1').otks.length, 50);
  const body = await a.encrypt(1, 'later');
  await assert.rejects(b.decrypt(msg(1, 1, body)), E2EPendingError);
  let notified = 0;
  b.onKeys(() => { notified++; });
  await b.receiveToDevice(s.take(2, 1));
  assert.equal(notified, 1);
  assert.equal(await b.decrypt(msg(1, 1, body)), 'later');
});

test('the safety number is the same on both sides and changes with an identity', async () => {
  const s = fakeServer();
  const a = await dev(s, 1), b = await dev(s, 2);
  const na = await a.safetyNumber(2), nb = await b.safetyNumber(1);
  assert.match(na, /^(\d{5} ){11}\d{5}$/);
  assert.equal(na, nb);
  await dev(s, 2, 2);                                // bob adds a device
  assert.notEqual(await a.safetyNumber(2), na);
});
