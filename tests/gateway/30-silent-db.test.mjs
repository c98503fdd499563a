// A database that goes silent or slow (issue 17), played by a TCP proxy
// (pg-proxy.mjs) between the gateway and PostgreSQL:
// - a request to a silent database is answered 08006 "did not answer in
//   time" within --request-timeout (it used to hang for the whole outage),
//   and the retry is answered ok once the database is back;
// - /healthz turns 503 within the same bound, even when no client asks
//   anything (the liveness probe), and 200 again after;
// - a slow database engages back-pressure: requests beyond what it keeps up
//   with get 53400 "busy" at once, never a timeout, and nothing is lost;
// - the gateway's TCP connections to the database have keepalives.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { twoUserDb, startGateway, stopAll, connectAs, metricSum, sleep, ms, rows } from './lib.mjs';
import { PgProxy } from './pg-proxy.mjs';

const DB = 'gw_30_silent_db';
let alice, bob, conv, proxy;

before(async () => {
  ({ alice, bob, conv } = await twoUserDb(DB));
  proxy = await PgProxy.start({ port: process.env.PGPORT });
});
after(async () => { await stopAll(); await proxy?.stop(); });

// Polls /healthz until it answers want; resolves the ms it took (or null).
async function healthWithin(gw, want, timeout) {
  const t0 = Date.now();
  while (Date.now() - t0 < timeout) {
    if ((await gw.get('/healthz', 500)).status === want) return Date.now() - t0;
    await sleep(50);
  }
  return null;
}

test('a request to a silent database is answered 08006 within --request-timeout; the retry succeeds after', { timeout: ms(60000) }, async () => {
  const gw = await startGateway({ db: DB, args: ['--dsn', proxy.dsn(DB), '--request-timeout', '2'], label: 'deadline' });
  const a = await connectAs(gw, alice.id, 1, { label: 'alice' });
  assert.equal((await a.request({ type: 'send', conversation: conv, body: 'before', client_msg_id: 'd-0' })).type, 'ok');

  proxy.blackhole();
  try {
    const t0 = Date.now();
    const r = await a.request({ type: 'send', conversation: conv, body: 'during', client_msg_id: 'd-1' }, 10000);
    const took = Date.now() - t0;
    assert.equal(r.type, 'error', JSON.stringify(r));
    assert.equal(r.code, '08006', JSON.stringify(r));
    assert.match(r.message, /did not answer in time.*may or may not have been applied/);
    assert.ok(took >= 1500 && took <= 3500, `answered after ${took} ms (deadline 2 s)`);
    assert.ok(a.open, 'the client keeps its socket');
    // The database is still silent: new requests fail at once (not queued).
    const t1 = Date.now();
    const r2 = await a.request({ type: 'send', conversation: conv, body: 'during', client_msg_id: 'd-1' }, 10000);
    assert.equal(r2.code, '08006', JSON.stringify(r2));
    assert.ok(Date.now() - t1 <= 2500, `second request answered after ${Date.now() - t1} ms`);
    assert.equal(await healthWithin(gw, 503, 2500) !== null, true, '/healthz 503 while the database is silent');
    assert.ok((await metricSum(gw, 'chat_gateway_db_timeouts_total')) >= 1, 'the timeout is counted');
  } finally {
    proxy.resume();
  }
  assert.notEqual(await healthWithin(gw, 200, 15000), null, '/healthz 200 again after the database is back');
  // The retry with the same client_msg_id: one message, whatever the first try did.
  let r3;
  for (let i = 0; i < 50; i++) {
    r3 = await a.request({ type: 'send', conversation: conv, body: 'during', client_msg_id: 'd-1' }, 10000);
    if (r3.type === 'ok') break;
    await sleep(200);
  }
  assert.equal(r3.type, 'ok', JSON.stringify(r3));
  const stored = await rows(DB, `SELECT count(*) AS n FROM chat.messages WHERE conversation_id = ${conv} AND client_msg_id = 'd-1'`);
  assert.equal(Number(stored[0].n), 1, 'the message is stored once');
  a.close();
  await gw.stop();
});

test('/healthz turns 503 within --request-timeout when the database goes silent with no client traffic', { timeout: ms(60000) }, async () => {
  const gw = await startGateway({ db: DB, args: ['--dsn', proxy.dsn(DB), '--request-timeout', '2', '--node-heartbeat', '3600'], label: 'idle-health' });
  await sleep(1500);
  proxy.blackhole();
  let took;
  try {
    took = await healthWithin(gw, 503, 6000);
  } finally {
    proxy.resume();
  }
  assert.notEqual(took, null, '/healthz stayed 200 for 6 s with a silent database');
  assert.ok(took <= 2500, `/healthz 503 after ${took} ms (bound 2 s + polling)`);
  assert.notEqual(await healthWithin(gw, 200, 15000), null, '/healthz 200 again');
  await gw.stop();
});

