// Media (issue 13) with the messenger features (issue 15) over the wire: a
// send carrying attachments and mentions delivers both in the live event;
// a reaction entry to it carries no attachments, the target's reactions map
// and attachments come back together in history and search; and a
// disappearing message with a file is tombstoned by the expiry worker,
// which removes its upload and queues the bytes for chat-media to delete.
// (The bytes themselves are 24-media's business: uploads are marked ready
// here as chat-media would.)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { newDb, makeUser, group, startGateway, stopAll, connectAs, value, psql, lit, sleep, ms } from './lib.mjs';

const DB = 'gw_25_media_messenger';
let gw;

before(async () => {
  await newDb(DB);
  gw = await startGateway({ db: DB, args: ['--node-heartbeat', '1'] });
});
after(stopAll);

// An upload announced over the wire and marked ready (with a thumbnail) as
// chat-media would after the PUT; resolves its id.
async function readyUpload(c, conv, name) {
  const bytes = Buffer.from(`picture ${name}`);
  const r = await c.call({ type: 'upload', conversation: conv, mime: 'image/png', size: bytes.length,
    sha256: createHash('sha256').update(bytes).digest('hex'), name });
  await psql(DB, `SELECT chat.media_uploaded(${lit(r.upload)}, 64, 48, ${lit('thumb-' + r.upload)})`);
  return r.upload;
}

test('attachments and mentions in one send; a reaction entry carries no attachments', async () => {
  const a = await makeUser(DB), b = await makeUser(DB);
  const conv = await group(DB, a.id, [b.id]);
  const ca = await connectAs(gw, a.id), cb = await connectAs(gw, b.id);
  const up = await readyUpload(ca, conv, 'cat.png');
  let since = cb.mark();
  const r = await ca.call({ type: 'send', conversation: conv, body: 'look @b', client_msg_id: 'am1',
    attachments: [up], mentions: [b.id] });
  const ev = await cb.waitFor((f) => f.type === 'message' && f.seq === r.seq, 3000, since);
  assert.deepEqual(ev.mentions, [b.id]);
  assert.deepEqual(ev.attachments.map((x) => [x.id, x.name, x.thumbnail]), [[up, 'cat.png', true]]);

  since = ca.mark();
  const re = await cb.call({ type: 'react', conversation: conv, seq: r.seq, emoji: '👍' });
  const entry = await ca.waitFor((f) => f.type === 'message' && f.seq === re.entry, 3000, since);
  assert.deepEqual([entry.kind, entry.target, entry.emoji], ['reaction', r.seq, '👍']);
  assert.equal(entry.attachments, undefined, 'the reaction entry carries no attachments');
  assert.equal(entry.mentions, undefined);

  const hist = await cb.call({ type: 'history', conversation: conv });
  const m = hist.messages.find((x) => x.seq === r.seq);
  assert.deepEqual([m.mentions, m.reactions, m.attachments.length], [[b.id], { '👍': [b.id] }, 1]);
  assert.equal(hist.messages.find((x) => x.seq === re.entry).attachments, undefined);
  const found = await cb.call({ type: 'search', query: 'look', conversation: conv });
  assert.deepEqual(found.messages.map((x) => [x.seq, x.attachments?.[0]?.id, x.mentions]), [[r.seq, up, [b.id]]]);
});

test('a disappearing message with a file loses it when the expiry worker tombstones it', async () => {
  const a = await makeUser(DB), b = await makeUser(DB);
  const conv = await group(DB, a.id, [b.id]);
  const ca = await connectAs(gw, a.id), cb = await connectAs(gw, b.id);
  assert.deepEqual(await ca.call({ type: 'set_disappearing', conversation: conv, ttl: 5 }), {});
  const up = await readyUpload(ca, conv, 'gone.png');
  const { seq } = await ca.call({ type: 'send', conversation: conv, body: '', attachments: [up], mentions: [b.id] });
  const keys = await value(DB, `SELECT storage_key || ',' || thumbnail_key FROM chat.attachments WHERE id = ${lit(up)}`);
  // The heartbeat (every second here) starts the worker once it is due.
  const deadline = Date.now() + ms(20000);
  let msg;
  while (Date.now() < deadline) {
    msg = (await cb.call({ type: 'history', conversation: conv })).messages.find((x) => x.seq === seq);
    if (msg.deleted_at) break;
    await sleep(500);
  }
  assert.ok(msg.deleted_at, `not tombstoned: ${JSON.stringify(msg)}`);
  assert.deepEqual([msg.body, msg.attachments, msg.mentions], [null, undefined, undefined]);
  // Readers show it gone from its expiry on (chat.message_expired); the
  // worker's tombstone, which removes the file, may come a little later.
  let rows = 1;
  while (Date.now() < deadline && (rows = Number(await value(DB, `SELECT count(*) FROM chat.attachments WHERE id = ${lit(up)}`))) > 0) {
    await sleep(250);
  }
  assert.equal(rows, 0, 'the worker removed the attachment row');
  const queued = await value(DB, `SELECT string_agg(storage_key, ',' ORDER BY id) FROM chat.media_deletions
                                   WHERE storage_key = ANY (string_to_array(${lit(keys)}, ','))`);
  assert.deepEqual(queued.split(',').sort(), keys.split(',').sort(), 'file and thumbnail queued for deletion');
  const url = await cb.request({ type: 'media_url', attachment: up });
  assert.deepEqual([url.type, url.code], ['error', 'P0002']);
});
