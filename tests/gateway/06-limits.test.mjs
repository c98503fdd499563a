// Protocol limits: oversize frames (1009), invalid UTF-8 (1007), non-JSON
// and type-less frames (error 22P02), unknown request types (error 22023),
// binary frames (1003), and a request flood beyond --rate (53400, then 1008).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { twoUserDb, startGateway, stopAll, connectAs, Client, token, rows, sleep, ms } from './lib.mjs';

const DB = 'gw_06_limits';
let gw, alice, bob, conv;

before(async () => {
  ({ alice, bob, conv } = await twoUserDb(DB));
  gw = await startGateway({ db: DB });
});
after(stopAll);

const connect = (label) => connectAs(gw, alice.id, 1, { label });

test('a frame over 64 KiB closes with 1009; one just under is assembled and served', async () => {
  const c = await connect('big-ok');
  const body = 'y'.repeat(60000);
  const r = await c.call({ type: 'send', conversation: conv, body, client_msg_id: 'big-1' }, 8000);
  assert.equal(r.seq, 1);
  c.close();
  const d = await connect('too-big');
  d.sendJson({ type: 'send', conversation: conv, body: 'z'.repeat(66 * 1024), client_msg_id: 'big-2' });
  assert.equal((await d.waitClose(5000)).code, 1009);
});

test('a message in WebSocket fragments is assembled; fragments over 64 KiB in total close with 1009', async () => {
  const c = await connect('fragments');
  const text = JSON.stringify({ id: 'frag', type: 'send', conversation: conv, body: 'f'.repeat(30000), client_msg_id: 'frag-1' });
  const parts = [text.slice(0, 10), text.slice(10, 20000), text.slice(20000)];
  parts.forEach((p, i) => c.ws.send(p, { fin: i === parts.length - 1 }));
  const r = await c.waitFor((f) => f.id === 'frag', 5000);
  assert.equal(r.type, 'ok', JSON.stringify(r));
  const [row] = await rows(DB, `SELECT length(body) AS n FROM chat.messages WHERE conversation_id = ${conv} AND client_msg_id = 'frag-1'`);
  assert.equal(row.n, 30000);
  // 8 fragments of 10 KB: no single frame is big, the message is.
  for (let i = 0; i < 8; i++) c.ws.send('x'.repeat(10000), { fin: i === 7 });
  assert.equal((await c.waitClose(5000)).code, 1009);
});

// Sends text as WebSocket fragments of the given sizes (the last one takes the rest).
function sendFragments(c, text, sizes) {
  let at = 0;
  sizes.forEach((n, i) => {
    const last = i === sizes.length - 1;
    const part = last ? text.slice(at) : text.slice(at, at + n);
    at += part.length;
    c.ws.send(part, { fin: last });
  });
}

// A JSON text of exactly n bytes: obj with a "pad" string filling the rest.
function padded(obj, n) {
  const base = JSON.stringify({ ...obj, pad: '' });
  assert.ok(base.length <= n);
  return JSON.stringify({ ...obj, pad: 'p'.repeat(n - base.length) });
}

test('fragments of 10, 600 and 400 bytes before authentication are assembled (heap overflow regression)', async () => {
  // With the 512-byte rx buffer lws hands the 600-byte fragment over in two
  // pieces; the old assembly realloc'ed to exactly 610 bytes and then wrote
  // the 400-byte fragment past it (the ASan build aborted).
  const c = await Client.connect(gw, { hello: false, label: 'frag-preauth' });
  sendFragments(c, padded({ type: 'auth', token: token(alice.id, 1) }, 1010), [10, 600, 400]);
  const hello = await c.waitFor((f) => f.type === 'hello', 5000);
  assert.equal(hello.user, alice.id);
  // And once authenticated, many shapes of fragmentation, each answered.
  const shapes = [[10, 600, 400], [1, 511, 513, 1], [600, 10, 400, 2000], [3000, 1, 1, 5000], [10, 600, 400, 600, 400, 600, 400]];
  for (const [k, sizes] of shapes.entries()) {
    const total = sizes.reduce((t, n) => t + n, 0);
    sendFragments(c, padded({ id: `shape${k}`, type: 'ping' }, total), sizes);
    assert.equal((await c.waitFor((f) => f.id === `shape${k}`, 5000)).type, 'pong', `shape ${sizes}`);
  }
  assert.ok(gw.running, 'the gateway died');
  assert.equal(await gw.healthz(), 200);
  c.close();
});

