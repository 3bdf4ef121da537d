import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadSettings, parseHostPort } from '../src/settings.ts';

test('defaults load without any environment', () => {
  const s = loadSettings({});
  assert.equal(s.listen, '0.0.0.0:8443');
  assert.equal(s.allowLoopbackGateways, false);
  assert.equal(s.configMapKey, 'config.yml');
});

test('environment variables set values, with types', () => {
  const s = loadSettings({
    GATEWAY_LISTEN: '127.0.0.1:1234',
    GATEWAY_ALLOW_LOOPBACK_GATEWAYS: 'true',
    GATEWAY_API_TIMEOUT_MS: '1500',
  });
  assert.equal(s.listen, '127.0.0.1:1234');
  assert.equal(s.allowLoopbackGateways, true);
  assert.equal(s.apiTimeoutMs, 1500);
});

test('a bad value fails with the setting named', () => {
  assert.throws(() => loadSettings({ GATEWAY_LISTEN: 'nonsense' }), /listen/);
  assert.throws(() => loadSettings({ GATEWAY_CONTROLLER_URL: 'ftp://x' }), /controllerUrl/);
  assert.throws(() => loadSettings({ GATEWAY_CONFIGMAP: 'no-slash' }), /configMap/);
  assert.throws(() => loadSettings({ GATEWAY_ALLOWED_NETWORKS: '10.0.0.0/99' }),
    /gatewayNetworks/);
  assert.throws(() => loadSettings({ GATEWAY_TLS_CERT: '/x.pem' }), /GATEWAY_TLS_KEY/);
});

test('parseHostPort takes IPv4, names and bracketed IPv6', () => {
  assert.deepEqual(parseHostPort('10.1.2.3:443'), { host: '10.1.2.3', port: 443 });
  assert.deepEqual(parseHostPort('[::1]:22'), { host: '::1', port: 22 });
  assert.deepEqual(parseHostPort('worker-1:8080'), { host: 'worker-1', port: 8080 });
  assert.equal(parseHostPort('tunnel http://x'), undefined);
  assert.equal(parseHostPort(':80'), undefined);
  assert.equal(parseHostPort('x:70000'), undefined);
});

test('GATEWAY_TUNNEL_STREAM_WINDOW: 1 MiB by default, 256 KiB to 16 MiB, else refused by name',
  () => {
    assert.equal(loadSettings({}).tunnelStreamWindow, 1024 * 1024);
    assert.equal(loadSettings({ GATEWAY_TUNNEL_STREAM_WINDOW: '262144' }).tunnelStreamWindow,
      262144);
    assert.equal(loadSettings({ GATEWAY_TUNNEL_STREAM_WINDOW: '16777216' }).tunnelStreamWindow,
      16777216);
    for (const bad of ['262143', '16777217', '1MiB', '-1', '']) {
      assert.throws(() => loadSettings({ GATEWAY_TUNNEL_STREAM_WINDOW: bad }),
        /GATEWAY_TUNNEL_STREAM_WINDOW \(tunnelStreamWindow\): must be a whole number of bytes/,
        bad);
    }
  });

test('GATEWAY_TUNNEL_WINDOW_BUDGET: 64 MiB by default, 0 to 64 GiB, else refused by name', () => {
  assert.equal(loadSettings({}).tunnelWindowBudget, 64 * 1024 * 1024);
  assert.equal(loadSettings({ GATEWAY_TUNNEL_WINDOW_BUDGET: '0' }).tunnelWindowBudget, 0);
  assert.equal(loadSettings({ GATEWAY_TUNNEL_WINDOW_BUDGET: String(64 * 1024 ** 3) })
    .tunnelWindowBudget, 64 * 1024 ** 3);
  for (const bad of [String(64 * 1024 ** 3 + 1), '64MiB', '-1', '1.5', '']) {
    assert.throws(() => loadSettings({ GATEWAY_TUNNEL_WINDOW_BUDGET: bad }),
      /GATEWAY_TUNNEL_WINDOW_BUDGET \(tunnelWindowBudget\): must be a whole number of bytes/,
      bad);
  }
  // A number too large for a double to hold exactly is quoted as it was set, not rounded.
  assert.throws(() => loadSettings({ GATEWAY_TUNNEL_WINDOW_BUDGET: '9007199254740993' }),
    /value was "9007199254740993"/);
  assert.equal(loadSettings({ GATEWAY_MAX_TUNNELS: '9007199254740991' }).maxTunnels,
    Number.MAX_SAFE_INTEGER);
});
