// Operations: wss:// with --tls-cert/--tls-key, configuration by --config
// file and by CHAT_* environment alone, --static files, SIGHUP reopening
// --log-file, and --help documenting every flag.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { twoUserDb, startGateway, stopAll, connectAs, freePort, nodeName, dsn, SECRET_FILE, GATEWAY_BIN, sleep } from './lib.mjs';

const DB = 'gw_13_ops';
let alice, bob, conv, dir;

before(async () => {
  ({ alice, bob, conv } = await twoUserDb(DB));
  dir = fs.mkdtempSync(path.join(process.env.CHAT_TEST_TMP || os.tmpdir(), 'gw13-'));
});
after(async () => {
  await stopAll();
  fs.rmSync(dir, { recursive: true, force: true });
});

const run = (cmd, args) => new Promise((resolve) => {
  execFile(cmd, args, { timeout: 20000 }, (err, stdout, stderr) => resolve({ code: err ? err.code : 0, stdout, stderr }));
});

// Two clients chat once through gw (smoke check of a configuration).
async function chatOnce(gw, tag) {
  const a = await connectAs(gw, alice.id, 1, { label: `alice ${tag}` });
  const b = await connectAs(gw, bob.id, 1, { label: `bob ${tag}` });
  assert.equal(a.hello.node, gw.node);
  const r = await a.call({ type: 'send', conversation: conv, body: `via ${tag}`, client_msg_id: `ops-${tag}` });
  assert.equal((await b.waitFor((f) => f.type === 'message' && f.seq === r.seq, 3000)).body, `via ${tag}`);
  a.close(); b.close();
  await Promise.all([a.closed, b.closed]);
}

test('wss:// with --tls-cert and --tls-key', async () => {
  const cert = path.join(dir, 'cert.pem'), key = path.join(dir, 'key.pem');
  const r = await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1']);
  assert.equal(r.code, 0, r.stderr);
  const gw = await startGateway({ db: DB, tls: { cert, key }, label: 'tls' });
  assert.match(gw.url, /^wss:/);
  assert.equal(await gw.healthz(), 200, 'https /healthz');
  await chatOnce(gw, 'tls');
  await gw.stop();
});

test('configured by a --config file alone', async () => {
  const port = await freePort(), node = nodeName();
  const file = path.join(dir, 'gateway.conf');
  fs.writeFileSync(file, [
    '# chat-gateway test configuration',
    `listen = 127.0.0.1:${port}`,
    `node = ${node}`,
    `dsn = ${dsn(DB)}`,
    `token-secret-file = ${SECRET_FILE}`,
    'auth_timeout = 3',
    '',
  ].join('\n'));
  const gw = await startGateway({ db: DB, port, node, bare: true, args: ['--config', file], env: { CHAT_TOKEN_SECRET_FILE: undefined }, label: 'config' });
  await chatOnce(gw, 'config');
  await gw.stop();
});

test('configured by CHAT_* environment alone', async () => {
  const port = await freePort(), node = nodeName();
  const gw = await startGateway({
    db: DB, port, node, bare: true, label: 'env',
    env: { CHAT_LISTEN: `127.0.0.1:${port}`, CHAT_NODE: node, CHAT_DSN: dsn(DB), CHAT_TOKEN_SECRET_FILE: SECRET_FILE, CHAT_HEARTBEAT: '17' },
  });
  const c = await connectAs(gw, alice.id, 1, { label: 'env' });
  assert.equal(c.hello.heartbeat, 17, 'CHAT_HEARTBEAT');
  c.close();
  await chatOnce(gw, 'env');
  await gw.stop();
});

test('a multi-host DSN whose first host is down connects to the next', async () => {
  const dead = await freePort();
  const multi = `host=127.0.0.1,${process.env.PGHOST} port=${dead},${process.env.PGPORT} dbname=${DB} user=${process.env.PGUSER} connect_timeout=2 target_session_attrs=read-write`;
  const port = await freePort(), node = nodeName();
  const gw = await startGateway({
    db: DB, port, node, bare: true, label: 'multihost',
    args: ['--listen', `127.0.0.1:${port}`, '--node', node, '--dsn', multi, '--token-secret-file', SECRET_FILE],
  });
  await chatOnce(gw, 'multihost');
  await gw.stop();
});

