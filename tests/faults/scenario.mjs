// One fault scenario under steady load, judged by checker.mjs.
//   node tests/faults/scenario.mjs backend-kill | pg-crash | notifier-overflow
// PGHOST/PGPORT/PGUSER name the cluster (for pg-crash and notifier-overflow a
// dedicated one: tests/faults/run.sh starts it), CHAT_TEST_PGDATA its data
// directory (pg-crash restarts it), CHAT_TOKEN_SECRET_FILE the token secret.
// Prints one line `RESULT {json}`; exits 0 when the scenario passes.
import { execFile, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import { Load } from './checker.mjs';
import { value, rows, psql, sleep, within, makeUser, token, parseMetrics } from '../gateway/lib.mjs';
import { PgProxy } from '../gateway/pg-proxy.mjs';

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

// Polls the gateway's /healthz every 100 ms until stop(); resolves the
// samples [{t, status}].
function healthPoller(gw) {
  const samples = [];
  let on = true;
  const loop = (async () => {
    while (on) {
      const t = Date.now();
      samples.push({ t, status: (await gw.get('/healthz', 500)).status });
      await sleep(Math.max(0, 100 - (Date.now() - t)));
    }
  })();
  return { samples, stop: async () => { on = false; await loop; return samples; } };
}

// The devices' connections made so far (a client that keeps its socket adds none).
const connects = (load) => load.devices.reduce((n, d) => n + d.connects, 0);

// Send frames first tried in [from, to): answered how and how fast.
function sendsBetween(load, from, to) {
  const tries = load.attempts.filter((e) => e.t0 >= from && e.t0 < to);
  const slowest = tries.reduce((m, e) => Math.max(m, (e.t1 ?? Date.now()) - e.t0), 0);
  const codes = {};
  for (const e of tries) codes[e.code ?? 'ok'] = (codes[e.code ?? 'ok'] ?? 0) + 1;
  return { n: tries.length, slowest, codes, tries };
}

// Median of the answer times of send frames tried in [from, to).
function medianLatency(load, from, to) {
  const v = load.attempts.filter((e) => e.t0 >= from && e.t0 < to && e.t1 && e.code === null).map((e) => e.t1 - e.t0).sort((a, b) => a - b);
  return v.length ? v[Math.floor(v.length / 2)] : null;
}

// Per scenario, how its gateway is started (default: as for the quick
// ones, on loopback, straight to the cluster's socket).
const gateways = {
  // 3: the gateway in the network namespace run.sh made; it reaches the
  // database over one veth pair (the one taken down) and its clients
  // reach it over another.
  'network-partition': async (load) => ({
    args: (port) => ['--listen', `${process.env.FAULTS_GW_ADDR}:${port}`,
      '--dsn', `dbname=${load.db} host=${process.env.FAULTS_DB_ADDR} port=${process.env.PGPORT} user=${process.env.PGUSER || 'postgres'}`],
    host: process.env.FAULTS_GW_ADDR,
  }),
  // 4: the gateway reaches the database through a delaying proxy; two
  // pool connections, so that 50 ms per query is slower than the load.
  // 6: node heartbeat every second, so that /metrics follows
  // chat.notifier_stats() closely.
  'notifier-overflow': async () => ({ args: ['--node-heartbeat', '1'] }),
  // 7: users of their own for the churning connections (the chatting
  // devices keep theirs).
  'client-churn': async (load) => {
    load.churnUsers = [];
    for (let i = 0; i < 20; i++) load.churnUsers.push(await makeUser(load.db, { devices: 1 }));
    return {};
  },
  'slow-db': async (load) => {
    load.proxy = await PgProxy.start({ port: process.env.PGPORT });
    return { args: ['--dsn', load.proxy.dsn(load.db), '--pool', '2'] };
  },
};

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

  // 3: the link between the gateway's namespace and the database down for
  // 10 s.  While it is down: every send answered (an error frame) within
  // 5 s + 1 s, /healthz 503 within 5 s + 0.6 s, no client loses its
  // socket; after: recovery (resync) within the bound.
  async 'network-partition'(load) {
    const link = process.env.FAULTS_DB_LINK;
    if (!link) throw new Error('FAULTS_DB_LINK unset: run this scenario through tests/faults/run.sh');
    const health = healthPoller(load.gw);
    await sleep(1000);
    const connectsBefore = connects(load);
    const down = Date.now();
    let r = await run('ip', ['link', 'set', link, 'down']);
    if (r.code !== 0) throw new Error(`ip link set ${link} down: ${r.stderr}`);
    try {
      await sleep(10000);
    } finally {
      r = await run('ip', ['link', 'set', link, 'up']);
    }
    if (r.code !== 0) throw new Error(`ip link set ${link} up: ${r.stderr}`);
    const faultEnd = Date.now();
    const samples = await health.stop();
    const first503 = samples.find((x) => x.t >= down && x.status === 503);
    // Every try in flight at some point of the partition's first 4 s
    // (later ones may be answered after the link is back).
    const during = sendsBetween(load, down - 6000, faultEnd - 6000);
    const whileDown = sendsBetween(load, down, faultEnd);
    // Tries still unanswered when they were started more than 6 s ago, or answered late.
    const late = during.tries.filter((e) => (e.t1 ?? Date.now()) - e.t0 > 6000 && (e.t1 ?? Date.now()) < faultEnd + 1000);
    const problems = [];
    if (!first503) problems.push('/healthz never answered 503 during the partition');
    else if (first503.t - down > 5600) problems.push(`/healthz 503 only after ${first503.t - down} ms`);
    if (during.n === 0) problems.push('no send was tried during the partition');
    if (late.length) {
      problems.push(`${late.length} sends tried during the partition answered after more than 6 s (slowest ${during.slowest} ms): ` +
        JSON.stringify(late.slice(0, 5).map((e) => ({ from_down_ms: e.t0 - down, took_ms: e.t1 ? e.t1 - e.t0 : null, code: e.code }))));
    }
    if (connects(load) !== connectsBefore) problems.push(`clients reconnected ${connects(load) - connectsBefore} times: they must keep their sockets`);
    if (problems.length) throw new Error(problems.join('; '));
    return {
      faultEnd, bound: 20000,
      detail: `link ${link} down ${faultEnd - down} ms; /healthz 503 after ${first503.t - down} ms; ` +
        `${whileDown.n} send frames tried while down, answered ${JSON.stringify(whileDown.codes)}; slowest answer of a try in flight during the partition ` +
        `${during.slowest} ms; clients kept their sockets`,
    };
  },

  // 4: every query 50 ms slower for 10 s: latency grows, back-pressure
  // answers "busy" (53400) rather than queueing past the deadline (no
  // 08006 timeout), nothing lost.
  async 'slow-db'(load) {
    const t0 = Date.now();
    await sleep(1500);
    const start = Date.now();
    load.proxy.delay(50);
    try {
      await sleep(10000);
    } finally {
      load.proxy.delay(0);
    }
    const faultEnd = Date.now();
    const before = medianLatency(load, t0, start);
    const slow = medianLatency(load, start, faultEnd);
    const during = sendsBetween(load, start, faultEnd);
    const problems = [];
    if (!(slow > (before ?? 0) + 40)) problems.push(`median send latency ${before} ms before, ${slow} ms while slow: it did not grow`);
    if (!during.codes['53400']) problems.push(`no "busy" 53400 while the database was slow: ${JSON.stringify(during.codes)}`);
    const timeouts = load.attempts.filter((e) => e.code && e.code.startsWith('08')).length;
    if (timeouts) problems.push(`${timeouts} sends answered 08xxx: the queue outgrew the deadline`);
    if (problems.length) throw new Error(problems.join('; '));
    return {
      faultEnd, bound: 10000,
      detail: `50 ms per query for ${faultEnd - start} ms (2 pool connections): median send ${before} ms before, ${slow} ms during; ` +
        `send frames during ${JSON.stringify(during.codes)} (53400: busy, retried), slowest ${during.slowest} ms`,
    };
  },

  // 5: chat.messages (table, TOAST, indexes) on a small tmpfs that run.sh
  // mounted (FAULTS_DISK) and that is then filled: sends fail 53100 with
  // nothing half-written; after space returns, service resumes on the same
  // gateway.
  async 'disk-full'(load) {
    const dir = process.env.FAULTS_DISK;
    if (!dir) throw new Error('FAULTS_DISK unset: run this scenario through tests/faults/run.sh');
    const filler = `${dir}/filler`;
    const start = Date.now();
    // Fill what is left (dd stops at ENOSPC).
    await run('dd', ['if=/dev/zero', `of=${filler}`, 'bs=64k'], 30000);
    const filled = Date.now();
    // Sends fail once the pages that were left are full.
    const deadline = Date.now() + 20000;
    while (!load.attempts.some((e) => e.t0 >= start && e.code === '53100') && Date.now() < deadline) await sleep(100);
    const first53100 = load.attempts.find((e) => e.t0 >= start && e.code === '53100');
    if (first53100) await sleep(3000);      // stay full for a while under load
    fs.rmSync(filler, { force: true });
    const faultEnd = Date.now();
    const during = sendsBetween(load, start, faultEnd);
    if (!first53100) throw new Error(`no send failed 53100 within 20 s of the disk filling: ${JSON.stringify(during.codes)}`);
    const msg = first53100.message;
    // Nothing half-written: every conversation's seqs are 1..last_seq, each once.
    const after = async () => {
      const bad = await rows(load.db, `SELECT c.id, c.last_seq, count(m.seq) AS n, max(m.seq) AS top FROM chat.conversations c
        LEFT JOIN chat.messages m ON m.conversation_id = c.id GROUP BY c.id, c.last_seq
        HAVING count(m.seq) <> c.last_seq OR coalesce(max(m.seq), 0) <> c.last_seq`);
      if (bad.length) throw new Error(`half-written conversations (last_seq vs messages): ${JSON.stringify(bad)}`);
      return `disk full after ${filled - start} ms (dd), first 53100 ${first53100.t0 - filled} ms later; ` +
        `send frames while full ${JSON.stringify(during.codes)}${msg ? ` ("${msg}")` : ''}; space back after ${faultEnd - filled} ms; ` +
        'seqs of every conversation contiguous and equal to last_seq';
    };
    return { faultEnd, bound: 10000, after };
  },

  // 7: connects and disconnects from several processes (FAULTS_CHURN_PROCS,
  // 4) for FAULTS_CHURN_SECONDS (60) while the devices chat: afterwards the
  // gateway's open fds and RSS are back to the baseline (+-5 %) taken
  // after a warm-up churn of 10 s.  With the ASan gateway (whose quarantine
  // holds freed memory on purpose) only fds are judged; LeakSanitizer
  // judges the memory at exit.
  async 'client-churn'(load) {
    const seconds = Number(process.env.FAULTS_CHURN_SECONDS || 60);
    const procs = Number(process.env.FAULTS_CHURN_PROCS || 4);
    const asan = /asan/.test(process.env.GATEWAY_BIN || '');
    const pid = load.gw.pid;
    const probe = () => ({
      rss: Number(fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/)[1]),
      fds: fs.readdirSync(`/proc/${pid}/fd`).length,
    });
    const gauge = async () => parseMetrics((await load.gw.get('/metrics')).text).find((m) => m.name === 'chat_gateway_connections')?.value;
    const tokens = load.churnUsers.map((u) => token(u.id, u.devices[0]));
    // Runs the churn processes for secs; resolves their summed counts.
    const churn = async (secs) => {
      const port = Number(new URL(load.gw.url).port);
      const runs = [];
      for (let p = 0; p < procs; p++) {
        const sources = Array.from({ length: 8 }, (_, k) => `127.0.${10 + p}.${k + 1}`);
        const arg = JSON.stringify({ host: '127.0.0.1', port, seconds: secs, concurrency: 40, sources, tokens });
        runs.push(run(process.execPath, [new URL('./churn.mjs', import.meta.url).pathname, arg], (secs + 30) * 1000));
      }
      const sum = {};
      for (const r of await Promise.all(runs)) {
        if (r.code !== 0) throw new Error(`churn process failed: ${r.stderr}`);
        for (const [k, v] of Object.entries(JSON.parse(r.stdout.trim().split('\n').pop()))) sum[k] = (sum[k] ?? 0) + v;
      }
      return sum;
    };
    // Back to the chatting devices' connections, then a moment to settle.
    const settle = async (want) => {
      const deadline = Date.now() + 20000;
      while ((await gauge()) > want && Date.now() < deadline) await sleep(200);
      await sleep(3000);
    };
    const steady = await gauge();
    // Warm-up: the allocator's and libpq's buffers reach their high-water
    // mark at this churn before the baseline is taken.
    await churn(Math.min(10, Math.ceil(seconds / 3)));
    await settle(steady);
    const base = probe();
    const t0 = Date.now();
    const samples = [];
    const sampler = setInterval(() => { try { samples.push(probe().rss); } catch { /* gone */ } }, 5000);
    const counts = await churn(seconds).finally(() => clearInterval(sampler));
    const faultEnd = Date.now();
    const conns = counts.tcp + counts.upgrade + counts.auth + counts.abort;
    const rate = Math.round(conns / ((faultEnd - t0) / 1000));
    await settle(steady);
    const after = probe();
    const left = await gauge();
    const problems = [];
    const within5 = (a, b) => Math.abs(a - b) <= Math.max(1, b * 0.05);
    if (left > steady) problems.push(`${left} connections open after the churn, ${steady} before`);
    if (!within5(after.fds, base.fds)) problems.push(`open fds ${base.fds} before, ${after.fds} after`);
    if (!asan && !within5(after.rss, base.rss)) problems.push(`RSS ${base.rss} kB before, ${after.rss} kB after`);
    if (rate < 1000) problems.push(`only ${rate} connects per second`);
    if (counts.hello === 0) problems.push('no churning connection got its hello');
    const detail = `${procs} processes x 40 loops for ${seconds} s: ${conns} connections (${rate}/s; ${JSON.stringify(counts)}); ` +
      `gateway fds ${base.fds} -> ${after.fds}, RSS ${base.rss} -> ${after.rss} kB (every 5 s during the churn: ${samples.join(' ')})${asan ? ' (ASan: RSS not judged)' : ''}`;
    if (problems.length) throw new Error(`${problems.join('; ')} (${detail})`);
    return { faultEnd, bound: 10000, detail };
  },

  // 5b: pg_wal (symlinked) on a 48 MB tmpfs that run.sh mounted
  // (FAULTS_WAL_DISK), filled, then a WAL segment switch: PostgreSQL cannot
  // create the next segment and PANICs (a WAL write that fails is never an
  // error a transaction can roll back), its crash recovery fails for the
  // same reason and the postmaster exits.  Space back, pg_ctl start:
  // crash recovery; nothing acked may be lost, the gateway is not restarted.
  async 'wal-full'(load) {
    const dir = process.env.FAULTS_WAL_DISK;
    if (!dir) throw new Error('FAULTS_WAL_DISK unset: run this scenario through tests/faults/run.sh');
    const filler = `${dir}/filler`;
    const before = load.acks.length;
    const { pm } = clusterPids();
    const start = Date.now();
    await run('dd', ['if=/dev/zero', `of=${filler}`, 'bs=64k'], 30000);
    // A new segment is needed at the switch (twice: one may have been preallocated).
    for (let i = 0; i < 3 && alive(pm); i++) {
      await value('postgres', 'SELECT pg_switch_wal()').catch(() => {});
      await value('postgres', 'CREATE TEMP TABLE t AS SELECT 1').catch(() => {});
      await sleep(500);
    }
    const deadline = Date.now() + 30000;
    while (alive(pm) && Date.now() < deadline) await sleep(100);
    const died = Date.now();
    const log = fs.readFileSync(`${process.env.CHAT_TEST_PGDATA}/../postgres.log`, 'utf8');
    const panic = (log.match(/PANIC: .*No space left on device.*/) ?? [])[0];
    fs.rmSync(filler, { force: true });
    if (alive(pm)) throw new Error('the postmaster still runs 30 s after pg_wal filled up');
    if (!panic) throw new Error('no PANIC for the full pg_wal in the server log');
    await sleep(300);
    await pgStart();
    const faultEnd = Date.now();
    return {
      faultEnd, bound: 20000,
      detail: `pg_wal full after ${before} acks: "${panic.replace(/^.*PANIC: +/, 'PANIC: ')}"; the postmaster exited ${died - start} ms after the fill; ` +
        `space back and pg_ctl start (crash recovery) after ${faultEnd - died} ms`,
    };
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
      // ... and the gateway exports them (read with its node heartbeat).
      const total = Number(await value(load.db, 'SELECT fallbacks FROM chat.notifier_stats()'));
      let m, exported;
      for (let i = 0; i < 50; i++) {
        m = await load.gw.get('/metrics');
        exported = Number((m.text.match(/^chat_notifier_fallbacks_total(?:\{[^}]*\})? (\d+)/m) ?? [])[1] ?? NaN);
        if (exported >= total) break;
        await sleep(100);
      }
      if (!(exported >= total)) throw new Error(`the gateway's /metrics chat_notifier_fallbacks_total is ${exported}, chat.notifier_stats() says ${total}`);
      const metric = (n) => (m.text.match(new RegExp(`^${n}\\{[^}]*\\} (\\d+)`, 'm')) ?? [])[1] ?? '?';
      return `burst of ${sends.length} x 3000 B, ${res.filter(Boolean).length} ok; gateway drops_total ${metric('chat_gateway_drops_total')}, ` +
        `resyncs_total ${metric('chat_gateway_resyncs_total')}; notifications seen by a listener: ${pids.length}, ` +
        `${fallbacks} of them NOTIFYed by a sending backend (ring full: fallback), the rest by the notifier worker ` +
        `(chat.notifier_stats() counted ${counted} fallback transactions; the gateway's /metrics chat_notifier_fallbacks_total ${exported})`;
    };
    return { faultEnd, bound: 10000, after };
  },
};

