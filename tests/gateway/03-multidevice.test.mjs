// Multi-device delivery: every device of every member gets a message, the
// sender's other devices included; the exact sending device does not.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { newDb, makeUser, direct, group, startGateway, stopAll, connectAs } from './lib.mjs';

const DB = 'gw_03_multidevice';
let gw, alice, bob, carol;

before(async () => {
  await newDb(DB);
  alice = await makeUser(DB, { devices: 3 });
  bob = await makeUser(DB, { devices: 2 });
  carol = await makeUser(DB);
  gw = await startGateway({ db: DB });
});
after(stopAll);

test('a direct message reaches the peer\'s devices and the sender\'s other devices, not the sending one', async () => {
  const conv = await direct(DB, alice.id, bob.id);
  const a1 = await connectAs(gw, alice.id, 1, { label: 'alice/1' });
  const a2 = await connectAs(gw, alice.id, 2, { label: 'alice/2' });
  const b1 = await connectAs(gw, bob.id, 1, { label: 'bob/1' });
  const b2 = await connectAs(gw, bob.id, 2, { label: 'bob/2' });
  const r = await a1.call({ type: 'send', conversation: conv, body: 'to all your devices', client_msg_id: 'md-1' });
  const want = (f) => f.type === 'message' && f.conversation === conv && f.seq === r.seq;
  for (const c of [a2, b1, b2]) {
    const ev = await c.waitFor(want, 3000);
    assert.equal(ev.body, 'to all your devices', c.label);
    assert.equal(ev.sender, alice.id);
    assert.equal(ev.sender_device, 1);
    assert.equal(ev.client_msg_id, 'md-1');
  }
  await a1.expectNone((f) => f.type === 'message', 300);
  // Exactly once per device.
  for (const c of [a2, b1, b2]) assert.equal(c.frames.filter(want).length, 1, `${c.label} got it once`);

  // The other way: bob/2 sends; bob/1 and both alice devices get it.
  const r2 = await b2.call({ type: 'send', conversation: conv, body: 'back', client_msg_id: 'md-2' });
  const want2 = (f) => f.type === 'message' && f.seq === r2.seq;
  for (const c of [a1, a2, b1]) assert.equal((await c.waitFor(want2, 3000)).sender_device, 2, c.label);
  await b2.expectNone(want2, 200);
  for (const c of [a1, a2, b1, b2]) c.close();
});

test('a device connected twice gets a peer\'s message on both sockets', async () => {
  // E.g. a reconnect racing the old socket: the gateway delivers to every
  // local connection of a listed user.
  const conv = await direct(DB, alice.id, carol.id);
  const a3x = await connectAs(gw, alice.id, 3, { label: 'alice/3 first' });
  const a3y = await connectAs(gw, alice.id, 3, { label: 'alice/3 second' });
  const c1 = await connectAs(gw, carol.id, 1, { label: 'carol' });
  const r = await c1.call({ type: 'send', conversation: conv, body: 'to both sockets', client_msg_id: 'md-3' });
  for (const c of [a3x, a3y]) assert.equal((await c.waitFor((f) => f.type === 'message' && f.seq === r.seq, 3000)).body, 'to both sockets');
  // One socket goes: the device is still online through the other.
  a3x.close();
  await a3x.closed;
  await new Promise((res) => setTimeout(res, 300));
  const since = a3y.mark();
  const r2 = await c1.call({ type: 'send', conversation: conv, body: 'still there?', client_msg_id: 'md-4' });
  assert.equal((await a3y.waitFor((f) => f.type === 'message' && f.seq === r2.seq, 3000, since)).body, 'still there?');
  for (const c of [a3y, c1]) c.close();
});

test('a group message reaches every member device once', async () => {
  const conv = await group(DB, alice.id, [bob.id, carol.id], 'team');
  const devices = [
    await connectAs(gw, alice.id, 1, { label: 'alice/1' }),
    await connectAs(gw, alice.id, 2, { label: 'alice/2' }),
    await connectAs(gw, bob.id, 1, { label: 'bob/1' }),
    await connectAs(gw, bob.id, 2, { label: 'bob/2' }),
    await connectAs(gw, carol.id, 1, { label: 'carol/1' }),
  ];
  const [sender, ...others] = devices;
  const since = others.map((c) => c.mark());
  const results = [];
  for (let i = 0; i < 5; i++) results.push(await sender.call({ type: 'send', conversation: conv, body: `g${i}`, client_msg_id: `g-${i}` }));
  const last = results.at(-1).seq;
  for (const [i, c] of others.entries()) {
    await c.waitFor((f) => f.type === 'message' && f.conversation === conv && f.seq === last, 3000, since[i]);
    const got = c.frames.slice(since[i]).filter((f) => f.type === 'message' && f.conversation === conv);
    assert.deepEqual(got.map((m) => m.body), ['g0', 'g1', 'g2', 'g3', 'g4'], `${c.label}: each once, in order`);
  }
  await sender.expectNone((f) => f.type === 'message' && f.conversation === conv, 200);
  for (const c of devices) c.close();
});

test('a large group message (notified by reference) reaches every device in full', async () => {
  const conv = await group(DB, bob.id, [alice.id, carol.id], 'big');
  const devices = [
    await connectAs(gw, alice.id, 1, { label: 'alice/1' }),
    await connectAs(gw, alice.id, 2, { label: 'alice/2' }),
    await connectAs(gw, bob.id, 2, { label: 'bob/2' }),
    await connectAs(gw, carol.id, 1, { label: 'carol/1' }),
  ];
  const sender = await connectAs(gw, bob.id, 1, { label: 'bob/1' });
  const body = 'ß'.repeat(10000) + '\n' + 'z'.repeat(9000);   // about 29 KB of UTF-8
  const r = await sender.call({ type: 'send', conversation: conv, body, client_msg_id: 'big-group' });
  for (const c of devices) {
    const ev = await c.waitFor((f) => f.type === 'message' && f.conversation === conv && f.seq === r.seq, 5000);
    assert.ok(ev.body === body, `${c.label}: body of ${ev.body?.length} chars`);
    assert.ok(!('ref' in ev), `${c.label}: unresolved ref`);
    assert.equal(ev.sender, bob.id);
    assert.equal(ev.sender_device, 1);
  }
  await sender.expectNone((f) => f.type === 'message' && f.seq === r.seq && f.conversation === conv, 200);
  for (const c of [...devices, sender]) c.close();
});
