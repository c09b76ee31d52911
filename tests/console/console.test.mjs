// The operators' console in a real browser: headless Chromium (Debian's) driven by
// playwright-core against a real `switchyard serve` on free ports with traffic flowing.
//
//   node tests/console/console.test.mjs   (after tests/console/run.sh installed the packages)
//
// Environment: SWITCHYARD_BIN (default target/debug/switchyard), CONSOLE_NODE_MODULES (where
// playwright-core and axe-core are installed), CHROMIUM (default /usr/bin/chromium),
// CONSOLE_ARTIFACTS (screenshots; default target/console-artifacts).

import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import assert from 'node:assert/strict';
import readline from 'node:readline';

const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const BIN = path.resolve(ROOT, process.env.SWITCHYARD_BIN || 'target/debug/switchyard');
const MODULES = path.resolve(ROOT, process.env.CONSOLE_NODE_MODULES || 'target/node/node_modules');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = path.resolve(ROOT, process.env.CONSOLE_ARTIFACTS || 'target/console-artifacts');
const require = createRequire(path.join(MODULES, 'noop.js'));
const { chromium } = require('playwright-core');
const AXE = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

const OPS = 'ops-token-0123456789';
const NIGHT = 'night-token-9876543210';
const XSS = `<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">`;

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'switchyard-console-'));
fs.mkdirSync(ARTIFACTS, { recursive: true });
const configPath = path.join(work, 'proxy.toml');
const tokens = (withNight) => `tokens = [{ name = "ops", token_env = "CONSOLE_OPS_TOKEN" }${withNight ? ', { name = "night-shift", token_env = "CONSOLE_NIGHT_TOKEN" }' : ''}]`;

/** The shipped proxy.toml, with its own state file, two admin tokens and a prompt full of HTML. */
function config(withNight = true) {
  let c = fs.readFileSync(path.join(ROOT, 'proxy.toml'), 'utf8');
  const swap = (from, to) => {
    assert.ok(c.includes(from), `proxy.toml no longer has ${from}`);
    c = c.replace(from, to);
  };
  swap('url = "sqlite:switchyard-state.db"', `url = "sqlite:${path.join(work, 'state.db')}"`);
  // The admin tokens: the first line and its indented continuation (the agent token).
  const shipped = /^tokens = \[\{ name = "ops", token_env = "SWITCHYARD_ADMIN_TOKEN" \}[^\n]*\n(?:[ \t]+[^\n]*\n)*/m;
  assert.ok(shipped.test(c), 'proxy.toml no longer has the ops token first in [admin] tokens');
  c = c.replace(shipped, `${tokens(withNight)}\n`);
  swap('reload_check_interval = "2s"', 'reload_check_interval = "0s"');
  c = c.replace(/^summarizer-v2 = .*$/m, `summarizer-v2 = '${XSS}'`);
  return c;
}

let failures = 0;
const results = [];
async function step(name, fn) {
  const t = Date.now();
  try {
    await fn();
    results.push(`ok   ${name} (${Date.now() - t} ms)`);
    console.log(`ok   ${name}`);
  } catch (e) {
    failures += 1;
    results.push(`FAIL ${name}: ${e.stack || e}`);
    console.log(`FAIL ${name}: ${e.stack || e}`);
  }
}

/** Polls `fn` until it returns a truthy value (generous bound; no sleeps as synchronisation). */
async function until(what, fn, ms = 20000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what} (last: ${last})`);
}

// --- the server -------------------------------------------------------------------------------
fs.writeFileSync(configPath, config());
const server = spawn(BIN, ['serve', '--config', configPath, '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0'], {
  env: { ...process.env, CONSOLE_OPS_TOKEN: OPS, CONSOLE_NIGHT_TOKEN: NIGHT, RUST_LOG: 'warn' },
  stdio: ['ignore', 'pipe', 'pipe'],
});
const serverLog = fs.createWriteStream(path.join(ARTIFACTS, 'server.log'));
server.stderr.pipe(serverLog);
const addrs = await new Promise((resolve, reject) => {
  const found = {};
  const rl = readline.createInterface({ input: server.stdout });
  rl.on('line', (line) => {
    const m = line.match(/^switchyard (admin )?listening on (http:\/\/\S+)/);
    if (m) found[m[1] ? 'admin' : 'main'] = m[2];
    if (found.main && found.admin) resolve(found);
  });
  server.on('exit', (code) => reject(new Error(`switchyard exited (${code}) before listening`)));
  setTimeout(() => reject(new Error('switchyard did not print its addresses within 30 s')), 30000);
});
const MAIN = addrs.main;
const ADMIN = addrs.admin;
console.log(`switchyard on ${MAIN}, admin ${ADMIN}`);

async function admin(method, p, body, token = OPS) {
  const r = await fetch(`${ADMIN}${p}`, {
    method, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: r.status, json: await r.json() };
}

async function chat(flag, user, stream = false) {
  const r = await fetch(`${MAIN}/v1/chat/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: flag, user, stream, messages: [{ role: 'user', content: 'Where is my refund?' }] }),
  });
  const body = stream ? await r.text() : await r.json();
  return { status: r.status, variation: r.headers.get('x-switchyard-variation'), fallback: r.headers.get('x-switchyard-fallback'), body };
}