// 5: chat.messages, its TOAST table and its indexes moved to a tablespace
// on the tmpfs run.sh mounted at FAULTS_DISK.
async function diskSetup(load) {
  const loc = `${process.env.FAULTS_DISK}/ts`;
  fs.mkdirSync(loc);
  fs.chownSync(loc, Number(execFileSync('id', ['-u', 'postgres']).toString()), Number(execFileSync('id', ['-g', 'postgres']).toString()));
  await psql('postgres', `CREATE TABLESPACE fault_disk LOCATION '${loc}'`);
  const idx = await rows(load.db, "SELECT indexrelid::regclass::text AS name FROM pg_index WHERE indrelid = 'chat.messages'::regclass");
  await psql(load.db, ['ALTER TABLE chat.messages SET TABLESPACE fault_disk;',
    ...idx.map((i) => `ALTER INDEX ${i.name} SET TABLESPACE fault_disk;`)].join('\n'));
}

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
    if (name === 'disk-full') await diskSetup(load);
    const g = gateways[name] ? await gateways[name](load) : {};
    await load.start(g.args ?? [], { host: g.host });
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
    await load.proxy?.stop().catch(() => {});
  }
  console.log(`RESULT ${JSON.stringify(result)}`);
  process.exit(result.pass ? 0 : 1);
}

// A signal ends the run through process.exit, whose handler in
// tests/gateway/lib.mjs kills the gateways still running.
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(130));
main();
