import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { LocalCluster, urlOf } from '../src/demo/cluster.ts';

const MAIN = fileURLToPath(new URL('../src/main.ts', import.meta.url));
const run = promisify(execFile);

test('tunnel-probe opens a tunnel and finds it in the holder\'s /debug/tunnels', async () => {
  const cluster = await new LocalCluster().start();
  try {
    const sidecar = await cluster.startSidecar();
    const args = [MAIN, 'tunnel-probe', '--url', urlOf(sidecar), '--uuid',
      'zzzzz-dz642-helmtestprobe01', '--admin-port', String(sidecar.adminPort)];
    const ok = await run(process.execPath, args,
      { env: { ...process.env, ARVADOS_SYSTEM_ROOT_TOKEN: cluster.rootToken } });
    assert.match(ok.stdout, /lists zzzzz-dz642-helmtestprobe01: ok/);
    await assert.rejects(run(process.execPath, args,
      { env: { ...process.env, ARVADOS_SYSTEM_ROOT_TOKEN: 'wrong' } }),
    (err: { code: number; stdout: string }) =>
      err.code === 1 && /tunnel refused: 401/.test(err.stdout));
  } finally {
    await cluster.stop();
  }
});
