// One fault scenario under steady load, judged by checker.mjs.
//   node tests/faults/scenario.mjs backend-kill | pg-crash | notifier-overflow
// PGHOST/PGPORT/PGUSER name the cluster (for pg-crash and notifier-overflow a
// dedicated one: tests/faults/run.sh starts it), CHAT_TEST_PGDATA its data
// directory (pg-crash restarts it), CHAT_TOKEN_SECRET_FILE the token secret.
// Prints one line `RESULT {json}`; exits 0 when the scenario passes.
import { execFile, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import { Load } from './checker.mjs';
import { value, rows, sleep, within } from '../gateway/lib.mjs';

const name = process.argv[2];
// The server's binaries: as the harness found them, else where pg_config says.
const PGBIN = process.env.PGBIN ||
  execFileSync(process.env.PG_CONFIG || 'pg_config', ['--bindir']).toString().trim();

// Runs a command; resolves {code, stdout, stderr}.
function run(cmd, args, timeout = 60000) {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout, env: process.env }, (err, stdout, stderr) => resolve({ code: err ? (err.code ?? 1) : 0, stdout, stderr }));
  });
}

// Whether process pid exists.
function alive(pid) { try { process.kill(pid, 0); return true; } catch (e) { return e.code === 'EPERM'; } }

// Postmaster and children of the cluster: the postmaster pid and its child pids.
function clusterPids() {
  const pm = Number(fs.readFileSync(`${process.env.CHAT_TEST_PGDATA}/postmaster.pid`, 'utf8').split('\n')[0]);
  const kids = [];
  for (const p of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const st = fs.readFileSync(`/proc/${p}/stat`, 'utf8');
      const ppid = Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pm) kids.push(Number(p));
    } catch { /* gone */ }
  }
  return { pm, kids };
}

// pg_ctl start as the cluster owner, retried while the old children still
// hold the shared memory (bounded: 30 s).
async function pgStart() {
  const pgctl = `${PGBIN}/pg_ctl`;
  const deadline = Date.now() + 30000;
  let last;
  while (Date.now() < deadline) {
    last = await run('runuser', ['-u', 'postgres', '--', pgctl, '-D', process.env.CHAT_TEST_PGDATA, '-l', `${process.env.CHAT_TEST_PGDATA}/../postgres.log`, '-w', '-t', '30', 'start']);
    if (last.code === 0) return;
    await sleep(300);
  }
  throw new Error(`pg_ctl start failed for 30 s: ${last.stderr}`);
}

