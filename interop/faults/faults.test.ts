// Faults with real peers: crunch-run killed mid-transfer, a tunnel's connection cut, the Arvados
// API stalling or failing, keep-web stalled, down or failing, the ConfigMap deleted, and a relay
// in the middle of a real gateway. Each time the client gets a clean error (a truncated body
// whose bytes are right as far as they go, or a JSON error), the registry and the metrics agree,
// and other sessions go on: an SSH transfer held open across every fault must still arrive whole.
// SOAK_FAULT_ROUNDS repeats the kill and cut faults (default 1).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { LocalCluster, urlOf } from '../../src/demo/cluster.ts';
import type { Sidecar } from '../../src/sidecar.ts';
import { containerKey } from '../../src/gateway/hmac.ts';
import { TUNNEL_DOWN } from '../../src/gateway/locate.ts';
import { buildGo } from '../../scripts/build-go.ts';
import { startCrunchRun, type CrunchRun } from '../lib/crunch-run.ts';
import { startKeepWeb, type KeepWeb } from '../lib/keep-web.ts';
import { FakeApiServer } from '../../test/kube/fake-apiserver.ts';
import {
  LeakCheck, assertJsonError, assertTunnelViewsAgree, envCount, exchange, freePort, metric, report,
  scrape, seenBodies, selfSigned, tlsRelay, upgradeRequest, waitFor,
} from '../../test/faults/lib/wire.ts';
import { logGet, sshCat, type Received } from './lib.ts';

const ROUNDS = envCount('SOAK_FAULT_ROUNDS', 1);
const BIG = 48 * 1024 * 1024;
const OTHER = 'zzzzz-dz642-0faultother0000';
const DIRECT = 'zzzzz-dz642-0faultdirect000';
const DONE = 'zzzzz-dz642-0faultdone00000';
const SAVED = 'zzzzz-4zz18-faultsaved00001';

type User = ReturnType<LocalCluster['api']['addUser']>;

