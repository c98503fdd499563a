// Sharded pgchat (docs/scaling.md): chat_proxy over 4 partitions on 2
// clusters (tests/shard/lib.sh), two gateways that LISTEN on every
// partition.  Run by tests/shard/run.sh, which exports SHARD_* and points
// PGHOST/PGPORT at cluster A (the proxy database "proxy" lives there).
//
// The gateway end-to-end subset run through the proxy (users A and B on
// different gateways, conversations on every partition): send and live
// delivery (02-chat), ack/read receipts (04-receipts), sync paging and
// ack (05-sync), and a partition cluster restart with resync (08-pg-restart).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { psql, rows, value, startGateway, stopAll, connectAs, syncAll, sleep, ms, TOP } from '../gateway/lib.mjs';

const PROXY = 'proxy';
const PARTS = 4;
const partDsn = (p) => process.env[`SHARD_PART_DSN_${p}`];
const onPart = (p, sql) => rows(partDsn(p), sql);
const partOf = (conv) => Number(conv) % PARTS;
// Partitions 1 and 3 live on cluster B (tests/shard/lib.sh).
const onB = (conv) => partOf(conv) % 2 === 1;

// pg_ctl on one cluster of the deployment: shardCtl('b', 'stop').
function shardCtl(cluster, action) {
  return new Promise((resolve, reject) => {
    execFile('bash', ['-c', '. tests/lib/cluster.sh && . tests/shard/lib.sh && shard_ctl "$1" "$2"', 'x', cluster, action],
      { cwd: TOP, timeout: 90000, env: process.env }, (err, _o, stderr) => (err ? reject(new Error(`shard_ctl ${cluster} ${action}: ${stderr || err.message}`)) : resolve()));
  });
}

const gwArgs = () => {
  const a = ['--dsn', process.env.SHARD_PROXY_DSN, '--token-secret-file', process.env.CHAT_TOKEN_SECRET_FILE];
  for (let p = 0; p < PARTS; p++) a.push('--listen-dsn', partDsn(p));
  return a;
};
async function gateway(label) {
  const { freePort, nodeName } = await import('../gateway/lib.mjs');
  const port = await freePort();
  const node = nodeName();
  return startGateway({ db: PROXY, node, port, label, bare: true,
    args: ['--listen', `127.0.0.1:${port}`, '--node', node, ...gwArgs(), '--node-heartbeat', '1', '--rate', '100000'] });
}

let users;          // 8 users, ids 1..8
let convs = [];     // 64 conversations: 16 direct, 48 groups
let bDown = false;

before(async () => {
  users = [1, 2, 3, 4, 5, 6, 7, 8];
  for (const u of users) {
    await psql(PROXY, `SELECT chat.upsert_user(${u}, 'user${u}', 'User ${u}')`);
    assert.equal(Number(await value(PROXY, `SELECT chat.register_device(${u})`)), 1);
  }
});
after(async () => {
  if (bDown) await shardCtl('b', 'start');
  await stopAll();
});

test('users and devices are on every partition', async () => {
  for (let p = 0; p < PARTS; p++) {
    const [r] = await onPart(p, 'SELECT count(*)::int AS u, (SELECT count(*)::int FROM chat.devices) AS d FROM chat.users');
    assert.deepEqual(r, { u: 8, d: 8 }, `partition ${p}`);
  }
});

test('distribution: 64 conversations over all 4 partitions, each on exactly one, messages gapless there', async () => {
  for (let a = 1; a <= 8; a++) {
    for (let b = a + 1; b <= 8 && convs.length < 16; b++) convs.push(Number(await value(PROXY, `SELECT chat.direct_conversation(${b}, ${a})`)));
  }
  for (let i = 0; convs.length < 64; i++) {
    const creator = users[i % 8];
    convs.push(Number(await value(PROXY, `SELECT chat.create_group(${creator}, 'g${i}', ARRAY[1,2,3,4,5,6,7,8]::bigint[])`)));
  }
  assert.equal(new Set(convs).size, 64, '64 distinct ids');
  // The same pair gets the same conversation from either side.
  assert.equal(Number(await value(PROXY, 'SELECT chat.direct_conversation(1, 2)')), convs[0]);
  const per = [0, 0, 0, 0];
  for (let p = 0; p < PARTS; p++) {
    const ids = (await onPart(p, 'SELECT id FROM chat.conversations ORDER BY id')).map((r) => Number(r.id));
    for (const id of ids) assert.equal(partOf(id), p, `conversation ${id} stored on partition ${p}`);
    per[p] = ids.length;
  }
  assert.equal(per.reduce((x, y) => x + y), 64, `every conversation stored once: ${per}`);
  for (const n of per) assert.ok(n >= 8, `every partition has conversations: ${per}`);

  // 3 messages in every conversation, sent through the proxy by members.
  for (const [i, c] of convs.entries()) {
    const sender = i < 16 ? Number((await onPart(partOf(c), `SELECT direct_low AS u FROM chat.conversations WHERE id = ${c}`))[0].u) : 1;
    for (let k = 0; k < 3; k++) await psql(PROXY, `SELECT * FROM chat.send_message(${sender}, ${c}, 'm${k}', 'd${c}-${k}')`);
    // a retried send is answered from the first and stores nothing
    const [dup] = await rows(PROXY, `SELECT duplicate FROM chat.send_message(${sender}, ${c}, 'm0', 'd${c}-0')`);
    assert.equal(dup.duplicate, true);
  }
  for (const c of convs) {
    for (let p = 0; p < PARTS; p++) {
      const [r] = await onPart(p, `SELECT count(*)::int AS n, coalesce(max(seq), 0)::int AS hi, count(DISTINCT seq)::int AS d FROM chat.messages WHERE conversation_id = ${c}`);
      if (p !== partOf(c)) { assert.equal(r.n, 0, `conversation ${c} has messages on partition ${p}`); continue; }
      assert.ok(r.n >= 3 && r.n === r.hi && r.d === r.n, `conversation ${c}: ${JSON.stringify(r)} not gapless 1..n`);
    }
  }
});

