// The checker must be able to fail: judge() fed fabricated records with a
// lost, a duplicated and an unseen message reports each, and passes clean ones.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { judge } from './checker.mjs';

const members = { 1: [10, 20], 2: [10, 20, 30] };
const msg = (conversation, seq, sender, cmid) => ({ conversation, seq, sender, client_msg_id: cmid });
const table = [msg(1, 1, 10, 'a1'), msg(1, 2, 20, 'b1'), msg(1, 3, 10, 'a2'), msg(2, 1, 30, 'c1')];
const acks = [
  { conversation: 1, seq: 1, client_msg_id: 'a1', sender: 10 },
  { conversation: 1, seq: 2, client_msg_id: 'b1', sender: 20 },
  { conversation: 1, seq: 3, client_msg_id: 'a2', sender: 10 },
  { conversation: 2, seq: 1, client_msg_id: 'c1', sender: 30 },
];
// Every member device with everything of its conversations.
const fullView = (user) => table.filter((m) => members[m.conversation].includes(user));
const clean = () => [
  { label: 'u10/1', user: 10, device: 1, view: fullView(10) },
  { label: 'u10/2', user: 10, device: 2, view: fullView(10) },
  { label: 'u20/1', user: 20, device: 1, view: fullView(20) },
  { label: 'u30/1', user: 30, device: 1, view: fullView(30) },
];

test('clean records pass', () => {
  const r = judge({ acks, devices: clean(), members, table });
  assert.deepEqual([r.pass, r.acked, r.lost, r.dupView, r.dupTable, r.unseen], [true, 4, 0, 0, 0, 0], JSON.stringify(r));
});

test('the same ok seen twice (a retry answered duplicate) counts once', () => {
  const r = judge({ acks: [...acks, acks[0]], devices: clean(), members, table });
  assert.equal(r.pass, true);
  assert.equal(r.acked, 4);
});

test('an acked message missing on one member device is lost', () => {
  const devices = clean();
  devices[1].view = devices[1].view.filter((m) => m.client_msg_id !== 'b1');
  const r = judge({ acks, devices, members, table });
  assert.equal(r.pass, false);
  assert.equal(r.lost, 1);
  assert.equal(r.lostOnDevice, 1);
  assert.match(r.examples.join('\n'), /u10\/2: acked 1:2 \(b1\) missing/);
});

test('an acked message missing from the table is lost', () => {
  const r = judge({ acks, devices: clean(), members, table: table.filter((m) => m.client_msg_id !== 'c1') });
  assert.equal(r.pass, false);
  assert.equal(r.lostInTable, 1);
  assert.equal(r.lost, 1);
});

test('an acked seq holding another message in a view is lost there', () => {
  const devices = clean();
  devices[2].view = devices[2].view.map((m) => (m.seq === 3 && m.conversation === 1 ? { ...m, client_msg_id: 'zz' } : m));
  const r = judge({ acks, devices, members, table });
  assert.equal(r.lost, 1);
  assert.equal(r.pass, false);
});

test('a message twice in a view, or one client_msg_id at two seqs, is duplicated in the view', () => {
  const devices = clean();
  devices[0].view.push(msg(1, 2, 20, 'b1'));
  devices[3].view.push(msg(2, 2, 30, 'c1'));
  const r = judge({ acks, devices, members, table });
  assert.equal(r.dupView, 2);
  assert.equal(r.lost, 0);
  assert.equal(r.pass, false);
});

test('a client_msg_id stored twice in the table is duplicated in the table', () => {
  const t = [...table, msg(2, 2, 30, 'c1')];
  const devices = clean();
  for (const d of devices) if (members[2].includes(d.user)) d.view.push(msg(2, 2, 30, 'c1x'));
  const r = judge({ acks, devices, members, table: t });
  assert.equal(r.dupTable, 1);
  assert.equal(r.pass, false);
});

test('one missing and one duplicated message together are both reported', () => {
  const devices = clean();
  devices[0].view = devices[0].view.filter((m) => m.client_msg_id !== 'a2');
  devices[0].view.push(msg(1, 1, 10, 'a1'));
  const r = judge({ acks, devices, members, table });
  assert.deepEqual([r.lost, r.dupView, r.pass], [1, 1, false]);
});

test('a committed message never acked but missing on a device is unseen', () => {
  const t = [...table, msg(1, 4, 20, 'b2')];
  const devices = clean();
  for (const d of devices) if (d.user !== 30) d.view.push(msg(1, 4, 20, 'b2'));
  devices[2].view.pop();
  const r = judge({ acks, devices, members, table: t });
  assert.deepEqual([r.unseen, r.lost, r.pass], [1, 0, false]);
});

test('two client_msg_ids acked at one seq is a conflict', () => {
  const r = judge({ acks: [...acks, { conversation: 1, seq: 1, client_msg_id: 'other', sender: 10 }], devices: clean(), members, table });
  assert.equal(r.ackConflicts, 1);
  assert.equal(r.pass, false);
});

test('no acks at all does not pass (the load did nothing)', () => {
  const r = judge({ acks: [], devices: clean(), members, table });
  assert.equal(r.pass, false);
});