// A psql session LISTENing on a gateway's channel: the notifying backend's
// pid of every notification it sees.  stop() resolves the list of pids.
function listener(db, node) {
  const p = spawn(process.env.PSQL || 'psql', ['-qAtX', '-d', db], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  const exited = new Promise((r) => p.on('exit', r));
  p.stdin.on('error', () => {});  // psql gone: the pids seen so far count
  p.stdout.on('data', (d) => { out += d; });
  p.stderr.on('data', (d) => { out += d; });
  p.stdin.write(`LISTEN "chat_node_${node}";\n`);
  // psql shows notifications after each command: poll with a trivial one.
  const t = setInterval(() => p.stdin.write('SELECT 1;\n'), 20);
  return {
    stop: async () => {
      clearInterval(t);
      p.stdin.end('SELECT 1;\n\\q\n');
      await within(exited, 10000, () => p.kill('SIGKILL'));
      return [...out.matchAll(/received from server process with PID (\d+)/g)].map((m) => Number(m[1]));
    },
  };
}

// Each fault runs under the load and resolves {faultEnd, detail}.
const faults = {
  // 1: the gateway's pool and LISTEN backends terminated, 5 times, 1 s apart.
  async 'backend-kill'(load) {
    const app = `chat-gateway ${load.gw.node}`;
    const killed = [];
    for (let i = 0; i < 5; i++) {
      killed.push(Number(await value('postgres', `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '${app}'`)));
      if (i < 4) await sleep(1000);
    }
    const faultEnd = Date.now();
    if (killed[0] < 2) throw new Error(`the first round found ${killed[0]} gateway backends (pool + LISTEN expected)`);
    return { faultEnd, detail: `backends terminated per round: ${killed.join(',')}`, bound: 10000 };
  },

  // 2: the postmaster killed -9 mid-load, crash recovery, restart.
  async 'pg-crash'(load) {
    for (const [g, want] of [['fsync', 'on'], ['synchronous_commit', 'on']]) {
      const v = await value('postgres', `SELECT current_setting('${g}')`);
      if (v !== want) throw new Error(`${g} is ${v}: the crash scenario needs a cluster with ${g} = ${want}`);
    }
    const before = load.acks.length;
    const { pm } = clusterPids();
    process.kill(pm, 'SIGKILL');
    const killedAt = Date.now();
    // The children notice the postmaster's death and exit; the new
    // postmaster refuses to start while they hold the shared memory.
    const deadline = Date.now() + 15000;
    while (alive(pm) && Date.now() < deadline) await sleep(50);
    await sleep(500);
    await pgStart();
    const faultEnd = Date.now();
    return { faultEnd, detail: `postmaster ${pm} killed -9 after ${before} acks; down ${faultEnd - killedAt} ms`, bound: 20000 };
  },

  // 6: a burst into a 64 kB notifier ring (with a slow worker): the
  // overflowing transactions NOTIFY directly; nothing may be lost.
  async 'notifier-overflow'(load) {
    const size = await value('postgres', "SELECT current_setting('chat.notifier_queue_size')");
    if (size !== '64kB') throw new Error(`chat.notifier_queue_size is ${size}: the scenario needs 64kB`);
    const pool = new Set((await rows(load.db, `SELECT pid FROM pg_stat_activity WHERE application_name = 'chat-gateway ${load.gw.node}'`)).map((r) => r.pid));
    const countedBefore = Number(await value(load.db, 'SELECT fallbacks FROM chat.notifier_stats()'));
    const listen = listener(load.db, load.gw.node);
    await sleep(200);
    const sends = [];
    for (const d of load.devices) {
      const convs = load.convsOf.get(d.user);
      for (let i = 0; i < 30; i++) sends.push(load.sendOne(d, convs[i % convs.length], `burst-${d.user}-${d.dev}-${i}`, 'b'.repeat(3000)));
    }
    const res = await within(Promise.all(sends), 60000, () => { throw new Error('the burst was not answered within 60 s'); });
    const faultEnd = Date.now();
    // After recovery (the listener sees the ring's last batches meanwhile).
    const after = async () => {
      const pids = await listen.stop();
      // A notification sent by one of the gateway's pool backends is a
      // sending transaction's own NOTIFY: the ring had no room for it.
      const fallbacks = pids.filter((p) => pool.has(p)).length;
      if (pids.length === 0) throw new Error('the listener saw no notification');
      if (fallbacks === 0) throw new Error(`no fallback NOTIFY among ${pids.length} notifications: the ring did not overflow, the scenario tested nothing`);
      // The fallbacks are counted where monitoring can read them.
      const counted = Number(await value(load.db, 'SELECT fallbacks FROM chat.notifier_stats()')) - countedBefore;
      if (counted < 1) throw new Error(`${fallbacks} fallback NOTIFYs seen, but chat.notifier_stats() counted ${counted}`);
      const m = await load.gw.get('/metrics');
      const metric = (n) => (m.text.match(new RegExp(`^${n}\\{[^}]*\\} (\\d+)`, 'm')) ?? [])[1] ?? '?';
      return `burst of ${sends.length} x 3000 B, ${res.filter(Boolean).length} ok; gateway drops_total ${metric('chat_gateway_drops_total')}, ` +
        `resyncs_total ${metric('chat_gateway_resyncs_total')}; notifications seen by a listener: ${pids.length}, ` +
        `${fallbacks} of them NOTIFYed by a sending backend (ring full: fallback), the rest by the notifier worker ` +
        `(chat.notifier_stats() counted ${counted} fallback transactions)`;
    };
    return { faultEnd, bound: 10000, after };
  },
};

// FAULTS_SABOTAGE=1 (a check of the checker on a live run, never in the
// suite): one device forgets one acked message of another sender, after its
// ack, so no sync brings it back; the run must then fail with lost = 1.
function sabotage(load) {
  const d = load.devices[1];
  const a = load.acks.find((x) => x.sender !== d.user && load.members[x.conversation].includes(d.user) && d.store.get(x.conversation)?.has(x.seq));
  d.store.get(a.conversation).delete(a.seq);
  console.log(`sabotage: ${d.label} forgot ${a.conversation}:${a.seq}`);
}

async function main() {
  if (!faults[name]) throw new Error(`unknown scenario ${name}; known: ${Object.keys(faults).join(', ')}`);
  const load = new Load({ db: `fault_${name.replace(/-/g, '_')}` });
  const result = { scenario: name };
  try {
    await load.setup();
    await load.start();
    load.startSending();
    await sleep(2000);
    const f = await faults[name](load);
    result.detail = f.detail;
    result.bound_ms = f.bound;
    result.recovery_ms = await load.waitSynced(f.faultEnd, f.bound);
    if (f.after) result.detail = await f.after();
    await sleep(1500);               // steady load after recovery
    await load.stopSending();
    if (process.env.FAULTS_SABOTAGE) sabotage(load);
    Object.assign(result, await load.finish());
    result.errors = Object.fromEntries(load.errors);
    result.retries = load.retries;
    result.gap_repairs = load.gapRepairs;
    result.max_send_ms = load.maxLatency;
    result.failed = load.failed.slice(0, 5);
    result.gateway_alive = !!load.gw.running;
    result.pass = result.pass && result.recovery_ms !== null && result.gateway_alive && load.failed.length === 0;
  } catch (e) {
    result.pass = false;
    result.error = String(e.stack || e);
  } finally {
    await load.stop().catch(() => {});
  }
  console.log(`RESULT ${JSON.stringify(result)}`);
  process.exit(result.pass ? 0 : 1);
}

// A signal ends the run through process.exit, whose handler in
// tests/gateway/lib.mjs kills the gateways still running.
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(130));
main();