test('sync merges every partition in (conversation, seq) order with the same paging', async () => {
  let expected = 0;
  for (let p = 0; p < PARTS; p++) {
    expected += Number((await onPart(p, `SELECT count(*)::int AS n FROM chat.messages x JOIN chat.members m
        ON m.conversation_id = x.conversation_id AND m.user_id = 2 AND m.left_at IS NULL WHERE x.seq > m.joined_seq`))[0].n);
  }
  const seen = new Set();
  let pages = 0, last = null;
  for (;;) {
    const page = await rows(PROXY, 'SELECT conversation_id AS c, seq AS s FROM chat.sync(2, 1, 7)');
    pages++;
    for (const m of page) {
      const key = `${m.c}/${m.s}`;
      assert.ok(!seen.has(key), `sync returned ${key} twice`);
      seen.add(key);
      if (last) assert.ok(m.c > last.c || (m.c === last.c && m.s > last.s), `order: ${JSON.stringify(last)} then ${JSON.stringify(m)}`);
      last = m;
    }
    const high = new Map();
    for (const m of page) high.set(m.c, Math.max(high.get(m.c) ?? 0, m.s));
    for (const [c, s] of high) await psql(PROXY, `SELECT chat.ack(2, 1, ${c}, ${s})`);
    last = null;
    if (page.length < 7) break;
    assert.ok(pages < 200, 'sync does not end');
  }
  assert.equal(seen.size, expected, 'every message of user 2 on every partition, once');
  assert.equal((await rows(PROXY, 'SELECT 1 FROM chat.sync(2, 1, 7)')).length, 0, 'nothing left after acking');
});

test('the chat list merges every partition, newest first, paging with before', async () => {
  const all = [];
  let before = null;
  for (let i = 0; i < 40; i++) {
    const page = await rows(PROXY, `SELECT conversation_id AS c, last_activity AS at FROM chat.conversations(3, 5, ${before ? `'${before}'` : 'NULL'})`);
    all.push(...page);
    if (page.length < 5) break;
    before = page[page.length - 1].at;
  }
  let expected = 0;
  for (let p = 0; p < PARTS; p++) expected += Number((await onPart(p, 'SELECT count(*)::int AS n FROM chat.members WHERE user_id = 3 AND left_at IS NULL'))[0].n);
  assert.equal(new Set(all.map((r) => r.c)).size, all.length, 'no conversation twice');
  assert.equal(all.length, expected, 'every conversation of user 3');
  for (let i = 1; i < all.length; i++) assert.ok(Date.parse(all[i - 1].at) >= Date.parse(all[i].at), 'newest activity first');
  const parts = new Set(all.map((r) => partOf(r.c)));
  assert.equal(parts.size, 4, 'from all four partitions');
});

test('client_request through the proxy: routing by fields, errors keep their SQLSTATE', async () => {
  const req = async (u, r) => JSON.parse(await value(PROXY, `SELECT chat.client_request('x', ${u}, 1, '${JSON.stringify(r)}'::jsonb)::text`));
  const g = convs.find((c) => partOf(c) === 3);
  const ok = await req(1, { id: 1, type: 'send', conversation: g, body: 'via request' });
  assert.equal(ok.type, 'ok', JSON.stringify(ok));
  assert.equal(ok.result.conversation, g);
  assert.equal((await req(1, { id: 2, type: 'send', conversation: 999999, body: 'x' })).code, 'P0002');
  assert.equal((await req(1, { id: 3, type: 'send', conversation: g, body: '' })).code, '22023');
  assert.equal((await req(1, { id: 4, type: 'sync', limit: 0 })).code, '22023');
  const s = await req(4, { id: 5, type: 'sync', limit: 5 });
  assert.equal(s.result.messages.length, 5);
  assert.equal(s.result.more, true);
  const cl = await req(4, { id: 6, type: 'conversations', limit: 64 });
  assert.equal(new Set(cl.result.conversations.map((c) => partOf(c.conversation))).size, 4);
  const d = await req(5, { id: 7, type: 'direct', user: 1 });
  assert.equal(d.result.conversation, Number(await value(PROXY, 'SELECT chat.direct_conversation(1, 5)')));
  // a user-wide write reaches every partition
  assert.equal((await req(6, { id: 8, type: 'set_profile', about: 'hi' })).type, 'ok');
  for (let p = 0; p < PARTS; p++) assert.equal((await onPart(p, 'SELECT about FROM chat.users WHERE id = 6'))[0].about, 'hi');
});

// An invite code does not name its partition: join and revoke_invite ask
// each partition (SQL and client_request alike); an unknown code is P0002.
test('invites through the proxy: a code made on any partition can be joined and revoked', async () => {
  const req = async (u, r) => JSON.parse(await value(PROXY, `SELECT chat.client_request('x', ${u}, 1, '${JSON.stringify(r)}'::jsonb)::text`));
  const groups = [];
  for (let i = 0; i < 8 && new Set(groups.map(partOf)).size < PARTS; i++)
    groups.push(Number(await value(PROXY, `SELECT chat.create_group(1, 'inv${i}')`)));
  assert.equal(new Set(groups.map(partOf)).size, PARTS, `groups on every partition: ${groups}`);
  for (const g of groups) {
    const inv = await req(1, { id: 1, type: 'invite_link', conversation: g });
    assert.equal(inv.type, 'ok', JSON.stringify(inv));
    const code = inv.result.code;
    const j = await req(7, { id: 2, type: 'join', code });
    assert.equal(j.type, 'ok', `join of a partition ${partOf(g)} group: ${JSON.stringify(j)}`);
    assert.equal(Number(j.result.conversation), g);
    assert.equal((await onPart(partOf(g), `SELECT count(*)::int AS n FROM chat.members WHERE conversation_id = ${g} AND user_id = 7 AND left_at IS NULL`))[0].n, 1);
    assert.equal((await req(1, { id: 3, type: 'revoke_invite', code })).type, 'ok');
    assert.equal((await req(8, { id: 4, type: 'join', code })).code, '55000', 'a revoked code');
  }
  assert.equal((await req(8, { id: 5, type: 'join', code: 'f'.repeat(32) })).code, 'P0002');
  const sqlJoin = await value(PROXY, `SELECT chat."join"(8, (SELECT code FROM chat.invite_link(1, ${groups[1]})))`).catch((e) => e);
  assert.equal(Number(sqlJoin), groups[1], `SQL join through the proxy: ${sqlJoin}`);
  // SQL revoke_invite through the proxy, for a code on every partition; an unknown code P0002
  for (const g of groups) {
    const code = await value(PROXY, `SELECT code FROM chat.invite_link(1, ${g})`);
    await psql(PROXY, `SELECT chat.revoke_invite(1, '${code}')`);
    assert.equal((await req(8, { id: 6, type: 'join', code })).code, '55000', `revoked by SQL on partition ${partOf(g)}`);
  }
  await assert.rejects(psql(PROXY, `SELECT chat.revoke_invite(1, '${'e'.repeat(32)}')`), /invite .* does not exist/);
  // SQL media_url through the proxy: an unknown attachment is P0002 (each partition asked)
  await assert.rejects(psql(PROXY, `SELECT chat.media_url(1, '00000000-0000-0000-0000-000000000000')`), /attachment .* does not exist/);
});