// A small load loop: both shipped flags, many users, until the test ends.
let traffic = true;
let sent = 0;
const loop = (async () => {
  let i = 0;
  while (traffic) {
    i += 1;
    await Promise.all([chat('support-assistant', `user-${i % 500}`, i % 3 === 0), chat('summarizer', `user-${i % 700}`)]).catch(() => {});
    sent += 2;
    await new Promise((r) => setTimeout(r, 20));
  }
})();

// Feedback so the results have figures: conversions for 120 users of the experiment.
const events = [];
for (let u = 0; u < 120; u += 1) events.push({ event_id: `ev-${u}`, metric: 'conversion', value: u % 3 === 0 ? 1 : 0, flag: 'support-assistant', user: `user-${u}` });
await fetch(`${MAIN}/v1/feedback`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ events }) });

// --- the browser -----------------------------------------------------------------------------
const context = await chromium.launchPersistentContext(path.join(work, 'chromium-profile'), {
  executablePath: CHROMIUM,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
  viewport: { width: 1280, height: 800 },
});
const seen = [];
const blocked = [];
let offline = false;
await context.route('**/*', (route) => {
  const url = new URL(route.request().url());
  seen.push(url.href);
  if (url.hostname !== '127.0.0.1') {
    blocked.push(url.href);
    return route.abort('blockedbyclient');
  }
  if (offline && url.pathname.startsWith('/admin/')) return route.abort('internetdisconnected');
  return route.continue();
});
const pageErrors = [];
const cspViolations = [];
async function newPage() {
  const p = await context.newPage();
  p.on('pageerror', (e) => pageErrors.push(String(e)));
  p.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy/i.test(m.text())) cspViolations.push(m.text());
  });
  return p;
}
const page = await newPage();

async function axe(p, label) {
  await p.evaluate(AXE);
  const r = await p.evaluate(async () => window.axe.run(document, { resultTypes: ['violations'] }));
  const bad = r.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  assert.deepEqual(bad.map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(' ')).slice(0, 3).join('; ')})`), [], `axe on ${label}`);
  return r.violations.length;
}

async function login(p, token) {
  await p.fill('#token', token);
  await p.click('#login-form button[type=submit]');
}

await step('login: a wrong token is refused with a clear message, the right one shows the shipped flags', async () => {
  await page.goto(`${ADMIN}/`);
  await page.waitForSelector('#login:not([hidden])');
  await login(page, 'not-a-token');
  await page.waitForSelector('#login-error:not([hidden])');
  assert.match(await page.textContent('#login-error'), /refused/);
  assert.equal(await page.evaluate(() => sessionStorage.length), 0, 'a refused token is not kept');
  await login(page, OPS);
  await page.waitForSelector('#flag-table tr[data-flag="support-assistant"]');
  await page.waitForSelector('#flag-table tr[data-flag="summarizer"]');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('switchyard.admin-token')), OPS);
  const cookies = await context.cookies();
  assert.equal(cookies.length, 0, 'no cookie');
  assert.ok(!page.url().includes(OPS), 'the token is never in the URL');
});

await step('live: the flag list figures change without a reload', async () => {
  await page.evaluate(() => { window.__sameDocument = true; });
  const cell = '#flag-table tr[data-flag="support-assistant"] td:nth-of-type(4)';
  const before = await page.textContent(cell);
  await until('the 5-minute request count to move', async () => (await page.textContent(cell)) !== before);
  assert.equal(await page.evaluate(() => window.__sameDocument), true, 'no reload happened');
  await page.screenshot({ path: path.join(ARTIFACTS, 'flag-list.png'), fullPage: true });
});

const page2 = await newPage();
await step('a second operator logs in with another token and watches the same flag', async () => {
  await page2.goto(`${ADMIN}/#/flag/support-assistant`);
  await page2.waitForSelector('#login:not([hidden])');
  await login(page2, NIGHT);
  await page2.waitForSelector('#variation-table tr[data-variation="treatment"]');
});

