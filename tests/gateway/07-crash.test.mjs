// kill -9 of the gateway in the middle of a send stream, then a restart: the
// clients follow the protocol's duties (retry unanswered sends with the same
// client_msg_id, sync on reconnect, dedup by seq, repair gaps) and the
// receiver ends with every message exactly once, as does the database.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { twoUserDb, startGateway, stopAll, token, DutifulClient, rows, sleep, ms } from './lib.mjs';

const DB = 'gw_07_crash';
let gw, alice, bob, conv;

before(async () => {
  ({ alice, bob, conv } = await twoUserDb(DB, { bob: { devices: 2 } }));
  // The stream runs faster than the default 50 requests/s per connection.
  gw = await startGateway({ db: DB, label: 'crash', args: ['--rate', '2000'] });
});
after(stopAll);

// Waits until cond() holds, polling; throws with what() after timeout.
async function until(cond, timeout, what) {
  const deadline = Date.now() + ms(timeout);
  while (Date.now() < deadline) { if (cond()) return; await sleep(25); }
  throw new Error(`timed out: ${what()}`);
}

test('kill -9 mid-stream and restart: every message exactly once', { timeout: ms(90000) }, async () => {
  const N = 150, WINDOW = 8;
  const url = (user, dev) => () => gw.wsUrl(token(user, dev));
  const sender = new DutifulClient({ url: url(alice.id, 1), user: alice.id, label: 'alice' }).start();
  const receiver = new DutifulClient({ url: url(bob.id, 1), user: bob.id, label: 'bob/1' }).start();
  await until(() => sender.connects === 1 && receiver.connects === 1, 5000, () => `not connected: ${sender.errors} ${receiver.errors}`);

  // A stream of N sends, at most WINDOW unanswered at a time.  Two kills,
  // each fired 1 ms after a response let the pump issue new sends, so that
  // some of them are committed but never answered.
  const done = [];
  const killAt = [Math.floor(N / 3), Math.floor((2 * N) / 3)];
  const kills = [];
  let next = 0, inflight = 0, streamError = null, restarting = null;
  const crash = async () => {
    const answered = done.length;
    const exit = await gw.kill9();
    kills.push({ answered, exit });
    await sleep(200);
    gw.spawn();
    await gw.waitHealth(200, 15000);
  };
  const stream = new Promise((resolve, reject) => {
    // No new sends while the gateway restarts (those in flight are retried
    // by the client): otherwise the stream could finish before the restart
    // is confirmed, and the second kill would never come.
    const pump = () => {
      while (inflight < WINDOW && next < N && !restarting) {
        const i = next++;
        inflight++;
        sender.send(conv, `msg ${i}`, `crash-${i}`).then((r) => {
          done.push(r);
          inflight--;
          if (done.length === N) { resolve(); return; }
          pump();
          if (kills.length + (restarting ? 1 : 0) < killAt.length && done.length >= killAt[kills.length] && !restarting) {
            restarting = sleep(1).then(crash).catch(reject).finally(() => { restarting = null; pump(); });
          }
        }, reject);
      }
    };
    pump();
  }).catch((e) => { streamError = e; });

  await until(() => done.length === N || streamError, 60000, () => `stream stalled: ${done.length}/${N} answered; errors ${sender.errors.slice(-3)}`);
  await stream;
  if (streamError) throw streamError;
  if (restarting) await restarting;
  const answeredAtKill = kills.map((k) => k.answered).join(' and ');
  const killed = kills.length === 2 && kills.every((k) => k.exit.signal === 'SIGKILL');
  assert.ok(killed && kills.every((k) => k.answered < N), `two kills mid-stream: ${JSON.stringify(kills)}`);
  assert.ok(sender.connects >= 3, `the sender reconnected after each kill (${sender.connects} connects)`);
  // The receiver may still be backing off (jittered, up to 1 s here).
  await until(() => receiver.connects >= 2 && receiver.c?.open, 10000,
    () => `receiver did not reconnect (${receiver.connects} connects); errors ${receiver.errors.slice(-4)}`);

  // The sender saw each message answered once, with distinct seqs 1..N.
  const seqs = done.map((r) => r.seq).sort((x, y) => x - y);
  assert.deepEqual(seqs, Array.from({ length: N }, (_, i) => i + 1), 'answered seqs are 1..N');
  const dup = done.filter((r) => r.duplicate).length;

  // The receiver ends with every message exactly once.
  await until(() => (receiver.contig.get(conv) ?? 0) >= N, 20000,
    () => `receiver has ${receiver.messages(conv).length} (contiguous ${receiver.contig.get(conv)}) of ${N}; errors ${receiver.errors.slice(-3)}`);
  const got = receiver.messages(conv);
  assert.equal(got.length, N);
  assert.deepEqual(got.map((m) => m.seq), seqs);
  const ids = got.map((m) => m.client_msg_id);
  assert.equal(new Set(ids).size, N, 'each client_msg_id once');
  assert.deepEqual([...ids].sort(), Array.from({ length: N }, (_, i) => `crash-${i}`).sort());
  for (const m of got) assert.equal(m.body, `msg ${m.client_msg_id.slice(6)}`);
  // Each client's sends keep their order: seq order is stream order.
  const order = got.map((m) => Number(m.client_msg_id.slice(6)));
  const inversions = order.filter((v, i) => i > 0 && v < order[i - 1]).length;
  assert.ok(inversions <= WINDOW, `sends reordered beyond the retry window: ${inversions}`);

  // The database agrees: N rows, gapless, one per client_msg_id.
  const [db] = await rows(DB, `SELECT count(*)::int AS n, max(seq)::int AS max, count(DISTINCT client_msg_id)::int AS ids
                               FROM chat.messages WHERE conversation_id = ${conv}`);
  assert.deepEqual(db, { n: N, max: N, ids: N });
  // The receiver's device cursor reached the end once its acks got through.
  await sleep(ms(300));
  const [cur] = await rows(DB, `SELECT acked_seq::int FROM chat.device_cursors WHERE user_id = ${bob.id} AND device_id = 1 AND conversation_id = ${conv}`);
  assert.equal(cur?.acked_seq, N, 'receiver acked everything');
  console.log(`# crash: killed after ${answeredAtKill} answered (of ${N}); ${dup} duplicate answers; receiver dropped ${receiver.duplicatesDropped} duplicate events; reconnects ${sender.connects - 1}/${receiver.connects - 1}; sender rate-limited ${sender.rateLimited ?? 0}`);
  await sender.stop();
  await receiver.stop();
});

test('a device that was offline through the crash syncs everything once', async () => {
  // bob/2 never connected during the stream: one sync run gives all N.
  const late = new DutifulClient({ url: () => gw.wsUrl(token(bob.id, 2)), user: bob.id, dev: 2, label: 'bob/2' }).start();
  await until(() => (late.contig.get(conv) ?? 0) >= 150, 15000, () => `bob/2 has ${late.messages(conv).length}; ${late.errors.slice(-3)}`);
  assert.equal(late.messages(conv).length, 150);
  assert.equal(late.duplicatesDropped, 0);
  await late.stop();
});