// Avatars (issue 15): a profile picture upload (no conversation) lives on
// its owner's home partition; set_profile checks a new avatar there first,
// so that a refused one changes no partition, then writes every partition;
// media_url finds it wherever it is (and a block answers 42501).
test('avatars through the proxy: the profile upload on the home partition, set_profile all or nothing', async () => {
  const req = async (u, r) => JSON.parse(await value(PROXY, `SELECT chat.client_request('x', ${u}, 1, '${JSON.stringify(r)}'::jsonb)::text`));
  const avatars = async (u) => { const out = []; for (let p = 0; p < PARTS; p++) out.push((await onPart(p, `SELECT avatar FROM chat.users WHERE id = ${u}`))[0].avatar); return out; };
  const home = Number(await value(PROXY, 'SELECT chat_proxy.home_partition(2)'));
  const up = await req(2, { id: 1, type: 'upload', purpose: 'avatar', mime: 'image/png', size: 10, sha256: 'a'.repeat(64) });
  assert.equal(up.type, 'ok', JSON.stringify(up));
  const id = up.result.upload;
  for (let p = 0; p < PARTS; p++) {
    const n = (await onPart(p, `SELECT count(*)::int AS n FROM chat.attachments WHERE id = '${id}'`))[0].n;
    assert.equal(n, p === home ? 1 : 0, `the upload on partition ${p} (home ${home})`);
  }
  // not uploaded yet (55000), unknown (42501), another user's (42501): no partition changes
  assert.equal((await req(2, { id: 2, type: 'set_profile', avatar: id })).code, '55000');
  await onPart(home, `SELECT chat.media_uploaded('${id}')`);
  assert.equal((await req(2, { id: 3, type: 'set_profile', about: 'x', avatar: '00000000-0000-4000-8000-000000000000' })).code, '42501');
  assert.equal((await req(3, { id: 4, type: 'set_profile', avatar: id })).code, '42501');
  await assert.rejects(psql(PROXY, `SELECT chat.set_profile(3, avatar => '${id}')`), /is not an upload of user 3/);
  assert.deepEqual(await avatars(2), [null, null, null, null]);
  assert.deepEqual(await avatars(3), [null, null, null, null]);
  assert.equal((await onPart(home === 0 ? 1 : 0, 'SELECT about FROM chat.users WHERE id = 2'))[0].about, null, 'the refused frame set no about either');
  // a good one reaches every partition; any user may fetch it, one 2 blocked may not
  assert.equal((await req(2, { id: 5, type: 'set_profile', avatar: id })).type, 'ok');
  assert.deepEqual(await avatars(2), [id, id, id, id]);
  const url = await req(5, { id: 6, type: 'media_url', attachment: id });
  assert.match(url.result?.url || '', /\?u=5&/, JSON.stringify(url));
  assert.equal((await req(2, { id: 7, type: 'block', user: 6 })).type, 'ok');
  assert.equal((await req(6, { id: 8, type: 'media_url', attachment: id })).code, '42501');
  // the SQL path: cleared on every partition
  await psql(PROXY, `SELECT chat.set_profile(2, avatar => '')`);
  assert.deepEqual(await avatars(2), [null, null, null, null]);
  await psql(PROXY, `SELECT chat.set_profile(2, avatar => '${id}')`);
  assert.deepEqual(await avatars(2), [id, id, id, id]);
});

