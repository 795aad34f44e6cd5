// Drives the hallmark dashboard in real headless Chromium (Debian's
// /usr/bin/chromium) as an administrator would: sign in with the one-time
// password, choose a new one, approve and reject OV requests, revoke a
// certificate and see it in the CRL status, create an account. A request
// whose organisation is `<script>alert(1)</script>` must render as text
// and run nothing. Prints one JSON object with what it saw; the Rust test
// (tests/it/browser.rs) checks it. Screenshots go to SCREENSHOT_DIR.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const base = env('BASE_URL');
const shots = env('SCREENSHOT_DIR');
mkdirSync(shots, { recursive: true });
const result = { dialogs: [], pages: {} };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  // The CA's own root is not in Chromium's store; TLS itself is tested
  // elsewhere (rustls and openssl against the same listener).
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  page.on('dialog', async (d) => { result.dialogs.push(d.message()); await d.dismiss(); });
  page.on('pageerror', (e) => { result.dialogs.push(`page error: ${e.message}`); });
  const shot = async (name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
  const flash = async () => (await page.locator('.flash').first().textContent())?.trim();

  await page.goto(`${base}/admin`);
  result.pages.redirected_to = new URL(page.url()).pathname;
  await shot('login');
  await page.fill('#username', 'admin');
  await page.fill('#password', env('ADMIN_PASSWORD'));
  await page.click('button[type=submit]');
  await page.waitForURL('**/admin/password');
  await shot('password');
  await page.fill('#current_password', env('ADMIN_PASSWORD'));
  await page.fill('#new_password', env('NEW_PASSWORD'));
  await page.fill('#confirm', env('NEW_PASSWORD'));
  await page.click('main button[type=submit]');
  await page.waitForURL(`${base}/admin`);
  result.pages.after_password = await flash();
  await shot('overview');

  // The queue, with the hostile organisation shown as text.
  await page.goto(`${base}/admin/requests`);
  await shot('requests');
  result.pages.queue_text = await page.locator('table').textContent();
  result.pages.script_elements_in_table = await page.locator('table script').count();
  await page.goto(`${base}/admin/requests/${env('ORDER_XSS')}`);
  result.pages.xss_detail_text = await page.locator('main').textContent();

  // Approve one request.
  await page.goto(`${base}/admin/requests/${env('ORDER_APPROVE')}`);
  await shot('request');
  await page.fill('#approve-reason', 'Registry entry checked by phone.');
  await page.click('form[action$="/approve"] button');
  await page.waitForLoadState();
  result.pages.after_approve = await flash();
  const certLink = page.locator('.flash a').first();
  const serial = (await certLink.textContent()).trim();
  result.serial = serial;

  // Reject another, with a reason.
  await page.goto(`${base}/admin/requests/${env('ORDER_REJECT')}`);
  await page.fill('#reject-reason', 'The organisation could not be verified.');
  await page.click('form[action$="/reject"] button');
  await page.waitForLoadState();
  result.pages.after_reject = await flash();

  // Revoke the issued certificate and see the CRL status move.
  await page.goto(`${base}/admin/certificates`);
  await shot('certificates');
  await page.goto(`${base}/admin/certificates/${serial}`);
  await shot('certificate');
  await page.selectOption('#reason', 'keyCompromise');
  await page.click('form[action$="/revoke"] button');
  await page.waitForLoadState();
  result.pages.after_revoke = await flash();
  let crlEntries = '';
  for (let i = 0; i < 40; i++) {
    await page.goto(`${base}/admin/crl`);
    crlEntries = await page.locator('table tbody tr td:nth-child(3)').first().textContent();
    if (crlEntries.trim() === '1') break;
    await page.waitForTimeout(250);
  }
  result.pages.crl_entries = crlEntries.trim();
  await shot('crl');

  // Create an account and read its key, shown once.
  await page.goto(`${base}/admin/accounts`);
  await page.fill('#name', 'payments team');
  await page.click('form[action="/admin/accounts"] button');
  await page.waitForLoadState();
  result.api_key = (await page.locator('#api-key').textContent()).trim();
  await shot('accounts');

  await page.goto(`${base}/admin/users`);
  await shot('users');
  await page.goto(`${base}/admin/audit`);
  await shot('audit');

  // Narrow screens: the layout still fits 360 px.
  await page.setViewportSize({ width: 360, height: 780 });
  await page.goto(`${base}/admin`);
  result.pages.narrow_overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
  await shot('overview-360px');
  await page.goto(`${base}/admin/certificates`);
  await shot('certificates-360px');
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
