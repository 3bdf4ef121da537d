// The README's run command must keep working: run the demo as a user would.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { buildGo } from '../scripts/build-go.ts';

test('the demo runs end to end', async () => {
  await buildGo(['crunch-run', 'keep-web']);
  const main = fileURLToPath(new URL('../src/main.ts', import.meta.url));
  const { stdout } = await promisify(execFile)(process.execPath, [main, 'demo'],
    { timeout: 120_000 });
  assert.match(stdout, /container says: hello from /);
  assert.match(stdout, /live log through the tunnel: .* -> 200/);
  assert.match(stdout, /saved log from keep-web: .* -> 200\n(demo: .*\n)*demo: {3}finished/);
  assert.match(stdout, /^demo: done: /m);
});
