// A peer sidecar killed mid-request, and a new sidecar process started on its port: sidecar A
// runs as a child process and holds crunch-run's tunnel; requests arrive at sidecar B, which
// forwards them to A. Killing A (SIGKILL, as an evicted pod dies) cuts B's forwarded transfer
// cleanly and leaves B's other sessions alone; a new A on the same port has the tunnel back and
// SSH working within 10 seconds, because crunch-run redials on its own.
// SOAK_FAULT_ROUNDS repeats the kill and restart (default 1).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { LocalCluster, urlOf } from '../../src/demo/cluster.ts';
import type { Sidecar } from '../../src/sidecar.ts';
import { TUNNEL_DOWN } from '../../src/gateway/locate.ts';
import { buildGo } from '../../scripts/build-go.ts';
import { startCrunchRun, type CrunchRun } from '../lib/crunch-run.ts';
import {
  LeakCheck, assertJsonError, assertTunnelViewsAgree, debugTunnels, envCount, exchange, freePort,
  metric, report, scrape, seenBodies, upgradeRequest, waitFor,
} from '../../test/faults/lib/wire.ts';
import { SidecarProcess, logGet, sshCat } from './lib.ts';

const ROUNDS = envCount('SOAK_FAULT_ROUNDS', 1);
const BIG = 48 * 1024 * 1024;
const HELD = 'zzzzz-dz642-restartheld0000';
const CTR = 'zzzzz-dz642-restarttunnel00';