await step('flag page: variations, figures, charts, effective configuration', async () => {
  await page.click('#flag-table a:text-is("support-assistant")');
  await page.waitForSelector('#variation-table tr[data-variation="control"]');
  await until('requests to show', async () => Number((await page.textContent('#variation-table tr[data-variation="control"] td:nth-of-type(2)')).replace(/,/g, '')) > 0);
  const cfg = await page.textContent('#config-table');
  for (const s of ['gpt-4o', 'claude-3-5-sonnet', 'concise-assistant-v2', 'empathetic-assistant-v1', 'search-only', 'rule-based', '1,200']) assert.ok(cfg.includes(s), `config table shows ${s}`);
  await page.waitForSelector('#flag-charts svg.chart polyline, #flag-charts svg.chart circle');
  await page.waitForSelector('#flag-business table');
  await page.screenshot({ path: path.join(ARTIFACTS, 'flag-page.png'), fullPage: true });
});

await step('keyboard: the kill switch opens its confirmation from the keyboard; Escape cancels', async () => {
  await page.focus('#kill-switch');
  await page.keyboard.press('Enter');
  await page.waitForSelector('#confirm[open]');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'confirm-reason', 'focus goes to the reason field');
  await page.keyboard.press('Escape');
  await page.waitForSelector('#confirm:not([open])', { state: 'attached' });
  assert.match(await page.textContent('#action-status'), /Cancelled/);
  assert.equal((await admin('GET', '/admin/flags/support-assistant')).json.enabled, true);
});

let secondSawKillMs = null;
await step('kill switch: confirmation names the flag, asks a reason; admin API and audit log show it with the token name', async () => {
  await page.click('#kill-switch');
  await page.waitForSelector('#confirm[open]');
  assert.match(await page.textContent('#confirm-title'), /support-assistant/);
  await page.fill('#confirm-reason', 'console test: kill');
  // The second operator's page follows without reloading: watched from the click on.
  const secondSees = page2.waitForFunction(() => document.querySelector('#flag-summary').textContent.includes('Off'), null, { polling: 50, timeout: 10000 })
    .then(() => Date.now());
  await page.click('#confirm-ok');
  await page.waitForSelector('#action-status .outcome.ok');
  assert.match(await page.textContent('#action-status'), /is off.*by ops/);
  const flag = await admin('GET', '/admin/flags/support-assistant');
  assert.equal(flag.json.enabled, false);
  const audit = await admin('GET', '/admin/audit?flag=support-assistant&limit=1');
  assert.equal(audit.json.entries[0].action, 'set_enabled');
  assert.equal(audit.json.entries[0].actor, 'ops');
  assert.equal(audit.json.entries[0].reason, 'console test: kill');
  secondSawKillMs = (await secondSees) - Date.parse(audit.json.entries[0].at);
  assert.ok(secondSawKillMs <= 4000, `the second page saw it after ${secondSawKillMs} ms (refresh every second)`);
  const r = await chat('support-assistant', 'user-1');
  assert.equal(r.fallback, 'kill_switch');
});

await step('the audit log page shows the change and its author at once', async () => {
  await page.goto(`${ADMIN}/#/audit`);
  await page.waitForSelector('#audit-table tbody tr');
  const first = await page.textContent('#audit-table tbody tr');
  assert.match(first, /ops/);
  assert.match(first, /set_enabled/);
  assert.match(first, /console test: kill/);
  await page.fill('#audit-actor', 'night-shift');
  await page.click('#audit-filters button[type=submit]');
  await until('the filtered (empty) page', async () => (await page.textContent('#audit-table tbody')).includes('Nothing yet'));
  await page.fill('#audit-actor', 'ops');
  await page.fill('#audit-action', 'set_enabled');
  await page.click('#audit-filters button[type=submit]');
  await until('the filtered page', async () => (await page.textContent('#audit-table tbody')).includes('set_enabled'));
  await axe(page, 'audit log');
});

