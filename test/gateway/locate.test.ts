import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { GatewayLocator, INVALID_ENDPOINT, NOT_AVAILABLE, TUNNEL_DOWN } from
  '../../src/gateway/locate.ts';
import { TunnelRegistry } from '../../src/tunnel/registry.ts';

const UUID = 'zzzzz-dz642-0123456789abcde';

function locator(opts: { loopback?: boolean; peers?: string[]; held?: boolean } = {}) {
  const registry = new TunnelRegistry();
  if (opts.held) {
    const session = Object.assign(new EventEmitter(), { closed: false });
    registry.register({ containerUuid: UUID, session: session as never, remoteAddr: 'x',
      connectedAt: new Date() });
  }
  const warnings: string[] = [];
  const loc = new GatewayLocator({
    registry,
    ownUrl: () => 'http://10.0.0.1:8443/',
    isKnownPeer: async (url) => (opts.peers ?? []).includes(url.origin),
    allowLoopbackGateways: opts.loopback ?? false,
    allowedNetworks: '10.0.0.0/8',
    resolve: async (host) => (host === 'worker' ? ['10.9.9.9'] : ['169.254.169.254']),
  });
  const locate = (addr: string, noForward = false) =>
    loc.locate(UUID, addr, noForward, (msg) => warnings.push(msg));
  return { locate, warnings };
}

test('a direct address in the allowed networks is dialled directly, even with a tunnel', async () =>
    {
  const { locate } = locator({ held: true });
  assert.deepEqual(await locate('10.1.2.3:4567'), { kind: 'direct', host: '10.1.2.3', port: 4567 });
  assert.deepEqual(await locate('worker:1'), { kind: 'direct', host: '10.9.9.9', port: 1 });
});

test('addresses outside the allowed networks are refused without a dial', async () => {
  const { locate, warnings } = locator();
  await assert.rejects(locate('169.254.169.254:80'), { status: 503, message: /not in an allowed/ });
  await assert.rejects(locate('metadata:80'), { status: 503 });
  assert.equal(warnings.length, 2);
});

test('127.0.0.1 means tunnel-only unless single-host mode is on', async () => {
  await assert.rejects(locator().locate('127.0.0.1:1234'), { status: 503, message: TUNNEL_DOWN });
  assert.equal((await locator({ held: true }).locate('127.0.0.1:1234')).kind, 'tunnel');
  assert.equal((await locator({ loopback: true }).locate('127.0.0.1:1234')).kind, 'direct');
});

test('tunnel addresses: held here, forwarded to a known peer, or refused', async () => {
  assert.equal((await locator({ held: true }).locate('tunnel http://10.0.0.2:8443/')).kind,
    'tunnel');
  const withPeer = locator({ peers: ['http://10.0.0.2:8443'] });
  const peer = await withPeer.locate('tunnel http://10.0.0.2:8443/');
  assert.equal(peer.kind, 'peer');
  const { locate, warnings } = locator();
  await assert.rejects(locate('tunnel http://evil.example:80/'), { status: 503,
      message: INVALID_ENDPOINT });
  await assert.rejects(locate('tunnel file:///etc/passwd'), { message: INVALID_ENDPOINT });
  assert.equal(warnings.length, 2);
  await assert.rejects(locate('tunnel http://10.0.0.1:8443/'), { message: TUNNEL_DOWN });
  await assert.rejects(locator({ peers: ['http://10.0.0.2:8443'] })
    .locate('tunnel http://10.0.0.2:8443/', true), { message: TUNNEL_DOWN });
  await assert.rejects(locate(''), { status: 503, message: NOT_AVAILABLE });
});
