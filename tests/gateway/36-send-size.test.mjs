// Whole frames in one send: events and responses of a few hundred bytes to
// a few KiB reach an attentive client each in one send() the socket takes
// whole, never cut into pieces that lws must buffer and write later.  The
// gateway once had its largest single send capped at its 128-byte receive
// buffer (lws's tx_packet_size 0 means rx_buffer_size): every frame over
// 128 bytes went out in 128-byte sends, half the fanout rate, and only a
// benchmark noticed.  chat_gateway_partial_writes_total counts frames the
// socket took only in part; with a client that reads at once it stays 0.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { twoUserDb, startGateway, stopAll, connectAs, parseMetrics } from './lib.mjs';

const DB = 'gw_36_send_size';
let gw, alice, bob, conv;

before(async () => {
  ({ alice, bob, conv } = await twoUserDb(DB));
  gw = await startGateway({ db: DB });
});
after(stopAll);

async function counter(name) {
  const r = await gw.get('/metrics');
  assert.equal(r.status, 200);
  const s = parseMetrics(r.text).filter((x) => x.name === name);
  assert.equal(s.length, 1, `${name} in /metrics:\n${r.text}`);
  return s[0].value;
}

test('frames of 300 B to 4 KiB go out whole: no partial sends', async () => {
  const a = await connectAs(gw, alice.id, 1, { label: 'alice' });
  const b = await connectAs(gw, bob.id, 1, { label: 'bob' });
  const before = await counter('chat_gateway_partial_writes_total');
  const framesBefore = await counter('chat_gateway_frames_out_total');
  const sizes = [300, 700, 1500, 3000, 4000];
  let n = 0;
  for (let round = 0; round < 4; round++) {
    for (const size of sizes) {
      const body = `r${round} ${'x'.repeat(size)}`;
      const r = await a.call({ type: 'send', conversation: conv, body, client_msg_id: `ss-${round}-${size}` });
      const ev = await b.waitFor((f) => f.type === 'message' && f.seq === r.seq, 3000);
      assert.equal(ev.body, body, 'the event carries the whole body');
      n++;
    }
  }
  // and a response of about 10 KiB (the newest five)
  const page = await b.call({ type: 'history', conversation: conv, limit: 5 });
  assert.equal(page.messages.length, 5);
  const frames = (await counter('chat_gateway_frames_out_total')) - framesBefore;
  assert.ok(frames >= 2 * n, `at least ${2 * n} frames written (responses and events), got ${frames}`);
  assert.equal(await counter('chat_gateway_partial_writes_total') - before, 0,
               `${frames} frames of up to 4 KiB, none sent in part`);
  a.close();
  b.close();
});
