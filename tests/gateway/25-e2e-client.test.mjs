// The e2e client (web/client/e2e.js) against a real gateway and database:
// three users with two devices each, in a direct conversation and a group,
// every device decrypts every message; a removed member cannot decrypt what
// follows its removal; a device added later decrypts from its joining on;
// the state survives a store round trip; tampered ciphertext is refused.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { newDb, makeUser, direct, group, startGateway, stopAll, psql, value, sleep } from './lib.mjs';
import { E2E, MemoryStore, E2EPendingError, E2EVerifyError, b64, unb64 } from '../../web/client/e2e.js';
import { device as connectDevice, sendText, read } from './e2e-lib.mjs';

const device = (user, dev, store) => connectDevice(gw, user, dev, store);

const DB = 'gw_25_e2e_client';
let gw;

before(async () => {
  await newDb(DB);
  gw = await startGateway({ db: DB });
});
after(stopAll);

test('three users, two devices each: direct and group, every device decrypts every message', async () => {
  const [ua, ub, uc] = [await makeUser(DB, { devices: 2 }), await makeUser(DB, { devices: 2 }), await makeUser(DB, { devices: 2 })];
  const devs = [];
  for (const u of [ua, ub, uc]) for (const k of [1, 2]) devs.push(await device(u.id, k));
  const [a1, a2, b1, b2, c1, c2] = devs;

  const dm = await direct(DB, ua.id, ub.id);
  await a1.c.call({ type: 'enable_e2e', conversation: dm });
  const texts = [];
  for (const [d, text] of [[a1, `dm from a1 ${Math.random()}`], [b2, `dm from b2 ${Math.random()}`], [a2, `dm from a2 ${Math.random()}`]]) {
    texts.push([await sendText(d, dm, text), text]);
  }
  for (const d of [a1, a2, b1, b2])
    for (const [seq, text] of texts) assert.equal(await read(d, dm, seq), text, `u${d.user}/${d.dev} seq ${seq}`);

  const g = await group(DB, ua.id, [ub.id, uc.id]);
  await a1.c.call({ type: 'enable_e2e', conversation: g });
  const gtexts = [];
  for (const d of devs) gtexts.push([await sendText(d, g, `group from u${d.user}/${d.dev} ${Math.random()}`), null]);
  for (const [i, d] of devs.entries()) gtexts[i][1] = `group from u${d.user}/${d.dev}`;
  for (const d of devs)
    for (const [seq, prefix] of gtexts) assert.ok((await read(d, g, seq)).startsWith(prefix), `u${d.user}/${d.dev} seq ${seq}`);

  // A plaintext send is still refused; the server holds no text.
  const plain = await a1.c.request({ type: 'send', conversation: g, body: 'plain' });
  assert.equal(plain.code, '22023');
  assert.equal(Number(await value(DB, `SELECT count(*) FROM chat.messages WHERE conversation_id IN (${dm}, ${g}) AND body LIKE '%from%'`)), 0);

  // Removal: c leaves the group; the next message uses a new sender key
  // that no device of c gets, though c still holds the old one.
  await a1.c.call({ type: 'remove_member', conversation: g, user: uc.id });
  const secret = `after removal ${Math.random()}`;
  const seq = await sendText(a1, g, secret);
  assert.equal(await read(b1, g, seq), secret);
  const stored = await value(DB, `SELECT body FROM chat.messages WHERE conversation_id = ${g} AND seq = ${seq}`);
  const m = { conversation: g, seq, sender: ua.id, sender_device: 1, kind: 'e2e', body: stored };
  await sleep(300);
  for (const d of [c1, c2]) await assert.rejects(d.e2e.decrypt(m), E2EPendingError, `u${d.user}/${d.dev} must not read it`);
  // The removed member's old key still reads the old messages (it had them).
  assert.ok((await c1.e2e.decrypt({ ...m, seq: gtexts[0][0], body: await value(DB, `SELECT body FROM chat.messages WHERE conversation_id = ${g} AND seq = ${gtexts[0][0]}`) })).startsWith('group from'));
});

test('a device added later decrypts from its joining on, not before', async () => {
  const ua = await makeUser(DB), ub = await makeUser(DB);
  const a1 = await device(ua.id, 1), b1 = await device(ub.id, 1);
  const dm = await direct(DB, ua.id, ub.id);
  await a1.c.call({ type: 'enable_e2e', conversation: dm });
  const early = await sendText(a1, dm, 'before the new device');
  assert.equal(await read(b1, dm, early), 'before the new device');

  const dev2 = Number(await value(DB, `SELECT chat.register_device(${ub.id})`));
  const b2 = await device(ub.id, dev2);
  const late = await sendText(a1, dm, 'after the new device');
  assert.equal(await read(b2, dm, late), 'after the new device');
  assert.equal(await read(b1, dm, late), 'after the new device');
  const { messages } = await b2.c.call({ type: 'after', conversation: dm, after_seq: early - 1, limit: 1 });
  await assert.rejects(b2.e2e.decrypt(messages[0]), E2EPendingError);

  // A removed device: the next message is under a new key it never gets.
  await psql(DB, `SELECT chat.remove_device(${ub.id}, ${dev2})`);
  const after = await sendText(a1, dm, 'after the removal');
  assert.equal(await read(b1, dm, after), 'after the removal');
  const body = await value(DB, `SELECT body FROM chat.messages WHERE conversation_id = ${dm} AND seq = ${after}`);
  await assert.rejects(b2.e2e.decrypt({ conversation: dm, seq: after, sender: ua.id, sender_device: 1, body }), E2EPendingError);
});

