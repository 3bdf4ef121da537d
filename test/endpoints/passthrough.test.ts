import { test } from 'node:test';
import assert from 'node:assert/strict';
import { controllerTarget } from '../../src/endpoints/passthrough.ts';

const base = new URL('http://127.0.0.1:8003');

test('targets keep their path and query and always go to the controller', () => {
  assert.equal(controllerTarget('/arvados/v1/users/current?x=1', base)?.href,
    'http://127.0.0.1:8003/arvados/v1/users/current?x=1');
  assert.equal(controllerTarget('http://elsewhere:9/arvados/v1/x?y', base)?.href,
    'http://127.0.0.1:8003/arvados/v1/x?y');
  assert.equal(controllerTarget('/a/%2e%2e/b', base)?.origin, base.origin);
});

test('targets that would pick another host are refused', () => {
  for (const bad of ['//169.254.169.254/latest', '/\\\\127.0.0.1:9/x', '\\\\h/x', '*',
    'h:9/x', '', 'http://[bad/']) {
    assert.equal(controllerTarget(bad, base), undefined, bad);
  }
});

test('through the front door: no request target reaches another host', async () => {
  const { LocalCluster } = await import('../../src/demo/cluster.ts');
  const { createServer, connect } = await import('node:net');
  let reached = 0;
  const trap = createServer((s) => { reached++; s.destroy(); });
  await new Promise<void>((r) => trap.listen(0, '127.0.0.1', r));
  const port = (trap.address() as { port: number }).port;
  const cluster = await new LocalCluster().start();
  try {
    const sidecar = await cluster.startSidecar();
    for (const target of [`//127.0.0.1:${port}/x`, `http://127.0.0.1:${port}/x`,
      `/\\127.0.0.1:${port}/x`]) {
      const socket = connect(sidecar.frontPort, '127.0.0.1');
      socket.write(`GET ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
      let answer = '';
      for await (const chunk of socket) answer += chunk;
      // Absolute form is allowed but goes to the controller (the fake API: 404 there).
      assert.match(answer, /^HTTP\/1\.1 (400|404) /, target);
    }
    assert.equal(reached, 0);
  } finally {
    trap.close();
    await cluster.stop();
  }
});