// E2E (issue 12): keys and to-device inboxes live on the owner's home
// partition (hashint8(user id)), the conversation the two users share on
// its own partition.  keys_claim and to_device check the peer rule over
// every partition (42501 for a stranger) and claim/queue on the owner's
// home, through client_request and SQL alike; keys_query and sync merge.
test('e2e through the proxy: keys on the home partition, claims and envelopes across partitions, the peer rule over all', async () => {
  const req = async (u, r) => JSON.parse(await value(PROXY, `SELECT chat.client_request('x', ${u}, 1, '${JSON.stringify(r).replace(/'/g, "''")}'::jsonb)::text`));
  const home = async (u) => Number(await value(PROXY, `SELECT chat_proxy.home_partition(${u})`));
  const spk = (id) => ({ id, key: `SPK${id}`, signature: `SIG${id}` });
  const otks = (prefix, n) => Array.from({ length: n }, (_, i) => ({ id: `${prefix}${i}`, key: `K${prefix}${i}` }));
  // a pair with different homes whose direct conversation lives on neither home
  let pair = null;
  for (let a = 21; a < 60 && !pair; a++) {
    for (let b = a + 1; b < 60 && !pair; b++) {
      const [ha, hb] = [await home(a), await home(b)];
      if (ha === hb) continue;
      await psql(PROXY, `SELECT chat.upsert_user(${a}, 'e${a}', 'E ${a}'), chat.upsert_user(${b}, 'e${b}', 'E ${b}')`);
      const conv = Number(await value(PROXY, `SELECT chat.direct_conversation(${a}, ${b})`));
      if (partOf(conv) !== ha && partOf(conv) !== hb) pair = { a, b, ha, hb, conv };
    }
  }
  assert.ok(pair, 'a pair whose direct conversation is on neither home partition');
  const { a, b, ha, hb, conv } = pair;
  const s = 99;   // a stranger: shares no conversation with a or b
  await psql(PROXY, `SELECT chat.upsert_user(${s}, 'e${s}', 'E ${s}')`);
  for (const u of [a, b, s]) assert.equal(Number(await value(PROXY, `SELECT chat.register_device(${u})`)), 1);

  for (const [u, n] of [[a, 3], [b, 3], [s, 1]]) {
    const up = await req(u, { id: 1, type: 'keys_upload', identity_key: `IK${u}`, signed_prekey: spk(u), one_time_keys: otks(`u${u}-`, n), fallback_key: spk(`fb${u}`) });
    assert.deepEqual(up.result, { one_time_keys: n }, JSON.stringify(up));
  }
  for (let p = 0; p < PARTS; p++) {
    const ks = (await onPart(p, `SELECT user_id FROM chat.device_keys WHERE user_id IN (${a}, ${b}) ORDER BY 1`)).map((r) => Number(r.user_id));
    assert.deepEqual(ks, [a, b].filter((u) => (u === a ? ha : hb) === p), `keys on partition ${p} (homes ${ha}, ${hb})`);
  }
  const q = await req(a, { id: 2, type: 'keys_query', users: [b, a] });
  assert.deepEqual(q.result.devices.map((d) => [d.user, d.identity_key]), [[a, `IK${a}`], [b, `IK${b}`]], JSON.stringify(q));

  // keys_claim: the peer rule holds across partitions (their conversation is on neither home)
  const c = await req(a, { id: 3, type: 'keys_claim', devices: [{ user: b, device: 1 }, { user: a, device: 1 }] });
  assert.equal(c.type, 'ok', JSON.stringify(c));
  assert.deepEqual(c.result.bundles.map((x) => [x.user, x.one_time_key.id]), [[b, `u${b}-0`], [a, `u${a}-0`]]);
  assert.equal(c.id, 3);
  assert.equal((await onPart(hb, `SELECT count(*)::int AS n FROM chat.one_time_keys WHERE user_id = ${b}`))[0].n, 2, 'claimed on b\'s home');
  const sqlClaim = await rows(PROXY, `SELECT claimed_user, one_time_key ->> 'id' AS k FROM chat.keys_claim(${b}, 1, '[{"user": ${a}, "device": 1}]')`);
  assert.deepEqual(sqlClaim.map((r) => [Number(r.claimed_user), r.k]), [[a, `u${a}-1`]], 'SQL keys_claim through the proxy');
  const st = await req(s, { id: 4, type: 'keys_claim', devices: [{ user: a, device: 1 }] });
  assert.deepEqual([st.type, st.code, st.error], ['error', '42501', 'insufficient_privilege'], JSON.stringify(st));
  assert.equal((await onPart(ha, `SELECT count(*)::int AS n FROM chat.one_time_keys WHERE user_id = ${a}`))[0].n, 1, 'a stranger claims nothing');
  const bad = await req(a, { id: 5, type: 'keys_claim', devices: [{ user: 'x', device: 1 }] });
  assert.deepEqual([bad.type, bad.code], ['error', '22P02'], JSON.stringify(bad));
  const none = await req(a, { id: 6, type: 'keys_claim', devices: [{ user: b, device: 9 }] });
  assert.deepEqual([none.type, none.code], ['error', 'P0002'], JSON.stringify(none));

  // to_device: queued on the recipient's home partition only; once per txn; sync and ack there
  const env = { user: b, device: 1, type: 'olm', ciphertext: 'QUJD' };
  for (let i = 0; i < 2; i++) {
    const t = await req(a, { id: 7, type: 'to_device', txn: 't1', messages: [env, { ...env, user: a }] });
    assert.equal(t.type, 'ok', JSON.stringify(t));
  }
  for (let p = 0; p < PARTS; p++) {
    const n = (await onPart(p, `SELECT user_id FROM chat.to_device WHERE from_user = ${a} ORDER BY 1`)).map((r) => Number(r.user_id));
    assert.deepEqual(n, [a, b].filter((u) => (u === a ? ha : hb) === p), `envelopes on partition ${p}, each once`);
  }
  const st2 = await req(s, { id: 8, type: 'to_device', txn: 't2', messages: [env] });
  assert.deepEqual([st2.type, st2.code], ['error', '42501'], JSON.stringify(st2));
  await assert.rejects(psql(PROXY, `SELECT chat.to_device(${s}, 1, '[${JSON.stringify(env)}]', 't3')`), /shares no conversation/);
  const badEnv = await req(a, { id: 9, type: 'to_device', txn: 't4', messages: [{ ...env, ciphertext: 'not base64!' }] });
  assert.deepEqual([badEnv.type, badEnv.code], ['error', '22023'], JSON.stringify(badEnv));
  const sy = await req(b, { id: 10, type: 'sync', limit: 500 });
  assert.equal(sy.type, 'ok', JSON.stringify(sy).slice(0, 300));
  assert.deepEqual((sy.result.to_device || []).map((e) => [e.from_user, e.ciphertext, e.device]), [[a, 'QUJD', 1]], 'b\'s inbox in the merged sync');
  assert.equal((await req(b, { id: 11, type: 'to_device_ack', up_to: sy.result.to_device[0].id })).type, 'ok');
  assert.equal((await req(b, { id: 12, type: 'sync', limit: 500 })).result.to_device, undefined, 'acked');
  assert.equal((await onPart(hb, `SELECT count(*)::int AS n FROM chat.to_device WHERE user_id = ${b}`))[0].n, 0);

  // e2e sends route by conversation
  assert.equal((await req(a, { id: 13, type: 'enable_e2e', conversation: conv })).type, 'ok');
  assert.equal((await req(a, { id: 14, type: 'send', conversation: conv, body: 'CIPHER', kind: 'e2e', mentions: [b] })).type, 'ok');
  const plain = await req(a, { id: 15, type: 'send', conversation: conv, body: 'plain' });
  assert.deepEqual([plain.type, plain.code], ['error', '22023']);
  assert.equal(await value(PROXY, `SELECT chat.is_e2e(${conv})`), true);
});

