// --workers 2: two processes share the port, each its own node (<node>_0,
// <node>_1); messages cross between clients on different workers; a killed
// worker is restarted by the parent; SIGTERM drains the lot and exits 0.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { newDb, makeUser, direct, startGateway, stopAll, connectAs, rows, sleep, ms, parseMetrics } from './lib.mjs';

const DB = 'gw_11_workers';
let gw, users;

before(async () => {
  await newDb(DB);
  users = [];
  for (let i = 0; i < 12; i++) users.push(await makeUser(DB));
  gw = await startGateway({ db: DB, node: `wk${process.pid % 100000}`, args: ['--workers', '2'], label: 'workers' });
});
after(stopAll);

// Child pids of the supervising parent.
function children(pid) {
  try { return fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number); } catch { return []; }
}

// True when pid is a live (non-zombie) process.
function alive(pid) {
  try { return fs.readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '')[0] !== 'Z'; } catch { return false; }
}

// Connects users until both workers hold at least one; returns {node: [client...]}.
async function spread() {
  const byNode = {};
  for (const [i, u] of users.entries()) {
    const c = await connectAs(gw, u.id, 1, { label: `u${i}` });
    (byNode[c.hello.node] ??= []).push(c);
    if (Object.keys(byNode).length === 2 && i >= 3) break;
  }
  return byNode;
}

test('two workers, one port, each its own node; messages cross workers', async () => {
  let nodes = [];
  for (let i = 0; i < 50 && nodes.length < 2; i++) {
    nodes = (await rows(DB, `SELECT node FROM chat.nodes WHERE node LIKE '${gw.node}\\_%' ORDER BY 1`)).map((r) => r.node);
    if (nodes.length < 2) await sleep(100);
  }
  assert.deepEqual(nodes, [`${gw.node}_0`, `${gw.node}_1`], 'both worker nodes registered');
  const byNode = await spread();
  assert.deepEqual(Object.keys(byNode).sort(), [`${gw.node}_0`, `${gw.node}_1`], 'clients landed on both workers (SO_REUSEPORT)');
  const [x] = byNode[`${gw.node}_0`], [y] = byNode[`${gw.node}_1`];
  const conv = await direct(DB, x.hello.user, y.hello.user);
  const r1 = await x.call({ type: 'send', conversation: conv, body: 'from worker 0', client_msg_id: 'w-1' });
  assert.equal((await y.waitFor((f) => f.type === 'message' && f.seq === r1.seq, 3000)).body, 'from worker 0');
  const r2 = await y.call({ type: 'send', conversation: conv, body: 'from worker 1', client_msg_id: 'w-2' });
  assert.equal((await x.waitFor((f) => f.type === 'message' && f.seq === r2.seq, 3000)).body, 'from worker 1');
  const sess = await rows(DB, `SELECT node, user_id::int FROM chat.sessions WHERE user_id IN (${x.hello.user}, ${y.hello.user}) ORDER BY node`);
  assert.deepEqual(sess, [{ node: `${gw.node}_0`, user_id: x.hello.user }, { node: `${gw.node}_1`, user_id: y.hello.user }]);
  for (const list of Object.values(byNode)) for (const c of list) c.close();
});

// Whichever worker answers /metrics (SO_REUSEPORT picks one per connection)
// renders every worker's series: the scrape is the whole gateway's.
test('/metrics from any worker covers every worker', async () => {
  const byNode = await spread();
  const open = Object.values(byNode).flat().length;
  const names = [`${gw.node}_0`, `${gw.node}_1`];
  let last = '';
  for (let scrape = 0; scrape < 8; scrape++) {
    // Gauges of the other worker are at most a second old (its tick).
    let samples = [];
    for (let i = 0; i < 30; i++) {
      const r = await gw.get('/metrics');
      assert.equal(r.status, 200);
      last = r.text;
      samples = parseMetrics(r.text);
      const conns = samples.filter((s) => s.name === 'chat_gateway_connections');
      if (conns.reduce((t, s) => t + s.value, 0) === open) break;
      await sleep(100);
    }
    const conns = samples.filter((s) => s.name === 'chat_gateway_connections');
    assert.deepEqual(conns.map((s) => s.labels.node).sort(), names, `one connections series per worker:\n${last}`);
    assert.equal(conns.reduce((t, s) => t + s.value, 0), open, `connections summed over the workers:\n${last}`);
    for (const n of names) {
      const frames = samples.find((s) => s.name === 'chat_gateway_frames_in_total' && s.labels.node === n);
      assert.ok(frames && frames.value > 0, `worker ${n} has its frames_in (authenticated clients sent frames)`);
      assert.ok(samples.some((s) => s.name === 'chat_gateway_request_duration_seconds_count' && s.labels.node === n), `latency histogram of ${n}`);
    }
  }
  for (const list of Object.values(byNode)) for (const c of list) c.close();
});

test('a killed worker is restarted by the parent', { timeout: ms(60000) }, async () => {
  const kids = children(gw.pid);
  assert.equal(kids.length, 2, `two worker processes under ${gw.pid}: ${kids}`);
  process.kill(kids[0], 'SIGKILL');
  let now = [];
  const deadline = Date.now() + ms(15000);
  while (Date.now() < deadline) {
    now = children(gw.pid);
    if (now.length === 2 && !now.includes(kids[0])) break;
    await sleep(100);
  }
  assert.equal(now.length, 2, `worker not restarted: children ${now}`);
  assert.ok(!now.includes(kids[0]));
  assert.ok(!gw.exit, 'the parent survived');
  await gw.waitHealth(200, 15000);
  // Both nodes serve again.
  const byNode = await spread();
  assert.equal(Object.keys(byNode).length, 2, `clients on ${Object.keys(byNode)}`);
  for (const list of Object.values(byNode)) for (const c of list) c.close();
});

test('SIGTERM on the parent drains every worker and exits 0', async () => {
  const c = await connectAs(gw, users[0].id, 1, { label: 'last' });
  const kids = children(gw.pid);
  const exit = await gw.stop('SIGTERM', 15000);
  assert.deepEqual({ code: exit.code, signal: exit.signal }, { code: 0, signal: null });
  assert.equal((await c.waitClose(3000)).code, 1012);
  for (const k of kids) assert.ok(!alive(k), `worker ${k} still running after the parent exited`);
  const [s] = await rows(DB, `SELECT count(*)::int AS n FROM chat.sessions WHERE node LIKE '${gw.node}\\_%'`);
  assert.equal(s.n, 0);
});
