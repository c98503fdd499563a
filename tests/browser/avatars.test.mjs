// Browser test of avatars (issue 15): alice picks a profile picture in her
// profile dialog (file picker) and a picture for the demo group in its info
// dialog; bob, in a fresh page, sees alice's picture loaded (<img>
// naturalWidth > 0) in the chat list row of their direct chat and the
// group's in the group's row, and beside alice's messages in a group; a broken URL (expired) is asked for again.
// Run by tests/browser/run.sh (BASE_URL, TOKENS, DIRECT, GROUP, NAMES).

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
const HISTORY = process.env.HISTORY;   // a group of alice and bob with 45 messages of alice's
const NAMES = process.env.NAMES || '1:alice,2:bob,3:carol';
const ARTIFACTS = process.env.ARTIFACTS || 'test-artifacts/browser';
const WAIT = 20000;
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--no-first-run', '--disable-quic'];

let browser;
const pages = {};
const errors = [];

// CRC-32 for PNG chunks.
function crc32(buf) {
  let c = ~0;
  for (const b of buf) { c ^= b; for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1)); }
  return (~c) >>> 0;
}
// A w x h PNG in one colour.
function png(w, h, [r, g, b]) {
  const raw = Buffer.alloc((w * 3 + 1) * h);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) raw.set([r, g, b], y * (w * 3 + 1) + 1 + x * 3);
  const chunk = (type, data) => {
    const len = Buffer.alloc(4); len.writeUInt32BE(data.length);
    const crc = Buffer.alloc(4); crc.writeUInt32BE(crc32(Buffer.concat([Buffer.from(type), data])));
    return Buffer.concat([len, Buffer.from(type), data, crc]);
  };
  const ihdr = Buffer.alloc(13); ihdr.writeUInt32BE(w, 0); ihdr.writeUInt32BE(h, 4); ihdr[8] = 8; ihdr[9] = 2;
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr),
    chunk('IDAT', zlib.deflateSync(raw)), chunk('IEND', Buffer.alloc(0))]);
}

/** Opens the page of one user in a fresh context and waits until it is connected. */
async function openUser(name) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  page.on('pageerror', (e) => errors.push(`${name}: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`${name} console: ${m.text()}`); });
  await page.goto(`${BASE_URL}/#token=${TOKENS[name]}&names=${NAMES}`);
  await page.waitForSelector('body[data-connection="open"]');
  pages[name] = page;
  return page;
}

/** Waits until the avatar <img> under selector has loaded; resolves its naturalWidth. */
async function loadedImage(page, selector) {
  const h = await page.waitForFunction((sel) => {
    const img = document.querySelector(sel);
    return img && img.complete && img.naturalWidth > 0 ? img.naturalWidth : null;
  }, selector, { timeout: WAIT });
  return h.jsonValue();
}

before(async () => {
  assert.ok(BASE_URL && TOKENS.alice && TOKENS.bob && DIRECT && GROUP && HISTORY, 'run through tests/browser/run.sh');
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS, timeout: 60000 });
  await openUser('alice');
});

after(async () => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  for (const [name, page] of Object.entries(pages)) {
    try { await page.screenshot({ path: path.join(ARTIFACTS, `avatars-${name}.png`) }); } catch { /* gone */ }
  }
  // leave the other browser tests the initials they may expect
  try {
    await pages.alice?.evaluate(async (g) => { await window.chat.setProfile({ avatar: '' }); await window.chat.updateGroup(Number(g), { avatar: '' }); }, GROUP);
  } catch { /* best effort */ }
  if (browser) await browser.close();
});

test('alice sets her picture with the file picker; bob sees it load in the chat list and the header', async () => {
  const a = pages.alice;
  await a.click('#me-name');
  await a.waitForSelector('#dialog-profile[open]');
  await a.setInputFiles('#profile-avatar-file', { name: 'me.png', mimeType: 'image/png', buffer: png(64, 64, [220, 40, 40]) });
  await a.waitForSelector('.toast.info:has-text("Profile picture set")');
  assert.ok(await loadedImage(a, '#profile-avatar .avatar img') > 0, 'alice sees her own picture');
  await a.click('#dialog-profile button[value="cancel"]');

  const b = await openUser('bob');
  const row = `#chat-list li[data-conversation="${DIRECT}"] .avatar img`;
  assert.ok(await loadedImage(b, row) > 0, 'alice\'s picture loads in bob\'s chat list');
  // the URL is bob's own (signed for user 2), fetched through media_url
  assert.match(await b.getAttribute(row, 'src'), /\/media\/[0-9a-f-]{36}\/thumb\?u=2&/);
  await b.click(`#chat-list li[data-conversation="${DIRECT}"]`);
  assert.ok(await loadedImage(b, '#conv-avatar .avatar img') > 0, 'and in the conversation header');
  // beside alice's name on her messages in a group
  await b.click(`#chat-list li[data-conversation="${HISTORY}"]`);
  assert.ok(await loadedImage(b, '#message-list .msg.theirs .sender-line .avatar img') > 0, 'and beside her messages in a group');
  assert.equal(await b.$eval('#message-list .msg.theirs .sender', (e) => e.textContent), 'alice');
});

test('alice sets the group picture in the group info; it loads in bob\'s chat list without a reload', async () => {
  const a = pages.alice, b = pages.bob;
  await a.click(`#chat-list li[data-conversation="${GROUP}"]`);
  await a.selectOption('#conv-menu', 'info');
  await a.waitForSelector('#dialog-info[open]');
  await a.waitForSelector('#info-avatar-set:not([hidden])');
  await a.setInputFiles('#info-avatar-file', { name: 'group.png', mimeType: 'image/png', buffer: png(48, 48, [40, 160, 60]) });
  await a.waitForSelector('.toast.info:has-text("Group picture set")');
  assert.ok(await loadedImage(a, '#info-avatar .avatar img') > 0);
  // the members list shows alice's picture beside her name
  assert.ok(await loadedImage(a, '#info-members li[data-user="1"] .avatar img') > 0);
  await a.click('#dialog-info button[value="cancel"]');
  // bob's page learns it from the 'updated' system message
  assert.ok(await loadedImage(b, `#chat-list li[data-conversation="${GROUP}"] .avatar img`) > 0);
});

test('an avatar URL that stops working is asked for again', async () => {
  const b = pages.bob;
  const row = `#chat-list li[data-conversation="${DIRECT}"] .avatar img`;
  const before = await b.getAttribute(row, 'src');
  const asked = await b.evaluate(() => { window.__asked = 0; const orig = window.chat.request.bind(window.chat); window.chat.request = (t, f) => { if (t === 'media_url') window.__asked++; return orig(t, f); }; return true; });
  assert.ok(asked);
  // as an expired URL would: the <img> fails to load
  await b.evaluate((sel) => { document.querySelector(sel).src = `${location.origin}/media/00000000-0000-4000-8000-000000000000?u=2&e=1&s=00`; }, row);
  await b.waitForFunction(() => window.__asked > 0, null, { timeout: WAIT });
  assert.ok(await loadedImage(b, row) > 0, 'loaded again');
  assert.notEqual(await b.getAttribute(row, 'src'), null);
  assert.ok(before);
});

test('no uncaught errors in the avatar pages', () => {
  const real = errors.filter((e) => !/WebSocket|ERR_INTERNET_DISCONNECTED|net::|Failed to load resource/.test(e));
  assert.deepEqual(real, []);
});
