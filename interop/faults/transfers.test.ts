// Nothing lost, nothing crossed: many transfers of random sizes (1 byte to 8 MiB) at once, SSH
// sessions (OpenSSH through the sidecar's ssh-proxy to the Go crunch-run's SSH server) and live
// log GETs, through tunnels, directly and through a peer sidecar, each checked by sha256. Every
// container holds files of the same names with different content, so a stream delivered to the
// wrong tunnel or the wrong client shows as a wrong hash, not as a missing file.
// SOAK_TRANSFERS sets the number of transfers (default 60); SOAK_SEED the seed.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { LocalCluster, urlOf } from '../../src/demo/cluster.ts';
import type { Sidecar } from '../../src/sidecar.ts';
import { buildGo } from '../../scripts/build-go.ts';
import { startCrunchRun, type CrunchRun } from '../lib/crunch-run.ts';
import {
  assertTunnelViewsAgree, envCount, metric, report, scrape, waitFor,
} from '../../test/faults/lib/wire.ts';
import { logGet, pool, prng, sshCat, writeFiles, type Received, type TestFile } from './lib.ts';

const TRANSFERS = envCount('SOAK_TRANSFERS', 60);
const SEED = envCount('SOAK_SEED', 0x7e57);
const FILES = Math.min(24, Math.max(6, Math.ceil(TRANSFERS / 10)));
const T1 = 'zzzzz-dz642-1xfertunnel0000';
const T2 = 'zzzzz-dz642-2xfertunnel0000';
const D = 'zzzzz-dz642-3xferdirect0000';

interface Transfer {
  kind: 'ssh' | 'log';
  ctr: string;
  via: 'A' | 'B';
  file: string;
}

