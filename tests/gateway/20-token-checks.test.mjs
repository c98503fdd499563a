// Strict JWT checks (issue 9, defect 9): every token here is signed with the
// right secret, so only the check under test can refuse it.  nbf and iat are
// honoured (60 s leeway), the lifetime exp - (iat or now) is capped by
// --max-token-ttl (30 days by default), base64url must be canonical (no
// padding, no stray low bits, no length of 1 mod 4), sub and dev canonical
// integers, alg exactly HS256, typ JWT when present, exp a required integer.
// Each refusal is close 4001 with a reason that names the check.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { newDb, makeUser, startGateway, stopAll, Client, secret } from './lib.mjs';

const DB = 'gw_20_tokens';
let gw, alice;
const now = () => Math.floor(Date.now() / 1000);
const b64url = (buf) => Buffer.from(buf).toString('base64').replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
const sign = (input) => b64url(createHmac('sha256', secret()).update(input).digest());

before(async () => {
  await newDb(DB);
  alice = await makeUser(DB, { devices: 2 });
  gw = await startGateway({ db: DB, label: 'main' });
});
after(stopAll);

// A token from the exact header and payload texts (segments may be edited
// by `edit` before signing), signed with the gateway's secret.
function raw(headerText, payloadText, edit = (h, p) => [h, p]) {
  const [h, p] = edit(b64url(headerText), b64url(payloadText));
  return `${h}.${p}.${sign(`${h}.${p}`)}`;
}
const H = '{"alg":"HS256","typ":"JWT"}';
const claims = (extra = {}) => JSON.stringify({ sub: alice.id, dev: 1, iat: now() - 5, exp: now() + 3600, ...extra });

// Connects with tok in the first auth frame; resolves the hello or the close.
async function attempt(tok, g = gw) {
  const c = await Client.connect(g, { hello: false, label: 'token' });
  c.sendJson({ type: 'auth', token: tok });
  try {
    await c.waitFor((f) => f.type === 'hello', 4000);
    c.close();
    return { accepted: true };
  } catch {
    return { accepted: false, ...(await c.waitClose(4000)) };
  }
}
async function accepted(tok, what, g) {
  const r = await attempt(tok, g);
  assert.ok(r.accepted, `${what} was refused: ${JSON.stringify(r)}`);
}
async function refused(tok, what, reason, g) {
  const r = await attempt(tok, g);
  assert.ok(!r.accepted, `${what} was accepted`);
  assert.equal(r.code, 4001, `${what}: close ${JSON.stringify(r)}`);
  if (reason) assert.match(r.reason, reason, `${what}: reason`);
}

test('the control token (all claims canonical) is accepted', async () => {
  await accepted(raw(H, claims()), 'canonical token');
  await accepted(raw('{"alg":"HS256"}', claims()), 'no typ');
  await accepted(raw(H, claims({ sub: String(alice.id) })), 'sub as a digit string');
  await accepted(raw(H, claims({ nbf: now() - 10 })), 'nbf in the past');
});

test('nbf in the future and iat in the future (beyond 60 s) are refused', async () => {
  await refused(raw(H, claims({ nbf: now() + 3600 })), 'nbf in an hour', /nbf/);
  await refused(raw(H, claims({ nbf: String(now() - 10) })), 'nbf as a string', /nbf/);
  await refused(raw(H, claims({ iat: now() + 600 })), 'iat in 10 minutes', /iat/);
  await refused(raw(H, claims({ iat: now() - 5.5 })), 'iat not an integer', /iat/);
  await accepted(raw(H, claims({ iat: now() + 20 })), 'iat 20 s ahead (clock skew)');
});

test('lifetimes beyond --max-token-ttl (30 days by default) are refused', async () => {
  const day = 86400;
  const { iat, ...noIat } = JSON.parse(claims());
  void iat;
  await refused(raw(H, JSON.stringify({ ...noIat, exp: now() + 31 * day })), 'exp in 31 days, no iat', /lifetime|ttl/);
  await refused(raw(H, claims({ iat: now() - 29 * day, exp: now() + 2 * day })), 'issued 29 days ago, valid 2 more', /lifetime|ttl/);
  await accepted(raw(H, claims({ exp: now() + 29 * day })), '29 days');
  const gw2 = await startGateway({ db: DB, args: ['--max-token-ttl', '120'], label: 'ttl120' });
  await refused(raw(H, claims({ exp: now() + 3600 })), 'an hour under --max-token-ttl 120', /lifetime|ttl/, gw2);
  await accepted(raw(H, claims({ exp: now() + 100 })), '100 s under --max-token-ttl 120', gw2);
  await gw2.stop();
});

