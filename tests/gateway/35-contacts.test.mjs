// Contact search over the wire (issue 15): search_users finds users by a
// prefix of handle or display name regardless of case, contacts first
// (a direct conversation where both sent), leaves out the asker and users
// who blocked the asker, and rejects bad input (22023, 22001, 22P02)
// without changing anything; the connection goes on after each error.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { newDb, makeUser, direct, startGateway, stopAll, connectAs, psql, value } from './lib.mjs';

const DB = 'gw_35_contacts';
let gw, me, pal, stranger, named, blocker, a;

before(async () => {
  await newDb(DB);
  gw = await startGateway({ db: DB });
  me = await makeUser(DB, { handle: 'kim' });
  pal = await makeUser(DB, { handle: 'Kimball' });        // contact: both sent
  stranger = await makeUser(DB, { handle: 'kimberly' });  // a direct chat, only kim sent
  named = await makeUser(DB, { handle: 'zz_named' });     // display name "Kiko"
  blocker = await makeUser(DB, { handle: 'kimora' });     // blocked kim
  await psql(DB, `SELECT chat.set_profile(${named.id}, 'Kiko')`);
  const c1 = await direct(DB, me.id, pal.id), c2 = await direct(DB, me.id, stranger.id);
  await psql(DB, `SELECT chat.send_message(${me.id}, ${c1}, 'hi'); SELECT chat.send_message(${pal.id}, ${c1}, 'hey');
                  SELECT chat.send_message(${me.id}, ${c2}, 'hello?'); SELECT chat.block(${blocker.id}, ${me.id})`);
  a = await connectAs(gw, me.id, 1, { label: 'kim' });
});
after(stopAll);

test('search_users: prefix of handle or display name, any case, contacts first, blockers and self left out', async () => {
  const r = await a.call({ type: 'search_users', query: 'KI' });
  assert.deepEqual(r.users.map((u) => [u.user, u.contact]),
    [[pal.id, true], [stranger.id, false], [named.id, false]]);
  assert.deepEqual(r.users[0], { user: pal.id, handle: 'Kimball', display_name: `User ${pal.id}`, about: null, avatar: null, contact: true });
  // display name only; limit
  assert.deepEqual((await a.call({ type: 'search_users', query: 'kik' })).users.map((u) => u.user), [named.id]);
  assert.deepEqual((await a.call({ type: 'search_users', query: 'ki', limit: 1 })).users.map((u) => u.user), [pal.id]);
  assert.deepEqual((await a.call({ type: 'search_users', query: 'nobody-like-this' })).users, []);
  // the blocker still finds kim (the block hides kim from no one but those kim blocked)
  const k = await connectAs(gw, blocker.id, 1, { label: 'kimora' });
  assert.deepEqual((await k.call({ type: 'search_users', query: 'kim', limit: 50 })).users.map((u) => u.user).includes(me.id), true);
});

test('search_users rejects bad input with its SQLSTATE and changes nothing', async () => {
  const before = await value(DB, 'SELECT count(*) FROM chat.messages');
  const cases = [
    [{ type: 'search_users' }, '22023'],
    [{ type: 'search_users', query: '' }, '22023'],
    [{ type: 'search_users', query: '   ' }, '22023'],
    [{ type: 'search_users', query: 'k'.repeat(65) }, '22001'],
    [{ type: 'search_users', query: ['ki'] }, '22P02'],
    [{ type: 'search_users', query: 'ki', limit: 0 }, '22023'],
    [{ type: 'search_users', query: 'ki', limit: 51 }, '22023'],
    [{ type: 'search_users', query: 'ki', limit: -5 }, '22023'],
    [{ type: 'search_users', query: 'ki', limit: 'many' }, '22P02'],
    [{ type: 'search_users', query: 'ki', limit: 1.5 }, '22P02'],
  ];
  for (const [req, code] of cases) {
    const r = await a.request(req);
    assert.deepEqual([r.type, r.code], ['error', code], `${JSON.stringify(req)} -> ${JSON.stringify(r)}`);
  }
  assert.equal(await value(DB, 'SELECT count(*) FROM chat.messages'), before);
  // still usable
  assert.equal((await a.call({ type: 'search_users', query: 'kimb' })).users.length, 2);
});
