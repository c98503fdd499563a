// E2E client figures for bench/e2e.sh: to-device latency through a gateway,
// and the client cost of encrypting to a group (web/client/e2e.js against
// an in-memory key directory, so that only the client's CPU is measured).
//
//   node bench/e2e-client.mjs --url ws://127.0.0.1:8080/ws --token1 T --token2 T --user2 2 \
//        [--latency 50] [--group 256]
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import WebSocket from 'ws';
import { E2E, MemoryStore } from '../web/client/e2e.js';

const { values: opt } = parseArgs({ options: {
  url: { type: 'string' }, token1: { type: 'string' }, token2: { type: 'string' }, user2: { type: 'string' },
  latency: { type: 'string', default: '50' }, group: { type: 'string', default: '256' },
} });

// The p-th percentile of sorted numbers.
const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];

// A chat.v1 connection: call(request) resolves with the result; onEvent(frame) for pushes.
function connect(url, token, onEvent) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url}?token=${token}`, ['chat.v1']);
    const pending = new Map();
    let next = 1;
    const conn = {
      ws,
      call(req) {
        const id = next++;
        ws.send(JSON.stringify({ id, ...req }));
        return new Promise((res, rej) => pending.set(id, { res, rej }));
      },
    };
    ws.on('message', (data) => {
      const f = JSON.parse(data.toString());
      if (f.type === 'hello') resolve(conn);
      else if (f.id != null && pending.has(f.id)) {
        const p = pending.get(f.id);
        pending.delete(f.id);
        if (f.type === 'ok') p.res(f.result); else p.rej(new Error(JSON.stringify(f)));
      } else onEvent(f);
    });
    ws.on('error', reject);
  });
}

// 2. Time from a to_device request until its event reaches the recipient.
async function toDeviceLatency(n) {
  let waiting = null;
  const sender = await connect(opt.url, opt.token1, () => {});
  const recipient = await connect(opt.url, opt.token2, (f) => { if (f.type === 'to_device' && waiting) waiting(f); });
  const times = [];
  let last = 0;
  for (let i = 0; i < n; i++) {
    const got = new Promise((r) => { waiting = r; });
    const t0 = performance.now();
    await sender.call({ type: 'to_device', txn: `bench-${Date.now()}-${i}`,
      messages: [{ user: Number(opt.user2), device: 1, type: 'bench', ciphertext: 'Q0lQSEVSVEVYVA==' }] });
    const ev = await got;
    times.push(performance.now() - t0);
    last = ev.id;
  }
  await recipient.call({ type: 'to_device_ack', up_to: last });
  sender.ws.close();
  recipient.ws.close();
  times.sort((a, b) => a - b);
  console.log(`to-device latency over ${n}: p50 ${pct(times, 0.5).toFixed(2)} ms, p99 ${pct(times, 0.99).toFixed(2)} ms`);
}

// An in-memory key directory and inbox standing in for the server.
function fakeServer(members) {
  const keys = new Map();        // "u:d" -> {identity_key, signed_prekey, otks: [], fallback}
  const inbox = new Map();       // "u:d" -> [{...}]
  let nextId = 1;
  return {
    inbox,
    handler(user, device) {
      const me = `${user}:${device}`;
      return async (req) => {
        switch (req.type) {
          case 'keys_upload': {
            const k = keys.get(me) ?? { otks: [] };
            if (req.identity_key) Object.assign(k, { identity_key: req.identity_key, signed_prekey: { ...req.signed_prekey, id: String(req.signed_prekey.id) }, fallback: req.fallback_key });
            for (const o of req.one_time_keys ?? []) k.otks.push({ id: String(o.id), key: o.key });
            keys.set(me, k);
            return { one_time_keys: k.otks.length };
          }
          case 'members': return { members: members.map((u) => ({ user: u })) };
          case 'keys_query': return { devices: [...keys.entries()].filter(([ud]) => req.users.includes(Number(ud.split(':')[0])))
            .map(([ud, k]) => ({ user: Number(ud.split(':')[0]), device: Number(ud.split(':')[1]), identity_key: k.identity_key, signed_prekey: k.signed_prekey })) };
          case 'keys_claim': return { bundles: req.devices.map((d) => {
            const k = keys.get(`${d.user}:${d.device}`);
            const otk = k.otks.shift();
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
  };
}

// 3. Encrypting to a group of n member devices (one device per member).
async function groupCost(n) {
  const members = Array.from({ length: n }, (_, i) => i + 1);
  const server = fakeServer(members);
  const devices = [];
  const t0 = performance.now();
  for (const u of members) {
    const e = new E2E({ user: u, device: 1, store: new MemoryStore(), call: server.handler(u, 1) });
    await e.init();
    devices.push(e);
  }
  const setup = performance.now() - t0;
  const sender = devices[0];
  let t = performance.now();
  const first = await sender.encrypt(1, 'the first message');
  const firstMs = performance.now() - t;
  const k = 100;
  t = performance.now();
  for (let i = 0; i < k; i++) await sender.encrypt(1, `message ${i}`);
  const nextMs = (performance.now() - t) / k;
  // Sanity: the last member reads the first message.
  const last = devices[n - 1];
  await last.receiveToDevice(server.inbox.get(`${n}:1`));
  const text = await last.decrypt({ conversation: 1, sender: 1, sender_device: 1, body: first });
  if (text !== 'the first message') throw new Error('group sanity check failed');
  t = performance.now();
  await last.decrypt({ conversation: 1, sender: 1, sender_device: 1, body: await sender.encrypt(1, 'x') });
  const decryptMs = performance.now() - t;
  console.log(`group of ${n} devices: key setup of all devices ${(setup / 1000).toFixed(1)} s (not per message); ` +
    `first message (X3DH with ${n - 1} devices + sender key shared) ${firstMs.toFixed(1)} ms, ` +
    `envelopes ${(server.inbox.get(`2:1`)?.[0]?.ciphertext.length ?? 0)} bytes each; ` +
    `next messages ${nextMs.toFixed(2)} ms each (encrypt + sign, plus the members/keys_query round trips' client side); ` +
    `one decrypt ${decryptMs.toFixed(2)} ms`);
}

if (opt.url) await toDeviceLatency(Number(opt.latency));
await groupCost(Number(opt.group));