test('presence merges every partition: a contact (their direct conversation on another partition than the viewer\'s home) sees a contacts-only user', async () => {
  // a pair whose direct conversation is not on the viewer's home partition
  let pair;
  for (const [v, u] of [[5, 6], [6, 5], [4, 6], [5, 4], [3, 6], [2, 6]]) {
    const [r] = await rows(PROXY, `SELECT chat_proxy.pair_partition(${v}, ${u}) & 3 AS pp, hashint8(${v}::bigint) & 3 AS home`);
    if (r.pp !== r.home) { pair = [v, u]; break; }
  }
  assert.ok(pair, 'a pair off the home partition');
  const [v, u] = pair;
  const d = Number(await value(PROXY, `SELECT chat.direct_conversation(${v}, ${u})`));
  await psql(PROXY, `SELECT * FROM chat.send_message(${v}, ${d}, 'hi', 'pc-1')`);
  await psql(PROXY, `SELECT * FROM chat.send_message(${u}, ${d}, 'hi back', 'pc-2')`);
  await psql(PROXY, `SELECT chat.set_privacy(${u}, 'contacts')`);
  await psql(PROXY, `SELECT chat.node_reset('presence_probe')`);
  await psql(PROXY, `SELECT chat.connect('presence_probe', ${u}, 1)`);
  const [seen] = await rows(PROXY, `SELECT online, last_seen FROM chat.presence(${v}, ARRAY[${u}]::bigint[])`);
  assert.equal(seen.online, true, 'the contact sees the user online');
  // what routing to the viewer's home partition alone (the first rule) answered
  const home = Number(await value(PROXY, `SELECT hashint8(${v}::bigint) & 3`));
  const [alone] = await onPart(home, `SELECT online FROM chat.presence(${v}, ARRAY[${u}]::bigint[])`);
  assert.equal(alone.online, false, 'the home partition alone does not know they are contacts');
  const stranger = [1, 2, 3, 4, 5, 6, 7, 8].find((x) => x !== u && x !== v && x !== 7 && x !== 8);
  const [hidden] = await rows(PROXY, `SELECT online FROM chat.presence(${stranger}, ARRAY[${u}]::bigint[])`);
  assert.equal(hidden.online, false, 'a non-contact does not');
  const f = JSON.parse(await value(PROXY, `SELECT chat.client_request('x', ${v}, 1, '{"id":1,"type":"presence","users":[${u}]}'::jsonb)::text`));
  assert.deepEqual(f.result.users.map((x) => [x.user, x.online]), [[u, true]]);
  await psql(PROXY, `SELECT chat.node_reset('presence_probe')`);
  await psql(PROXY, `SELECT chat.set_privacy(${u}, 'everyone')`);
});

test('contact search merges every partition: each user once, a contact (their direct conversation off the viewer\'s home partition) first', async () => {
  let pair;
  for (const [v, u] of [[7, 8], [8, 7], [7, 3], [8, 2], [7, 1], [8, 4]]) {
    const [r] = await rows(PROXY, `SELECT chat_proxy.pair_partition(${v}, ${u}) & 3 AS pp, hashint8(${v}::bigint) & 3 AS home`);
    if (r.pp !== r.home) { pair = [v, u]; break; }
  }
  assert.ok(pair, 'a pair off the home partition');
  const [v, u] = pair;
  const d = Number(await value(PROXY, `SELECT chat.direct_conversation(${v}, ${u})`));
  await psql(PROXY, `SELECT * FROM chat.send_message(${v}, ${d}, 'hi', 'su-1')`);
  await psql(PROXY, `SELECT * FROM chat.send_message(${u}, ${d}, 'hi back', 'su-2')`);
  const others = users.filter((x) => x !== v && x !== u);
  const found = await rows(PROXY, `SELECT user_id, contact FROM chat.search_users(${v}, 'USER')`);
  assert.deepEqual(found.map((r) => [r.user_id, r.contact]), [[u, true], ...others.map((x) => [x, false])]);
  // the viewer's home partition alone does not know they are contacts
  const home = Number(await value(PROXY, `SELECT hashint8(${v}::bigint) & 3`));
  const [alone] = await onPart(home, `SELECT contact FROM chat.search_users(${v}, 'user${u}')`);
  assert.equal(alone.contact, false);
  const limited = await rows(PROXY, `SELECT user_id FROM chat.search_users(${v}, 'user', 2)`);
  assert.deepEqual(limited.map((r) => r.user_id), [u, others[0]]);
  const f = JSON.parse(await value(PROXY, `SELECT chat.client_request('x', ${v}, 1, '{"id":1,"type":"search_users","query":"user","limit":3}'::jsonb)::text`));
  assert.deepEqual(f.result.users.map((x) => [x.user, x.contact]), [[u, true], [others[0], false], [others[1], false]]);
  assert.equal(f.result.users[0].handle, `user${u}`);
  const bad = JSON.parse(await value(PROXY, `SELECT chat.client_request('x', ${v}, 1, '{"id":2,"type":"search_users","query":""}'::jsonb)::text`));
  assert.deepEqual([bad.type, bad.code], ['error', '22023']);
});

