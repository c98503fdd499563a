// --event-lib ev: the gateway on lws's libev event library (epoll) serves
// the protocol as the default poll loop does: hello, a send and its event
// both ways, the database's notifications, a SIGTERM drain (1012, exit 0);
// an unknown event library stops start-up.  (The whole suite runs on it
// with CHAT_EVENT_LIB=ev tests/gateway/run.sh.)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { twoUserDb, startGateway, stopAll, connectAs } from './lib.mjs';

const DB = 'gw_26_event_lib';
let alice, bob, conv;

before(async () => {
  ({ alice, bob, conv } = await twoUserDb(DB));
});
after(stopAll);

test('--event-lib ev: messages both ways, then a clean SIGTERM drain', async () => {
  const gw = await startGateway({ db: DB, args: ['--event-lib', 'ev'] });
  assert.match(readFileSync(gw.log, 'utf8'), /event loop: libev \(epoll\)/);
  const a = await connectAs(gw, alice.id, 1, { label: 'alice' });
  const b = await connectAs(gw, bob.id, 1, { label: 'bob' });
  for (let i = 0; i < 20; i++) {
    const [from, to, who] = i % 2 ? [b, a, bob] : [a, b, alice];
    const since = to.mark();
    const r = await from.call({ type: 'send', conversation: conv, body: `ev ${i}`, client_msg_id: `ev-${i}` });
    assert.equal(r.seq, i + 1);
    const ev = await to.waitFor((f) => f.type === 'message' && f.seq === i + 1, 3000, since);
    assert.equal(ev.sender, who.id);
    assert.equal(ev.body, `ev ${i}`);
  }
  const exit = await gw.stop();
  assert.deepEqual({ code: exit.code, signal: exit.signal }, { code: 0, signal: null }, `exit; log: ${gw.log}`);
  for (const c of [a, b]) assert.equal((await c.waitClose(3000)).code, 1012, `${c.label} close code`);
});

test('--event-lib accepts only poll or ev', async () => {
  await assert.rejects(startGateway({ db: DB, args: ['--event-lib', 'epoll'], healthTimeout: 3000 }));
});
