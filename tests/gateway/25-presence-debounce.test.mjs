// Presence debounce (chat.presence_grace): a device that reconnects within
// the grace, or whose gateway restarts and is back within it, is announced
// neither offline nor online; one that stays away is announced offline
// once the grace has passed (swept by a node heartbeat), with last_seen.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { newDb, makeUser, direct, startGateway, stopAll, connectAs, psql, sleep, ms } from './lib.mjs';

const DB = 'gw_25_presence_debounce';
const GRACE_MS = 2000;
let gwA, alice;

before(async () => {
  await newDb(DB);
  await psql(DB, `ALTER DATABASE ${DB} SET chat.presence_grace = '${GRACE_MS}ms'`);
  // alice watches from her own gateway, which also sweeps every second
  gwA = await startGateway({ db: DB, args: ['--node-heartbeat', '1'], label: 'watcher' });
  alice = await makeUser(DB);
});
after(stopAll);

const isPresence = (user) => (f) => f.type === 'presence' && f.user === user;

test('a reconnect within the grace sends neither offline nor online; staying away sends offline after it', async () => {
  const dave = await makeUser(DB);
  await direct(DB, alice.id, dave.id);
  const gw = await startGateway({ db: DB, args: ['--node-heartbeat', '1'] });
  const a = await connectAs(gwA, alice.id, 1, { label: 'alice' });
  let since = a.mark();
  let d = await connectAs(gw, dave.id, 1, { label: 'dave' });
  const on = await a.waitFor(isPresence(dave.id), ms(3000), since);
  assert.equal(on.online, true, JSON.stringify(on));

  // Away for a moment: nothing at all, and the presence request says online.
  since = a.mark();
  d.close();
  await d.closed;
  await sleep(200);
  d = await connectAs(gw, dave.id, 1, { label: 'dave again' });
  await a.expectNone(isPresence(dave.id), GRACE_MS + ms(1500), since);
  const res = await a.call({ type: 'presence', users: [dave.id] });
  assert.equal(res.users[0].online, true, JSON.stringify(res));

  // Away for good: offline, not before the grace, with last_seen.
  since = a.mark();
  const left = Date.now();
  d.close();
  await d.closed;
  const off = await a.waitFor(isPresence(dave.id), GRACE_MS + ms(4000), since);
  const after = Date.now() - left;
  assert.equal(off.online, false, JSON.stringify(off));
  assert.ok(off.last_seen && !Number.isNaN(Date.parse(off.last_seen)), JSON.stringify(off));
  assert.ok(after >= GRACE_MS - 100, `offline after ${after} ms, before the ${GRACE_MS} ms grace`);
  // and back: online again (it was announced offline)
  since = a.mark();
  d = await connectAs(gw, dave.id, 1, { label: 'dave back' });
  const back = await a.waitFor(isPresence(dave.id), ms(3000), since);
  assert.equal(back.online, true, JSON.stringify(back));
  d.close();
  a.close();
});

test('a gateway restart whose clients come back within the grace is not announced', async () => {
  const erin = await makeUser(DB);
  await direct(DB, alice.id, erin.id);
  let gw = await startGateway({ db: DB, args: ['--node-heartbeat', '1'], label: 'erin-gw' });
  const a = await connectAs(gwA, alice.id, 1, { label: 'alice' });
  let since = a.mark();
  let e = await connectAs(gw, erin.id, 1, { label: 'erin' });
  await a.waitFor(isPresence(erin.id), ms(3000), since);

  since = a.mark();
  await gw.stop();            // SIGTERM: closes erin 1012, resets its node
  gw = await startGateway({ db: DB, args: ['--node-heartbeat', '1'], label: 'erin-gw restarted' });
  e = await connectAs(gw, erin.id, 1, { label: 'erin again' });
  await a.expectNone(isPresence(erin.id), GRACE_MS + ms(1500), since);
  e.close();
  a.close();
});