describe('faults with real peers', () => {
  const cluster = new LocalCluster();
  const leaks = new LeakCheck();
  const crunchRuns: CrunchRun[] = [];
  const closers: (() => unknown)[] = [];
  const faults = new Map<string, number>();
  let keepWeb: KeepWeb;
  let sidecar: Sidecar;
  let alice: User;
  let bigDir: string;
  let bigPrefix: Buffer;
  let smallSha: string;
  let n = 0;

  const injected = (what: string) => faults.set(what, (faults.get(what) ?? 0) + 1);
  const crOf = (uuid: string) =>
    [...cluster.api.requests.values()].find((r) => r.container_uuid === uuid)!.uuid;
  const logUrl = (s: Sidecar, uuid: string, file: string) =>
    `${urlOf(s)}/arvados/v1/container_requests/${crOf(uuid)}/log/${uuid}/${file}`;
  const sshRaw = (s: Sidecar, uuid: string) => exchange(s.frontPort, upgradeRequest(s.frontPort,
    `/arvados/v1/connect/${uuid}/ssh`, 'ssh', {}, { Authorization: `Bearer ${alice.token}` }),
  { untilAnswer: true });
  const newUuid = (tag: string) =>
    `zzzzz-dz642-${String(n++).padStart(3, '0')}${tag.padEnd(12, '0').slice(0, 12)}`;
  const tunnelled = async (s: Sidecar, tag: string, opts: { tunnelUrl?: string } = {}) => {
    const uuid = newUuid(tag);
    const ctr = cluster.api.addContainer(uuid, 'Running', [alice]);
    leaks.add(`runtime token of ${uuid}`, ctr.runtime_token!);
    leaks.add(`auth secret of ${uuid}`, containerKey(cluster.rootToken, uuid));
    const run = await startCrunchRun({
      uuid, systemRootToken: cluster.rootToken, logDir: bigDir, workdir: bigDir,
      tunnelUrl: opts.tunnelUrl ?? urlOf(s), apiUrl: urlOf(s), apiToken: ctr.runtime_token,
      redialIntervalMs: 200,
    });
    crunchRuns.push(run);
    await run.waitFor('gateway_address_set');
    return { uuid, run };
  };

  // An SSH transfer that starts now and finishes only when told: it proves that sessions in
  // flight survive whatever fault happens in between.
  const heldTransfer = async (front: string, uuid: string) => {
    const tag = `held-${n++}`;
    const session = sshCat(front, uuid, alice.token,
      `touch ${tag}.started; while [ ! -e ${tag}.go ]; do sleep 0.05; done; cat small.bin`);
    await waitFor(() => existsSync(join(bigDir, `${tag}.started`)), 20_000, 'a held session');
    return {
      finish: async () => {
        writeFileSync(join(bigDir, `${tag}.go`), '');
        const got = await session;
        assert.equal(got.sha256, smallSha, `a held session was disturbed: ${got.stderr}`);
        assert.equal(got.code, 0);
      },
    };
  };

  // A transfer cut by a fault: it ends with an error or short, and what did arrive is right.
  const assertCut = (got: Received & { contentLength: number }) => {
    assert.equal(got.status, 200);
    assert.equal(got.contentLength, BIG);
    assert.ok(got.bytes < BIG, `the whole ${BIG} bytes arrived: the fault came too late`);
    assert.ok(got.error !== undefined, 'a short body without an error');
    assert.ok(got.prefix.equals(bigPrefix.subarray(0, got.prefix.length)), 'corrupt bytes');
  };

  before(async () => {
    await buildGo(['crunch-run', 'keep-web']);
    await cluster.start();
    bigDir = join(cluster.dir, 'big');
    mkdirSync(bigDir);
    const big = randomBytes(BIG);
    bigPrefix = big.subarray(0, 65536);
    writeFileSync(join(bigDir, 'big.bin'), big);
    const small = randomBytes(3 * 1024 * 1024 + 7);
    smallSha = createHash('sha256').update(small).digest('hex');
    writeFileSync(join(bigDir, 'small.bin'), small);
    const keepRoot = join(cluster.dir, 'keep');
    mkdirSync(join(keepRoot, SAVED), { recursive: true });
    writeFileSync(join(keepRoot, SAVED, 'stderr.txt'), 'saved log\n');
    keepWeb = await startKeepWeb({ root: keepRoot, token: cluster.rootToken });
    cluster.writeConfig({ webdavInternalUrls: [`${keepWeb.url}/`] });
    sidecar = await cluster.startSidecar({ allowLoopbackGateways: true, dialTimeoutMs: 2000 });
    await waitFor(() => sidecar.ctx.config.current?.webdavInternalUrls.length === 1, 20_000);
    alice = cluster.api.addUser('zzzzz-tpzed-alice0000000001');
    leaks.add('SystemRootToken', cluster.rootToken);
    leaks.add('alice\'s token', alice.token);

    const other = cluster.api.addContainer(OTHER, 'Running', [alice]);
    const o = await startCrunchRun({ uuid: OTHER, systemRootToken: cluster.rootToken,
      logDir: bigDir, workdir: bigDir, tunnelUrl: urlOf(sidecar), apiUrl: urlOf(sidecar),
      apiToken: other.runtime_token });
    crunchRuns.push(o);
    await o.waitFor('gateway_address_set');
    const direct = cluster.api.addContainer(DIRECT, 'Running', [alice]);
    const d = await startCrunchRun({ uuid: DIRECT, systemRootToken: cluster.rootToken,
      logDir: bigDir, workdir: bigDir });
    crunchRuns.push(d);
    direct.gateway_address = d.gatewayAddress;
    cluster.api.addContainer(DONE, 'Complete', [alice]);
    cluster.api.requests.get(crOf(DONE))!.log_uuid = SAVED;
  });

  after(async () => {
    await Promise.all(crunchRuns.map((c) => c.stop()));
    for (const close of closers.reverse()) await close();
    await keepWeb?.stop();
    await cluster.stop();
  });

  test(`crunch-run killed mid-transfer (${ROUNDS}x)`, { timeout: 600_000 }, async () => {
    for (let round = 0; round < ROUNDS; round++) {
      const { uuid, run } = await tunnelled(sidecar, 'killed');
      const held = await heldTransfer(urlOf(sidecar), OTHER);
      const got = await logGet(logUrl(sidecar, uuid, 'big.bin'), alice.token, {
        onFirstData: async () => {
          await run.kill();
          injected('crunch-run SIGKILL');
          await waitFor(() => sidecar.registry.get(uuid) === undefined, 10_000,
            'the dead tunnel to be dropped');
        },
      });
      assertCut(got);
      assert.deepEqual(await assertTunnelViewsAgree(sidecar.adminPort), [OTHER]);
      await held.finish();
      // The container still says "tunnel": the answer is the protocol's, not a hang.
      const after = await logGet(logUrl(sidecar, uuid, 'small.bin'), alice.token);
      assertJsonError({ status: after.status!, headers: { 'content-type': 'application/json' },
        json: JSON.parse(after.body!) }, 503, TUNNEL_DOWN);
      assertJsonError(await sshRaw(sidecar, uuid), 503, TUNNEL_DOWN);
    }
    await waitFor(() => sidecar.ctx.limits.busy === 0, 10_000, 'every place to be given back');
    const { samples } = await scrape(sidecar.adminPort);
    assert.ok(metric(samples, 'arvados_gateway_tunnel_disconnects_total', { reason: 'error' }) +
      metric(samples, 'arvados_gateway_tunnel_disconnects_total', { reason: 'closed' }) >= ROUNDS);
    assert.equal(metric(samples, 'arvados_gateway_sessions_active'), 0);
  });

  test(`a tunnel's connection cut mid-transfer, then redialled (${ROUNDS}x)`,
    { timeout: 600_000 }, async () => {
      const cut = new Cutter(sidecar.frontPort);
      const front = await cut.listen();
      closers.push(() => cut.close());
      const { uuid } = await tunnelled(sidecar, 'cut', { tunnelUrl: front });
      for (let round = 0; round < ROUNDS; round++) {
        const before = sidecar.registry.get(uuid)!;
        const held = await heldTransfer(urlOf(sidecar), OTHER);
        const got = await logGet(logUrl(sidecar, uuid, 'big.bin'), alice.token, {
          onFirstData: async () => {
            cut.cutAll();
            injected('tunnel connection cut');
            await waitFor(() => sidecar.registry.get(uuid) !== before, 10_000,
              'the cut tunnel to be dropped');
          },
        });
        assertCut(got);
        await held.finish();
        // crunch-run redials (every 200 ms here) and the same container is reachable again.
        await waitFor(() => sidecar.registry.get(uuid) !== undefined, 10_000, 'a redial');
        const again = await logGet(logUrl(sidecar, uuid, 'small.bin'), alice.token);
        assert.equal(again.sha256, smallSha);
        assert.deepEqual(await assertTunnelViewsAgree(sidecar.adminPort), [OTHER, uuid].sort());
      }
    });

  test('clients that go away mid-transfer leave no stream and no place behind', async () => {
    const { samples: before } = await scrape(sidecar.adminPort);
    const aborted: Promise<unknown>[] = [];
    for (let i = 0; i < 6; i++) {
      aborted.push(logGet(logUrl(sidecar, OTHER, 'big.bin'), alice.token, {
        onFirstData: async () => {
          throw new Error('the client gives up');
        },
      }));
      aborted.push(sshCat(urlOf(sidecar), OTHER, alice.token, 'cat big.bin',
        { onFirstData: (kill) => kill() }));
    }
    const results = await Promise.all(aborted) as Received[];
    injected('clients gone mid-transfer');
    assert.ok(results.every((r) => r.bytes < BIG), 'a transfer was not cut');
    await waitFor(() => sidecar.ctx.limits.busy === 0, 10_000, 'every place to be given back');
    await waitFor(() => sidecar.registry.get(OTHER)!.session.numStreams === 0, 10_000,
      'every stream to close');
    const { samples } = await scrape(sidecar.adminPort);
    assert.equal(metric(samples, 'arvados_gateway_sessions_active'), 0);
    assert.equal(metric(samples, 'arvados_gateway_tunnel_streams_open'), 0);
    assert.ok(metric(samples, 'arvados_gateway_tunnel_streams_opened_total') -
      metric(before, 'arvados_gateway_tunnel_streams_opened_total') >= 12);
    assert.equal((await logGet(logUrl(sidecar, OTHER, 'small.bin'), alice.token)).sha256,
      smallSha);
  });

  // Before the stall test: a stalled call that wakes up late would take the injected failure.
  test('the Arvados API answers 500: a JSON error, and the next request works', async () => {
    cluster.api.failures.set('GET users', 500);
    injected('API 500');
    assertJsonError(await sshRaw(sidecar, OTHER), 500, 'injected failure 500');
    cluster.api.failures.set('GET container_requests', 500);
    injected('API 500');
    const log = await logGet(logUrl(sidecar, OTHER, 'small.bin'), alice.token);
    assertJsonError({ status: log.status!, headers: { 'content-type': 'application/json' },
      json: JSON.parse(log.body!) }, 500, 'injected failure 500');
    assert.equal((await logGet(logUrl(sidecar, OTHER, 'small.bin'), alice.token)).sha256,
      smallSha);
    const ok = await sshRaw(sidecar, OTHER);
    assert.equal(ok.status, 101);
  });

  test('the Arvados API stalls: a 502 after GATEWAY_API_TIMEOUT_MS; sessions go on', async () => {
    const quick = await cluster.startSidecar({ allowLoopbackGateways: true, apiTimeoutMs: 300 });
    const held = await heldTransfer(urlOf(quick), DIRECT);
    cluster.api.stallMs = 1500;
    injected('API stall');
    try {
      assertJsonError(await sshRaw(quick, DIRECT), 502, 'Arvados API request failed: timeout');
      const log = await logGet(logUrl(quick, DIRECT, 'small.bin'), alice.token);
      assertJsonError({ status: log.status!, headers: { 'content-type': 'application/json' },
        json: JSON.parse(log.body!) }, 502, 'Arvados API request failed: timeout');
    } finally {
      cluster.api.stallMs = 0;
    }
    await held.finish();
    assert.equal((await sshCat(urlOf(quick), DIRECT, alice.token, 'cat small.bin')).sha256,
      smallSha);
    const { samples } = await scrape(quick.adminPort);
    assert.ok(metric(samples, 'arvados_gateway_api_errors_total',
      { call: 'users.current', outcome: 'unreachable' }) >= 1);
    await waitFor(() => quick.ctx.limits.busy === 0, 5000, 'every place to be given back');
  });

  test('keep-web stalled, down or failing: bounded, clean errors', async () => {
    const quick = await cluster.startSidecar({ dialTimeoutMs: 1000 });
    const saved = () => logGet(`${urlOf(quick)}/arvados/v1/container_requests/${crOf(DONE)}/log/` +
      'stderr.txt', alice.token);
    const asJson = (r: Awaited<ReturnType<typeof saved>>) => ({ status: r.status!,
      headers: { 'content-type': 'application/json' }, json: JSON.parse(r.body!) });
    assert.equal((await saved()).prefix.toString(), 'saved log\n');
    // Stopped, keep-web still accepts connections (the kernel does) but never answers.
    process.kill(keepWeb.pid, 'SIGSTOP');
    // A signal takes a moment to stop every thread of a Go program.
    const state = () => readFileSync(`/proc/${keepWeb.pid}/stat`, 'utf8');
    await waitFor(() => /^\d+ \(.*\) [Tt] /.test(state()), 5000, 'keep-web to stop');
    injected('keep-web stall');
    try {
      assertJsonError(asJson(await saved()), 504, 'upstream did not answer in time');
      // Live logs do not need keep-web: they go on.
      assert.equal((await logGet(logUrl(sidecar, OTHER, 'small.bin'), alice.token)).sha256,
        smallSha);
    } finally {
      process.kill(keepWeb.pid, 'SIGCONT');
    }
    assert.equal((await saved()).prefix.toString(), 'saved log\n');

    const failing = createHttpServer((_req, res) => {
      res.writeHead(500, { 'Content-Type': 'application/json' });
      res.end('{"errors":["keep-web is broken"]}');
    });
    await new Promise<void>((r) => failing.listen(0, '127.0.0.1', r));
    const down = await freePort();
    try {
      for (const [url, status, message] of [
        [`http://127.0.0.1:${(failing.address() as { port: number }).port}/`, 500,
          'keep-web is broken'],
        [`http://127.0.0.1:${down}/`, 503, 'proxy error: ECONNREFUSED'],
      ] as const) {
        cluster.writeConfig({ webdavInternalUrls: [url] });
        await waitFor(() => quick.ctx.config.current?.webdavInternalUrls[0] === url, 20_000);
        injected(status === 500 ? 'keep-web 500' : 'keep-web down');
        assertJsonError(asJson(await saved()), status, message);
      }
    } finally {
      failing.close();
      cluster.writeConfig({ webdavInternalUrls: [`${keepWeb.url}/`] });
      await waitFor(() => quick.ctx.config.current?.webdavInternalUrls[0] === `${keepWeb.url}/`,
        20_000);
    }
    assert.equal((await saved()).prefix.toString(), 'saved log\n');
    assert.equal(quick.ctx.limits.busy, 0);
  });

  test('the ConfigMap is deleted: the config is kept, ready, tunnels and SSH go on', async () => {
    const kube = await FakeApiServer.start({ namespace: 'arvados' });
    closers.push(() => kube.close());
    kube.put('cluster-config', { 'config.yml': cluster.configText({}) });
    const s = await cluster.startSidecar({ configMap: 'arvados/cluster-config',
      kubeconfig: await kube.writeKubeconfig() });
    await waitFor(() => s.ctx.config.current !== undefined, 20_000, 'the ConfigMap');
    const { uuid } = await tunnelled(s, 'configmap');
    const held = await heldTransfer(urlOf(s), uuid);
    kube.delete('cluster-config');
    injected('ConfigMap deleted');
    await waitFor(() => cluster.logLines.some((l) => l.includes('ConfigMap was deleted')), 20_000);
    const ready = await fetch(`http://127.0.0.1:${s.adminPort}/readyz`);
    assert.equal(ready.status, 200);
    await held.finish();
    // A new tunnel is checked with the root token of the kept config.
    const second = await tunnelled(s, 'afterdelete');
    assert.equal((await sshCat(urlOf(s), second.uuid, alice.token, 'cat small.bin')).sha256,
      smallSha);
    // The Kubernetes API failing as well changes nothing either.
    kube.fail(500);
    injected('Kubernetes API 500');
    try {
      assert.equal((await fetch(`http://127.0.0.1:${s.adminPort}/readyz`)).status, 200);
      assert.equal((await logGet(logUrl(s, uuid, 'small.bin'), alice.token)).sha256, smallSha);
    } finally {
      kube.heal();
    }
    const { samples } = await scrape(s.adminPort);
    assert.ok(metric(samples, 'arvados_gateway_config_reloads_total', { result: 'deleted' }) >= 1);
    assert.equal(metric(samples, 'arvados_gateway_config_last_reload_successful'), 1);
    assert.deepEqual(await assertTunnelViewsAgree(s.adminPort), [uuid, second.uuid].sort());
  });

  test('a relay with its own certificate before the real crunch-run: 502 on logs', async () => {
    const relay = await tlsRelay(selfSigned(cluster.dir, 'relay'), crunchRuns[1].gatewayAddress);
    closers.push(() => relay.close());
    const uuid = newUuid('mitm');
    cluster.api.addContainer(uuid, 'Running', [alice], relay.address);
    // The relay forwards to the gateway of DIRECT, which refuses another container's UUID and a
    // proof made for another certificate alike: nothing of its log may come through.
    const log = await logGet(logUrl(sidecar, uuid, 'small.bin'), alice.token);
    assertJsonError({ status: log.status!, headers: { 'content-type': 'application/json' },
      json: JSON.parse(log.body!) }, 502, 'bad X-Arvados-Authorization-Response header');
    assert.ok(relay.relayed() >= 1);
    injected('MITM relay');
  });

  test('no secret in any answer, log line, metric or debug view', async () => {
    leaks.scan('answer bodies', seenBodies);
    leaks.scan('log lines', cluster.logLines);
    for (const s of cluster.sidecars) await leaks.scanSidecar(s.adminPort);
    report({ suite: 'faults', rounds: ROUNDS,
      injected: [...faults].map(([k, v]) => `${k}: ${v}`).join(', '),
      total: [...faults.values()].reduce((a, b) => a + b, 0) });
  });
});

/** Cutter is a TCP relay whose connections can all be cut at once: a tunnel's wire failing. */
class Cutter {
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();

  constructor(target: number) {
    this.#server = createServer((client) => {
      const upstream = connect(target, '127.0.0.1');
      for (const s of [client, upstream]) {
        this.#sockets.add(s);
        s.on('close', () => this.#sockets.delete(s));
        s.on('error', () => { client.destroy(); upstream.destroy(); });
      }
      client.pipe(upstream).pipe(client);
    });
  }

  async listen(): Promise<string> {
    await new Promise<void>((r) => this.#server.listen(0, '127.0.0.1', r));
    return `http://127.0.0.1:${(this.#server.address() as { port: number }).port}`;
  }

  cutAll(): void {
    for (const s of this.#sockets) s.resetAndDestroy();
  }

  close(): Promise<void> {
    this.cutAll();
    return new Promise((r) => this.#server.close(() => r()));
  }
}