test('exp is required and must be a JSON integer', async () => {
  const { exp, ...noExp } = JSON.parse(claims());
  void exp;
  await refused(raw(H, JSON.stringify(noExp)), 'no exp', /exp/);
  await refused(raw(H, claims({ exp: String(now() + 3600) })), 'exp as a string', /exp/);
  await refused(raw(H, claims({ exp: now() + 3600.5 })), 'exp with a fraction', /exp/);
});

test('sub and dev must be canonical integers', async () => {
  const id = alice.id;
  for (const sub of [` ${id}`, `+${id}`, `0${id}`, `${id} `, `${id}.0`, `-${id}`, `${id}\n`, '', '0', -id, 0, id + 0.5]) {
    await refused(raw(H, claims({ sub })), `sub ${JSON.stringify(sub)}`, /sub/);
  }
  await refused(raw(H, claims({ sub: 1e20 })), 'sub 1e20 (beyond 64 bits: not JSON jansson reads)', /sub|malformed/);
  await refused(raw(H, claims({ sub: '99999999999999999999' })), 'sub beyond 64 bits', /sub/);
  for (const dev of ['01', ' 1', '+1', 1.5, 0, 2147483648, '2147483648']) {
    await refused(raw(H, claims({ dev })), `dev ${JSON.stringify(dev)}`, /dev/);
  }
  // 2.0 is a real in JSON text, not an integer.
  await refused(raw(H, claims({ dev: 1 }).replace('"dev":1', '"dev":1.0')), 'dev 1.0', /dev/);
  await refused(raw(H, `{"sub":${id},"sub":${id + 1},"dev":1,"exp":${now() + 3600}}`), 'duplicate sub');
});

test('alg must be exactly HS256 and typ, when present, JWT', async () => {
  await refused(raw('{"alg":"hs256","typ":"JWT"}', claims()), 'alg hs256', /alg/);
  await refused(raw('{"alg":"HS256 ","typ":"JWT"}', claims()), 'alg "HS256 "', /alg/);
  await refused(raw('{"alg":"HS256\\u0000","typ":"JWT"}', claims()), 'alg with a NUL', /alg|malformed/);
  await refused(raw('{"typ":"JWT"}', claims()), 'no alg', /alg/);
  await refused(raw('{"alg":"HS256","typ":"JWS"}', claims()), 'typ JWS', /typ/);
  await refused(raw('{"alg":"HS256","typ":1}', claims()), 'typ 1', /typ/);
  await refused(raw('{"alg":"HS256","alg":"none"}', claims()), 'duplicate alg');
});

test('non-canonical base64url is refused (padding, stray bits, length 1 mod 4)', async () => {
  const good = raw(H, claims());
  const [h, p, s] = good.split('.');
  // HMAC-SHA256 is 32 bytes: 43 characters, the last carrying 2 unused bits.
  assert.equal(s.length, 43);
  await refused(`${h}.${p}.${s}=`, 'signature with = padding', /signature|malformed/);
  const alpha = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  const last = alpha.indexOf(s[42]);
  for (const bits of [1, 2, 3]) {
    const stray = `${h}.${p}.${s.slice(0, 42)}${alpha[last | bits]}`;
    await refused(stray, `signature with stray low bits ${bits}`, /signature|malformed/);
  }
  // Segments edited before signing: the signature is right, the encoding not.
  const withLength = (mod) => {
    let t = claims();
    for (let i = 0; b64url(t).length % 4 !== mod && i < 4; i++) t = claims({ x: 'y'.repeat(i + 1) });
    assert.equal(b64url(t).length % 4, mod);
    return t;
  };
  await refused(raw(H, withLength(2), (hh, pp) => [hh, `${pp}==`]), 'payload with = padding', /malformed/);
  await refused(raw(H, withLength(0), (hh, pp) => [hh, `${pp}A`]), 'payload of length 1 mod 4', /malformed/);
  await refused(raw(H, withLength(2), (hh, pp) => [hh, pp.slice(0, -1) + alpha[alpha.indexOf(pp.slice(-1)) | 1]]),
    'payload with stray low bits', /malformed/);
  const hdr = b64url(H);
  assert.equal(hdr.length % 4, 0);
  await refused(raw(H, claims(), (hh, pp) => [`${hh}A`, pp]), 'header of length 1 mod 4', /malformed/);
});
