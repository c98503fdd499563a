// Browser test of end-to-end encryption on the demo page: alice makes a
// secret group with bob, both pages show the lock and exchange encrypted
// messages that both display; the server's copy is ciphertext; the safety
// number view shows the same 60 digits on both sides.  Run by
// tests/browser/run.sh (BASE_URL, TOKENS, NAMES, DB_DSN).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import zlib from 'node:zlib';
import { chromium } from 'playwright-core';

const BASE_URL = process.env.BASE_URL;
const TOKENS = JSON.parse(process.env.TOKENS || '{}');
const NAMES = process.env.NAMES || '1:alice,2:bob,3:carol';
const ARTIFACTS = process.env.ARTIFACTS || 'test-artifacts/browser';
const WAIT = 20000;
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--no-first-run', '--disable-quic'];

let browser;
const users = {};

/** Opens the page of one user in a fresh context (fresh IndexedDB) and waits until connected. */
async function openUser(name) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  const errors = [];
  page.on('pageerror', (e) => errors.push(`${name}: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`${name} console: ${m.text()}`); });
  await page.goto(`${BASE_URL}/#token=${TOKENS[name]}&names=${NAMES}`);
  await page.waitForSelector('body[data-connection="open"]');
  // The device's keys are made and uploaded after hello.
  await page.waitForFunction(() => window.e2e && window.e2e.identity, null, { timeout: WAIT });
  users[name] = { context, page, errors };
  return users[name];
}

/** The server's copy of the newest message of the conversation titled title. */
function serverBody(title) {
  return execFileSync(path.join(process.env.PGBIN, 'psql'), ['-XAtq', '-d', process.env.DB_DSN, '-c',
    `SELECT m.kind || ' ' || m.body FROM chat.messages m JOIN chat.conversations c ON c.id = m.conversation_id
      WHERE c.title = '${title}' ORDER BY m.seq DESC LIMIT 1`]).toString().trim();
}

before(async () => {
  assert.ok(BASE_URL && TOKENS.alice && TOKENS.bob && TOKENS.carol, 'run through tests/browser/run.sh');
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS, timeout: 60000 });
  await openUser('alice');
  await openUser('bob');
  await openUser('carol');
});

after(async () => {
  for (const [name, u] of Object.entries(users)) {
    try { await u.page.screenshot({ path: path.join(ARTIFACTS, `e2e-${name}.png`) }); } catch { /* gone */ }
  }
  if (browser) await browser.close();
});

