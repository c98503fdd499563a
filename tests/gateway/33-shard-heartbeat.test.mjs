// Latency tail, sharded (--listen-dsn): the per-partition node_heartbeat
// must not hold up that partition's live events.  PostgreSQL hands a
// backend's notifications to its client only between transactions, so a
// heartbeat on a partition's LISTEN connection delayed every event of the
// partition for as long as it ran.  The gateway runs it on a maintenance
// connection per partition; while that one is down, on the LISTEN
// connection (heartbeats never stop).  The partition here is the test
// database itself (--listen-dsn = --dsn, chat.partitions = 1), which is
// how a gateway sees one partition: LISTEN, node_reset and node_heartbeat
// there, requests through --dsn.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { twoUserDb, startGateway, stopAll, connectAs, value, psql, sleep, ms, dsn } from './lib.mjs';

const DB = 'gw_33_shard_heartbeat';
let alice, bob, conv;

before(async () => {
  ({ alice, bob, conv } = await twoUserDb(DB));
});
after(async () => {
  await psql('postgres', `ALTER DATABASE ${DB} ALLOW_CONNECTIONS true`);
  await stopAll();
});

// A gateway in sharded mode with the test database as its one partition.
const sharded = () => startGateway({ db: DB, args: ['--node-heartbeat', '1', '--listen-dsn', dsn(DB)] });

// Polls query (a single value) on db until it is truthy (not 0, false or null); returns it (or the last value after timeout ms).
async function until(db, query, timeout = 5000) {
  let v;
  for (const end = Date.now() + ms(timeout); Date.now() < end;) {
    v = await value(db, query);
    if (v) return v;
    await sleep(100);
  }
  return v;
}

// Backends of node gw (pg_stat_activity, readable from any database).
const backends = (gw) => `FROM pg_stat_activity WHERE application_name = 'chat-gateway ${gw.node}'`;

test('sharded: a partition\'s message is delivered while its node heartbeat is blocked', async () => {
  const gw = await sharded();
  const a = await connectAs(gw, alice.id, 1, { label: 'alice' });
  const b = await connectAs(gw, bob.id, 1, { label: 'bob' });
  // a first heartbeat has registered the node's row (node_reset made it)
  const locker = psql(DB, `BEGIN; SELECT node FROM chat.nodes WHERE node = '${gw.node}' FOR UPDATE;
                           SELECT pg_sleep(6) /* gw33-locker */; COMMIT`);
  const blocked = `SELECT count(*) ${backends(gw)} AND query LIKE '%node_heartbeat%' AND wait_event_type = 'Lock'`;
  assert.equal(await until(DB, blocked), 1, 'no heartbeat waited on the locked node row');
  const since = b.mark();
  const t0 = Date.now();
  const r = await a.call({ type: 'send', conversation: conv, body: 'during a slow partition heartbeat', client_msg_id: 'gw33-1' });
  const ev = await b.waitFor((f) => f.type === 'message' && f.seq === r.seq, ms(5000), since);
  const took = Date.now() - t0;
  assert.equal(ev.body, 'during a slow partition heartbeat');
  // Behind the heartbeat the event would wait for the rest of the 6 s lock.
  assert.ok(took < ms(2500), `send + delivery took ${took} ms while the heartbeat was blocked`);
  assert.equal(await value(DB, blocked), 1, 'the heartbeat was no longer blocked when the event came');
  await locker;
  assert.equal(await gw.healthz(), 200);
  await gw.stop();
});

test('sharded: heartbeats fall back to the LISTEN connection while the maintenance connection is down, and it reconnects', async () => {
  const gw = await sharded();
  // The LISTEN connection's last query is node_reset (it runs nothing else
  // while the maintenance connection is up); the maintenance one's is node_heartbeat.
  const listenPid = await until(DB, `SELECT coalesce(max(pid), 0) ${backends(gw)} AND query LIKE '%node_reset%'`);
  assert.ok(Number(listenPid) > 0, 'no backend of the gateway ran node_reset');
  const maintOf = (not) => `SELECT coalesce(max(pid), 0) ${backends(gw)}
    AND query LIKE '%node_heartbeat%' AND pid NOT IN (${not.join(', ')})`;
  const maintPid = await until(DB, maintOf([listenPid]));
  assert.ok(Number(maintPid) > 0, 'no maintenance backend ran node_heartbeat');
  const heartbeatAt = `SELECT heartbeat_at FROM chat.nodes WHERE node = '${gw.node}'`;
  // The maintenance connection cannot come back while the database refuses new connections.
  await psql('postgres', `ALTER DATABASE ${DB} ALLOW_CONNECTIONS false`);
  try {
    const t0 = await value('postgres', 'SELECT now()');
    await value('postgres', `SELECT pg_terminate_backend(${maintPid})`);
    // within a few heartbeats the LISTEN connection runs one (state_change after the kill)
    const fellBack = await until('postgres', `SELECT count(*) ${backends(gw)} AND pid = ${listenPid}
      AND query LIKE '%node_heartbeat%' AND state_change > '${t0}'`, 4000);
    assert.equal(fellBack, 1, 'the LISTEN connection ran no heartbeat while the maintenance connection was down');
    const log = fs.readFileSync(gw.log, 'utf8');
    assert.match(log, /partition 0 maintenance connection lost/);
  } finally {
    await psql('postgres', `ALTER DATABASE ${DB} ALLOW_CONNECTIONS true`);
  }
  // back: a new maintenance backend carries the heartbeat again
  const again = await until(DB, maintOf([listenPid, maintPid]), 10000);
  assert.ok(Number(again) > 0, 'the maintenance connection did not come back (no new backend ran node_heartbeat)');
  assert.equal((fs.readFileSync(gw.log, 'utf8').match(/partition 0 maintenance connection ready/g) || []).length, 2);
  const h1 = await value(DB, heartbeatAt);
  assert.equal(await until(DB, `SELECT (${heartbeatAt}) > '${h1}'`), true, 'heartbeat_at did not move after the reconnect');
  // live events still flow
  const a = await connectAs(gw, alice.id, 1, { label: 'alice2' });
  const b = await connectAs(gw, bob.id, 1, { label: 'bob2' });
  const since = b.mark();
  const r = await a.call({ type: 'send', conversation: conv, body: 'after the kill', client_msg_id: 'gw33-2' });
  await b.waitFor((f) => f.type === 'message' && f.seq === r.seq, ms(3000), since);
  assert.equal(await gw.healthz(), 200);
});
