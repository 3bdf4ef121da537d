// The admin listener on its own: what each page answers, and the errors for anything else.
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import type { Server } from 'node:http';
import { startAdmin } from '../../src/http/admin.ts';

let server: Server;
let base = '';

before(async () => {
  server = await startAdmin('127.0.0.1', 0, {
    ready: () => ({ ready: false, reason: 'cluster config is not loaded yet' }),
    metrics: async () => ({ contentType: 'text/plain', body: 'm 1\n' }),
    tunnels: () => [{ container_uuid: 'zzzzz-dz642-000000000000001' }],
    config: () => ({ listen: '127.0.0.1:0' }),
  });
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(() => server.close());

test('each page answers with its view', async () => {
  assert.deepEqual(await (await fetch(`${base}/healthz`)).json(), { health: 'OK' });
  const ready = await fetch(`${base}/readyz`);
  assert.equal(ready.status, 503);
  assert.equal((await ready.json()).reason, 'cluster config is not loaded yet');
  assert.equal(await (await fetch(`${base}/metrics`)).text(), 'm 1\n');
  assert.equal((await (await fetch(`${base}/debug/tunnels`)).json()).length, 1);
  assert.deepEqual(await (await fetch(`${base}/debug/config?x=1`)).json(),
    { listen: '127.0.0.1:0' });
});

test('an unknown page is a 404 that lists the pages there are', async () => {
  for (const path of ['/debug', '/debug/', '/nope']) {
    const res = await fetch(`${base}${path}`);
    assert.equal(res.status, 404, path);
    assert.deepEqual(await res.json(), { errors: [
      'not found; the admin pages are /healthz, /readyz, /metrics, /debug/tunnels, /debug/config',
    ] });
  }
});

test('only GET and HEAD are allowed', async () => {
  const res = await fetch(`${base}/healthz`, { method: 'POST' });
  assert.equal(res.status, 405);
  assert.equal(res.headers.get('allow'), 'GET, HEAD');
  assert.deepEqual(await res.json(), { errors: ['method not allowed'] });
});