describe('a peer sidecar killed mid-request, then restarted on its port', () => {
  const cluster = new LocalCluster();
  const leaks = new LeakCheck();
  const crunchRuns: CrunchRun[] = [];
  let a: SidecarProcess;
  let b: Sidecar;
  let ports: [number, number];
  let env: Record<string, string>;
  let alice: ReturnType<LocalCluster['api']['addUser']>;
  let dir: string;
  let bigPrefix: Buffer;
  let smallSha: string;
  const recoveries: number[] = [];

  const crOf = (uuid: string) =>
    [...cluster.api.requests.values()].find((r) => r.container_uuid === uuid)!.uuid;
  const logUrl = (front: string, file: string) =>
    `${front}/arvados/v1/container_requests/${crOf(CTR)}/log/${CTR}/${file}`;

  before(async () => {
    await buildGo(['crunch-run']);
    await cluster.start();
    dir = join(cluster.dir, 'files');
    mkdirSync(dir);
    const big = randomBytes(BIG);
    bigPrefix = big.subarray(0, 65536);
    writeFileSync(join(dir, 'big.bin'), big);
    const small = randomBytes(2 * 1024 * 1024 + 3);
    smallSha = createHash('sha256').update(small).digest('hex');
    writeFileSync(join(dir, 'small.bin'), small);
    alice = cluster.api.addUser('zzzzz-tpzed-alice0000000001');
    leaks.add('SystemRootToken', cluster.rootToken);
    leaks.add('alice\'s token', alice.token);

    ports = [await freePort(), await freePort()];
    env = { ARVADOS_CONFIG: cluster.configPath, GATEWAY_CONTROLLER_URL: cluster.apiUrl };
    a = new SidecarProcess(env, ...ports);
    b = await cluster.startSidecar({ allowLoopbackGateways: true });
    cluster.writeConfig({ controllerInternalUrls: [a.url, b.ownUrl] });
    await waitFor(() => b.ctx.config.current?.controllerInternalUrls.length === 2, 20_000);
    await a.ready();

    const ctr = cluster.api.addContainer(CTR, 'Running', [alice]);
    leaks.add('the runtime token', ctr.runtime_token!);
    const run = await startCrunchRun({ uuid: CTR, systemRootToken: cluster.rootToken,
      logDir: dir, workdir: dir, tunnelUrl: a.url, apiUrl: a.url, apiToken: ctr.runtime_token,
      redialIntervalMs: 200 });
    crunchRuns.push(run);
    await run.waitFor('gateway_address_set');
    assert.equal(ctr.gateway_address, `tunnel ${a.url}`);
    const held = cluster.api.addContainer(HELD, 'Running', [alice]);
    const d = await startCrunchRun({ uuid: HELD, systemRootToken: cluster.rootToken,
      logDir: dir, workdir: dir });
    crunchRuns.push(d);
    held.gateway_address = d.gatewayAddress;
  });

  after(async () => {
    await a?.kill();
    await Promise.all(crunchRuns.map((c) => c.stop()));
    await cluster.stop();
  });

  test(`killed mid-request and restarted (${ROUNDS}x): tunnel and SSH back within 10 s`,
    { timeout: 900_000 }, async () => {
      for (let round = 0; round < ROUNDS; round++) {
        // A session on B that has nothing to do with A, open across the whole fault.
        const tag = `held-${round}`;
        const held = sshCat(urlOf(b), HELD, alice.token,
          `touch ${tag}.started; while [ ! -e ${tag}.go ]; do sleep 0.05; done; cat small.bin`);
        await waitFor(() => existsSync(join(dir, `${tag}.started`)), 20_000, 'a held session');

        const got = await logGet(logUrl(urlOf(b), 'big.bin'), alice.token,
          { onFirstData: () => a.kill() });
        assert.equal(got.status, 200);
        assert.ok(got.bytes < BIG && got.error !== undefined, 'the transfer was not cut');
        assert.ok(got.prefix.equals(bigPrefix.subarray(0, got.prefix.length)), 'corrupt bytes');

        // While A is gone, B says the tunnel is down, the protocol's answer.
        const log = await logGet(logUrl(urlOf(b), 'small.bin'), alice.token);
        assertJsonError({ status: log.status!, headers: { 'content-type': 'application/json' },
          json: JSON.parse(log.body!) }, 503, TUNNEL_DOWN);
        assertJsonError(await exchange(b.frontPort, upgradeRequest(b.frontPort,
          `/arvados/v1/connect/${CTR}/ssh`, 'ssh', {}, { Authorization: `Bearer ${alice.token}` }),
        { untilAnswer: true }), 503, TUNNEL_DOWN);
        assert.deepEqual(await assertTunnelViewsAgree(b.adminPort), []);

        writeFileSync(join(dir, `${tag}.go`), '');
        const heldGot = await held;
        assert.equal(heldGot.sha256, smallSha, heldGot.stderr);

        // A new A on the same port: crunch-run finds it by itself. The clock starts once the
        // new process listens, so that Node's own start on a busy machine is not counted.
        a = new SidecarProcess(env, ...ports);
        await a.ready();
        const started = Date.now();
        await waitFor(async () => (await debugTunnels(a.adminPort)).length === 1, 10_000,
          'the tunnel to come back');
        const ssh = await sshCat(a.url.replace(/\/$/, ''), CTR, alice.token, 'cat small.bin');
        const elapsed = Date.now() - started;
        recoveries.push(elapsed);
        assert.equal(ssh.sha256, smallSha, ssh.stderr);
        assert.ok(elapsed < 10_000, `tunnel and SSH took ${elapsed} ms to come back`);
        assert.deepEqual(await assertTunnelViewsAgree(a.adminPort), [CTR]);
        // And through B again, the peer path.
        const viaB = await sshCat(urlOf(b), CTR, alice.token, 'cat small.bin');
        assert.equal(viaB.sha256, smallSha, viaB.stderr);
      }
      await waitFor(() => b.ctx.limits.busy === 0, 10_000, 'B to give every place back');
      const { samples } = await scrape(b.adminPort);
      assert.ok(metric(samples, 'arvados_gateway_peer_forwards_total',
        { route: 'logs', outcome: 'error' }) >= ROUNDS);
      assert.equal(metric(samples, 'arvados_gateway_sessions_active'), 0);
      report({ suite: 'restart', rounds: ROUNDS, kills: ROUNDS,
        max_recovery_ms: Math.max(...recoveries) });
    });

  test('no secret in any answer, log line, metric or debug view', async () => {
    leaks.scan('answer bodies', seenBodies);
    leaks.scan('log lines', [...cluster.logLines, ...a.output.split('\n')]);
    await leaks.scanSidecar(b.adminPort);
    await leaks.scanSidecar(a.adminPort);
  });
});