test('request ids: numbers and strings up to 128 characters are echoed; others refused and never echoed', async () => {
  const c = await connect('ids');
  const ok128 = 'i'.repeat(128);
  assert.deepEqual(await c.request({ id: ok128, type: 'ping' }), { id: ok128, type: 'pong' });
  assert.deepEqual(await c.request({ id: 12.5, type: 'ping' }), { id: 12.5, type: 'pong' });
  const bad = [
    [{ big: 'o'.repeat(5000) }, '22P02'],
    [['a', 'r', 'r'.repeat(5000)], '22P02'],
    [{}, '22P02'],
    [true, '22P02'],
    [null, '22P02'],
    ['s'.repeat(129), '22023'],
    ['é'.repeat(65), '22023'],   // 130 bytes of UTF-8
  ];
  for (const [id, code] of bad) {
    const since = c.mark();
    c.sendJson({ id, type: 'ping' });
    const e = await c.waitFor((f) => f.type === 'error' || f.type === 'pong', 3000, since);
    assert.equal(e.type, 'error', `id ${JSON.stringify(id).slice(0, 40)} was answered: ${JSON.stringify(e).slice(0, 200)}`);
    assert.equal(e.code, code, `id ${JSON.stringify(id).slice(0, 40)}: ${JSON.stringify(e).slice(0, 200)}`);
    assert.ok(!('id' in e), `the refused id was echoed: ${JSON.stringify(e).slice(0, 200)}`);
  }
  // A refused id never reaches the database either.
  const since = c.mark();
  c.sendJson({ id: { x: 1 }, type: 'send', conversation: conv, body: 'never', client_msg_id: 'bad-id-1' });
  assert.equal((await c.waitFor((f) => f.type === 'error', 3000, since)).code, '22P02');
  assert.deepEqual(await rows(DB, `SELECT seq FROM chat.messages WHERE client_msg_id = 'bad-id-1'`), []);
  assert.equal((await c.request({ type: 'ping' })).type, 'pong');
  c.close();
});

test('--max-frame lowers the cap', async () => {
  const gw2 = await startGateway({ db: DB, args: ['--max-frame', '1024'], label: 'maxframe' });
  const c = await connectAs(gw2, alice.id, 1, { label: 'capped' });
  assert.equal((await c.request({ type: 'ping', pad: 'p'.repeat(900) })).type, 'pong');
  c.sendJson({ type: 'ping', pad: 'p'.repeat(2000) });
  assert.equal((await c.waitClose(5000)).code, 1009);
  await gw2.stop();
});

test('invalid UTF-8 closes with 1007', async () => {
  const c = await connect('bad-utf8');
  // {"type":"ping","x":"<0xC3 0x28>"}: an invalid two-byte sequence, sent as a text frame.
  const bytes = Buffer.concat([Buffer.from('{"id":1,"type":"ping","x":"'), Buffer.from([0xc3, 0x28]), Buffer.from('"}')]);
  c.sendRaw(bytes, { binary: false });
  const info = await c.waitClose(5000);
  assert.equal(info.code, 1007);
  assert.ok(!c.frames.some((f) => f.type === 'pong'), 'answered an invalid frame');
});

test('a UTF-8 character split across two fragments is valid', async () => {
  const c = await connect('split-utf8');
  const bytes = Buffer.from('{"id":"u8","type":"ping","x":"é"}');
  const cut = bytes.indexOf(0xc3) + 1;   // between the two bytes of é
  c.ws.send(bytes.subarray(0, cut), { binary: false, fin: false });
  c.ws.send(bytes.subarray(cut), { binary: false, fin: true });
  assert.equal((await c.waitFor((f) => f.id === 'u8', 3000)).type, 'pong');
  assert.ok(c.open);
  c.close();
});

test('non-JSON and type-less frames get error 22P02 and the connection stays', async () => {
  const c = await connect('not-json');
  let since = c.mark();
  c.sendRaw('hello, this is not json');
  const e1 = await c.waitFor((f) => f.type === 'error', 3000, since);
  assert.equal(e1.code, '22P02', JSON.stringify(e1));
  since = c.mark();
  c.sendJson({ id: 'nt', conversation: conv });
  const e2 = await c.waitFor((f) => f.type === 'error', 3000, since);
  assert.equal(e2.code, '22P02', JSON.stringify(e2));
  since = c.mark();
  c.sendRaw('[1,2,3]');
  assert.equal((await c.waitFor((f) => f.type === 'error', 3000, since)).code, '22P02');
  assert.equal((await c.request({ id: 'alive', type: 'ping' })).type, 'pong');
  assert.ok(c.open);
  c.close();
});

