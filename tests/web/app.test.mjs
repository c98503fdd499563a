// The demo page's logic that needs no DOM: texts (app/format.js) and the
// rules of the store (app/store.js: peers, titles, receipt ticks).
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { systemText, errorText, lastSeenText } from '../../web/app/format.js';
import { S, loadNames, nameOf, whoOf, learnPeer, peerOf, convTitle, setReceipt, tickOf } from '../../web/app/store.js';
import { ChatError } from '../../web/chat-client.js';

beforeEach(() => {
  S.me = 1;
  for (const k of ['names', 'convs', 'receipts', 'peers']) S[k].clear();
  loadNames('1:alice,2:bob,3:c%C3%A9line');
});

test('system messages read as sentences; a body that is not JSON is shown as is', () => {
  const sys = (o) => ({ kind: 'system', body: JSON.stringify(o) });
  assert.equal(systemText(sys({ action: 'created', by: 1, title: 'Team', members: [1, 2, 3] }), whoOf), 'You created the group “Team” with bob, céline');
  assert.equal(systemText(sys({ action: 'added', by: 2, user: 1 }), whoOf), 'Bob added you');
  assert.equal(systemText(sys({ action: 'removed', by: 1, user: 9 }), whoOf), 'You removed user 9');
  assert.equal(systemText(sys({ action: 'left', user: 3 }), whoOf), 'Céline left');
  assert.equal(systemText(sys({ action: 'renamed' }), whoOf), 'Someone: renamed');
  assert.equal(systemText({ kind: 'system', body: 'plain {' }, whoOf), 'plain {');
  assert.equal(systemText({ kind: 'system', body: '42' }, whoOf), '42');
  assert.equal(systemText({ kind: 'system', body: null }, whoOf), 'null');
});

test('errors read with a label for known codes and the server text', () => {
  assert.equal(errorText(new ChatError('user 1 is not a member of conversation 7', { code: '42501' }), 'Message not sent'),
    'Message not sent — not allowed: user 1 is not a member of conversation 7');
  assert.equal(errorText(new ChatError('no answer to send within 10 ms', { code: 'timeout' })), 'no answer from the server: no answer to send within 10 ms');
  assert.equal(errorText(new ChatError('odd', { code: 'XX000' })), 'odd');
  assert.equal(errorText('plain'), 'plain');
  assert.equal(lastSeenText({ online: true }), 'online');
  assert.equal(lastSeenText({ online: false, last_seen: null }), 'offline');
  assert.equal(lastSeenText(null), '');
});

test('a direct chat learns its peer (never the reader), and is titled by it', () => {
  S.convs.set(7, { conversation: 7, kind: 'direct', title: null });
  S.convs.set(8, { conversation: 8, kind: 'group', title: null });
  assert.equal(convTitle(S.convs.get(7)), 'Chat 7');
  assert.equal(learnPeer(7, 1), false, 'the reader is nobody\'s peer');
  assert.equal(learnPeer(8, 2), false, 'groups have no peer');
  assert.equal(learnPeer(99, 2), false, 'unknown conversation');
  assert.equal(learnPeer(7, 2), true);
  assert.equal(learnPeer(7, 2), false, 'known already');
  assert.equal(peerOf(S.convs.get(7)), 2);
  assert.equal(convTitle(S.convs.get(7)), 'bob');
  assert.equal(convTitle(S.convs.get(8)), 'Group 8');
  assert.equal(nameOf(1), 'You');
});

test('ticks: sent, delivered, read from the watermarks of the peer or of every receipt sender', () => {
  S.convs.set(7, { conversation: 7, kind: 'direct' });
  learnPeer(7, 2);
  assert.equal(tickOf(7, 5), 'sent');
  setReceipt(7, 2, { delivered: 5 });
  assert.equal(tickOf(7, 5), 'delivered');
  assert.equal(tickOf(7, 6), 'sent');
  setReceipt(7, 2, { read: 6 });
  assert.equal(tickOf(7, 6), 'read', 'read implies delivered');
  setReceipt(7, 2, { delivered: 1 });
  assert.equal(tickOf(7, 6), 'read', 'watermarks never go back');

  S.convs.set(8, { conversation: 8, kind: 'group' });
  setReceipt(8, 2, { read: 3 });
  setReceipt(8, 3, { delivered: 3 });
  assert.equal(tickOf(8, 3), 'delivered', 'a group is read when everyone read');
  setReceipt(8, 3, { read: 3 });
  assert.equal(tickOf(8, 3), 'read');
});