test('ratchet state survives a store round trip (reload)', async () => {
  const ua = await makeUser(DB), ub = await makeUser(DB);
  const a1 = await device(ua.id, 1), b1 = await device(ub.id, 1);
  const dm = await direct(DB, ua.id, ub.id);
  await a1.c.call({ type: 'enable_e2e', conversation: dm });
  assert.equal(await read(b1, dm, await sendText(a1, dm, 'one')), 'one');
  assert.equal(await read(a1, dm, await sendText(b1, dm, 'two')), 'two');

  // "Reload" both: new stores from their JSON, new E2E objects.
  for (const d of [a1, b1]) {
    await d.e2e.queue;
    d.store = MemoryStore.load(d.store.dump());
    d.e2e = new E2E({ user: d.user, device: d.dev, store: d.store, call: (req) => d.c.call(req) });
    await d.e2e.init();
  }
  const keysBefore = await value(DB, `SELECT count(*) FROM chat.device_keys WHERE user_id IN (${ua.id}, ${ub.id})`);
  assert.equal(Number(keysBefore), 2);
  assert.equal(await read(b1, dm, await sendText(a1, dm, 'three')), 'three');
  assert.equal(await read(a1, dm, await sendText(b1, dm, 'four')), 'four');
  assert.equal(await read(a1, dm, 2), 'one', 'history still reads after the reload (seq 1 is the system message)');
});

test('tampered ciphertext, signature, sender or envelope is refused', async () => {
  const ua = await makeUser(DB), ub = await makeUser(DB), uc = await makeUser(DB);
  const a1 = await device(ua.id, 1), b1 = await device(ub.id, 1), c1 = await device(uc.id, 1);
  const g = await group(DB, ua.id, [ub.id, uc.id]);
  await a1.c.call({ type: 'enable_e2e', conversation: g });
  const seq = await sendText(a1, g, 'authentic');
  assert.equal(await read(b1, g, seq), 'authentic');
  const { messages: [m] } = await b1.c.call({ type: 'after', conversation: g, after_seq: seq - 1, limit: 1 });
  const body = JSON.parse(m.body);

  const flip = (s) => { const x = unb64(s); x[x.length - 1] ^= 1; return b64(x); };
  for (const [what, bad] of [
    ['ciphertext', { ...m, body: JSON.stringify({ ...body, ct: flip(body.ct) }) }],
    ['signature', { ...m, body: JSON.stringify({ ...body, sig: flip(body.sig) }) }],
    ['counter', { ...m, body: JSON.stringify({ ...body, n: body.n + 1 }) }],
    ['sender', { ...m, sender: uc.id }],
    ['sender device', { ...m, sender_device: 2 }],
    ['conversation', { ...m, conversation: g + 1 }],
    ['body', { ...m, body: 'not json' }],
  ]) await assert.rejects(b1.e2e.decrypt(bad), E2EVerifyError, what);
  assert.equal(await b1.e2e.decrypt(m), 'authentic', 'the genuine message still decrypts');

  // A member forging a message under a's sender key (c knows the chain
  // key, not a's identity key): the signature check refuses it.
  const forged = await c1.e2e.encrypt(g, 'forged');
  const fb = JSON.parse(forged);
  const impostor = { ...m, seq: seq + 1, body: JSON.stringify({ ...fb, sid: body.sid, n: body.n + 1 }) };
  await assert.rejects(b1.e2e.decrypt(impostor), E2EVerifyError);

  // A tampered to_device envelope is dropped (and acked), not applied.
  const since = b1.c.mark();
  const envelope = { user: ub.id, device: 1, type: 'msg', ciphertext: b64(new TextEncoder().encode('{"header":{"dh":"AAAA","pn":0,"n":0},"ct":"AAAA"}')) };
  await a1.c.call({ type: 'to_device', txn: `t${Math.random()}`, messages: [envelope] });
  const ev = await b1.c.waitFor((f) => f.type === 'to_device', 3000, since);
  assert.deepEqual(await b1.e2e.receiveToDevice([ev]), { stored: 0, failed: 1 });
  assert.equal(Number(await value(DB, `SELECT count(*) FROM chat.to_device WHERE user_id = ${ub.id}`)), 0);
});