test('push registrations reach every partition: an offline device gets outbox rows for a conversation off its home partition', async () => {
  const u = 6;
  const home = Number(await value(PROXY, `SELECT hashint8(${u}::bigint) & 3`));
  const f = JSON.parse(await value(PROXY, `SELECT chat.client_request('x', ${u}, 1, '{"id":1,"type":"register_push","platform":"fcm","token":"shard-token-6"}'::jsonb)::text`));
  assert.equal(f.type, 'ok', JSON.stringify(f));
  for (let p = 0; p < PARTS; p++) {
    const [d] = await onPart(p, `SELECT push_platform FROM chat.devices WHERE user_id = ${u} AND device_id = 1`);
    assert.equal(d.push_platform, 'fcm', `registration on partition ${p}`);
  }
  const c = convs.slice(16).find((x) => partOf(x) !== home);
  await psql(PROXY, `SELECT * FROM chat.send_message(5, ${c}, 'push me', 'push-1')`);
  const [q] = await onPart(partOf(c), `SELECT count(*)::int AS n FROM chat.push_outbox WHERE user_id = ${u} AND conversation_id = ${c}`);
  assert.equal(q.n, 1, `queued on partition ${partOf(c)} (home ${home})`);
  const g = JSON.parse(await value(PROXY, `SELECT chat.client_request('x', ${u}, 1, '{"id":2,"type":"unregister_push"}'::jsonb)::text`));
  assert.equal(g.type, 'ok');
  for (let p = 0; p < PARTS; p++) assert.equal((await onPart(p, `SELECT push_platform FROM chat.devices WHERE user_id = ${u} AND device_id = 1`))[0].push_platform, null);
});

test('--listen-dsn from the environment (one per line) and from a --config file (repeated key); the command line wins', async () => {
  const { freePort, nodeName } = await import('../gateway/lib.mjs');
  const fs = await import('node:fs');
  const parts = (gw) => fetch(`${gw.http}/metrics`).then((r) => r.text()).then((t) => [
    Number(t.match(/chat_gateway_partitions\{[^}]*\} (\d+)/)[1]), Number(t.match(/chat_gateway_partitions_up\{[^}]*\} (\d+)/)[1])]);
  const base = (port, node) => ['--listen', `127.0.0.1:${port}`, '--node', node, '--dsn', process.env.SHARD_PROXY_DSN,
    '--token-secret-file', process.env.CHAT_TOKEN_SECRET_FILE];
  let port = await freePort(), node = nodeName();
  const all = [0, 1, 2, 3].map(partDsn).join('\n');
  const g1 = await startGateway({ db: PROXY, node, port, label: 'env', bare: true, args: base(port, node), env: { CHAT_LISTEN_DSN: all } });
  for (let i = 0; i < 50 && (await parts(g1))[1] < 4; i++) await sleep(100);
  assert.deepEqual(await parts(g1), [4, 4], 'four partitions from the environment');
  const conf = `${process.env.SHARD_DIR}/gw.conf`;
  fs.writeFileSync(conf, `listen-dsn = ${partDsn(0)}\nlisten-dsn = ${partDsn(2)}\n`);
  port = await freePort(); node = nodeName();
  const g2 = await startGateway({ db: PROXY, node, port, label: 'conf', bare: true, args: [...base(port, node), '--config', conf], env: { CHAT_LISTEN_DSN: all } });
  for (let i = 0; i < 50 && (await parts(g2))[1] < 4; i++) await sleep(100);
  assert.deepEqual(await parts(g2), [4, 4], 'the environment beats the config file');
  port = await freePort(); node = nodeName();
  const g3 = await startGateway({ db: PROXY, node, port, label: 'conf2', bare: true, args: [...base(port, node), '--config', conf] });
  for (let i = 0; i < 50 && (await parts(g3))[1] < 2; i++) await sleep(100);
  assert.deepEqual(await parts(g3), [2, 2], 'two partitions from the config file');
  port = await freePort(); node = nodeName();
  const g4 = await startGateway({ db: PROXY, node, port, label: 'cli', bare: true, args: [...base(port, node), '--listen-dsn', partDsn(1)], env: { CHAT_LISTEN_DSN: all } });
  for (let i = 0; i < 50 && (await parts(g4))[1] < 1; i++) await sleep(100);
  assert.deepEqual(await parts(g4), [1, 1], 'the command line beats the environment');
  for (const g of [g1, g2, g3, g4]) await g.stop('SIGTERM', 8000);
});

// ---- Tail latency, sharded: each partition's node_heartbeat on a maintenance connection ----
// PostgreSQL hands notifications to a LISTEN backend only between its
// transactions: a heartbeat on a partition's LISTEN connection held up that
// partition's events for as long as it ran.  Here partition 1's heartbeat
// waits 6 s (times GW_TIMEOUT_SCALE) on a lock; that partition's events
// must still come at once, and the other partitions' heartbeats go on.
test('a partition whose node heartbeat is blocked still delivers live events at once; the other partitions\' heartbeats go on', { timeout: ms(60000) }, async () => {
  const gw = await gateway('hb');
  const X = 5, Y = 6;
  const groups = convs.slice(16);
  const c1 = groups.find((c) => partOf(c) === 1), c0 = groups.find((c) => partOf(c) === 0);
  const x = await connectAs(gw, X, 1, { label: 'hbX' });
  const y = await connectAs(gw, Y, 1, { label: 'hbY' });
  const heartbeatAt = `SELECT heartbeat_at AS h FROM chat.nodes WHERE node = '${gw.node}'`;
  const blocked = `SELECT count(*)::int AS n FROM pg_stat_activity WHERE query LIKE '%node_heartbeat%'
    AND wait_event_type = 'Lock' AND application_name = 'chat-gateway ${gw.node}'`;
  const locker = psql(partDsn(1), `BEGIN; SELECT node FROM chat.nodes WHERE node = '${gw.node}' FOR UPDATE;
                                   SELECT pg_sleep(${ms(6000) / 1000}) /* shard-hb-locker */; COMMIT`);
  let n = 0;
  for (let i = 0; i < 100 && !n; i++) { n = (await onPart(1, blocked))[0].n; if (!n) await sleep(50); }
  assert.equal(n, 1, 'no heartbeat of the gateway waited on the locked node row of partition 1');
  const h0 = (await onPart(0, heartbeatAt))[0].h;
  for (const [c, tag] of [[c1, 'p1'], [c0, 'p0']]) {
    const since = y.mark();
    const t0 = Date.now();
    const r = await x.call({ type: 'send', conversation: c, body: `during a blocked heartbeat ${tag}`, client_msg_id: `hb-${tag}` });
    await y.waitFor((f) => f.type === 'message' && f.conversation === c && f.seq === r.seq, ms(5000), since);
    const took = Date.now() - t0;
    // Behind the heartbeat the event would wait for the rest of the lock.
    assert.ok(took < ms(2500), `partition ${partOf(c)}: send + delivery took ${took} ms while partition 1's heartbeat was blocked`);
  }
  assert.equal((await onPart(1, blocked))[0].n, 1, 'the heartbeat was no longer blocked when the events came');
  // partition 0's heartbeat is not held up by partition 1's
  let h = h0;
  for (let i = 0; i < 40 && h === h0; i++) { await sleep(100); h = (await onPart(0, heartbeatAt))[0].h; }
  assert.notEqual(h, h0, 'partition 0\'s heartbeat_at did not move while partition 1\'s heartbeat was blocked');
  await locker;
  await gw.stop();
});
// ---- end of the sharded tail-latency block ----

