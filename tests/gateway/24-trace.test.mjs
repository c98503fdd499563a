// --trace-latency: with 1, a response carries its hops (gateway receive,
// database call, commit, socket write) and an event its notification
// arrival and socket write, all CLOCK_REALTIME microseconds in order; with
// the default 0 no frame has a "trace" member.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { twoUserDb, startGateway, stopAll, connectAs } from './lib.mjs';

const DB = 'gw_24_trace';
let alice, bob, conv;

before(async () => {
  ({ alice, bob, conv } = await twoUserDb(DB));
});
after(stopAll);

// One send from alice to bob through a gateway started with args; returns
// [response, event, client send time us, client receive times us].
async function sendOnce(args, body) {
  const gw = await startGateway({ db: DB, args });
  const a = await connectAs(gw, alice.id, 1, { label: 'alice' });
  const b = await connectAs(gw, bob.id, 1, { label: 'bob' });
  const since = b.mark();
  const t0 = Date.now() * 1000;
  const r = await a.request({ id: 7, type: 'send', conversation: conv, body, client_msg_id: body });
  const tResp = Date.now() * 1000;
  const ev = await b.waitFor((f) => f.type === 'message' && f.body === body, 3000, since);
  const tEv = Date.now() * 1000;
  a.close(); b.close();
  return [r, ev, t0, tResp, tEv];
}

test('--trace-latency 1: response and event carry ordered hop timestamps', async () => {
  const [r, ev, t0, tResp, tEv] = await sendOnce(['--trace-latency', '1'], 'traced');
  assert.equal(r.type, 'ok', JSON.stringify(r));
  assert.equal(r.id, 7);
  assert.equal(r.result.seq > 0, true);
  const t = r.trace;
  assert.ok(t, `no trace in ${JSON.stringify(r)}`);
  assert.deepEqual(Object.keys(t), ['gw_rx', 'db_call', 'commit', 'write']);
  const w = Number(t.write);
  assert.match(t.write, /^\d{16}$/);
  // 2 ms of slack for the client's millisecond clock
  assert.ok(t0 - 2000 <= t.gw_rx && t.gw_rx <= t.db_call && t.db_call <= t.commit && t.commit <= w && w <= tResp + 2000,
    `hops out of order: client ${t0}, ${JSON.stringify(t)}, client receive ${tResp}`);
  const e = ev.trace;
  assert.ok(e, `no trace in ${JSON.stringify(ev)}`);
  assert.deepEqual(Object.keys(e), ['notify', 'write']);
  assert.match(e.write, /^\d{16}$/);
  assert.ok(t.db_call <= e.notify && e.notify <= Number(e.write) && Number(e.write) <= tEv + 2000,
    `event hops out of order: ${JSON.stringify(e)}, db call ${t.db_call}, client receive ${tEv}`);
  // the event is otherwise the usual one
  assert.equal(ev.conversation, conv);
  assert.equal(ev.sender, alice.id);
});

test('default (--trace-latency 0): no trace member anywhere', async () => {
  const [r, ev] = await sendOnce([], 'untraced');
  assert.equal(r.type, 'ok', JSON.stringify(r));
  assert.ok(!('trace' in r), JSON.stringify(r));
  assert.ok(!('trace' in ev), JSON.stringify(ev));
});

test('--trace-latency accepts only 0 or 1', async () => {
  await assert.rejects(startGateway({ db: DB, args: ['--trace-latency', '2'], healthTimeout: 3000 }));
});