test('a bad configuration stops start-up with a message naming the key', async () => {
  const r = await run(GATEWAY_BIN, ['--listen', '127.0.0.1:1', '--node', 'Bad-Node!', '--dsn', dsn(DB), '--token-secret-file', SECRET_FILE]);
  assert.notEqual(r.code, 0, 'started with an invalid node name');
  assert.match(r.stderr + r.stdout, /node/i);
  const r2 = await run(GATEWAY_BIN, ['--no-such-flag', 'x']);
  assert.notEqual(r2.code, 0);
  assert.match(r2.stderr + r2.stdout, /no-such-flag/);
});

test('--static serves files next to /ws and /healthz', async () => {
  const www = path.join(dir, 'www');
  fs.mkdirSync(www);
  fs.writeFileSync(path.join(www, 'index.html'), '<!doctype html><title>pgchat static marker 7f3a</title>\n');
  fs.writeFileSync(path.join(www, 'app.js'), 'console.log("marker 91bc");\n');
  const gw = await startGateway({ db: DB, args: ['--static', www], label: 'static' });
  const index = await gw.get('/');
  assert.equal(index.status, 200);
  assert.match(index.text, /static marker 7f3a/);
  const js = await gw.get('/app.js');
  assert.equal(js.status, 200);
  assert.match(js.text, /marker 91bc/);
  assert.match(js.headers.get('content-type') || '', /javascript/);
  assert.equal(await gw.healthz(), 200);
  await chatOnce(gw, 'static');
  await gw.stop();
});

test('SIGHUP reopens --log-file', async () => {
  const log = path.join(dir, 'gw.log');
  const gw = await startGateway({ db: DB, args: ['--log-file', log], label: 'sighup' });
  assert.ok(fs.existsSync(log) && fs.statSync(log).size > 0, 'start-up lines in --log-file');
  fs.renameSync(log, `${log}.1`);
  gw.proc.kill('SIGHUP');
  let ok = false;
  for (let i = 0; i < 50 && !ok; i++) { ok = fs.existsSync(log); if (!ok) await sleep(100); }
  assert.ok(ok, 'SIGHUP did not create a new log file');
  assert.ok(!gw.exit, 'the gateway survived SIGHUP');
  await chatOnce(gw, 'sighup');
  const exit = await gw.stop();
  assert.equal(exit.code, 0);
  assert.ok(fs.statSync(log).size > 0, 'lines after SIGHUP go to the new file');
});

test('--log-format json writes one JSON object per line, with connection ids', async () => {
  const gw = await startGateway({ db: DB, args: ['--log-format', 'json', '--log-level', 'debug'], label: 'jsonlog' });
  await chatOnce(gw, 'jsonlog');
  const exit = await gw.stop();
  assert.equal(exit.code, 0);
  const lines = fs.readFileSync(gw.log, 'utf8').split('\n').filter((l) => l && !l.startsWith('=== '));
  assert.ok(lines.length >= 3, `only ${lines.length} log lines`);
  const objs = lines.map((l) => { try { return JSON.parse(l); } catch { assert.fail(`not JSON: ${l}`); } });
  for (const o of objs) assert.equal(typeof o, 'object');
  assert.ok(objs.some((o) => Object.keys(o).some((k) => /conn/.test(k))), `no connection id in ${lines.slice(0, 20).join('\n')}`);
});

test('--help documents every flag', async () => {
  const r = await run(GATEWAY_BIN, ['--help']);
  assert.equal(r.code, 0);
  const text = r.stdout + r.stderr;
  for (const flag of ['listen', 'node', 'dsn', 'token-secret-file', 'tls-cert', 'tls-key', 'static', 'pool', 'log-format',
    'workers', 'config', 'auth-timeout', 'max-frame', 'rate', 'max-queue', 'heartbeat',
    'max-unauth-per-ip', 'max-inflight', 'max-token-ttl', 'metrics-listen']) {
    assert.match(text, new RegExp(`--${flag}\\b`), `--help lacks --${flag}`);
  }
});
