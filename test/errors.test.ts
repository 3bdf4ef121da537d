import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer } from 'node:http';
import { request } from 'undici';
import { GatewayError, sendError } from '../src/errors.ts';

test('sendError answers even after a writeHead that threw on a bad status message', async () => {
  const server = createServer((_req, res) => {
    assert.throws(() => res.writeHead(200, 'O\x01K'), { code: 'ERR_INVALID_CHAR' });
    sendError(res, new GatewayError(502, 'gateway sent a malformed answer head'));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  try {
    const { port } = server.address() as { port: number };
    const res = await request(`http://127.0.0.1:${port}/`);
    assert.equal(res.statusCode, 502);
    assert.deepEqual(await res.body.json(), { errors: ['gateway sent a malformed answer head'] });
  } finally {
    server.close();
  }
});
