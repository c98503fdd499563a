// Browser test of the demo page: alice, bob and carol in three Chromium
// contexts against a real gateway.  Run by tests/browser/run.sh, which sets
// BASE_URL, TOKENS (JSON {alice, bob, carol}), DIRECT, GROUP and NAMES.
// Every wait is bounded; screenshots go to test-artifacts/browser/.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { chromium } from 'playwright-core';

const BASE_URL = process.env.BASE_URL;
const TOKENS = JSON.parse(process.env.TOKENS || '{}');
const DIRECT = process.env.DIRECT;
const GROUP = process.env.GROUP;
const HISTORY = process.env.HISTORY;   // a conversation of alice and bob with 45 messages
const NAMES = process.env.NAMES || '1:alice,2:bob,3:carol';
const ARTIFACTS = process.env.ARTIFACTS || 'test-artifacts/browser';
const WAIT = 20000;

const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--no-first-run', '--disable-quic',
];

let browser;
const users = {};   // name -> {context, page, errors}

/** Opens the page of one user in a fresh context and waits until it is connected. */
async function openUser(name) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  const errors = [];
  page.on('pageerror', (e) => errors.push(`${name}: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`${name} console: ${m.text()}`); });
  await page.goto(`${BASE_URL}/#token=${TOKENS[name]}&names=${NAMES}`);
  try {
    await page.waitForSelector('body[data-connection="open"]');
  } catch (e) {
    throw new Error(`${name}'s page did not connect: ${e.message.split('\n')[0]}; page errors: ${JSON.stringify(errors)}`);
  }
  users[name] = { context, page, errors };
  return users[name];
}

/** Opens a conversation by clicking it in the chat list. */
async function openChat(page, conv) {
  await page.click(`#chat-list li[data-conversation="${conv}"]`);
  await page.waitForSelector(`#chat-list li.active[data-conversation="${conv}"]`);
}

async function type(page, text, { send = true } = {}) {
  await page.click('#composer-input');
  await page.keyboard.type(text, { delay: 5 });
  if (send) await page.keyboard.press('Enter');
}

/** Texts of the message bodies shown, in page order. */
const bodies = (page) => page.$$eval('#message-list .msg:not(.pending) .body', (els) => els.map((e) => e.textContent));

/** The tick status of the last own message whose body is `text`. */
const tickOf = (page, text) => page.evaluate((t) => {
  const mine = [...document.querySelectorAll('#message-list .msg.mine')].filter((m) => m.querySelector('.body')?.textContent === t);
  return mine.length ? mine[mine.length - 1].querySelector('.ticks')?.dataset.status ?? null : null;
}, text);

async function waitForTick(page, text, status) {
  await page.waitForFunction(([t, s]) => {
    const mine = [...document.querySelectorAll('#message-list .msg.mine')].filter((m) => m.querySelector('.body')?.textContent === t);
    return mine.length && mine[mine.length - 1].querySelector('.ticks')?.dataset.status === s;
  }, [text, status], { timeout: WAIT });
}

async function waitForBody(page, text) {
  await page.waitForFunction((t) => [...document.querySelectorAll('#message-list .msg:not(.pending) .body')].some((b) => b.textContent === t), text, { timeout: WAIT });
}

async function shoot(name, file) {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  await users[name].page.screenshot({ path: path.join(ARTIFACTS, file) });
}

before(async () => {
  assert.ok(BASE_URL && TOKENS.alice && TOKENS.bob && TOKENS.carol && DIRECT && GROUP && HISTORY, 'run through tests/browser/run.sh');
  // Playwright gives each launch a fresh temporary user data dir.
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS, timeout: 60000 });
  await openUser('alice');
  await openUser('bob');
});

after(async () => {
  for (const [name, u] of Object.entries(users)) {
    try { await shoot(name, `${name}-final.png`); } catch { /* page already gone */ }
  }
  if (browser) await browser.close();
});