test('a secret group: both pages show the lock and display each other\'s encrypted messages', async () => {
  const { page: a } = users.alice;
  const { page: b } = users.bob;
  await a.click('#new-group');
  await a.fill('#group-title', 'Secret plans');
  await a.fill('#group-members', '2');
  await a.check('#group-secret');
  await a.click('#group-ok');
  await a.waitForFunction(() => document.getElementById('conv-name').textContent === '🔒 Secret plans', null, { timeout: WAIT });
  await a.click('#composer-input');
  await a.keyboard.type('The eagle lands at noon', { delay: 5 });
  await a.keyboard.press('Enter');
  // Alice's own page shows her text (decrypted from the server's echo).
  await a.waitForFunction(() => [...document.querySelectorAll('#message-list .msg:not(.pending) .body')]
    .some((e) => e.textContent === 'The eagle lands at noon'), null, { timeout: WAIT });

  // (the list is redrawn often: act on selectors, not element handles)
  await b.waitForSelector('#chat-list li:has-text("Secret plans")', { timeout: WAIT });
  await b.waitForSelector('#chat-list li:has-text("Secret plans") .lock', { timeout: WAIT });
  await b.click('#chat-list li:has-text("Secret plans")');
  await b.waitForFunction(() => [...document.querySelectorAll('#message-list .msg .body')]
    .some((e) => e.textContent === 'The eagle lands at noon'), null, { timeout: WAIT });

  // Bob answers; alice displays it.
  await b.click('#composer-input');
  await b.keyboard.type('Copy that', { delay: 5 });
  await b.keyboard.press('Enter');
  await a.waitForFunction(() => [...document.querySelectorAll('#message-list .msg .body')]
    .some((e) => e.textContent === 'Copy that'), null, { timeout: WAIT });

  // The server holds ciphertext: kind e2e, and not the text.
  const stored = serverBody('Secret plans');
  assert.match(stored, /^e2e \{"v":1,/);
  assert.doesNotMatch(stored, /Copy that/);
  // A plaintext send is refused by the server in this conversation.
  const refused = await a.evaluate(async () => {
    const id = [...document.querySelectorAll('#chat-list li.active')][0].dataset.conversation;
    try { await window.chat.request('send', { conversation: Number(id), body: 'plain' }); return 'sent'; } catch (e) { return e.code; }
  });
  assert.equal(refused, '22023');
});

test('a secret direct chat shows the same safety number on both pages; undecryptable messages get a placeholder', async () => {
  const { page: a } = users.alice;
  // alice and carol: the direct chat of alice and bob (DIRECT) stays plain
  // for the other browser tests (messenger.test.mjs searches it)
  const { page: b } = users.carol;
  await a.click('#new-direct');
  await a.fill('#direct-user', '3');
  await a.check('#direct-secret');
  await a.click('#direct-ok');
  await a.waitForFunction(() => document.getElementById('conv-name').textContent.startsWith('🔒'), null, { timeout: WAIT });
  await a.click('#safety');
  await a.waitForFunction(() => /^(\d{5} ){11}\d{5}$/.test(document.getElementById('safety-number').textContent), null, { timeout: WAIT });
  const numberA = await a.textContent('#safety-number');
  await a.click('#dialog-safety button');

  await b.waitForSelector('#chat-list li:has-text("alice") .lock', { timeout: WAIT });
  await b.click('#chat-list li:has-text("alice"):has(.lock)');
  await b.click('#safety');
  await b.waitForFunction(() => /^(\d{5} ){11}\d{5}$/.test(document.getElementById('safety-number').textContent), null, { timeout: WAIT });
  assert.equal(await b.textContent('#safety-number'), numberA, 'both sides compute the same safety number');
  await b.click('#dialog-safety button');

  // A message whose key never came (forged sender key id): the placeholder, not garbage.
  const conv = await b.evaluate(() => Number(document.querySelector('#chat-list li.active').dataset.conversation));
  await a.evaluate(async (c) => {
    await window.chat.request('send', { conversation: c, kind: 'e2e',
      body: JSON.stringify({ v: 1, sid: 'bm8ta2V5', n: 0, ct: 'AAAA', sig: 'AAAA' }) });
  }, conv);
  await b.waitForSelector('#message-list .body.e2e-pending', { timeout: WAIT });
  assert.match(await b.textContent('#message-list .body.e2e-pending'), /Waiting for the key/);
});

// A PNG of w x h pixels (a gradient), built with zlib.
function png(w, h) {
  const raw = Buffer.alloc((w * 3 + 1) * h);
  for (let y = 0; y < h; y++) for (let x = 0; x < w * 3; x++) raw[y * (w * 3 + 1) + 1 + x] = (x + y) & 255;
  const crc32 = (buf) => { let c = ~0; for (const b of buf) { c ^= b; for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1)); } return (~c) >>> 0; };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4); len.writeUInt32BE(data.length);
    const crc = Buffer.alloc(4); crc.writeUInt32BE(crc32(Buffer.concat([Buffer.from(type), data])));
    return Buffer.concat([len, Buffer.from(type), data, crc]);
  };
  const ihdr = Buffer.alloc(13); ihdr.writeUInt32BE(w, 0); ihdr.writeUInt32BE(h, 4); ihdr[8] = 8; ihdr[9] = 2;
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr),
    chunk('IDAT', zlib.deflateSync(raw)), chunk('IEND', Buffer.alloc(0))]);
}

test('a picture attached in a secret chat goes up encrypted and shows decrypted on both pages', async () => {
  const { page: a } = users.alice;
  // alice and carol: the direct chat of alice and bob (DIRECT) stays plain
  // for the other browser tests (messenger.test.mjs searches it)
  const { page: b } = users.carol;
  // both still have the secret direct chat of the test before open
  assert.match(await a.textContent('#conv-name'), /^🔒/);
  const conv = await a.evaluate(() => Number(document.querySelector('#chat-list li.active').dataset.conversation));
  await a.setInputFiles('#composer-file', { name: 'treasure-map.png', mimeType: 'image/png', buffer: png(96, 64) });
  // carol's page decrypts the file with the key in the message: the full picture, its name as alt
  const sel = '#message-list .msg figure.attachment.image.e2e img';
  await b.waitForFunction((s) => { const i = document.querySelector(s); return i && i.complete && i.naturalWidth > 0; }, sel, { timeout: WAIT });
  assert.deepEqual(await b.$eval(sel, (i) => [i.naturalWidth, i.naturalHeight, i.alt]), [96, 64, 'treasure-map.png']);
  await a.waitForFunction((s) => document.querySelector(s)?.naturalWidth === 96, sel, { timeout: WAIT });
  assert.equal(await a.$('#message-list .msg.pending'), null);
  // The server has opaque bytes only: no type, no name, no thumbnail; a kind e2e message
  // (the newest file: the direct chat of alice and carol may have had a plain picture before it was made secret).
  const row = execFileSync(path.join(process.env.PGBIN, 'psql'), ['-XAtq', '-d', process.env.DB_DSN, '-c',
    `SELECT a.mime || '|' || coalesce(a.name, '-') || '|' || (a.thumbnail_key IS NULL) || '|' || m.kind
       FROM chat.attachments a JOIN chat.messages m ON m.conversation_id = a.conversation_id AND m.seq = a.message_seq
      WHERE a.conversation_id = ${conv} ORDER BY m.seq DESC LIMIT 1`]).toString().trim();
  assert.equal(row, 'application/octet-stream|-|true|e2e');
});

test('no uncaught errors in the e2e pages', () => {
  const errors = Object.values(users).flatMap((u) => u.errors).filter((e) => !/WebSocket|net::/.test(e));
  assert.deepEqual(errors, []);
});