await step('turn the flag on again, then force rule-based answers for one variation: the API answers rule-based', async () => {
  await page.goto(`${ADMIN}/#/flag/support-assistant`);
  await page.waitForSelector('#kill-switch:text("Turn on")');
  await page.click('#kill-switch');
  await page.fill('#confirm-reason', 'console test: back on');
  await page.click('#confirm-ok');
  await page.waitForSelector('#action-status .outcome.ok');
  await page.selectOption('#fallback-scope', 'treatment');
  await page.click('#force-fallback');
  assert.match(await page.textContent('#confirm-title'), /treatment/);
  await page.fill('#confirm-reason', 'console test: provider trouble');
  await page.click('#confirm-ok');
  await page.waitForSelector('#action-status .outcome.ok');
  await page.waitForSelector('#variation-table tr[data-variation="treatment"] .badge.warn');
  const state = await admin('GET', '/admin/flags/support-assistant');
  assert.equal(state.json.variations.find((v) => v.variation === 'treatment').forced_fallback, true);
  assert.equal(state.json.variations.find((v) => v.variation === 'control').forced_fallback, false);
  let treatment = null;
  let control = null;
  for (let u = 0; u < 200 && !(treatment && control); u += 1) {
    const r = await chat('support-assistant', `probe-${u}`);
    if (r.variation === 'treatment') treatment = r;
    if (r.variation === 'control') control = r;
  }
  assert.equal(treatment.fallback, 'forced');
  assert.match(treatment.body.choices[0].message.content, /Refunds are processed/);
  assert.equal(control.fallback, null);
  await page.waitForSelector('#overrides');
  assert.match(await page.textContent('#overrides'), /variations\.treatment\.force_fallback/);
});

await step('a refused advance shows the gate reasons', async () => {
  await page.goto(`${ADMIN}/#/flag/summarizer`);
  await page.waitForSelector('#rollout-advance');
  await page.waitForSelector('#flag-rollout table');
  await page.click('#rollout-advance');
  await page.fill('#confirm-reason', 'console test: try to advance');
  await page.click('#confirm-ok');
  await page.waitForSelector('#action-status .outcome.err');
  const text = await page.textContent('#action-status');
  assert.match(text, /Refused \(409\)/);
  assert.match(text, /the gate holds it 600s/);
  const ro = await admin('GET', '/admin/flags/summarizer/rollout');
  assert.equal(ro.json.rollouts[0].stage, 2, 'still at stage 2');
});

await step('force advance, roll back, set a stage, hold and release: each confirmed, each through the admin API', async () => {
  const stage = async () => (await admin('GET', '/admin/flags/summarizer/rollout')).json.rollouts[0];
  const confirm = async (button, reason) => {
    await page.evaluate(() => document.getElementById('action-status').replaceChildren());
    await page.click(button);
    await page.waitForSelector('#confirm[open]');
    await page.fill('#confirm-reason', reason);
    await page.click('#confirm-ok');
    await page.waitForSelector('#action-status .outcome.ok, #action-status .outcome.err');
    const text = await page.textContent('#action-status');
    assert.match(text, /by ops/, text);
  };
  await confirm('#rollout-force-advance', 'console test: approved by PM');
  assert.equal((await stage()).stage, 3);
  const audit = (await admin('GET', '/admin/audit?flag=summarizer&limit=1')).json.entries[0];
  assert.match(audit.reason, /forced past the gate: console test: approved by PM/);
  await confirm('#rollout-rollback', 'console test: roll back');
  assert.equal((await stage()).stage, 2);
  await until('the stage list to follow', async () => (await page.inputValue('#rollout-stage')) === '2');
  await page.selectOption('#rollout-stage', '1');
  await confirm('#rollout-set-stage', 'console test: set stage');
  assert.equal((await stage()).stage, 1);
  await confirm('#rollout-hold', 'console test: hold');
  assert.equal((await stage()).held, true);
  await page.waitForSelector('#rollout-hold:text("Release")');
  await confirm('#rollout-hold', 'console test: release');
  assert.equal((await stage()).held, false);
  await confirm('#rollout-force-advance', 'console test: back to stage 2');
  assert.equal((await stage()).stage, 2);
});

await step('XSS: a prompt holding <script> and <img onerror> is shown as text', async () => {
  await page.waitForSelector('#config-table pre.prompt');
  const texts = await page.$$eval('#config-table pre.prompt', (els) => els.map((e) => e.textContent));
  assert.ok(texts.includes(XSS), 'the prompt text is shown verbatim');
  assert.equal(await page.$$eval('#config-table pre.prompt *', (els) => els.length), 0, 'no element was made from it');
  assert.equal(await page.evaluate(() => window.__xss), undefined);
  assert.equal(await page.$$eval('img', (els) => els.length), 0);
  await axe(page, 'flag page');
});