test('alice sends, bob sees it; delivered then read ticks on alice\'s page', async () => {
  const { page: a } = users.alice;
  const { page: b } = users.bob;
  await openChat(a, DIRECT);
  await openChat(b, GROUP);                       // bob looks elsewhere: delivered, not read
  await type(a, 'Hello Bob, are you there?');
  await waitForTick(a, 'Hello Bob, are you there?', 'delivered');
  // Bob's chat list: unread badge and preview.
  await b.waitForFunction((c) => {
    const li = document.querySelector(`#chat-list li[data-conversation="${c}"]`);
    return li && li.querySelector('.badge') && li.querySelector('.preview').textContent.includes('Hello Bob, are you there?');
  }, DIRECT, { timeout: WAIT });
  await openChat(b, DIRECT);                      // bob reads
  await waitForBody(b, 'Hello Bob, are you there?');
  await waitForTick(a, 'Hello Bob, are you there?', 'read');
  assert.equal(await b.$(`#chat-list li[data-conversation="${DIRECT}"] .badge`), null, 'badge gone after reading');
});

test('bob\'s typing shows on alice\'s page, and stops with his message', async () => {
  const { page: a } = users.alice;
  const { page: b } = users.bob;
  await type(b, 'Yes, I am h', { send: false });
  await a.waitForFunction(() => /bob is typing/.test(document.getElementById('conv-sub').textContent), null, { timeout: WAIT });
  await shoot('alice', 'alice-typing.png');
  await b.keyboard.type('ere!', { delay: 5 });
  await b.keyboard.press('Enter');
  await waitForBody(a, 'Yes, I am here!');
  await a.waitForFunction(() => !/typing/.test(document.getElementById('conv-sub').textContent), null, { timeout: WAIT });
  await waitForTick(b, 'Yes, I am here!', 'read');
  await shoot('alice', 'alice-direct.png');
  await shoot('bob', 'bob-direct.png');
});

test('bob goes offline, alice sends five, bob comes back and shows all five once, in order', async () => {
  const { page: a } = users.alice;
  const { page: b, context: bctx } = users.bob;
  await bctx.setOffline(true);
  // The page notices through the 'offline' event and closes its socket.
  await b.waitForSelector('body[data-connection="offline"]');
  await b.waitForSelector('#banner:not([hidden])');
  const five = [1, 2, 3, 4, 5].map((i) => `while you were away ${i}`);
  for (const text of five) await type(a, text);
  for (const text of five) await waitForTick(a, text, 'sent');
  await shoot('bob', 'bob-offline.png');
  assert.deepEqual((await bodies(b)).filter((t) => five.includes(t)), [], 'nothing arrives while offline');

  await bctx.setOffline(false);
  await b.waitForSelector('body[data-connection="open"]');
  await b.waitForFunction((n) => [...document.querySelectorAll('#message-list .msg .body')].filter((e) => e.textContent.startsWith('while you were away')).length >= n, 5, { timeout: WAIT });
  await b.waitForTimeout(500);   // a duplicate would show up by now
  assert.deepEqual((await bodies(b)).filter((t) => five.includes(t)), five);
  const seqs = await b.$$eval('#message-list .msg[data-seq]', (els) => els.map((e) => Number(e.dataset.seq)));
  assert.equal(new Set(seqs).size, seqs.length, `no seq twice: ${seqs}`);
  assert.deepEqual(seqs, [...seqs].sort((x, y) => x - y), 'in seq order');
  for (const text of five) await waitForTick(a, text, 'read');
  assert.equal(await b.$('#banner:not([hidden])'), null, 'reconnecting banner gone');

  // The picture for the README: alice's chat with read ticks while bob types.
  await type(b, 'Got all five, in order', { send: false });
  await a.waitForFunction(() => /bob is typing/.test(document.getElementById('conv-sub').textContent), null, { timeout: WAIT });
  await shoot('alice', 'readme.png');
  await b.keyboard.press('Enter');
  await waitForBody(a, 'Got all five, in order');
});

test('history pages: the newest first, older ones on request, after a reload', async () => {
  const { page: b } = users.bob;
  await b.reload();
  await b.waitForSelector('body[data-connection="open"]');
  await openChat(b, DIRECT);
  await waitForBody(b, 'while you were away 5');
  assert.ok((await bodies(b)).length >= 7, 'the direct chat after a reload');
  await openChat(b, HISTORY);
  await waitForBody(b, 'history 45');
  const first = await bodies(b);
  assert.ok(first.length < 45, `one page first (${first.length})`);
  assert.equal(first.at(-1), 'history 45');
  await b.click('#older');
  await b.waitForFunction(() => [...document.querySelectorAll('#message-list .body')].some((e) => e.textContent === 'history 1'), null, { timeout: WAIT });
  const all = await bodies(b);
  assert.deepEqual(all, Array.from({ length: 45 }, (_, i) => `history ${i + 1}`));
  await b.waitForSelector('#older', { state: 'hidden' });
});

