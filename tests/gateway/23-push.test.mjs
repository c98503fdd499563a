// Push registration through the gateway: hello announces the VAPID public
// key given with --vapid-public-key (a PEM public or private key), and
// register_push / unregister_push store and remove a device's Web Push
// subscription (bad shapes are 22023 and store nothing).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { newDb, makeUser, startGateway, stopAll, connectAs, rows, GATEWAY_BIN } from './lib.mjs';

const DB = 'gw_23_push';
let alice, tmp, publicPoint, withPrivate, withPublic, without;

before(async () => {
  await newDb(DB);
  alice = await makeUser(DB, { devices: 1 });
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'gw-push-'));
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  fs.writeFileSync(path.join(tmp, 'private.pem'), privateKey.export({ type: 'pkcs8', format: 'pem' }));
  fs.writeFileSync(path.join(tmp, 'public.pem'), publicKey.export({ type: 'spki', format: 'pem' }));
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 1024 });
  fs.writeFileSync(path.join(tmp, 'rsa.pem'), rsa.privateKey.export({ type: 'pkcs8', format: 'pem' }));
  const jwk = publicKey.export({ format: 'jwk' });
  publicPoint = Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x, 'base64url'), Buffer.from(jwk.y, 'base64url')]).toString('base64url');
  withPrivate = await startGateway({ db: DB, label: 'private', args: ['--vapid-public-key', path.join(tmp, 'private.pem')] });
  withPublic = await startGateway({ db: DB, label: 'public', args: ['--vapid-public-key', path.join(tmp, 'public.pem')] });
  without = await startGateway({ db: DB, label: 'none' });
});
after(async () => {
  await stopAll();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

test('hello carries vapid_public_key from a private or a public PEM, and nothing without the flag', async () => {
  for (const gw of [withPrivate, withPublic]) {
    const c = await connectAs(gw, alice.id, 1);
    assert.equal(c.hello.vapid_public_key, publicPoint);
    c.close();
  }
  const c = await connectAs(without, alice.id, 1);
  assert.ok(!('vapid_public_key' in c.hello), JSON.stringify(c.hello));
  c.close();
});

test('a key file that is not a P-256 key stops the gateway at start-up', () => {
  for (const [file, why] of [['rsa.pem', 'not a PEM P-256'], ['missing.pem', 'cannot open']]) {
    const r = spawnSync(GATEWAY_BIN, ['--dsn', 'dbname=x', '--token-secret-file', process.env.CHAT_TOKEN_SECRET_FILE,
      '--vapid-public-key', path.join(tmp, file)], { encoding: 'utf8', timeout: 10000 });
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, new RegExp(`vapid-public-key: .*${why}`));
  }
});

test('register_push and unregister_push over the WebSocket', async () => {
  const c = await connectAs(without, alice.id, 1);
  const ecdh = crypto.createECDH('prime256v1');
  ecdh.generateKeys();
  const subscription = { endpoint: 'https://push.example/s/alice',
    keys: { p256dh: ecdh.getPublicKey().toString('base64url'), auth: crypto.randomBytes(16).toString('base64url') } };
  const device = async () => (await rows(DB, `SELECT push_token, push_platform, push_subscription FROM chat.devices WHERE user_id = ${alice.id}`))[0];

  for (const [req, code] of [
    [{ platform: 'webpush', subscription: { ...subscription, endpoint: 'http://push.example/s' } }, '22023'],
    [{ platform: 'webpush', subscription: { ...subscription, keys: { ...subscription.keys, auth: 'AAAA' } } }, '22023'],
    [{ platform: 'webpush' }, '22023'],
    [{ platform: 'carrier-pigeon', token: 'x' }, '22023'],
    [{ platform: 'webpush', subscription: 'https://push.example/s' }, '22P02'],
  ]) {
    const r = await c.request({ type: 'register_push', ...req });
    assert.equal(r.type, 'error', JSON.stringify(r));
    assert.equal(r.code, code, JSON.stringify(r));
  }
  assert.deepEqual(await device(), { push_token: null, push_platform: null, push_subscription: null });

  assert.deepEqual(await c.call({ type: 'register_push', platform: 'webpush', subscription }), {});
  assert.deepEqual(await device(), { push_token: subscription.endpoint, push_platform: 'webpush', push_subscription: subscription });
  assert.deepEqual(await c.call({ type: 'unregister_push' }), {});
  assert.deepEqual(await device(), { push_token: null, push_platform: null, push_subscription: null });
  c.close();
});

test('set_push_previews over the WebSocket: a boolean only, stored for the user', async () => {
  const c = await connectAs(without, alice.id, 1);
  const previews = async () => (await rows(DB, `SELECT push_previews FROM chat.users WHERE id = ${alice.id}`))[0].push_previews;
  for (const [req, code] of [[{}, '22023'], [{ previews: 'no' }, '22P02'], [{ previews: null }, '22023']]) {
    const r = await c.request({ type: 'set_push_previews', ...req });
    assert.equal(r.type, 'error', JSON.stringify(r));
    assert.equal(r.code, code, JSON.stringify(r));
  }
  assert.equal(await previews(), true);
  assert.deepEqual(await c.call({ type: 'set_push_previews', previews: false }), {});
  assert.equal(await previews(), false);
  assert.deepEqual(await c.call({ type: 'set_push_previews', previews: true }), {});
  assert.equal(await previews(), true);
  c.close();
});