test('two gateways: A and B on different gateways chat in conversations on every partition; a partition cluster restart is recovered by sync', { timeout: ms(120000) }, async () => {
  const gwA = await gateway('gwA');
  const gwB = await gateway('gwB');
  const A = 7, B = 8;
  // one group of A and B per partition (round robin), plus their direct one
  const mine = [];
  for (let i = 0; i < 4; i++) mine.push(Number(await value(PROXY, `SELECT chat.create_group(${A}, 'ab${i}', ARRAY[${B}]::bigint[])`)));
  mine.push(Number(await value(PROXY, `SELECT chat.direct_conversation(${A}, ${B})`)));
  assert.equal(new Set(mine.map(partOf)).size, 4, `A and B share conversations on all 4 partitions: ${mine}`);

  const a = await connectAs(gwA, A, 1, { label: 'A' });
  const b = await connectAs(gwB, B, 1, { label: 'B' });
  await syncAll(a);
  // B acks what it gets live, so that sync later returns only what it missed.
  const got = new Map();   // "conv/seq" -> times received
  const take = (m) => { const k = `${m.conversation}/${m.seq}`; got.set(k, (got.get(k) ?? 0) + 1); };
  for (const m of await syncAll(b)) if (mine.includes(m.conversation)) take(m);
  let liveFrom = b.mark();
  const ackLive = async () => {
    const fr = b.frames.slice(liveFrom).filter((f) => f.type === 'message' && mine.includes(f.conversation));
    liveFrom = b.frames.length;
    for (const m of fr) { take(m); await b.call({ type: 'ack', conversation: m.conversation, seq: m.seq }); }
  };

  // live delivery across gateways, every partition
  for (const c of mine) {
    const r = await a.call({ type: 'send', conversation: c, body: `hello ${c}`, client_msg_id: `l-${c}` });
    await b.waitFor((f) => f.type === 'message' && f.conversation === c && f.seq === r.seq, 5000);
  }
  await ackLive();
  // receipts travel back to A on the other gateway
  const rc = mine[0];
  const rr = await b.call({ type: 'read', conversation: rc, seq: Number((await rows(PROXY, `SELECT max(seq) AS s FROM chat.history(${B}, ${rc}, NULL, 1)`))[0].s) });
  assert.deepEqual(rr, {});
  await a.waitFor((f) => f.type === 'receipt' && f.conversation === rc && f.user === B && f.read, 5000);

  // cluster B (partitions 1 and 3) goes down
  bDown = true;
  await shardCtl('b', 'stop');
  const upA = mine.filter((c) => !onB(c)), downB = mine.filter(onB);
  // the other cluster's conversations keep working, live
  for (const c of upA) {
    const r = await a.call({ type: 'send', conversation: c, body: `during ${c}`, client_msg_id: `d-${c}` });
    await b.waitFor((f) => f.type === 'message' && f.conversation === c && f.seq === r.seq, 5000);
  }
  await ackLive();
  // the down partitions answer with an error frame, nothing else breaks
  for (const c of downB) {
    const r = await a.request({ type: 'send', conversation: c, body: 'lost?', client_msg_id: `x-${c}` });
    assert.equal(r.type, 'error', JSON.stringify(r));
  }
  assert.ok(a.open && b.open, 'clients stay connected');
  // sync and the chat list leave the unreachable partitions out instead of failing
  const sOut = await b.request({ type: 'sync' });
  assert.equal(sOut.type, 'ok', JSON.stringify(sOut));
  const lOut = await b.call({ type: 'conversations', limit: 100 });
  const seenParts = new Set(lOut.conversations.map((x) => partOf(x.conversation)));
  assert.ok(seenParts.has(0) && seenParts.has(2) && !seenParts.has(1) && !seenParts.has(3), `partitions listed: ${[...seenParts]}`);
  // a client connecting while a partition is down is served (its session
  // reaches the partitions that are up; the others get it on their return)
  const c6 = await connectAs(gwA, 6, 1, { label: 'C' });
  const up = upA[0];
  const rC = await c6.request({ type: 'history', conversation: convs[16 + [...convs.slice(16)].findIndex((x) => partOf(x) === partOf(up))] });
  assert.equal(rC.type, 'ok', JSON.stringify(rC));
  const sinceB = b.mark();
  const sinceC = c6.mark();
  await shardCtl('b', 'start');
  bDown = false;
  // written on the returned partitions while the gateways reconnect: only sync can bring them
  for (const c of downB) await psql(partDsn(partOf(c)), `SELECT * FROM chat.send_message(${A}, ${c}, 'after ${c}', 'r-${c}')`);
  await b.waitFor((f) => f.type === 'resync', 30000, sinceB);
  await c6.waitFor((f) => f.type === 'resync', 30000, sinceC);
  // C's session is on the returned partitions now: it gets their events live.
  // Each returning partition runs node_reset and then re-registers every
  // session, one partition at a time (cluster B holds two), so the first
  // resync can precede the registration on gB's partition: wait for it.
  const gB = convs.slice(16).find((x) => onB(x));
  for (let i = 0; i < 200; i++) {
    const m = await (await fetch(`http://127.0.0.1:${gwA.port}/metrics`)).text();
    if (/chat_gateway_partitions_up\{[^}]*\} 4/.test(m)) break;
    await sleep(100);
  }
  for (let i = 0; i < 200; i++) {
    const [n] = await onPart(partOf(gB), 'SELECT count(*)::int AS n FROM chat.sessions WHERE user_id = 6');
    if (n.n > 0) break;
    await sleep(100);
  }
  const [s6] = await rows(PROXY, `SELECT seq FROM chat.send_message(1, ${gB}, 'to C after the return', 'c6-1')`);
  await c6.waitFor((f) => f.type === 'message' && f.conversation === gB && f.seq === s6.seq, 10000);
  await ackLive();
  const synced = await syncAll(b);
  for (const m of synced) if (mine.includes(m.conversation)) take(m);

  // 0 lost, 0 duplicated: B got every stored message of these conversations exactly once
  const stored = [];
  for (const c of mine) {
    const ms2 = await onPart(partOf(c), `SELECT seq FROM chat.messages WHERE conversation_id = ${c} AND sender_id = ${A}`);
    for (const m of ms2) stored.push(`${c}/${m.seq}`);
  }
  const lost = stored.filter((k) => !got.has(k));
  const dup = [...got].filter(([, n]) => n > 1).map(([k]) => k);
  assert.deepEqual(lost, [], 'lost');
  assert.deepEqual(dup, [], 'duplicated');
  // after recovery every partition works again through both gateways
  for (const c of downB) {
    const r = await b.call({ type: 'send', conversation: c, body: 'back', client_msg_id: `b-${c}` });
    await a.waitFor((f) => f.type === 'message' && f.conversation === c && f.seq === r.seq, 10000);
  }
  const metrics = await (await fetch(`http://127.0.0.1:${gwA.port}/metrics`)).text();
  assert.match(metrics, /chat_gateway_partitions_up\{[^}]*\} 4/);
});