test('a group of three works', async () => {
  const { page: a } = users.alice;
  const { page: b } = users.bob;
  const { page: c } = await openUser('carol');
  await openChat(a, GROUP);
  await openChat(b, GROUP);
  await openChat(c, GROUP);
  await type(c, 'Hi all, carol here');
  await waitForBody(a, 'Hi all, carol here');
  await waitForBody(b, 'Hi all, carol here');
  const sender = await a.$$eval('#message-list .msg.theirs', (els) => els.map((e) => e.querySelector('.sender')?.textContent).pop());
  assert.equal(sender, 'carol');
  await type(a, 'Welcome to the group, both of you');
  await waitForBody(b, 'Welcome to the group, both of you');
  await waitForBody(c, 'Welcome to the group, both of you');
  await waitForTick(a, 'Welcome to the group, both of you', 'read');   // read by bob and carol
  await shoot('alice', 'alice-group.png');
  await shoot('carol', 'carol-group.png');
});

test('new group and new direct chat from the page; readable errors', async () => {
  const { page: b } = users.bob;
  const { page: c } = users.carol;
  await b.click('#new-group');
  await b.fill('#group-title', 'Weekend plans');
  await b.fill('#group-members', '3');
  await b.click('#group-ok');
  await b.waitForFunction(() => document.getElementById('conv-name').textContent === 'Weekend plans', null, { timeout: WAIT });
  await type(b, 'Hiking on Saturday?');
  await c.waitForFunction(() => [...document.querySelectorAll('#chat-list .title')].some((t) => t.textContent === 'Weekend plans'), null, { timeout: WAIT });

  await c.click('#new-direct');
  await c.fill('#direct-user', '999999');        // nobody
  await c.click('#direct-ok');
  await c.waitForSelector('.toast.error', { timeout: WAIT });
  const text = await c.textContent('.toast.error');
  assert.match(text, /999999/, `the error names the user: ${text}`);

  await c.click('#new-direct');
  await c.fill('#direct-user', '1');
  await c.click('#direct-ok');
  await c.waitForFunction(() => document.getElementById('conv-name').textContent === 'alice', null, { timeout: WAIT });
});

test('a refused token and a missing token are explained on the page', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  await page.goto(`${BASE_URL}/#token=${TOKENS.alice.slice(0, -4)}AAAA`);   // bad signature
  await page.waitForSelector('body[data-connection="closed"]');
  assert.match(await page.textContent('.toast.error'), /refused the token.*4001/);
  await page.goto(`${BASE_URL}/`);
  await page.reload();
  await page.waitForSelector('#no-token:not([hidden])');
  assert.match(await page.textContent('#no-token'), /make demo/);
  assert.deepEqual(pageErrors, []);
  await context.close();
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

test('a picture alice attaches appears as an image on bob\'s page, full size on click', async () => {
  const { page: a } = users.alice;
  const { page: b } = users.bob;
  await openChat(a, DIRECT);
  await openChat(b, DIRECT);
  await a.setInputFiles('#composer-file', { name: 'gradient.png', mimeType: 'image/png', buffer: png(640, 480) });
  // bob: the thumbnail (longest side 320) loads as an image
  const sel = '#message-list .msg:not(.pending) figure.attachment.image img.thumb';
  await b.waitForFunction((s) => { const i = document.querySelector(s); return i && i.complete && i.naturalWidth > 0; }, sel, { timeout: WAIT });
  assert.deepEqual(await b.$eval(sel, (i) => [i.naturalWidth, i.naturalHeight]), [320, 240]);
  await b.click(sel);
  await b.waitForFunction((s) => { const i = document.querySelector(s); return i.classList.contains('full') && i.complete && i.naturalWidth === 640; }, sel, { timeout: WAIT });
  // alice's page shows her own picture too, and no pending entry is left
  await a.waitForFunction((s) => document.querySelector(s)?.naturalWidth === 320, sel, { timeout: WAIT });
  assert.equal(await a.$('#message-list .msg.pending'), null);
  await shoot('bob', 'bob-picture.png');
});

test('no uncaught errors in the pages', () => {
  const errors = Object.values(users).flatMap((u) => u.errors)
    .filter((e) => !/WebSocket|ERR_INTERNET_DISCONNECTED|net::/.test(e));   // expected while offline
  assert.deepEqual(errors, []);
});
