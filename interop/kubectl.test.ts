// Checks the fake Kubernetes API server against a real client, kubectl 1.34, and that kubectl
// and the sidecar's ConfigMapSource see the same sequence of changes. If kubectl accepts the
// fake's discovery, list, watch, Table and Status documents, the fake's wire format is real
// enough for the ConfigMapSource tests that rely on it.
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, it, type TestContext } from 'node:test';
import { promisify } from 'node:util';
import { InstallError, installKubectl } from '../scripts/install-kubectl.ts';
import { ConfigMapSource } from '../src/kube/configmap-source.ts';
import { createLogger } from '../src/log.ts';
import { FakeApiServer } from '../test/kube/fake-apiserver.ts';

const run = promisify(execFile);

const NS = 'arvados';
const NAME = 'arvados-config';
const KEY = 'config.yml';
const WAIT_MS = 30_000;

// Installing needs the npm registry; only its absence is a reason to skip.
const installed = await installKubectl().catch((err: unknown) => {
  if (err instanceof InstallError && err.offline) return err;
  throw err;
});
const skip = installed instanceof InstallError
  ? `kubectl could not be installed (npm registry unreachable): ${installed.message}`
  : false;
const KUBECTL = installed instanceof InstallError ? '' : installed.kubectl;

interface WatchEvent {
  type: string;
  object: {
    kind?: string;
    code?: number;
    reason?: string;
    metadata?: { name?: string; resourceVersion?: string };
    data?: Record<string, string>;
  };
}

type SourceEvent = { event: 'config'; text: string; rv: string } | { event: 'deleted' };

