// The official OpenAI SDK for JavaScript against the real binary: a 16 MB body is answered 413
// while it is still arriving; with `Connection: close` and the proxy's lingering read the SDK
// receives the status and the OpenAI error body, not a broken pipe.
//
// Run: node --test tests/node/openai_413.test.mjs (the `openai` package from target/node-ofrep,
// installed by tests/run-all.sh).

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
const OpenAI = require('openai');

const CONFIG = `
[server]
drain_delay = "0s"
[state]
url = "sqlite::memory:"
[providers.mock]
kind = "mock"
[flags.f]
off_variation = "a"
[flags.f.variations.a]
provider = "mock"
model_id = "m"
[[flags.f.rules]]
id = "r"
allocation = [{ variation = "a", end = 10000 }]
`;

let proxy;
let baseURL;

before(async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'switchyard-node-413-'));
  const config = path.join(dir, 'proxy.toml');
  writeFileSync(config, CONFIG);
  const bin = process.env.SWITCHYARD_BIN
    ? path.resolve(root, process.env.SWITCHYARD_BIN)
    : path.join(root, 'target', 'debug', 'switchyard');
  proxy = spawn(bin, ['serve', '--config', config, '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const lines = readline.createInterface({ input: proxy.stdout });
  baseURL = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('serve did not announce its listener')), 30000);
    lines.on('line', (line) => {
      const m = line.match(/^switchyard listening on (http:\/\/\S+)$/);
      if (m) {
        clearTimeout(timer);
        resolve(`${m[1]}/v1`);
      }
    });
  });
});

after(() => {
  proxy?.kill('SIGTERM');
});

test('a 16 MB body gives the SDK a 413 with its OpenAI error body', async () => {
  const client = new (OpenAI.default ?? OpenAI)({ baseURL, apiKey: 'unused', maxRetries: 0, timeout: 60000 });
  const big = 'x'.repeat(16 * 1024 * 1024);
  await assert.rejects(
    client.chat.completions.create({ model: 'f', user: 'u', messages: [{ role: 'user', content: big }] }),
    (err) => {
      assert.equal(err.status, 413, String(err));
      assert.equal(err.code, 'body_too_large', String(err));
      assert.equal(err.type, 'invalid_request_error');
      return true;
    },
  );
});
