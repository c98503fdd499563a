// Connect batching (issue 11, connection storms): the sessions of clients
// arriving together are registered with chat.connect_many, a batch per pool
// connection and loop turn, instead of one chat.connect round trip each.
// Every session is registered, presence is announced as chat.connect would,
// one unknown device in the storm is refused 4003 alone, and a database
// without chat.connect_many still registers everyone (one call each).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { newDb, makeUser, direct, startGateway, stopAll, connectAs, Client, token, psql, value, ms } from './lib.mjs';

const DB = 'gw_27_connect_batch';
const N = 60;
let users;

before(async () => {
  await newDb(DB);
  users = [];
  for (let i = 0; i < N; i++) users.push(await makeUser(DB));
});
after(stopAll);

const batchLines = (gw) => fs.readFileSync(gw.log, 'utf8').split('\n').filter((l) => l.includes('chat.connect_many with'));
const isPresence = (user) => (f) => f.type === 'presence' && f.user === user;

test('a storm of N connections registers all N sessions in batches, presence once each, one bad device refused alone', async () => {
  const watcher = await makeUser(DB);
  for (const u of users.slice(0, 3)) await direct(DB, watcher.id, u.id);
  const gwW = await startGateway({ db: DB, label: 'watcher' });
  const w = await connectAs(gwW, watcher.id, 1, { label: 'watcher' });
  const since = w.mark();

  const gw = await startGateway({ db: DB, args: ['--log-level', 'debug', '--pool', '2'] });
  // every client at once, and one device that does not exist among them
  const bad = Client.connect(gw, { token: token(users[5].id, 9), hello: false, label: 'bad device' });
  const all = await Promise.all(users.map((u) => connectAs(gw, u.id, 1, { timeout: 15000 })));
  const b = await bad;
  const closed = await b.waitClose(10000);
  assert.equal(closed.code, 4003, JSON.stringify(closed));
  assert.equal(b.frames.find((f) => f.type === 'hello'), undefined, 'no hello for the unknown device');

  for (const c of all) assert.equal(c.hello.type, 'hello');
  assert.equal(Number(await value(DB, `SELECT count(*) FROM chat.sessions WHERE node = '${gw.node}'`)), N);
  const online = await value(DB, `SELECT count(*) FROM chat.sessions s JOIN chat.users u ON u.id = s.user_id
                                   WHERE s.node = '${gw.node}' AND s.device_id = 1`);
  assert.equal(Number(online), N);
  // batched: fewer calls than sessions, and they cover most of them
  const lines = batchLines(gw);
  const batched = lines.reduce((s, l) => s + Number(/with (\d+) sessions/.exec(l)[1]), 0);
  assert.ok(lines.length >= 1 && lines.length < N, `${lines.length} batches: ${lines.slice(0, 3).join(' | ')}`);
  assert.ok(batched >= N / 2, `only ${batched} of ${N} sessions batched`);

  // presence: each of the watcher's contacts announced online exactly once
  for (const u of users.slice(0, 3)) {
    const ev = await w.waitFor(isPresence(u.id), ms(5000), since);
    assert.equal(ev.online, true, JSON.stringify(ev));
  }
  await w.expectNone((f) => f.type === 'presence' && f.online === false, 300, since);
  for (const u of users.slice(0, 3))
    assert.equal(w.frames.slice(since).filter(isPresence(u.id)).length, 1, `one presence for ${u.id}`);

  // requests flow on every batched connection
  const res = await all[N - 1].request({ type: 'ping' });
  assert.equal(res.type, 'pong');
  for (const c of all) c.close();
  await Promise.all(all.map((c) => c.closed));
  // and the disconnects follow their connects: no session left
  const deadline = Date.now() + ms(5000);
  let left;
  while (Date.now() < deadline && (left = Number(await value(DB, `SELECT count(*) FROM chat.sessions WHERE node = '${gw.node}'`))) > 0)
    await new Promise((r) => setTimeout(r, 100));
  assert.equal(left, 0, 'sessions left after every client closed');
  w.close();
});

test('without chat.connect_many (an older extension) every session is still registered, one chat.connect each', async () => {
  const db = `${DB}_old`;
  await newDb(db);
  const some = [];
  for (let i = 0; i < 20; i++) some.push(await makeUser(db));
  await psql(db, 'ALTER EXTENSION chat DROP FUNCTION chat.connect_many(text, bigint[], integer[]); DROP FUNCTION chat.connect_many(text, bigint[], integer[])');
  const gw = await startGateway({ db, args: ['--log-level', 'debug', '--pool', '1'] });
  const all = await Promise.all(some.map((u) => connectAs(gw, u.id, 1, { timeout: 15000 })));
  for (const c of all) assert.equal(c.hello.type, 'hello');
  assert.equal(Number(await value(db, `SELECT count(*) FROM chat.sessions WHERE node = '${gw.node}'`)), some.length);
  const log = fs.readFileSync(gw.log, 'utf8');
  assert.match(log, /chat\.connect_many unavailable \(42883/);
  for (const c of all) c.close();
});
