// The sidecar follows its cluster config in a ConfigMap, through a fake Kubernetes API that
// speaks list and watch in the real wire format.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { LocalCluster } from '../../src/demo/cluster.ts';
import type { Sidecar } from '../../src/sidecar.ts';
import { FakeApiServer } from './fake-apiserver.ts';
import { waitFor } from '../lib/wait.ts';

const cluster = new LocalCluster();
let kube: FakeApiServer;
let sidecar: Sidecar;

const admin = async (path: string) => {
  const res = await fetch(`http://127.0.0.1:${sidecar.adminPort}${path}`);
  return { status: res.status, text: await res.text() };
};

before(async () => {
  await cluster.start();
  kube = await FakeApiServer.start({ namespace: 'arvados' });
  const kubeconfig = await kube.writeKubeconfig();
  sidecar = await cluster.startSidecar({ configMap: 'arvados/cluster-config', kubeconfig });
});

after(async () => {
  await cluster.stop();
  await kube.close();
});

test('not ready until the ConfigMap exists, then ready', async () => {
  assert.equal((await admin('/readyz')).status, 503);
  assert.match((await admin('/readyz')).text, /cluster config is not loaded/);
  kube.put('cluster-config', { 'config.yml': cluster.configText({}) });
  await waitFor(() => sidecar.ctx.config.current !== undefined, 15_000);
  assert.equal((await admin('/readyz')).status, 200);
});

test('edits apply without a restart: ShellAccess and the keep-web URL', async () => {
  kube.put('cluster-config', { 'config.yml': cluster.configText({
    shellAccess: { User: false }, webdavInternalUrls: ['http://keep-web.arvados.svc:9002'],
  }) });
  await waitFor(() => sidecar.ctx.config.current?.shellAccess.user === false);
  assert.deepEqual(sidecar.ctx.config.current?.webdavInternalUrls,
    ['http://keep-web.arvados.svc:9002']);
});

test('a malformed edit keeps the last good config, says so, and sets the metric', async () => {
  kube.put('cluster-config', { 'config.yml': 'Clusters: [broken' });
  await waitFor(() => sidecar.ctx.config.lastError !== '');
  assert.equal(sidecar.ctx.config.current?.shellAccess.user, false);
  const metrics = (await admin('/metrics')).text;
  assert.match(metrics, /^arvados_gateway_config_last_reload_successful 0$/m);
  assert.ok(cluster.logLines.some((l) => l.includes('cluster config refused')));
  assert.match((await admin('/debug/config')).text, /not valid YAML/);
});

test('a dropped watch and a 410 Gone are recovered from', async () => {
  kube.dropWatches({ abrupt: true });
  kube.put('cluster-config', { 'config.yml': cluster.configText({ shellAccess: { User: true } }) });
  await waitFor(() => sidecar.ctx.config.current?.shellAccess.user === true, 15_000);
  kube.expireWatches();
  kube.compact();
  kube.put('cluster-config',
      { 'config.yml': cluster.configText({ shellAccess: { Admin: false } }) });
  await waitFor(() => sidecar.ctx.config.current?.shellAccess.admin === false, 15_000);
});

test('a deleted ConfigMap leaves the last good config in force', async () => {
  kube.delete('cluster-config');
  await waitFor(() => cluster.logLines.some((l) => l.includes('ConfigMap was deleted')));
  assert.equal(sidecar.ctx.config.current?.shellAccess.admin, false);
  assert.equal((await admin('/readyz')).status, 200);
  const debug = JSON.parse((await admin('/debug/config')).text);
  assert.equal(debug.cluster.systemRootToken, '[redacted]');
  assert.ok(!(await admin('/debug/config')).text.includes(cluster.rootToken));
});