await step('results page: the same figures as GET /admin/flags/{flag}/results', async () => {
  await page.goto(`${ADMIN}/#/results/support-assistant`);
  await page.waitForSelector('#results-table tbody tr[data-variation]');
  // Traffic keeps flowing (new users now and then): the page and the API agree once both
  // read the same moment, which polling the two finds.
  let api;
  let mismatch;
  await until('the page to show the figures of the API', async () => {
    api = (await admin('GET', '/admin/flags/support-assistant/results')).json;
    mismatch = null;
    for (const v of api.variations) {
      const cells = await page.$$eval(`#results-table tr[data-variation="${v.variation}"][data-metric="${v.metric}"] td`, (tds) => tds.map((td) => td.textContent));
      const want = [String(v.users), v.value === null ? '–' : v.value.toFixed(4), v.verdict.replace('_', ' ')];
      const got = [cells[1]?.replace(/,/g, ''), cells[2], cells[6]];
      if (JSON.stringify(want) !== JSON.stringify(got)) mismatch = `${v.variation}/${v.metric}: page ${got} API ${want}`;
    }
    return mismatch === null;
  }).catch((e) => { throw new Error(`${e.message}; ${mismatch}`); });
  assert.match(await page.textContent('#srm'), api.srm.detected ? /mismatch/ : /passed/);
  await page.screenshot({ path: path.join(ARTIFACTS, 'results-page.png'), fullPage: true });
  await axe(page, 'results page');
});

await step('flag page: the shipped bandit, its weights and an epoch run now (why, P(best), weights)', async () => {
  const path_ = '/admin/flags/support-assistant/bandit';
  const before = await admin('GET', path_);
  assert.equal(before.status, 200, JSON.stringify(before.json));
  assert.equal(before.json.status, 'running');
  const run = await admin('POST', `${path_}/epoch`, { reason: 'console test: one epoch now' });
  assert.equal(run.status, 200, JSON.stringify(run.json));
  const e = run.json;
  const state = (await admin('GET', path_)).json;
  assert.equal(state.epoch, e.epoch);
  await page.goto(`${ADMIN}/#/flag/support-assistant`);
  const epochRow = `#bandit-epochs tr[data-epoch="${e.epoch}"]`;
  await page.waitForSelector(epochRow);
  const share = (n) => `${(n / 100).toFixed(1)} %`;
  const summary = await page.textContent('#bandit-summary');
  assert.ok(summary.includes(state.status.replace('_', ' ')), `status ${state.status} in ${summary}`);
  assert.ok(summary.includes(`on “task_completed”`), summary);
  assert.ok(summary.includes(`rule “ab-2026-11”`), summary);
  assert.ok(summary.includes(`epoch ${state.epoch}`), summary);
  for (const [v, n] of Object.entries(state.weights)) assert.ok(summary.includes(`${v} ${share(n)}`), `${v} ${share(n)} in ${summary}`);
  const cells = await page.$$eval(`${epochRow} > *`, (cs) => cs.map((c) => c.textContent));
  assert.equal(cells[0], String(e.epoch));
  assert.equal(cells[2], e.why.replace(/_/g, ' '));
  for (const [v, p] of Object.entries(e.p_best)) assert.ok(cells[3].includes(`${v} ${p.toFixed(3)}`), `P(best) ${v} in ${cells[3]}`);
  for (const [v, n] of Object.entries(e.weights_after)) assert.ok(cells[4].includes(`${v} ${share(n)}`), `weight ${v} in ${cells[4]}`);
  await page.screenshot({ path: path.join(ARTIFACTS, 'flag-page-bandit.png'), fullPage: true });
  await axe(page, 'flag page with a bandit epoch');
});

await step('alerts page: current levels and history', async () => {
  await page.goto(`${ADMIN}/#/alerts`);
  await page.waitForSelector('#alerts-table tbody tr');
  assert.match(await page.textContent('#alerts-table'), /treatment-errors/);
  assert.match(await page.textContent('#alerts-table'), /bandit:support-assistant/);
  await axe(page, 'alerts page');
});