test('moving a partition to the other cluster: dump/restore one database and one config change, no id changes', { timeout: ms(120000) }, async () => {
  const moved = 3;
  const ids = (await onPart(moved, 'SELECT id FROM chat.conversations ORDER BY id')).map((r) => Number(r.id));
  const [before] = await onPart(moved, 'SELECT count(*)::int AS n, coalesce(sum(seq), 0)::bigint AS s FROM chat.messages');
  const c = ids[0];
  const sh = (cmd) => new Promise((resolve, reject) => execFile('bash', ['-c', cmd], { cwd: TOP, timeout: 90000, env: process.env },
    (err, out, stderr) => (err ? reject(new Error(`${cmd}: ${stderr || err.message}`)) : resolve(out))));
  const bin = process.env.PGBIN;
  // 1. no more writes there, 2. dump (with its partition settings) and restore on cluster A as part3
  await sh(`${bin}/psql -qX -d "${partDsn(moved)}" -c "ALTER DATABASE part${moved} SET default_transaction_read_only = on" -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'part${moved}' AND pid <> pg_backend_pid()" >/dev/null`);
  await sh(`${bin}/pg_dump -Fc --create -d "${partDsn(moved)}" -f "$SHARD_DIR/part${moved}.dump" && chmod 644 "$SHARD_DIR/part${moved}.dump"`);
  await sh(`PGOPTIONS='-c default_transaction_read_only=off' ${bin}/pg_restore --create -d "host=127.0.0.1 port=${process.env.SHARD_PORT_A} dbname=postgres user=postgres" "$SHARD_DIR/part${moved}.dump"`);
  const newDsn = `host=127.0.0.1 port=${process.env.SHARD_PORT_A} dbname=part${moved} user=postgres`;
  await psql('postgres', `ALTER DATABASE part${moved} RESET default_transaction_read_only`);
  // 3. one config change in the proxy
  await psql(PROXY, `ALTER SERVER chat_partitions OPTIONS (SET p${moved} '${newDsn}')`);
  await psql(`host=127.0.0.1 port=${process.env.SHARD_PORT_B} dbname=postgres user=postgres`, `ALTER DATABASE part${moved} SET default_transaction_read_only = off`);
  const [after] = await rows(newDsn, 'SELECT count(*)::int AS n, coalesce(sum(seq), 0)::bigint AS s, current_setting(\'chat.partition\') AS p FROM chat.messages');
  assert.deepEqual({ n: after.n, s: after.s }, before, 'the partition arrived whole');
  assert.equal(after.p, String(moved), 'its partition setting came along');
  // the proxy now sends partition 3's calls to cluster A: a send lands there, not on B
  const [r] = await rows(PROXY, `SELECT seq FROM chat.send_message(1, ${c}, 'after the move', 'mv-1')`);
  const [there] = await rows(newDsn, `SELECT count(*)::int AS n FROM chat.messages WHERE conversation_id = ${c} AND seq = ${r.seq}`);
  assert.equal(there.n, 1);
  const [old] = await onPart(moved, `SELECT count(*)::int AS n FROM chat.messages WHERE conversation_id = ${c} AND seq = ${r.seq}`);
  assert.equal(old.n, 0, 'the old copy is not written');
  // new conversations allocated there still carry partition 3
  for (let i = 0; i < 4; i++) await psql(PROXY, `SELECT chat.create_group(1, 'after move ${i}', '{2}')`);
  const fresh = (await rows(newDsn, `SELECT id FROM chat.conversations WHERE title LIKE 'after move %'`)).map((x) => Number(x.id));
  assert.ok(fresh.length >= 1 && fresh.every((id) => partOf(id) === moved && !ids.includes(id)), `new ids ${fresh}`);
});