test('an unknown request type gets error 22023 with its id', async () => {
  const c = await connect('unknown');
  const r = await c.request({ id: 42, type: 'launch_rockets', conversation: conv });
  assert.equal(r.type, 'error');
  assert.equal(r.id, 42);
  assert.equal(r.code, '22023', JSON.stringify(r));
  const bad = await c.request({ id: 43, type: 'send', conversation: 'seven', body: 'x', client_msg_id: 'k' });
  assert.equal(bad.type, 'error');
  assert.ok(['22023', '22P02'].includes(bad.code), JSON.stringify(bad));
  assert.equal((await c.request({ type: 'ping' })).type, 'pong');
  c.close();
});

test('a binary frame closes with 1003', async () => {
  const c = await connect('binary');
  c.sendRaw(Buffer.from('{"type":"ping","id":1}'), { binary: true });
  assert.equal((await c.waitClose(5000)).code, 1003);
});

test('a flood beyond --rate gets 53400 error frames, then close 1008', async () => {
  const gw2 = await startGateway({ db: DB, args: ['--rate', '10'], label: 'rate' });
  const c = await connectAs(gw2, alice.id, 1, { label: 'flooder' });
  // Within the rate, requests are served.
  for (let i = 0; i < 3; i++) assert.equal((await c.request({ type: 'presence', users: [bob.id] })).type, 'ok');
  await sleep(1100);
  let sent = 0;
  const deadline = Date.now() + ms(10000);
  // Bounded: at most 10 s and 4000 frames.
  while (c.open && Date.now() < deadline && sent < 4000) {
    for (let i = 0; i < 50 && c.open; i++) c.sendJson({ id: `f${sent++}`, type: 'presence', users: [bob.id] });
    await sleep(50);
  }
  const info = await c.waitClose(5000);
  const limited = c.frames.filter((f) => f.type === 'error' && f.code === '53400');
  assert.ok(limited.length > 0, `no 53400 error frames before the close (${JSON.stringify(info)}, ${sent} sent); frames: ${c.recent()}`);
  assert.equal(info.code, 1008, `close code after the flood (sent ${sent})`);
  const served = c.frames.filter((f) => f.type === 'ok').length;
  assert.ok(served < sent, `every one of ${sent} flood frames was served`);
  // A well-behaved client on the same gateway is unaffected.
  const d = await connectAs(gw2, bob.id, 1, { label: 'polite' });
  assert.equal((await d.request({ type: 'ping' })).type, 'pong');
  d.close();
  await gw2.stop();
});

test('caps: --max-unauth unauthenticated and --max-conns total connections', async () => {
  const gw2 = await startGateway({ db: DB, args: ['--max-unauth', '2', '--max-conns', '4'], label: 'caps' });
  const refused = async (label, opts = {}) => {
    await assert.rejects(Client.connect(gw2, { hello: false, label, timeout: 3000, ...opts }), `${label} was accepted beyond the cap`);
  };
  // Two unauthenticated connections fill --max-unauth; a third is refused.
  const u1 = await Client.connect(gw2, { hello: false, label: 'unauth 1' });
  const u2 = await Client.connect(gw2, { hello: false, label: 'unauth 2' });
  await refused('unauth 3');
  // Authenticating one frees its unauthenticated slot.
  u1.sendJson({ type: 'auth', token: token(alice.id, 1) });
  await u1.waitFor((f) => f.type === 'hello', 3000);
  const u3 = await Client.connect(gw2, { hello: false, label: 'unauth 3 again' });
  u3.sendJson({ type: 'auth', token: token(bob.id, 1) });
  await u3.waitFor((f) => f.type === 'hello', 3000);
  u2.sendJson({ type: 'auth', token: token(alice.id, 1) });
  await u2.waitFor((f) => f.type === 'hello', 3000);
  // Three open; a fourth fills --max-conns; a fifth is refused.
  const c4 = await connectAs(gw2, bob.id, 1, { label: 'fourth' });
  await refused('fifth', { token: token(bob.id, 1) });
  // Every connection in the cap works; closing one makes room.
  for (const c of [u1, u2, u3, c4]) assert.equal((await c.request({ type: 'ping' })).type, 'pong', c.label);
  c4.close();
  await c4.closed;
  let ok = null;
  for (let i = 0; i < 20 && !ok; i++) {
    ok = await connectAs(gw2, bob.id, 1, { label: 'after a close' }).catch(() => null);
    if (!ok) await sleep(100);
  }
  assert.ok(ok, 'no room after a connection closed');
  for (const c of [u1, u2, u3, ok]) c.close();
  await gw2.stop();
});