async function waitFor(what: string, cond: () => boolean, detail: () => unknown): Promise<void> {
  const deadline = Date.now() + WAIT_MS;
  while (!cond()) {
    if (Date.now() > deadline) {
      assert.fail(`timed out waiting for ${what}: ${JSON.stringify(detail())}`);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('kubectl against the fake API server', { skip }, () => {
  let fake: FakeApiServer;
  let home: string;
  let kubeconfig: string;

  before(async () => {
    fake = await FakeApiServer.start({ namespace: NS, tls: true });
    home = await mkdtemp(join(tmpdir(), 'kubectl-home-'));
    // Verified TLS: the fake's self-signed certificate is the CA.
    kubeconfig = await fake.writeKubeconfig({ insecure: false, path: join(home, 'kubeconfig') });
  });

  after(async () => {
    await fake?.close();
    if (home) await rm(home, { recursive: true, force: true });
  });

  function args(...rest: string[]): string[] {
    return ['--kubeconfig', kubeconfig, '--cache-dir', join(home, 'cache'), ...rest];
  }

  const env = (): NodeJS.ProcessEnv => ({ PATH: process.env.PATH, HOME: home });

  // Starts `kubectl get --watch` and collects the events it prints, one JSON document a line.
  function watchWithKubectl(t: TestContext) {
    const child: ChildProcess = spawn(
      KUBECTL,
      args('get', 'configmap', NAME, '-n', NS, '--watch', '-o', 'json', '--output-watch-events'),
      { env: env(), stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const events: WatchEvent[] = [];
    let stderr = '';
    let exitCode: number | null | undefined;
    child.stderr?.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    createInterface({ input: child.stdout! }).on('line', (line) => {
      if (line.trim() !== '') events.push(JSON.parse(line) as WatchEvent);
    });
    const exited = new Promise<void>((resolve) => {
      child.on('exit', (code) => {
        exitCode = code;
        resolve();
      });
    });
    t.after(async () => {
      if (exitCode === undefined) child.kill();
      await exited;
    });
    return {
      events,
      stderr: () => stderr,
      exited,
      exitCode: () => exitCode,
      waitForEvents: (n: number) =>
        waitFor(`${n} kubectl events`, () => events.length >= n, () => ({ events, stderr })),
    };
  }

  it('prints the same changes the ConfigMapSource emits', async (t) => {
    fake.put(NAME, { [KEY]: 'v: 1\n' });
    const kubectl = watchWithKubectl(t);

    const logger = createLogger('silent');
    const source = new ConfigMapSource({
      namespace: NS, name: NAME, key: KEY, kubeconfigPath: kubeconfig, logger,
      backoffInitialMs: 10, backoffMaxMs: 40,
    });
    const seen: SourceEvent[] = [];
    source.on('config', (text, rv) => seen.push({ event: 'config', text, rv }));
    source.on('deleted', () => seen.push({ event: 'deleted' }));
    t.after(() => source.stop());
    await source.start();

    await kubectl.waitForEvents(1);
    await waitFor('the source watch', () => fake.watchCount === 2, () => fake.watchCount);

    const steps: Array<() => void> = [
      () => fake.put(NAME, { [KEY]: 'v: 2\n' }),
      () => fake.put(NAME, { [KEY]: 'v: 2\n', unrelated: 'x' }),
      () => fake.delete(NAME),
      () => fake.put(NAME, { [KEY]: 'v: 3\n' }),
    ];
    for (const [i, step] of steps.entries()) {
      step();
      fake.bookmark();
      await kubectl.waitForEvents(i + 2);
    }
    await waitFor('the source to catch up', () => seen.length >= 4, () => seen);

    const types = kubectl.events.map((e) => e.type);
    assert.deepEqual(types, ['ADDED', 'MODIFIED', 'MODIFIED', 'DELETED', 'ADDED']);
    for (const e of kubectl.events) assert.equal(e.object.metadata?.name, NAME);

    // What the source should have made of kubectl's view: a config event whenever the key's
    // text changed, 'deleted' on deletion, with the object's resourceVersion.
    const expected: SourceEvent[] = [];
    let last: string | undefined;
    for (const e of kubectl.events) {
      if (e.type === 'DELETED') {
        expected.push({ event: 'deleted' });
        last = undefined;
        continue;
      }
      const text = e.object.data?.[KEY];
      if (text !== undefined && text !== last) {
        expected.push({ event: 'config', text, rv: e.object.metadata?.resourceVersion ?? '' });
        last = text;
      }
    }
    assert.deepEqual(seen, expected);
    assert.deepEqual(seen.map((s) => (s.event === 'config' ? s.text : 'deleted')),
      ['v: 1\n', 'v: 2\n', 'deleted', 'v: 3\n']);

    // kubectl ends when its watch does, which shows it saw a well-formed end of stream.
    source.stop();
    fake.dropWatches();
    await kubectl.exited;
    assert.equal(kubectl.exitCode(), 0, kubectl.stderr());
  });

  it('decodes the 410 Expired Status of a compacted watch', async (t) => {
    fake.put(NAME, { [KEY]: 'v: 4\n' });
    const kubectl = watchWithKubectl(t);
    await kubectl.waitForEvents(1);
    await waitFor('the kubectl watch', () => fake.watchCount === 1, () => fake.watchCount);
    fake.compact();
    fake.expireWatches();
    await kubectl.waitForEvents(2);
    const err = kubectl.events[1];
    assert.equal(err.type, 'ERROR');
    assert.equal(err.object.kind, 'Status');
    assert.equal(err.object.code, 410);
    assert.equal(err.object.reason, 'Expired');
    await kubectl.exited;
  });

  it('reads the list and the Table form', async () => {
    fake.put(NAME, { [KEY]: 'v: 5\n', second: 'y' });
    fake.put('other', { a: '1' }, 'elsewhere');
    const list = await run(KUBECTL, args('get', 'configmaps', '-n', NS, '-o', 'json'),
      { env: env(), timeout: WAIT_MS });
    const parsed = JSON.parse(list.stdout) as { items: WatchEvent['object'][] };
    assert.deepEqual(parsed.items.map((i) => [i.kind, i.metadata?.name, i.data?.[KEY]]),
      [['ConfigMap', NAME, 'v: 5\n']]);

    const table = await run(KUBECTL, args('get', 'configmap', NAME, '-n', NS),
      { env: env(), timeout: WAIT_MS });
    const rows = table.stdout.trim().split('\n').map((l) => l.trim().split(/\s+/));
    assert.deepEqual(rows[0], ['NAME', 'DATA', 'AGE']);
    assert.deepEqual(rows[1].slice(0, 2), [NAME, '2']);

    const missing = await run(KUBECTL, args('get', 'configmap', 'absent', '-n', NS),
      { env: env(), timeout: WAIT_MS }).then(() => null, (err: { stderr: string }) => err);
    assert.match(missing?.stderr ?? '', /configmaps "absent" not found/);
  });

  it('is refused with a wrong token', async () => {
    const bad = await fake.writeKubeconfig({ insecure: false, token: 'not-the-token',
      path: join(home, 'bad-kubeconfig') });
    const result = await run(KUBECTL,
      ['--kubeconfig', bad, '--cache-dir', join(home, 'cache-bad'), 'get', 'configmaps', '-n', NS],
      { env: env(), timeout: WAIT_MS }).then(() => null, (err: { stderr: string }) => err);
    assert.match(result?.stderr ?? '', /must be logged in|Unauthorized/);
  });
});
