import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ClusterConfigStore, parseClusterConfig, redactedClusterConfig } from
  '../../src/arvados/cluster-config.ts';

const GOOD = `
Clusters:
  zzzzz:
    SystemRootToken: secret-root-token
    Services:
      Controller:
        InternalURLs:
          "http://10.0.0.1:8003": {}
          "http://10.0.0.2:8003": {}
      WebDAV:
        InternalURLs:
          "http://keep-web:9002": {}
    Containers:
      ShellAccess:
        Admin: true
        User: false
    TLS:
      Insecure: true
`;

test('parses the fields the gateway uses', () => {
  const c = parseClusterConfig(GOOD);
  assert.equal(c.clusterId, 'zzzzz');
  assert.equal(c.systemRootToken, 'secret-root-token');
  assert.deepEqual(c.controllerInternalUrls, ['http://10.0.0.1:8003', 'http://10.0.0.2:8003']);
  assert.deepEqual(c.webdavInternalUrls, ['http://keep-web:9002']);
  assert.deepEqual(c.shellAccess, { admin: true, user: false });
  assert.equal(c.tlsInsecure, true);
});

test('Arvados defaults apply when sections are missing', () => {
  const c = parseClusterConfig('Clusters:\n  abcde:\n    SystemRootToken: t\n');
  assert.deepEqual(c.shellAccess, { admin: true, user: true });
  assert.equal(c.tlsInsecure, false);
  assert.deepEqual(c.webdavInternalUrls, []);
});

test('errors name what is wrong', () => {
  assert.throws(() => parseClusterConfig('{'), /not valid YAML/);
  assert.throws(() => parseClusterConfig('a: 1'), /no Clusters/);
  assert.throws(() => parseClusterConfig('Clusters:\n  a1: {}\n  b2: {}\n'), /ARVADOS_CLUSTER_ID/);
  assert.throws(() => parseClusterConfig(GOOD.replace('User: false', 'User: maybe')),
    /ShellAccess.User/);
  assert.equal(parseClusterConfig('Clusters:\n  a1: {}\n  b2: {}\n', 'b2').clusterId, 'b2');
});

test('the store keeps the last good config when an update is broken', () => {
  const store = new ClusterConfigStore();
  const changes: string[] = [];
  const rejected: string[] = [];
  store.on('change', (_c, source) => changes.push(source));
  store.on('rejected', (err: Error) => rejected.push(err.message));
  assert.equal(store.update(GOOD, 'one'), undefined);
  assert.ok(store.update('Clusters: [', 'two') instanceof Error);
  assert.equal(store.current?.systemRootToken, 'secret-root-token');
  assert.deepEqual(changes, ['one']);
  assert.equal(rejected.length, 1);
  assert.match(store.lastError, /YAML/);
  assert.equal(store.update(GOOD, 'three'), undefined);
  assert.equal(store.lastError, '');
});

test('a token file overrides the config, and an empty token is refused', () => {
  const store = new ClusterConfigStore();
  assert.match(String(store.update('Clusters:\n  abcde: {}\n', 'x')), /SystemRootToken is empty/);
  store.setRootTokenOverride('from-secret\n');
  assert.equal(store.update('Clusters:\n  abcde: {}\n', 'y'), undefined);
  assert.equal(store.current?.systemRootToken, 'from-secret');
  assert.equal(redactedClusterConfig(store.current!).systemRootToken, '[redacted]');
});
