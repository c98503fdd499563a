// No plaintext anywhere on the server: after an e2e exchange of unique
// random texts (direct and group, several devices), every table (pg_dump of
// the database), the WAL written meanwhile (the segments between the two
// LSNs, listed by pg_waldump and scanned byte for byte), the server log and
// the gateway log hold none of them.  A control text sent in a plain
// conversation in the same window must be found in the dump and the WAL,
// so that the scan is shown to see what it looks for.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync, existsSync } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { newDb, makeUser, direct, group, startGateway, stopAll, value, dsn, psql } from './lib.mjs';
import { device as connectDevice, sendText, read } from './e2e-lib.mjs';

const DB = 'gw_26_e2e_plaintext';
const PGBIN = process.env.PGBIN || execFileSync('pg_config', ['--bindir']).toString().trim();
const PGDATA = process.env.CHAT_TEST_PGDATA;
let gw;

before(async () => {
  await newDb(DB);
  gw = await startGateway({ db: DB });
});
after(stopAll);

// How many times needle occurs in the bytes of haystack.
function hits(haystack, needle) {
  const n = Buffer.from(needle);
  let count = 0;
  for (let i = haystack.indexOf(n); i !== -1; i = haystack.indexOf(n, i + 1)) count++;
  return count;
}

// The WAL segment files from the one holding lsn `from` to the one holding `to`.
async function walSegments(from, to) {
  const first = await value(DB, `SELECT pg_walfile_name('${from}')`);
  const last = await value(DB, `SELECT pg_walfile_name('${to}')`);
  const dir = path.join(PGDATA, 'pg_wal');
  return readdirSync(dir).filter((f) => /^[0-9A-F]{24}$/.test(f) && f >= first && f <= last).map((f) => path.join(dir, f));
}

test('no plaintext of an e2e exchange in the dump, the WAL or the logs', { skip: !PGDATA && 'CHAT_TEST_PGDATA not set (run under tests/gateway/run.sh)' }, async () => {
  assert.equal(await value(DB, "SELECT current_setting('wal_compression')"), 'off', 'WAL must be scanned uncompressed');
  const ua = await makeUser(DB, { devices: 2 }), ub = await makeUser(DB, { devices: 2 }), uc = await makeUser(DB);
  const devs = [await connectDevice(gw, ua.id, 1), await connectDevice(gw, ua.id, 2),
    await connectDevice(gw, ub.id, 1), await connectDevice(gw, ub.id, 2), await connectDevice(gw, uc.id, 1)];
  const dm = await direct(DB, ua.id, ub.id);
  const g = await group(DB, ua.id, [ub.id, uc.id]);
  const plainConv = await direct(DB, ua.id, uc.id);
  const start = await value(DB, 'SELECT pg_current_wal_insert_lsn()');

  await devs[0].c.call({ type: 'enable_e2e', conversation: dm });
  await devs[0].c.call({ type: 'enable_e2e', conversation: g });
  const secrets = [];
  for (const [i, d] of devs.entries()) {
    for (const conv of d.user === uc.id ? [g] : [dm, g]) {
      const text = `secret-${i}-${conv}-${randomBytes(12).toString('hex')}`;
      secrets.push(text);
      const seq = await sendText(d, conv, text);
      // Every other member device reads it (the keys went through to_device).
      for (const r of devs) if (r !== d && (conv === g || r.user !== uc.id)) assert.equal(await read(r, conv, seq), text);
    }
  }
  const control = `control-${randomBytes(12).toString('hex')}`;
  await devs[0].c.call({ type: 'send', conversation: plainConv, body: control });
  await psql(DB, 'CHECKPOINT');
  const end = await value(DB, 'SELECT pg_current_wal_insert_lsn()');

  const dump = execFileSync(path.join(PGBIN, 'pg_dump'), ['-d', dsn(DB)], { maxBuffer: 1 << 28 });
  const segments = await walSegments(start, end);
  assert.ok(segments.length > 0, 'WAL segments written');
  // pg_waldump reads the range (records of the exchange are there).
  const waldump = execFileSync(path.join(PGBIN, 'pg_waldump'), ['-p', path.join(PGDATA, 'pg_wal'), '-s', start, '-e', end],
    { maxBuffer: 1 << 28, stdio: ['ignore', 'pipe', 'pipe'] }).toString();
  assert.match(waldump, /rmgr: Heap/);
  const wal = Buffer.concat(segments.map((f) => readFileSync(f)));
  const logs = [path.join(process.env.CHAT_TEST_TMP || '', 'postgres.log'), gw.log]
    .filter((f) => f && existsSync(f)).map((f) => readFileSync(f));

  assert.ok(hits(dump, control) >= 1, 'the control text is in the dump (the scan works)');
  assert.ok(hits(wal, control) >= 1, 'the control text is in the WAL (the scan works)');
  assert.ok(dump.includes('"kind":') || hits(dump, 'e2e') > 0, 'the dump has the e2e rows');
  for (const s of secrets) {
    assert.equal(hits(dump, s), 0, `${s} in the dump`);
    assert.equal(hits(wal, s), 0, `${s} in the WAL`);
    assert.equal(hits(Buffer.from(waldump), s), 0, `${s} in pg_waldump's output`);
    for (const l of logs) assert.equal(hits(l, s), 0, `${s} in a log`);
  }
  // The ciphertexts are there instead.
  assert.ok(Number(await value(DB, `SELECT count(*) FROM chat.messages WHERE kind = 'e2e' AND conversation_id IN (${dm}, ${g})`)) === secrets.length);
});