await step('decision explainer: the same answer as /v1/decide, with the reasons', async () => {
  await page.goto(`${ADMIN}/#/explain`);
  await page.waitForSelector('#explain-flag option[value="support-assistant"]', { state: 'attached' });
  await page.selectOption('#explain-flag', 'support-assistant');
  await page.fill('#explain-user', 'user-42');
  await page.fill('#explain-attrs', 'email=ana@acme.example');
  await page.click('#explain-form button[type=submit]');
  await page.waitForSelector('#explain-variation');
  const decide = await (await fetch(`${MAIN}/v1/decide?flag=support-assistant&user=user-42&attr.email=ana%40acme.example`)).json();
  assert.equal(await page.textContent('#explain-variation'), decide.variation);
  assert.match(await page.textContent('#explain-steps'), new RegExp(`rule \`${decide.rule}\`: bucket ${decide.bucket} of 10000`));
  await axe(page, 'explainer');
});

await step('config page: a bad file shows its validation errors; the old config keeps serving', async () => {
  await page.goto(`${ADMIN}/#/config`);
  await page.waitForSelector('#config-hash code');
  const hash = await page.textContent('#config-hash');
  fs.writeFileSync(configPath, `${config()}\n[flags.support-assistant.variations.control.bogus]\n`);
  await page.click('#reload');
  await page.fill('#confirm-reason', 'console test: bad file');
  await page.click('#confirm-ok');
  await page.waitForSelector('#reload-status .outcome.err');
  const text = await page.textContent('#reload-status');
  assert.match(text, /Refused \(422\)/);
  assert.match(text, /proxy\.toml/);
  assert.equal((await chat('summarizer', 'user-9')).status, 200, 'still serving');
  assert.equal(await page.textContent('#config-hash'), hash);
  await axe(page, 'config page');
});

await step('a revoked token sends the open page back to the login with a message', async () => {
  // The night-shift token leaves the file; the reload revokes it.
  fs.writeFileSync(configPath, config(false));
  const r = await admin('POST', '/admin/reload', { reason: 'revoke night-shift' });
  assert.equal(r.status, 200, JSON.stringify(r.json));
  await page2.waitForSelector('#login:not([hidden])', { timeout: 10000 });
  assert.match(await page2.textContent('#login-error'), /refused/);
  assert.equal(await page2.evaluate(() => sessionStorage.length), 0);
});

await step('a lost connection is shown and recovers by itself', async () => {
  await page.goto(`${ADMIN}/#/`);
  await page.waitForSelector('#flag-table');
  offline = true;
  await page.waitForSelector('#connection:not([hidden])', { timeout: 10000 });
  offline = false;
  await page.waitForSelector('#connection', { state: 'hidden', timeout: 10000 });
  await page.waitForSelector('#flag-table tr[data-flag="summarizer"]');
});

await step('phone: readable at 390 px wide, nothing wider than the screen', async () => {
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(`${ADMIN}/#/flag/support-assistant`);
  await page.waitForSelector('#variation-table tr[data-variation="control"]');
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 390, `page is ${width} px wide`);
  await page.screenshot({ path: path.join(ARTIFACTS, 'flag-page-phone.png'), fullPage: true });
  await axe(page, 'flag page on a phone');
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.goto(`${ADMIN}/#/`);
  await page.waitForSelector('#flag-table');
  await axe(page, 'flag list');
});

await step('no request left 127.0.0.1; no CSP violation; no page error', async () => {
  assert.ok(seen.length > 20);
  assert.deepEqual(blocked, []);
  assert.ok(seen.every((u) => new URL(u).hostname === '127.0.0.1'));
  assert.deepEqual(cspViolations, []);
  assert.deepEqual(pageErrors, []);
});

await step('responses carry the security headers', async () => {
  for (const p of ['/', '/console/app.js', '/admin/console/overview']) {
    const r = await fetch(`${ADMIN}${p}`, { headers: { authorization: `Bearer ${OPS}` } });
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-security-policy'), /script-src 'self'/);
    assert.doesNotMatch(r.headers.get('content-security-policy'), /unsafe-inline/);
    assert.match(r.headers.get('content-security-policy'), /frame-ancestors 'none'/);
    assert.equal(r.headers.get('x-content-type-options'), 'nosniff');
    assert.equal(r.headers.get('referrer-policy'), 'no-referrer');
    assert.equal(r.headers.get('x-frame-options'), 'DENY');
  }
});

traffic = false;
await loop;
await context.close();
server.kill('SIGTERM');
fs.rmSync(work, { recursive: true, force: true });
console.log(`\n${results.length - failures}/${results.length} console checks passed; ${sent} requests sent; second operator saw the kill switch after ${secondSawKillMs} ms; screenshots in ${ARTIFACTS}`);
fs.writeFileSync(path.join(ARTIFACTS, 'results.txt'), `${results.join('\n')}\n`);
process.exit(failures ? 1 : 0);
