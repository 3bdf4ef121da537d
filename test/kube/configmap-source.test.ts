import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import { ConfigMapSource, type ConfigMapSourceError } from '../../src/kube/configmap-source.ts';
import { createLogger } from '../../src/log.ts';
import { FakeApiServer, type FakeApiServerOptions } from './fake-apiserver.ts';

const NS = 'arvados';
const NAME = 'arvados-config';
const KEY = 'config.yml';
const WAIT_MS = 15_000;

type Seen =
  | { event: 'config'; text: string; rv: string }
  | { event: 'deleted' }
  | { event: 'watch-error'; statusCode: number | undefined; message: string };

interface Harness {
  fake: FakeApiServer;
  source: ConfigMapSource;
  seen: Seen[];
  logs: string[];
  configs: () => string[];
  errors: () => Array<number | undefined>;
  lists: () => number;
  watches: () => number;
  waitFor: (what: string, cond: () => boolean) => Promise<void>;
}

async function setup(
  t: TestContext,
  opts: {
    fake?: FakeApiServerOptions;
    initial?: Record<string, string> | null;
    token?: string;
    listTimeoutMs?: number;
    beforeStart?: (fake: FakeApiServer) => void;
    start?: boolean;
  } = {},
): Promise<Harness> {
  const fake = await FakeApiServer.start({ namespace: NS, ...opts.fake });
  if (opts.initial !== null) fake.put(NAME, opts.initial ?? { [KEY]: 'v: 1\n' });
  const kubeconfigPath =
    await fake.writeKubeconfig({ token: opts.token, insecure: !opts.fake?.tls });
  const logs: string[] = [];
  const logger = createLogger('debug', { write: (line: string) => { logs.push(line); } });
  const source = new ConfigMapSource({
    namespace: NS,
    name: NAME,
    key: KEY,
    kubeconfigPath,
    backoffInitialMs: 10,
    backoffMaxMs: 40,
    listTimeoutMs: opts.listTimeoutMs,
    logger,
  });
  const seen: Seen[] = [];
  source.on('config', (text, rv) => seen.push({ event: 'config', text, rv }));
  source.on('deleted', () => seen.push({ event: 'deleted' }));
  source.on('watch-error', (err: ConfigMapSourceError) =>
    seen.push({ event: 'watch-error', statusCode: err.statusCode, message: err.message }));
  t.after(async () => {
    source.stop();
    await fake.close();
    // Whatever happened, the bearer token must never reach the logs.
    for (const line of logs) assert.ok(!line.includes(fake.token), `token logged: ${line}`);
  });
  const h: Harness = {
    fake,
    source,
    seen,
    logs,
    configs: () => seen.flatMap((s) => (s.event === 'config' ? [s.text] : [])),
    errors: () => seen.flatMap((s) => (s.event === 'watch-error' ? [s.statusCode] : [])),
    lists: () => fake.requests.filter((r) => r.query.get('watch') === null &&
      r.path === `/api/v1/namespaces/${NS}/configmaps`).length,
    watches: () => fake.requests.filter((r) => r.query.get('watch') === 'true').length,
    waitFor: async (what, cond) => {
      const deadline = Date.now() + WAIT_MS;
      while (!cond()) {
        if (Date.now() > deadline) {
          assert.fail(`timed out waiting for ${what}; seen ${JSON.stringify(seen)}`);
        }
        await new Promise((r) => setTimeout(r, 5));
      }
    },
  };
  opts.beforeStart?.(fake);
  if (opts.start !== false) {
    await source.start();
  }
  return h;
}

// The backoff delays the source chose, from its debug log.
function delays(h: Harness): number[] {
  return h.logs
    .map((l) => JSON.parse(l) as { msg?: string; delayMs?: number })
    .filter((l) => l.msg === 'retrying after backoff')
    .map((l) => l.delayMs ?? -1);
}

// Waits until the source has an open watch, so that the next change travels through it.
async function watching(h: Harness): Promise<void> {
  await h.waitFor('an open watch', () => h.fake.watchCount === 1);
}

