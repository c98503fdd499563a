// Helpers of the e2e client tests: a connected device with its E2E state,
// an encrypted send, a decrypted read.
import assert from 'node:assert/strict';
import { connectAs, sleep } from './lib.mjs';
import { E2E, MemoryStore, E2EPendingError } from '../../web/client/e2e.js';

// A connected device of gateway gw with its E2E state; to_device and
// keys_low events are handed to it as they arrive, as the web client does.
export async function device(gw, user, dev, store = new MemoryStore()) {
  const d = { user, dev, store };
  d.c = await connectAs(gw, user, dev, {
    label: `u${user}/${dev}`,
    onFrame: (f) => {
      if (f.type === 'to_device') d.inbox = d.e2e.receiveToDevice([f]);
      if (f.type === 'keys_low') d.e2e.onKeysLow(f);
    },
  });
  d.e2e = new E2E({ user, device: dev, store, call: (req) => d.c.call(req) });
  await d.e2e.init();
  return d;
}

// Encrypts and sends text to conv from device d; returns the seq.
export async function sendText(d, conv, text) {
  const body = await d.e2e.encrypt(conv, text);
  return (await d.c.call({ type: 'send', conversation: conv, body, kind: 'e2e' })).seq;
}

// The message conv/seq as device d reads it, decrypted; waits for the
// sender key (to_device) up to 5 s, like the page's retry.
export async function read(d, conv, seq) {
  const { messages } = await d.c.call({ type: 'after', conversation: conv, after_seq: seq - 1, limit: 1 });
  const m = messages[0];
  assert.equal(m.kind, 'e2e');
  for (let i = 0; ; i++) {
    try {
      return await d.e2e.decrypt(m);
    } catch (e) {
      if (!(e instanceof E2EPendingError) || i >= 50) throw e;
      await sleep(100);
    }
  }
}
