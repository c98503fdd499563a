// Browser test of the demo page's notifications: with the gateway's VAPID
// key in hello the page offers "Enable notifications"; enabling registers
// the service worker web/sw.js (headless Chromium has no push service, so
// the subscription itself fails and the page says so); a push delivered to
// the worker through the DevTools protocol (ServiceWorker.deliverPushMessage)
// shows a notification titled with the sender's name, the preview or "New
// message", tagged per conversation.  Run by tests/browser/run.sh.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const BASE_URL = process.env.BASE_URL;
const TOKENS = JSON.parse(process.env.TOKENS || '{}');
const DIRECT = Number(process.env.DIRECT);
const NAMES = process.env.NAMES || '1:alice,2:bob,3:carol';
const WAIT = 20000;

let browser, context, page;
const errors = [];

before(async () => {
  assert.ok(BASE_URL && TOKENS.carol && DIRECT, 'run through tests/browser/run.sh');
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run'], timeout: 60000 });
  context = await browser.newContext();
  page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${BASE_URL}/#token=${TOKENS.carol}&names=${NAMES}`);
  await page.waitForSelector('body[data-connection="open"]');
});

after(async () => { if (browser) await browser.close(); });

// Polls fn (run here, in Node) until it resolves true, for WAIT ms: the
// notifications are read asynchronously, and page.waitForFunction took the
// Promise of an async predicate for a truthy value at once.
async function until(fn) {
  const end = Date.now() + WAIT;
  while (!(await fn())) {
    if (Date.now() > end) throw new Error(`timed out after ${WAIT} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('hello with a VAPID key offers "Enable notifications"; enabling registers the service worker', async () => {
  await page.waitForSelector('#notify:not([hidden])');
  await context.grantPermissions(['notifications'], { origin: BASE_URL });
  await page.click('#notify');
  const scope = await page.evaluate(async () => {
    const reg = await navigator.serviceWorker.ready;
    return { scope: reg.scope, script: reg.active?.scriptURL };
  });
  assert.deepEqual(scope, { scope: `${BASE_URL}/`, script: `${BASE_URL}/sw.js` });
  // No push service in headless Chromium: either subscribed (registered) or told why not.
  await page.waitForFunction(() => document.getElementById('notify').disabled
    || [...document.querySelectorAll('.toast')].some((t) => /notifications/i.test(t.textContent)), null, { timeout: WAIT });
  assert.deepEqual(errors, []);
});

test('a push delivered to the worker shows a notification: sender name, preview, tag per conversation', async () => {
  const cdp = await context.newCDPSession(page);
  const registered = new Promise((resolve) => cdp.on('ServiceWorker.workerRegistrationUpdated', ({ registrations }) => {
    const r = registrations.find((x) => x.scopeURL === `${BASE_URL}/` && !x.isDeleted);
    if (r) resolve(r.registrationId);
  }));
  await cdp.send('ServiceWorker.enable');
  const registrationId = await registered;
  const notifications = () => page.evaluate(async () => (await (await navigator.serviceWorker.ready).getNotifications())
    .map((n) => ({ title: n.title, body: n.body, tag: n.tag, conversation: n.data?.conversation })));
  await cdp.send('ServiceWorker.deliverPushMessage', { origin: `${BASE_URL}/`, registrationId,
    data: JSON.stringify({ type: 'message', conversation: DIRECT, seq: 7, sender: 2, unread: 1, body: 'hi carol' }) });
  await until(async () => (await notifications()).length === 1);
  assert.deepEqual(await notifications(), [{ title: 'bob', body: 'hi carol', tag: `c${DIRECT}`, conversation: DIRECT }]);
  // A newer one of the same conversation, without a preview, replaces it.
  await cdp.send('ServiceWorker.deliverPushMessage', { origin: `${BASE_URL}/`, registrationId,
    data: JSON.stringify({ type: 'message', conversation: DIRECT, seq: 9, first_seq: 8, sender: 2, unread: 3 }) });
  await until(async () => (await notifications())[0]?.body === '2 new messages');
  assert.deepEqual(await notifications(), [{ title: 'bob', body: '2 new messages', tag: `c${DIRECT}`, conversation: DIRECT }]);
  assert.deepEqual(errors, []);
});
