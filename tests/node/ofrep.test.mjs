// OFREP through the official OpenFeature server SDK for JavaScript and its OFREP provider,
// against the real binary: object, string and boolean evaluations, a killed flag, an unknown
// flag, a missing targeting key, ETag/304 on bulk, and the same variation a chat request gets.
//
// Run: node --test tests/node/ofrep.test.mjs (packages from target/node-ofrep, installed by
// tests/run-all.sh).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const require = createRequire(path.join(root, 'target', 'node-ofrep', 'package.json'));
const { OpenFeature, ErrorCode, StandardResolutionReasons } = require('@openfeature/server-sdk');
const { OFREPProvider } = require('@openfeature/ofrep-provider');

const ADMIN = 'node-admin-token';
const KEY = 'node-ofrep-key';
const CONFIG = `
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
reload_check_interval = "0s"

[admin]
tokens = [{ name = "ops", token_env = "NODE_TEST_ADMIN" }]

[ofrep]
tokens = [{ name = "app", token_env = "NODE_TEST_OFREP_KEY" }]

[state]
url = "sqlite::memory:"

[providers.mock]
kind = "mock"
latency = "0ms"

[flags.assistant]
off_variation = "control"

[flags.assistant.variations.control]
provider = "mock"
model_id = "small-1"
retrieval_profile = "keyword-v1"
variables = { show_sources = false }

[flags.assistant.variations.treatment]
provider = "mock"
model_id = "large-2"
temperature = 0.4
retrieval_profile = "semantic-v2"
variables = { show_sources = true }

[[flags.assistant.rules]]
id = "ab"
allocation = [{ variation = "control", end = 5000 }, { variation = "treatment", end = 10000 }]
`;

let proc;
let url;
let adminUrl;
let client;

before(async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'switchyard-node-'));
  const config = path.join(dir, 'proxy.toml');
  writeFileSync(config, CONFIG);
  const bin = path.resolve(root, process.env.SWITCHYARD_BIN || 'target/debug/switchyard');
  proc = spawn(bin, ['serve', '--config', config, '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0'], {
    cwd: dir,
    env: { ...process.env, NODE_TEST_ADMIN: ADMIN, NODE_TEST_OFREP_KEY: KEY },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const lines = readline.createInterface({ input: proc.stdout });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('switchyard did not announce its listeners within 30s')), 30_000);
    proc.on('exit', (code) => reject(new Error(`switchyard exited with ${code}`)));
    lines.on('line', (line) => {
      let m;
      if ((m = line.match(/^switchyard listening on (http:\/\/\S+)$/))) url = m[1];
      if ((m = line.match(/^switchyard admin listening on (http:\/\/\S+)$/))) adminUrl = m[1];
      if (url && adminUrl) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  await OpenFeature.setProviderAndWait(
    'switchyard',
    new OFREPProvider({ baseUrl: url, headers: [['Authorization', `Bearer ${KEY}`]] }),
  );
  client = OpenFeature.getClient('switchyard');
});

after(async () => {
  await OpenFeature.close();
  if (proc && proc.exitCode === null) {
    const exited = new Promise((resolve) => proc.on('exit', resolve));
    proc.kill('SIGTERM');
    await exited;
  }
});

async function chatVariation(user) {
  const r = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'assistant', user, messages: [{ role: 'user', content: 'hi' }] }),
  });
  assert.equal(r.status, 200);
  await r.text();
  return r.headers.get('x-switchyard-variation');
}

test('object, string and boolean evaluations match the chat request', async () => {
  const seen = new Set();
  for (let i = 0; i < 30; i++) {
    const ctx = { targetingKey: `node-user-${i}`, plan: 'pro' };
    const d = await client.getObjectDetails('assistant', {}, ctx);
    assert.equal(d.errorCode, undefined, d.errorMessage);
    assert.equal(d.reason, StandardResolutionReasons.SPLIT);
    assert.equal(d.flagMetadata.rule, 'ab');
    assert.equal(d.value.model_id, d.variant === 'treatment' ? 'large-2' : 'small-1');
    const profile = await client.getStringDetails('assistant.retrieval_profile', 'none', ctx);
    assert.equal(profile.value, d.value.retrieval_profile);
    assert.equal(profile.variant, d.variant);
    const show = await client.getBooleanValue('assistant.show_sources', false, ctx);
    assert.equal(show, d.variant === 'treatment');
    assert.equal(await chatVariation(ctx.targetingKey), d.variant);
    seen.add(d.variant);
  }
  assert.deepEqual([...seen].sort(), ['control', 'treatment']);
});

test('unknown flag and missing targeting key give the default with the error code', async () => {
  const unknown = await client.getObjectDetails('no-such-flag', { d: 1 }, { targetingKey: 'u' });
  assert.equal(unknown.errorCode, ErrorCode.FLAG_NOT_FOUND);
  assert.deepEqual(unknown.value, { d: 1 });
  const missing = await client.getStringDetails('assistant.model_id', 'dflt', { plan: 'pro' });
  assert.equal(missing.errorCode, ErrorCode.TARGETING_KEY_MISSING);
  assert.equal(missing.value, 'dflt');
});

test('a killed flag serves its off variation; bulk ETag answers 304 until something changes', async () => {
  const bulk = `${url}/ofrep/v1/evaluate/flags`;
  const headers = { 'content-type': 'application/json', authorization: `Bearer ${KEY}` };
  const body = JSON.stringify({ context: { targetingKey: 'node-etag' } });
  const first = await fetch(bulk, { method: 'POST', headers, body });
  assert.equal(first.status, 200);
  const etag = first.headers.get('etag');
  assert.ok(etag);
  await first.json();
  const again = await fetch(bulk, { method: 'POST', headers: { ...headers, 'if-none-match': etag }, body });
  assert.equal(again.status, 304);

  const kill = await fetch(`${adminUrl}/admin/flags/assistant/enabled`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN}` },
    body: JSON.stringify({ enabled: false }),
  });
  assert.equal(kill.status, 200);
  const killed = await client.getObjectDetails('assistant', {}, { targetingKey: 'node-etag' });
  assert.equal(killed.reason, StandardResolutionReasons.DISABLED);
  assert.equal(killed.variant, 'control');
  assert.equal(await chatVariation('node-etag'), 'control');
  const changed = await fetch(bulk, { method: 'POST', headers: { ...headers, 'if-none-match': etag }, body });
  assert.equal(changed.status, 200);
  assert.notEqual(changed.headers.get('etag'), etag);
  const flags = (await changed.json()).flags;
  assert.equal(flags.find((f) => f.key === 'assistant').reason, 'DISABLED');
});
