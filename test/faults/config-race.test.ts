// A cluster config edit that lands right after the sidecar read its config file must still be
// loaded. The file watcher takes its first look at the file a moment after that first read; an
// edit in between once went unseen until the next edit, which may never come. One watcher hits
// that moment only some of the time, so twenty start at once and every one must load the edit.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ClusterConfigStore } from '../../src/arvados/cluster-config.ts';
import { watchConfigFile } from '../../src/arvados/config-file.ts';
import { LocalCluster } from '../../src/demo/cluster.ts';
import { createLogger } from '../../src/log.ts';
import { waitFor } from './lib/wire.ts';

const WATCHERS = 20;
const dir = mkdtempSync(join(tmpdir(), 'config-race-'));
const stoppers: (() => void)[] = [];

after(() => {
  for (const stop of stoppers) stop();
  rmSync(dir, { recursive: true, force: true });
});

test(`an edit right after the first read is loaded (${WATCHERS} watchers)`, async () => {
  // LocalCluster renders the config text; its fake API is never started.
  const cluster = new LocalCluster();
  const urls = ['http://127.0.0.2:9001/', 'http://127.0.0.2:9002/'];
  const log = createLogger('silent');
  const stores = Array.from({ length: WATCHERS }, (_, i) => {
    const path = join(dir, `config-${i}.yml`);
    writeFileSync(path, cluster.configText({}));
    const store = new ClusterConfigStore();
    stoppers.push(watchConfigFile(path, store, log));
    // At once, as a ConfigMap update can land just after a pod started.
    writeFileSync(path, cluster.configText({ controllerInternalUrls: urls }));
    return store;
  });
  rmSync(cluster.dir, { recursive: true, force: true });
  assert.ok(stores.every((s) => s.current !== undefined), 'the first read failed');
  await waitFor(() => stores.every((s) => s.current?.controllerInternalUrls.length === 2), 8000,
    'every watcher to load the edit');
});
