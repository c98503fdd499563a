// What an unauthenticated network peer can reach: --max-unauth-per-ip (one
// host holding idle sockets cannot lock others out), --static without
// symlinks out of its root, and /metrics on its own --metrics-listen address.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import http from 'node:http';
import { newDb, makeUser, startGateway, stopAll, Client, token, freePort, sleep, ms } from './lib.mjs';

const DB = 'gw_21_exposure';
let alice, dir;

before(async () => {
  await newDb(DB);
  alice = await makeUser(DB);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gw21-'));
});
after(async () => {
  await stopAll();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('--max-unauth-per-ip: one address holding idle sockets does not lock out another', async () => {
  const gw = await startGateway({ db: DB, args: ['--max-unauth-per-ip', '3', '--max-unauth', '100'], label: 'per-ip' });
  const held = [];
  for (let i = 0; i < 3; i++) held.push(await Client.connect(gw, { hello: false, label: `idle ${i}` }));
  // The fourth from 127.0.0.1 is refused at the upgrade.
  await assert.rejects(Client.connect(gw, { hello: false, label: 'idle 4', timeout: 3000 }), 'a fourth unauthenticated socket from 127.0.0.1 was accepted');
  // Another address still gets in and authenticates.
  const other = await Client.connect(gw, { hello: false, label: '127.0.0.2', wsOptions: { localAddress: '127.0.0.2' } });
  other.sendJson({ type: 'auth', token: token(alice.id, 1) });
  await other.waitFor((f) => f.type === 'hello', 3000);
  // Authenticating frees the address's slot.
  held[0].sendJson({ type: 'auth', token: token(alice.id, 1) });
  await held[0].waitFor((f) => f.type === 'hello', 3000);
  const again = await Client.connect(gw, { hello: false, label: 'after an auth' });
  // Closing an unauthenticated one frees its slot too.
  held[1].terminate();
  let ok = null;
  for (let i = 0; i < 30 && !ok; i++) {
    ok = await Client.connect(gw, { hello: false, label: 'after a close', timeout: 2000 }).catch(() => null);
    if (!ok) await sleep(100);
  }
  assert.ok(ok, 'no room after an unauthenticated socket closed');
  const m = await gw.get('/metrics');
  assert.match(m.text, /chat_gateway_unauth_per_ip_refused_total\{[^}]*\} [1-9]/);
  for (const c of [...held, other, again, ok]) c.terminate();
  await gw.stop();
});

test('--static does not follow symlinks out of its root', async () => {
  const www = path.join(dir, 'www');
  const outside = path.join(dir, 'outside');
  fs.mkdirSync(path.join(www, 'sub'), { recursive: true });
  fs.mkdirSync(outside);
  fs.writeFileSync(path.join(www, 'index.html'), '<title>root index 5d1e</title>\n');
  fs.writeFileSync(path.join(www, 'sub', 'index.html'), 'sub index 77aa\n');
  fs.writeFileSync(path.join(www, 'inside.txt'), 'inside 0c3f\n');
  fs.writeFileSync(path.join(outside, 'secret.txt'), 'outside secret 9e41\n');
  fs.symlinkSync('/etc/passwd', path.join(www, 'passwd'));
  fs.symlinkSync(path.join(outside, 'secret.txt'), path.join(www, 'secret.txt'));
  fs.symlinkSync(outside, path.join(www, 'outdir'));
  fs.symlinkSync('inside.txt', path.join(www, 'alias.txt'));      // stays inside: served
  const gw = await startGateway({ db: DB, args: ['--static', www], label: 'static' });
  assert.match((await gw.get('/')).text, /root index 5d1e/);
  assert.match((await gw.get('/sub/')).text, /sub index 77aa/);
  assert.match((await gw.get('/inside.txt')).text, /inside 0c3f/);
  assert.match((await gw.get('/alias.txt')).text, /inside 0c3f/);
  for (const p of ['/secret.txt', '/passwd', '/outdir/secret.txt', '/outdir/', '/../outside/secret.txt', '/%2e%2e/outside/secret.txt', '/nope.txt']) {
    const r = await gw.get(p);
    assert.ok(r.status === 404 || r.status === 403, `${p}: HTTP ${r.status}`);
    assert.doesNotMatch(r.text, /root:|outside secret/, `${p} leaked a file outside the root`);
  }
  assert.equal(await gw.healthz(), 200);
  await gw.stop();
});

// GET on an explicit address; resolves {status, text} ({status: 0} when unreachable).
function get(url, headers = {}) {
  return new Promise((resolve) => {
    const req = http.get(url, { agent: false, timeout: ms(3000), headers }, (res) => {
      const chunks = [];
      res.on('data', (d) => chunks.push(d));
      res.on('end', () => resolve({ status: res.statusCode, text: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (e) => resolve({ status: 0, text: String(e) }));
  });
}

test('--metrics-listen serves /metrics and /healthz on its own address; the main listener no longer serves /metrics', async () => {
  const plain = await startGateway({ db: DB, label: 'metrics-default' });
  assert.equal((await plain.get('/metrics')).status, 200, 'without --metrics-listen /metrics stays on --listen');
  await plain.stop();

  const mport = await freePort();
  const gw = await startGateway({ db: DB, args: ['--metrics-listen', `127.0.0.1:${mport}`], label: 'metrics-listen' });
  const main = await gw.get('/metrics');
  assert.equal(main.status, 404, 'the main listener still serves /metrics');
  assert.doesNotMatch(main.text, /chat_gateway_/);
  assert.equal(await gw.healthz(), 200, '/healthz stays on the main listener');
  // lws picks a vhost by the Host header: naming the metrics vhost from the
  // main listener must not reach /metrics either.
  for (const host of ['metrics', `metrics:${gw.port}`, `127.0.0.1:${mport}`]) {
    const r = await get(`${gw.http}/metrics`, { Host: host });
    assert.equal(r.status, 404, `Host: ${host} on the main listener reached /metrics`);
  }
  const m = await get(`http://127.0.0.1:${mport}/metrics`);
  assert.equal(m.status, 200);
  assert.match(m.text, /chat_gateway_connections\{/);
  assert.equal((await get(`http://127.0.0.1:${mport}/healthz`)).status, 200);
  assert.equal((await get(`http://127.0.0.1:${mport}/`)).status, 404);
  // No WebSocket on the metrics address.
  await assert.rejects(Client.connect(`ws://127.0.0.1:${mport}/ws?token=${token(alice.id, 1)}`, { label: 'ws on metrics', timeout: 3000 }));
  await assert.rejects(Client.connect(`ws://127.0.0.1:${mport}/ws?token=${token(alice.id, 1)}`,
    { label: 'ws on metrics, Host: chat', timeout: 3000, wsOptions: { headers: { Host: 'chat' } } }));
  // The metrics listener binds where it is told: 127.0.0.2 reaches nothing.
  assert.equal((await get(`http://127.0.0.2:${mport}/metrics`)).status, 0);
  await gw.stop();
});