test('a slow database: requests beyond what it keeps up with get 53400 busy at once; nothing is lost', { timeout: ms(90000) }, async () => {
  const gw = await startGateway({ db: DB, args: ['--dsn', proxy.dsn(DB), '--pool', '1', '--pool-queue', '8', '--request-timeout', '4', '--rate', '1000', '--max-inflight', '64'], label: 'busy' });
  const a = await connectAs(gw, alice.id, 1, { label: 'alice' });
  const b = await connectAs(gw, bob.id, 1, { label: 'bob' });
  proxy.delay(100);
  let results;
  const t0 = Date.now();
  try {
    const sends = [];
    for (let i = 0; i < 40; i++) {
      const c = i % 2 ? a : b;
      const t = Date.now();
      sends.push(c.request({ type: 'send', conversation: conv, body: `slow ${i}`, client_msg_id: `s-${i}` }, 20000).then((f) => ({ f, ms: Date.now() - t, i })));
    }
    results = await Promise.all(sends);
  } finally {
    proxy.delay(0);
  }
  const busy = results.filter((r) => r.f.type === 'error' && r.f.code === '53400');
  const ok = results.filter((r) => r.f.type === 'ok');
  const other = results.filter((r) => r.f.type !== 'ok' && r.f.code !== '53400');
  assert.deepEqual(other.map((r) => r.f), [], 'no other errors (no timeout: the queue is bounded below the deadline)');
  assert.ok(busy.length >= 20, `${busy.length} of 40 refused busy (queue of 8 on one slow connection)`);
  assert.ok(ok.length >= 8, `${ok.length} answered ok`);
  for (const r of busy) {
    assert.match(r.f.message, /^busy/, JSON.stringify(r.f));
    assert.ok(r.ms < 1000, `busy answered after ${r.ms} ms: it must come at once`);
  }
  assert.ok(Date.now() - t0 < 4000, 'every request answered before the deadline');
  assert.ok((await metricSum(gw, 'chat_gateway_busy_total')) >= busy.length, 'busy refusals are counted');
  // Busy requests were never applied: each retry stores the message once.
  for (const r of busy) {
    const c = r.i % 2 ? a : b;
    assert.equal((await c.request({ type: 'send', conversation: conv, body: `slow ${r.i}`, client_msg_id: `s-${r.i}` })).type, 'ok');
  }
  const stored = await rows(DB, `SELECT client_msg_id, count(*) AS n FROM chat.messages WHERE conversation_id = ${conv} AND client_msg_id LIKE 's-%' GROUP BY 1`);
  assert.equal(stored.length, 40, 'all 40 stored');
  assert.ok(stored.every((s) => Number(s.n) === 1), 'each once');
  a.close(); b.close();
  await gw.stop();
});

test('the database connections have TCP keepalives within --request-timeout', { timeout: ms(30000) }, async () => {
  const gw = await startGateway({ db: DB, args: ['--dsn', proxy.dsn(DB), '--request-timeout', '4'], label: 'keepalive' });
  await sleep(500);
  // ss -o shows the keepalive timer of each of the gateway's sockets to the proxy.
  const out = execFileSync('ss', ['-tnoH', 'state', 'established', `dport = :${proxy.port}`]).toString();
  const lines = out.split('\n').filter(Boolean);
  assert.ok(lines.length >= 2, `the gateway's connections through the proxy: ${out}`);
  for (const l of lines) {
    const m = l.match(/timer:\(keepalive,([\d.]+)(ms|sec)/);
    assert.ok(m, `no keepalive timer on ${l}`);
    const secs = Number(m[1]) / (m[2] === 'ms' ? 1000 : 1);
    assert.ok(secs <= 2.01, `keepalive idle ${secs} s > half of --request-timeout: ${l}`);
  }
  await gw.stop();
});

// A database address that does not answer connects (SYNs dropped: here a
// listener whose accept queue is full) must not stall the event loop: the
// gateway used to call PQconnectPoll on a timer before the socket was
// writable, libpq took the connect in progress for done and waited,
// blocking, to send its first packet, so nothing else ran (pings, other
// clients, /healthz) until the connect gave up.
test('reconnecting to an address that drops connects never stalls the event loop', { timeout: ms(60000) }, async () => {
  const { spawn } = await import('node:child_process');
  const net = await import('node:net');
  // The gateway starts on the database through a proxy of its own ...
  const tp = await PgProxy.start({ port: process.env.PGPORT });
  const gw = await startGateway({ db: DB, args: ['--dsn', tp.dsn(DB), '--request-timeout', '3', '--pool', '2'], label: 'nonblocking-connect' });
  const a = await connectAs(gw, alice.id, 1, { label: 'alice' });
  // ... whose port then becomes a tarpit: a listener with backlog 0 that
  // never accepts, its queue filled, so that new connects hang in SYN_SENT.
  tp.server.close();      // stops listening (its callback waits for the links)
  await sleep(100);
  const tarpit = spawn('python3', ['-c', `import socket,time
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', ${tp.port})); s.listen(0); print('ready', flush=True); time.sleep(120)`], { stdio: ['ignore', 'pipe', 'inherit'] });
  const fillers = [];
  try {
    await new Promise((resolve) => tarpit.stdout.once('data', resolve));
    for (let i = 0; i < 2; i++) fillers.push(net.connect(tp.port, '127.0.0.1').on('error', () => {}));
    await sleep(300);
    // The current connections are cut: the gateway reconnects into the tarpit.
    for (const l of [...tp.links]) l.close();
    const lags = [];
    const until = Date.now() + 4000;
    while (Date.now() < until) {
      const t = Date.now();
      const r = await a.request({ type: 'ping' }, 10000).catch((e) => ({ error: String(e) }));
      lags.push(r.type === 'pong' ? Date.now() - t : 99999);
      await sleep(100);
    }
    const worst = Math.max(...lags);
    assert.ok(worst < 500, `a ping waited ${worst} ms while the gateway reconnected (the loop blocked); lags ${lags.join(',')}`);
    assert.equal(await gw.healthz(), 503);
    a.close();
  } finally {
    for (const f of fillers) f.destroy();
    tarpit.kill('SIGKILL');
    await gw.stop('SIGTERM', 5000);
  }
});
