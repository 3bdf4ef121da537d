import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { Socket, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer as createTlsServer } from 'node:tls';
import { dialGateway } from '../../src/gateway/dial.ts';
import { connectUrl } from '../../src/http/connect.ts';
import { selfSigned } from '../faults/lib/wire.ts';

// Records which sockets had Nagle's algorithm turned off while fn ran.
async function noDelaySockets(fn: () => Promise<unknown>): Promise<Set<Socket>> {
  const original = Socket.prototype.setNoDelay;
  const seen = new Set<Socket>();
  Socket.prototype.setNoDelay = function (this: Socket, noDelay?: boolean) {
    if (noDelay !== false) seen.add(this);
    return original.call(this, noDelay);
  };
  try {
    await fn();
  } finally {
    Socket.prototype.setNoDelay = original;
  }
  return seen;
}

test('connections for interactive sessions send small writes at once (TCP_NODELAY)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dial-'));
  const pem = selfSigned(dir, 'gateway');
  rmSync(dir, { recursive: true });
  const gateway = createTlsServer(pem, (s) => s.on('error', () => {}));
  const plain = createServer((s) => s.on('error', () => {}));
  for (const server of [gateway, plain]) {
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
  }
  const portOf = (s: { address(): unknown }) => (s.address() as { port: number }).port;
  t.after(() => {
    gateway.close();
    plain.close();
  });

  let gatewaySocket: Socket | undefined;
  const direct = await noDelaySockets(async () => {
    const conn = await dialGateway({ kind: 'direct', host: '127.0.0.1', port: portOf(gateway) },
      'zzzzz-dz642-dialtest0000001', 'root-token', 5000);
    gatewaySocket = (conn.socket as unknown as { _parent: Socket })._parent;
    conn.socket.destroy();
  });
  assert.ok(gatewaySocket && direct.has(gatewaySocket), 'the TCP connection to a gateway');

  let peerSocket: Socket | undefined;
  const peer = await noDelaySockets(async () => {
    peerSocket = await connectUrl(new URL(`http://127.0.0.1:${portOf(plain)}/`),
      { rejectUnauthorized: true, timeoutMs: 5000 }) as Socket;
    peerSocket.destroy();
  });
  assert.ok(peerSocket && peer.has(peerSocket), 'the connection to a peer sidecar');
});
