// kill -9 of the gateway in the middle of a send stream, then a restart: the
// clients follow the protocol's duties (retry unanswered sends with the same
// client_msg_id, sync on reconnect, dedup by seq, repair gaps) and the
// receiver ends with every message exactly once, as does the database.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { newDb, makeUser, direct, startGateway, stopAll, token, DutifulClient, rows, sleep, ms } from './lib.mjs';

const DB = 'gw_07_crash';
let gw, alice, bob, conv;

before(async () => {
  await newDb(DB);
  alice = await makeUser(DB);
  bob = await makeUser(DB, { devices: 2 });
  conv = await direct(DB, alice.id, bob.id);
  gw = await startGateway({ db: DB, label: 'crash' });
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

  // A stream of N sends, at most WINDOW unanswered at a time.
  const done = [];
  let next = 0, inflight = 0, killed = false;
  const stream = new Promise((resolve, reject) => {
    const pump = () => {
      while (inflight < WINDOW && next < N) {
        const i = next++;
        inflight++;
        sender.send(conv, `msg ${i}`, `crash-${i}`).then((r) => { done.push(r); inflight--; if (done.length === N) resolve(); else pump(); }, reject);
      }
    };
    pump();
  });

  // Kill when a third is answered (sends are in flight then), restart after a pause.
  await until(() => done.length >= N / 3, 20000, () => `only ${done.length} sends answered; ${sender.errors.slice(-3)}`);
  const answeredAtKill = done.length;
  const exit = await gw.kill9();
  killed = true;
  assert.equal(exit.signal, 'SIGKILL');
  await sleep(300);
  gw.spawn();
  await gw.waitHealth(200, 15000);

  await Promise.race([stream, sleep(ms(45000)).then(() => { throw new Error(`stream stalled: ${done.length}/${N} answered; errors ${sender.errors.slice(-3)}`); })]);
  assert.ok(killed && answeredAtKill < N, 'the kill happened mid-stream');
  assert.ok(sender.connects >= 2 && receiver.connects >= 2, `both reconnected (${sender.connects}, ${receiver.connects})`);

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
  console.log(`# crash: killed after ${answeredAtKill} answered; ${dup} duplicate answers; receiver dropped ${receiver.duplicatesDropped} duplicate events; reconnects ${sender.connects - 1}/${receiver.connects - 1}`);
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