describe(`${TRANSFERS} concurrent transfers, checked by sha256`, () => {
  const cluster = new LocalCluster();
  const crunchRuns: CrunchRun[] = [];
  const files = new Map<string, Map<string, TestFile>>();
  let a: Sidecar;
  let b: Sidecar;
  let alice: ReturnType<LocalCluster['api']['addUser']>;

  before(async () => {
    await buildGo(['crunch-run']);
    await cluster.start();
    // This test is about bytes, not latency: on a busy machine a few calls may take seconds,
    // which must not turn into timeouts that look like lost transfers.
    const patient = { allowLoopbackGateways: true, apiTimeoutMs: 60_000, dialTimeoutMs: 60_000 };
    a = await cluster.startSidecar(patient);
    b = await cluster.startSidecar(patient);
    cluster.writeConfig({ controllerInternalUrls: [a.ownUrl, b.ownUrl] });
    await waitFor(() => [a, b].every((s) =>
      s.ctx.config.current?.controllerInternalUrls.length === 2), 30_000, 'the peers config');
    alice = cluster.api.addUser('zzzzz-tpzed-alice0000000001');
    const rand = prng(SEED);
    const names = Array.from({ length: FILES }, (_, i) => `f${String(i).padStart(3, '0')}.bin`);
    for (const uuid of [T1, T2, D]) {
      const ctr = cluster.api.addContainer(uuid, 'Running', [alice]);
      const dir = join(cluster.dir, uuid);
      mkdirSync(dir);
      files.set(uuid, new Map(writeFiles(dir, names, rand).map((f) => [f.name, f])));
      const tunnelled = uuid !== D;
      const run = await startCrunchRun({
        uuid, systemRootToken: cluster.rootToken, logDir: dir, workdir: dir,
        ...(tunnelled ? { tunnelUrl: urlOf(a), apiUrl: urlOf(a), apiToken: ctr.runtime_token }
          : {}),
      });
      crunchRuns.push(run);
      if (tunnelled) await run.waitFor('gateway_address_set');
      else ctr.gateway_address = run.gatewayAddress;
    }
  });

  after(async () => {
    await Promise.all(crunchRuns.map((c) => c.stop()));
    await cluster.stop();
  });

  test('none corrupt, none crossed, none lost', { timeout: 1_800_000 }, async () => {
    const rand = prng(SEED + 1);
    const names = [...files.get(T1)!.keys()];
    // Every kind of path is in the plan: each container, through A and through B, by SSH and
    // by log GET; which file is random.
    const plan: Transfer[] = Array.from({ length: TRANSFERS }, (_, i) => ({
      kind: i % 5 < 2 ? 'ssh' : 'log',
      ctr: [T1, T2, D][i % 3],
      via: Math.floor(i / 3) % 2 === 0 ? 'A' : 'B',
      file: names[Math.floor(rand() * names.length)],
    }));
    const cr = (uuid: string) =>
      [...cluster.api.requests.values()].find((r) => r.container_uuid === uuid)!.uuid;
    const front = (t: Transfer) => urlOf(t.via === 'A' ? a : b);
    const run = (t: Transfer): Promise<Received> => t.kind === 'ssh'
      ? sshCat(front(t), t.ctr, alice.token, `cat ${t.file}`)
      : logGet(`${front(t)}/arvados/v1/container_requests/${cr(t.ctr)}/log/${t.ctr}/${t.file}`,
        alice.token);
    const started = Date.now();
    // The sidecars run in this process: how long its event loop stalls says how they cope.
    const lag = monitorEventLoopDelay({ resolution: 10 });
    lag.enable();
    // SSH sessions (a process each) at most 8 at a time; log GETs 24 at a time, alongside.
    const [sshResults, logResults] = await Promise.all([
      pool(plan.filter((t) => t.kind === 'ssh'), 8, run),
      pool(plan.filter((t) => t.kind === 'log'), 24, run),
    ]);
    const seconds = (Date.now() - started) / 1000;
    lag.disable();
    const done = [...plan.filter((t) => t.kind === 'ssh'), ...plan.filter((t) => t.kind === 'log')];
    const results = [...sshResults, ...logResults];
    const failures: string[] = [];
    let bytes = 0;
    const paths = new Map<string, number>();
    done.forEach((t, i) => {
      const want = files.get(t.ctr)!.get(t.file)!;
      const got = results[i];
      bytes += got.bytes;
      const path = `${t.kind} ${t.ctr === D ? 'direct' : 'tunnel'} via ${t.via}`;
      paths.set(path, (paths.get(path) ?? 0) + 1);
      if (got.sha256 !== want.sha256 || got.bytes !== want.size || got.error) {
        // Which container's file of that name arrived, if any: a crossed stream.
        const crossed = [...files].find(([, m]) => m.get(t.file)!.sha256 === got.sha256)?.[0];
        const answer = got.status !== undefined && got.status !== 200
          ? `, status ${got.status} ${got.prefix.toString().trim()}` : '';
        failures.push(`${path} ${t.file}: ${got.bytes}/${want.size} bytes${answer}` +
          `${crossed ? `, content of ${crossed}` : ''}${got.error ? `, ${got.error}` : ''}` +
          `${'stderr' in got ? `, ${String(got.stderr).trim()}` : ''}`);
      }
    });
    report({ suite: 'transfers', transfers: TRANSFERS, ssh: sshResults.length,
      logs: logResults.length, mib: Math.round(bytes / 2 ** 20), seconds: Math.round(seconds),
      failures: failures.length, loop_lag_p99_ms: Math.round(lag.percentile(99) / 1e6),
      loop_lag_max_ms: Math.round(lag.max / 1e6) });
    assert.deepEqual(failures, [], `${failures.length} of ${TRANSFERS} transfers failed`);
    assert.equal(paths.size, 8, [...paths.keys()].join(', '));
  });

  test('afterwards every count is back to rest and the views agree', async () => {
    await waitFor(() => a.ctx.limits.busy === 0 && b.ctx.limits.busy === 0, 10_000,
      'every request to finish');
    await waitFor(() => a.registry.all().every((t) => t.session.numStreams === 0), 10_000,
      'every stream to close');
    assert.deepEqual(await assertTunnelViewsAgree(a.adminPort), [T1, T2]);
    assert.deepEqual(await assertTunnelViewsAgree(b.adminPort), []);
    for (const s of [a, b]) {
      const { samples } = await scrape(s.adminPort);
      assert.equal(metric(samples, 'arvados_gateway_sessions_active'), 0);
      assert.equal(metric(samples, 'arvados_gateway_tunnel_streams_open'), 0);
      const errors = samples.filter((x) => x.name === 'arvados_gateway_requests_total' &&
        x.labels.outcome.startsWith('error'));
      assert.deepEqual(errors, [], 'a transfer was answered with an error');
    }
  });
});