describe('ConfigMapSource', () => {
  it('emits the key from the initial list and watches from the list resourceVersion', async (t) => {
    const h = await setup(t);
    // start() resolves with the initial config already emitted.
    assert.deepEqual(h.seen, [{ event: 'config', text: 'v: 1\n', rv: '2' }]);
    await watching(h);
    const list = h.fake.requests.find((r) => r.query.get('watch') === null &&
      r.path.endsWith('/configmaps'));
    assert.equal(list?.path, `/api/v1/namespaces/${NS}/configmaps`);
    assert.equal(list?.query.get('fieldSelector'), `metadata.name=${NAME}`);
    const watch = h.fake.requests.find((r) => r.query.get('watch') === 'true');
    assert.equal(watch?.query.get('fieldSelector'), `metadata.name=${NAME}`);
    assert.equal(watch?.query.get('resourceVersion'), '2');
    assert.equal(watch?.query.get('allowWatchBookmarks'), 'true');
    assert.equal(h.source.resourceVersion, '2');
  });

  it('emits each edit, and nothing for an edit that leaves the key unchanged', async (t) => {
    const h = await setup(t);
    await watching(h);
    h.fake.put(NAME, { [KEY]: 'v: 2\n' });
    h.fake.put(NAME, { [KEY]: 'v: 2\n', other: 'x' });
    h.fake.put('another-configmap', { [KEY]: 'not ours\n' });
    h.fake.put(NAME, { [KEY]: 'v: 3\n' });
    await h.waitFor('v: 3', () => h.configs().includes('v: 3\n'));
    assert.deepEqual(h.seen, [
      { event: 'config', text: 'v: 1\n', rv: '2' },
      { event: 'config', text: 'v: 2\n', rv: '3' },
      { event: 'config', text: 'v: 3\n', rv: '6' },
    ]);
    assert.equal(h.lists(), 1);
  });

  it('advances its resourceVersion on a bookmark without emitting', async (t) => {
    const h = await setup(t);
    await watching(h);
    // Changes to other objects move the server's resourceVersion past everything the
    // filtered watch delivers; only the bookmark tells the source about it.
    h.fake.put('another-configmap', { a: '1' });
    h.fake.put('another-configmap', { a: '2' });
    h.fake.bookmark();
    await h.waitFor('the bookmark', () => h.source.resourceVersion === h.fake.resourceVersion);
    assert.equal(h.source.resourceVersion, '4');
    // Compacting up to the bookmark's version must not force a relist: the source resumes
    // from the bookmark, which the server still has history for.
    h.fake.compact();
    h.fake.dropWatches();
    h.fake.put(NAME, { [KEY]: 'v: 2\n' });
    await h.waitFor('v: 2', () => h.configs().includes('v: 2\n'));
    assert.deepEqual(h.configs(), ['v: 1\n', 'v: 2\n']);
    assert.equal(h.lists(), 1);
    assert.deepEqual(h.errors(), []);
  });

  for (const abrupt of [false, true]) {
    it(`reconnects after a ${abrupt ? 'reset' : 'closed'} watch and catches up`, async (t) => {
      const h = await setup(t);
      await watching(h);
      h.fake.dropWatches({ abrupt });
      // Made while no watch is open: the source must replay them from its resourceVersion.
      h.fake.put(NAME, { [KEY]: 'v: 2\n' });
      h.fake.put(NAME, { [KEY]: 'v: 3\n' });
      await h.waitFor('v: 3', () => h.configs().includes('v: 3\n'));
      assert.deepEqual(h.configs(), ['v: 1\n', 'v: 2\n', 'v: 3\n']);
      assert.equal(h.lists(), 1);
      assert.ok(h.watches() >= 2);
      const resumed = h.fake.requests.filter((r) => r.query.get('watch') === 'true')[1];
      assert.equal(resumed.query.get('resourceVersion'), '2');
      await watching(h);
      h.fake.put(NAME, { [KEY]: 'v: 4\n' });
      await h.waitFor('v: 4', () => h.configs().includes('v: 4\n'));
    });
  }

  it('relists when its resourceVersion is too old to watch from (410 ERROR event)', async (t) => {
    const h = await setup(t);
    await watching(h);
    h.fake.dropWatches({ abrupt: true });
    h.fake.put(NAME, { [KEY]: 'v: 2\n' });
    h.fake.compact();
    await h.waitFor('v: 2', () => h.configs().includes('v: 2\n'));
    assert.deepEqual(h.configs(), ['v: 1\n', 'v: 2\n']);
    assert.equal(h.lists(), 2);
    assert.ok(h.errors().includes(410));
    await watching(h);
    h.fake.put(NAME, { [KEY]: 'v: 3\n' });
    await h.waitFor('v: 3', () => h.configs().includes('v: 3\n'));
  });

  it('relists on an HTTP 410 answer to the watch', async (t) => {
    const h = await setup(t, { fake: { expiredAsHttpStatus: true } });
    await watching(h);
    h.fake.dropWatches({ abrupt: true });
    h.fake.put(NAME, { [KEY]: 'v: 2\n' });
    h.fake.compact();
    await h.waitFor('v: 2', () => h.configs().includes('v: 2\n'));
    assert.equal(h.lists(), 2);
    assert.ok(h.fake.requests.some((r) => r.status === 410));
  });

  it('relists when an open watch gets a 410 ERROR event, without re-emitting', async (t) => {
    const h = await setup(t);
    await watching(h);
    h.fake.compact();
    h.fake.expireWatches();
    await h.waitFor('a relist', () => h.lists() === 2);
    await watching(h);
    h.fake.put(NAME, { [KEY]: 'v: 2\n' });
    await h.waitFor('v: 2', () => h.configs().includes('v: 2\n'));
    assert.deepEqual(h.configs(), ['v: 1\n', 'v: 2\n']);
  });

  it('emits deleted, and the config again when the ConfigMap is re-created', async (t) => {
    const h = await setup(t);
    await watching(h);
    h.fake.delete(NAME);
    await h.waitFor('deleted', () => h.seen.some((s) => s.event === 'deleted'));
    h.fake.put(NAME, { [KEY]: 'v: 1\n' });
    await h.waitFor('re-created', () => h.configs().length === 2);
    assert.deepEqual(h.seen.map((s) => s.event), ['config', 'deleted', 'config']);
  });

  it('notices a deletion that happened while it had to relist', async (t) => {
    const h = await setup(t);
    await watching(h);
    h.fake.dropWatches({ abrupt: true });
    h.fake.delete(NAME);
    h.fake.compact();
    await h.waitFor('deleted', () => h.seen.some((s) => s.event === 'deleted'));
    assert.equal(h.lists(), 2);
  });

  it('waits for a ConfigMap that does not exist yet', async (t) => {
    const h = await setup(t, { initial: null });
    assert.deepEqual(h.seen, []);
    await watching(h);
    h.fake.put(NAME, { [KEY]: 'v: 1\n' });
    await h.waitFor('created', () => h.configs().length === 1);
    assert.ok(h.logs.some((l) => l.includes('configmap not found')));
  });

  it('keeps the last config when the key goes missing', async (t) => {
    const h = await setup(t);
    await watching(h);
    h.fake.put(NAME, { 'wrong-key': 'x' });
    h.fake.put(NAME, { 'wrong-key': 'y' });
    h.fake.put(NAME, { [KEY]: 'v: 1\n' });
    h.fake.put(NAME, { [KEY]: 'v: 2\n' });
    await h.waitFor('v: 2', () => h.configs().includes('v: 2\n'));
    // The missing key is no change of config, so v: 1 coming back is not re-announced.
    assert.deepEqual(h.configs(), ['v: 1\n', 'v: 2\n']);
    const errors = h.logs.filter((l) => l.includes('configmap has no such key'));
    assert.equal(errors.length, 2);
    assert.match(errors[0], /"level":"error"/);
  });

  it('backs off while the server fails and recovers when it heals', async (t) => {
    const h = await setup(t);
    await watching(h);
    h.fake.fail(500);
    h.fake.dropWatches({ abrupt: true });
    await h.waitFor('five failed attempts', () => h.errors().filter((c) => c === 500).length >= 5);
    h.fake.put(NAME, { [KEY]: 'v: 2\n' });
    h.fake.heal();
    await h.waitFor('v: 2', () => h.configs().includes('v: 2\n'));
    assert.deepEqual(h.configs(), ['v: 1\n', 'v: 2\n']);
    assert.ok(h.logs.some((l) => l.includes('HTTP 500')));

    // Each delay is drawn from [ceiling/2, ceiling], the ceiling doubling from 10 ms up to
    // the 40 ms cap.
    const failing = delays(h);
    assert.ok(failing.length >= 5, JSON.stringify(failing));
    failing.slice(0, 5).forEach((d, i) => {
      const ceiling = Math.min(40, 10 * 2 ** i);
      assert.ok(d >= ceiling / 2 && d <= ceiling, `delay ${i} was ${d}, ceiling ${ceiling}`);
    });

    // A healthy watch resets the backoff: the next reconnect starts from the first ceiling.
    await watching(h);
    h.fake.put(NAME, { [KEY]: 'v: 3\n' });
    await h.waitFor('v: 3', () => h.configs().includes('v: 3\n'));
    const before = delays(h).length;
    h.fake.dropWatches();
    await h.waitFor('a reconnect', () => delays(h).length > before);
    assert.ok(delays(h)[before] <= 10, JSON.stringify(delays(h)));
  });

  it('starts against a failing server and syncs once it heals', async (t) => {
    const h = await setup(t, { beforeStart: (fake) => fake.fail(503) });
    assert.deepEqual(h.configs(), []);
    assert.deepEqual(h.errors(), [503]);
    h.fake.heal();
    await h.waitFor('the initial config', () => h.configs().length === 1);
    assert.equal(h.lists(), 2);
  });

  it('reports a rejected token without logging it', async (t) => {
    const h = await setup(t, { token: 'wrong-secret-token' });
    assert.deepEqual(h.errors(), [401]);
    assert.ok(h.logs.length > 0);
    for (const line of h.logs) assert.ok(!line.includes('wrong-secret-token'), line);
  });

  it('bounds a list the server never answers', async (t) => {
    const h = await setup(t, { listTimeoutMs: 200, beforeStart: (fake) => fake.stall() });
    assert.equal(h.errors().length, 1);
    assert.deepEqual(h.configs(), []);
    h.fake.stall(false);
    await h.waitFor('the initial config', () => h.configs().length === 1);
  });

  it('stop() ends a pending start and the watch, and nothing is emitted after it', async (t) => {
    const h = await setup(t, { start: false, beforeStart: (fake) => fake.stall() });
    const started = h.source.start();
    await h.waitFor('the held list', () => h.fake.heldRequests === 1);
    h.source.stop();
    await started;
    h.fake.stall(false);
    assert.deepEqual(h.seen, []);

    const h2 = await setup(t);
    await watching(h2);
    h2.source.stop();
    await h2.waitFor('the watch to close', () => h2.fake.watchCount === 0);
    const requests = h2.fake.requests.length;
    h2.fake.put(NAME, { [KEY]: 'v: 2\n' });
    h2.fake.dropWatches();
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(h2.fake.requests.length, requests);
    assert.deepEqual(h2.configs(), ['v: 1\n']);
  });

  it('survives a listener that throws', async (t) => {
    const h = await setup(t);
    await watching(h);
    h.source.on('config', () => {
      throw new Error('listener bug');
    });
    h.fake.put(NAME, { [KEY]: 'v: 2\n' });
    h.fake.put(NAME, { [KEY]: 'v: 3\n' });
    await h.waitFor('v: 3', () => h.configs().includes('v: 3\n'));
    assert.ok(h.logs.some((l) => l.includes('listener bug')));
    assert.equal(h.watches(), 1);
  });

  it('works over TLS with the server certificate as the CA', async (t) => {
    const h = await setup(t, { fake: { tls: true } });
    assert.deepEqual(h.configs(), ['v: 1\n']);
    await watching(h);
    h.fake.put(NAME, { [KEY]: 'v: 2\n' });
    await h.waitFor('v: 2', () => h.configs().includes('v: 2\n'));
  });
});
